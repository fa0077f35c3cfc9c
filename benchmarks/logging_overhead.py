"""MLflow logging overhead: the same study with tracking on and off, and our writer against MLflow's own asynchronous logging.

Studies (``--part studies``): both run the same trials (same spec, seed and trial length) on a local
Ray; the one with tracking logs params, per-epoch metrics, the frontier artifacts and the frontier
trials' models into a SQLite store in its study folder. Overhead = (wall with - wall without) / wall
without, and the same for the summed trial time reported by Tune (time_total_s of each trial).
Target: at most 2%. Saved as results/logging_overhead.json.

Writers (``--part writers``): one stream of Tune events (every trial starts, reports ``--reports``
epochs of ``--metrics`` metrics in turn, with ``--interval-s`` between rounds, ends) written into a
fresh SQLite store (or, with ``--server``, a local ``mlflow server``) by each of:

- ``labelmix_writer``: the tracking callback (tracking.py) as Tune drives it: its hooks queue
  records, its thread (tracking_writer.py) writes one log_batch per trial every ``--flush-s``;
- ``mlflow_async``: what a callback would do with MLflow's asynchronous logging instead: the child
  run created and ended on the driver (MLflow has no asynchronous create_run or set_terminated, and
  set_terminated first drains the whole asynchronous queue), params and each report's metrics by
  ``log_batch(..., synchronous=False)``, MLflow's AsyncLoggingQueue (what
  ``MLFLOW_ENABLE_ASYNC_LOGGING=true`` makes the default), as configured out of the box: one write
  per report, from a pool of 10 threads;
- ``mlflow_async_buffered``: the same with ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=--flush-s``
  (queued batches of a run merged, as our writer merges them).

Figures per contender, the median over ``--repeats`` (alternating order): seconds on the driver per
start, report and end hook and in all hooks together (what Tune's loop waits for), seconds from the
first event until everything is written, and whether every metric point arrived; ``mlflow_over_ours``
divides MLflow's by ours (above 1: ours is faster). Saved as results/logging_overhead_writers.json
(``_server.json`` with ``--server``).

Run: .venv/bin/python benchmarks/logging_overhead.py [--part both|studies|writers] [--trials 4 --steps 12]
     [--writer-trials 4 --reports 50 --metrics 23 --repeats 3 --flush-s 2 --interval-s 0 --server]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

CONTENDERS = ("labelmix_writer", "mlflow_async", "mlflow_async_buffered")
BUFFERING = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"
RATIOS = ("driver_s_per_report", "driver_s_all_hooks", "s_until_written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("both", "studies", "writers"), default="both")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--writer-trials", type=int, default=4)
    parser.add_argument("--reports", type=int, default=50, help="reports (epochs) per trial in the writers part")
    parser.add_argument("--metrics", type=int, default=23, help="metrics per report (val/miou, cost/hours, per-class IoUs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flush-s", type=float, default=2.0)
    parser.add_argument("--interval-s", type=float, default=0.0,
                        help="pause after each round of reports in the writers part (0: one burst)")
    parser.add_argument("--server", action="store_true", help="write to a local `mlflow server` (SQLite behind it)")
    args = parser.parse_args()
    if args.part in ("both", "studies"):
        studies(args)
    if args.part in ("both", "writers"):
        writers(args)


def studies(args) -> None:
    import pandas as pd

    from labelmix.platform.spec import parse_spec
    from labelmix.platform.study import run_study, start_ray

    with tempfile.TemporaryDirectory() as tmp:
        def spec(name):
            return parse_spec({
                "name": name,
                "dataset": {"synthetic": {"volumes": 8, "slices": 8, "height": 64, "width": 64, "seed": 0}},
                "objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
                "space": {"mix": {"full": {"uniform": [0.1, 1]}, "box": {"uniform": [0, 1]}, "none": {"uniform": [0, 1]}}},
                "fixed": {"encoder": "test_resnet", "epochs": args.epochs, "steps_per_epoch": args.steps,
                          "batch_size": 8, "threads": 1},
                "search": {"algorithm": "random", "trials": args.trials, "concurrency": args.concurrency, "seed": 0},
                "scheduler": {"type": "none"}, "storage": {"path": str(Path(tmp) / "studies")},
            })

        start_ray(None, None)  # started once, before both, so neither side pays Ray's start-up
        figures = {}
        for label, tracking in (("off", False), ("on", True)):
            t0 = time.perf_counter()
            result = run_study(spec(f"logging-{label}"), "benchmark", tracking=tracking)
            wall = time.perf_counter() - t0
            trial_s = sum(
                pd.read_json(p, lines=True)["time_total_s"].iloc[-1]
                for p in result.study_dir.glob("run_trial_*/result.json")
            )
            figures[label] = {"wall_seconds": round(wall, 2), "summed_trial_seconds": round(float(trial_s), 2),
                              "finished": int((result.table["status"] == "TERMINATED").sum())}

    off, on = figures["off"], figures["on"]
    save("logging_overhead", {
        "trials": args.trials, "epochs": args.epochs, "tracking_off": off, "tracking_on": on,
        "wall_overhead": round(on["wall_seconds"] / off["wall_seconds"] - 1, 4),
        "trial_time_overhead": round(on["summed_trial_seconds"] / off["summed_trial_seconds"] - 1, 4),
        "target": 0.02,
    })


# --- writers: our writer against MLflow's asynchronous logging -----------------------------------


class LabelmixWriter:
    """The tracking callback, its hooks called as Tune calls them."""

    def __init__(self, uri: str, study: str, folder: Path, flush_s: float) -> None:
        from labelmix.platform.tracking import MlflowTracking

        self.callback = MlflowTracking(uri, study, study, f"name: {study}\n", {}, folder,
                                       config_of=lambda trial: dict(trial.config), flush_s=flush_s)
        self.callback.open()  # experiment and parent run before the clock, as study_tracking does

    def start(self, trial) -> None:
        self.callback.on_trial_start(0, [], trial)

    def report(self, trial, result) -> None:
        self.callback.on_trial_result(0, [], trial, result)

    def end(self, trial) -> None:
        self.callback.on_trial_complete(0, [], trial)

    def drain(self) -> None:
        assert self.callback.flush(timeout_s=600), "the writer did not finish"

    def run_ids(self) -> dict[str, str]:
        return dict(self.callback.child_ids)


class MlflowAsync:
    """The same events through MLflow's asynchronous ``log_batch``; runs created and ended on the driver."""

    def __init__(self, uri: str, study: str, folder: Path, flush_s: float) -> None:
        from mlflow import MlflowClient

        from labelmix.platform.mlflow_runs import experiment_id

        self.client = MlflowClient(uri)
        self.study = study
        self.experiment_id = experiment_id(self.client, study, uri)
        self.parent_id = self.client.create_run(self.experiment_id, run_name=study).info.run_id
        self.runs: dict[str, str] = {}
        self.operations: list = []

    def start(self, trial) -> None:
        from mlflow.entities import Param

        from labelmix.platform.mlflow_runs import param_values
        from labelmix.platform.trial_table import TAG_PARENT, TAG_STUDY, TAG_TRIAL

        tags = {TAG_PARENT: self.parent_id, TAG_TRIAL: trial.trial_id, TAG_STUDY: self.study}
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=trial.trial_id).info.run_id
        self.runs[trial.trial_id] = run_id
        params = [Param(k, v) for k, v in param_values(trial.config).items()]
        self.operations.append(self.client.log_batch(run_id, params=params, synchronous=False))

    def report(self, trial, result) -> None:
        from mlflow.entities import Metric

        from labelmix.platform.mlflow_runs import metric_values, step_of

        stamp, step = int(time.time() * 1000), step_of(result)
        metrics = [Metric(k, v, stamp, step) for k, v in metric_values(result).items()]
        self.operations.append(self.client.log_batch(self.runs[trial.trial_id], metrics=metrics, synchronous=False))

    def end(self, trial) -> None:
        self.client.set_terminated(self.runs[trial.trial_id], "FINISHED")

    def drain(self) -> None:
        for operation in self.operations:
            operation.wait()

    def run_ids(self) -> dict[str, str]:
        return dict(self.runs)


def run_contender(name: str, uri: str, folder: Path, args) -> dict:
    """One contender's figures for the event stream; ``folder`` names its study (one experiment each)."""
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    trials = []
    for i in range(args.writer_trials):
        trial = Trial("__fake", trial_id=f"t{i}", stub=True)
        trial.config = {"mix": {"full": 0.1 * (i + 1), "none": 1 - 0.1 * (i + 1)}, "ds_type": "none", "lr": 0.004}
        trials.append(trial)
    classes = max(args.metrics - 3, 0)
    if name == "mlflow_async_buffered":
        os.environ[BUFFERING] = str(max(int(args.flush_s), 1))  # read by MLflow's queue on every pass
    try:
        writer = (LabelmixWriter if name == "labelmix_writer" else MlflowAsync)(uri, folder.name, folder, args.flush_s)
        spent = {"start": 0.0, "report": 0.0, "end": 0.0}

        def timed(hook: str, *call_args) -> None:
            t0 = time.perf_counter()
            getattr(writer, hook)(*call_args)
            spent[hook] += time.perf_counter() - t0

        started = time.perf_counter()
        for trial in trials:
            timed("start", trial)
        for epoch in range(1, args.reports + 1):
            for trial in trials:
                timed("report", trial, {"epoch": float(epoch), "training_iteration": epoch, "val/miou": 0.5 + 1e-3 * epoch,
                                        "cost/hours": 1.0, **{f"val/iou/c{c}": 0.1 for c in range(classes)}})
            time.sleep(args.interval_s)
        for trial in trials:
            timed("end", trial)
        writer.drain()
        written = time.perf_counter() - started
    finally:
        os.environ.pop(BUFFERING, None)
    client = MlflowClient(uri)
    complete = all(len(client.get_metric_history(run_id, "val/miou")) == args.reports
                   for run_id in writer.run_ids().values()) and len(writer.run_ids()) == len(trials)
    return {"driver_s_per_start": spent["start"] / len(trials),
            "driver_s_per_report": spent["report"] / (args.reports * len(trials)),
            "driver_s_per_end": spent["end"] / len(trials), "driver_s_all_hooks": sum(spent.values()),
            "s_until_written": written, "all_points_logged": complete}


def writers(args) -> None:
    from mlflow import MlflowClient

    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="labelmix-writers-") as tmp:
        server = start_server(Path(tmp)) if args.server else None
        try:
            for repeat in range(args.repeats):
                for name in CONTENDERS if repeat % 2 == 0 else CONTENDERS[::-1]:
                    folder = Path(tmp) / f"{name}-{repeat}"
                    folder.mkdir()
                    uri = server or f"sqlite:///{folder / 'mlflow.db'}"
                    MlflowClient(uri).search_experiments()  # creates a SQLite store's tables before the clock
                    runs[name].append(run_contender(name, uri, folder, args))
                    print(name, repeat, {k: round(v, 6) if isinstance(v, float) else v
                                         for k, v in runs[name][-1].items()}, flush=True)
        finally:
            if server:
                stop_server(Path(tmp))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    figures = {name: {key: round(median(name, key), 6) for key in runs[name][0] if key != "all_points_logged"}
               | {"all_points_logged": all(r["all_points_logged"] for r in runs[name])} for name in CONTENDERS}
    ours = figures["labelmix_writer"]
    save("logging_overhead_writers" + ("_server" if args.server else ""), {
        "store": "mlflow server (SQLite)" if args.server else "SQLite file",
        "trials": args.writer_trials, "reports_per_trial": args.reports, "metrics_per_report": args.metrics,
        "flush_s": args.flush_s, "repeats": args.repeats, **figures,
        "interval_s": args.interval_s,
        "mlflow_over_ours": {name: {key: round(figures[name][key] / ours[key], 2) for key in RATIOS}
                             for name in CONTENDERS[1:]},
        "load_average_1min": round(os.getloadavg()[0], 2),  # the machine's other work while it ran
    })


def start_server(state: Path) -> str:
    import socket

    from labelmix.mlflow_server import ServerSettings, start

    with socket.socket() as probe:  # a port nothing listens on now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return start(ServerSettings(state_dir=state / "server", port=port)).uri


def stop_server(state: Path) -> None:
    from labelmix.mlflow_server import stop

    stop(state / "server")


if __name__ == "__main__":
    main()
