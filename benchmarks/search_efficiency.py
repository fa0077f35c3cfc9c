"""How much compute each searcher needs to find the cost/mIoU frontier: a tabular HPO benchmark.

Like HPOBench, LCBench or Syne Tune's blackbox repository: real learning curves are recorded once,
then searchers are replayed on the table, so a search costs seconds and is repeated over seeds.

  record  runs the grid study benchmarks/search_efficiency_grid.yaml through the platform
          (`labelmix submit`, no scheduler: every configuration to its last epoch) and writes the
          curves, one row per configuration and epoch, to results/search_efficiency_curves.parquet,
          with the command that made them in the file's metadata.
  replay  replays searchers on that table through Ray Tune, with a trainable that reports a
          configuration's recorded curve epoch by epoch (no training): NSGA-II + ParetoASHA, TPE +
          ASHA on mIoU, random, random + ParetoASHA, the full grid (the platform's own searchers and
          schedulers, from a spec), and Syne Tune's MO-ASHA on Syne Tune's simulator when
          `syne-tune` is installed (`pip install 'labelmix[benchmarks]'`). It reports the
          hypervolume of the cost/mIoU frontier against the compute used (epochs), the compute to
          reach 95% of the grid's hypervolume, saves results/search_efficiency.json (per-seed
          curves in results/search_efficiency_runs.json) and docs/search_efficiency.png.

Run: .venv/bin/python benchmarks/search_efficiency.py record
     .venv/bin/python benchmarks/search_efficiency.py replay [--seeds 10]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save  # noqa: E402
from tabular_hpo import (  # noqa: E402
    Curve, Event, check_targets, config_key, curves_of, grid_compute, grid_hypervolume, hypervolume_curve, plot,
    reference_point, spread, summarise, table_lines,
)

REPO = Path(__file__).resolve().parents[1]
GRID_SPEC = Path(__file__).resolve().parent / "search_efficiency_grid.yaml"
CURVES = RESULTS / "search_efficiency_curves.parquet"
PLOT = REPO / "docs" / "search_efficiency.png"
META_COMMAND, META_STUDY_COMMAND, META_SPEC = b"labelmix.command", b"labelmix.study_command", b"labelmix.spec"
# name -> the replay spec's search algorithm, scheduler type, objectives (None keeps the recorded
# spec's two) and extra search / scheduler fields. ASHA ranks on one metric, so its study has the
# one objective val/miou (TPE on mIoU alone, as a single-objective study would search). Rows after
# "grid" are variants measured beside the platform's defaults: ParetoASHA ordering a front by
# exclusive hypervolume instead of crowding distance, NSGA-II with the earlier default
# population of 4 instead of today's max(16, 2 x concurrency), and the schedulers with two
# Hyperband brackets (the second makes its first comparison reduction_factor times later). Syne
# Tune's MO-ASHA is added apart.
MIOU_ONLY = [{"metric": "val/miou", "mode": "max"}]
SEARCHERS = {
    "nsga2+pareto_asha": dict(algorithm="nsga2", scheduler="pareto_asha"),
    "tpe+asha": dict(algorithm="tpe", scheduler="asha", objectives=MIOU_ONLY),
    "random": dict(algorithm="random", scheduler="none"),
    "random+pareto_asha": dict(algorithm="random", scheduler="pareto_asha"),
    "grid": dict(algorithm="grid", scheduler="none"),
    "nsga2+pareto_asha/hypervolume": dict(algorithm="nsga2", scheduler="pareto_asha",
                                          scheduler_extra={"front_order": "hypervolume"}),
    "random+pareto_asha/hypervolume": dict(algorithm="random", scheduler="pareto_asha",
                                           scheduler_extra={"front_order": "hypervolume"}),
    "nsga2/pop4+pareto_asha": dict(algorithm="nsga2", scheduler="pareto_asha", search_extra={"population_size": 4}),
    "nsga2+pareto_asha/brackets2": dict(algorithm="nsga2", scheduler="pareto_asha", scheduler_extra={"brackets": 2}),
    "random+pareto_asha/brackets2": dict(algorithm="random", scheduler="pareto_asha", scheduler_extra={"brackets": 2}),
    "tpe+asha/brackets2": dict(algorithm="tpe", scheduler="asha", objectives=MIOU_ONLY, scheduler_extra={"brackets": 2}),
    "nsga2+pareto_asha/brackets3": dict(algorithm="nsga2", scheduler="pareto_asha", scheduler_extra={"brackets": 3}),
}
DEFAULT_SEARCHERS = ["nsga2+pareto_asha", "tpe+asha", "random", "random+pareto_asha", "grid"]
SYNE_MOASHA = "syne_tune_moasha"


def command_line(argv: list[str]) -> str:
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    return shlex.join([python, os.path.relpath(__file__, REPO), *argv])


# --- record ---------------------------------------------------------------------------------------


def curve_rows(study: Path, spec) -> list[dict]:
    """One row per (configuration, epoch) from the trial folders' result.json (one line per epoch)."""
    from labelmix.platform.space import case_name
    from labelmix.platform.trial_folders import result_lines, trial_folders

    rows = []
    for folder in trial_folders(study).values():
        for line in result_lines(folder):
            sampled = line["config"]
            rows.append({
                "config": config_key(sampled), "trial_id": line["trial_id"], "case": case_name(spec, sampled),
                **{f"config/{name}": value for name, value in sampled.items() if name != "cases"},
                "epoch": int(line["training_iteration"]), "val/miou": float(line["val/miou"]),
                "cost/hours": float(line["cost/hours"]), "seconds": float(line["time_this_iter_s"]),
            })
    return rows


def record(args) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labelmix.platform.spec import load_spec

    spec, text = load_spec(str(args.spec))
    study = Path(args.from_study) if args.from_study else REPO / args.storage / spec.name
    submit = [sys.executable, "-m", "labelmix.cli", "submit", str(args.spec), "--storage", str(Path(args.storage))]
    study_command = shlex.join(["labelmix", *submit[3:]])
    if not args.from_study:
        if study.exists():
            sys.exit(f"{study} exists: pass --from-study {study} to read it, or another --storage")
        print(f"running {study_command}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(submit, cwd=REPO)
        print(f"study took {time.perf_counter() - started:.0f} s", flush=True)
        if done.returncode != 0:
            sys.exit(f"the study exited {done.returncode}; its folder is {study}")
    else:  # the spec that ran, and no claim about the command that ran it
        spec, text = load_spec(str(study / "spec.yaml"))
        study_command = f"(read from the finished study folder {study})"
    frame = pd.DataFrame(curve_rows(study, spec))
    if frame.empty:
        sys.exit(f"{study}: no trial folder with a result.json")
    # a trial restored after a failure repeats the epochs since its checkpoint: keep the last of each
    frame = frame.drop_duplicates(["config", "epoch"], keep="last")
    curves = curves_of(frame)  # refuses configurations with missing epochs
    table = pa.Table.from_pandas(frame.sort_values(["config", "epoch"]).reset_index(drop=True), preserve_index=False)
    command = command_line(sys.argv[1:])
    table = table.replace_schema_metadata({
        **(table.schema.metadata or {}), META_COMMAND: command.encode(),
        META_STUDY_COMMAND: study_command.encode(), META_SPEC: text.encode(),
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    epochs = {len(c.miou) for c in curves.values()}
    print(f"{len(curves)} configurations x {sorted(epochs)} epochs -> {args.out}")
    print(f"made by: {command}\n  (the study: {study_command}, folder {study})")


def read_curves(path: Path) -> tuple[dict[str, Curve], dict[bytes, bytes]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return curves_of(table.to_pandas()), dict(table.schema.metadata or {})


# --- replay through Ray Tune ----------------------------------------------------------------------


def choices(space: Mapping) -> dict:
    """The space with every grid axis as a choice over the same values (same option order)."""
    return {name: {"choice": value["grid"]} if isinstance(value, Mapping) and set(value) == {"grid"}
            else choices(value) if isinstance(value, Mapping) else value for name, value in space.items()}


def replay_spec(recorded: Mapping, algorithm: str, scheduler: str, objectives: list | None, seed: int, trials: int,
                concurrency: int, grace_period: int, reduction_factor: float, scheduler_extra: Mapping = {},
                search_extra: Mapping = {}):
    """The recorded study's spec with the replayed searcher and scheduler; grids become categorical
    choices (the grid itself keeps its grid), so every suggestion is a recorded configuration."""
    from labelmix.platform.spec import parse_spec

    data = copy.deepcopy(dict(recorded))
    if algorithm != "grid":
        data["space"] = choices(data["space"])
    if objectives is not None:
        data["objectives"] = objectives
    data["search"] = {"algorithm": algorithm, "trials": trials, "concurrency": concurrency, "seed": seed, **search_extra}
    data["scheduler"] = {"type": scheduler, "max_epochs": data["fixed"]["epochs"], "grace_period": grace_period,
                         "reduction_factor": reduction_factor, **scheduler_extra}
    return parse_spec(data, source="replay spec")


def replay_trial(config: dict, curves: Mapping[str, Curve], time_scale: float = 0.0) -> None:
    """A recorded configuration's curve, reported epoch by epoch (sleeping time_scale x its seconds)."""
    from ray import tune

    curve = curves[config_key(config)]
    for epoch, (miou, seconds) in enumerate(zip(curve.miou, curve.seconds), start=1):
        if time_scale:
            time.sleep(time_scale * seconds)
        tune.report({"val/miou": float(miou), "cost/hours": curve.cost, "epoch": epoch})


def tune_ledger(budget: int):
    """A Tune stopper that keeps every reported epoch, in report order, and each trial's
    configuration, and ends the search at the compute budget (epochs)."""
    from ray import tune

    class Ledger(tune.Stopper):
        def __init__(self):
            self.events: list[Event] = []
            self.configs: dict[str, str] = {}  # trial id -> config_key
            self.epochs: dict[str, int] = {}  # trial id -> its last counted epoch

        def __call__(self, trial_id: str, result: dict) -> bool:
            # Tune repeats a function trainable's last result when it returns: count each epoch once
            if result["epoch"] > self.epochs.get(trial_id, 0):
                self.epochs[trial_id] = result["epoch"]
                self.events.append((trial_id, float(result["cost/hours"]), float(result["val/miou"])))
                self.configs.setdefault(trial_id, config_key(result["config"]))
            return False

        def stop_all(self) -> bool:
            return len(self.events) >= budget

    return Ledger()


def replay_tune(spec, curves: Mapping[str, Curve], budget: int, time_scale: float,
                storage: str) -> tuple[list[Event], dict[str, str]]:
    """The replayed search's reported epochs (cut at the budget) and its trials' configurations."""
    from ray import tune

    from labelmix.platform.searcher import make_searcher
    from labelmix.platform.space import tune_param_space
    from labelmix.platform.study import make_scheduler
    from ray.tune.search import ConcurrencyLimiter

    ledger = tune_ledger(budget)
    tuner = tune.Tuner(
        tune.with_parameters(replay_trial, curves=dict(curves), time_scale=time_scale),
        param_space=tune_param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(make_searcher(spec), max_concurrent=spec.search.concurrency),
            scheduler=make_scheduler(spec), num_samples=spec.search.trials, reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=f"{spec.search.algorithm}-{spec.scheduler.type}-{spec.search.seed}",
                                  storage_path=storage, stop=ledger, verbose=0),
    )
    tuner.fit()
    return ledger.events[:budget], ledger.configs


# --- replay and report ----------------------------------------------------------------------------


def start_ray(concurrency: int) -> None:
    import logging

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints nothing per run
    # No per-trial result files (a replayed epoch is one line in memory); Tune then warns, per
    # trial, that the result grid it builds at the end has no metrics files to read.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    here = str(Path(__file__).resolve().parent)  # the trials unpickle tabular_hpo's Curve
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=concurrency, include_dashboard=False, log_to_driver=False, configure_logging=False)


def replay_one(name: str, seed: int, curves: Mapping[str, Curve], recorded: Mapping, budget: int, args,
               storage: str) -> tuple[list[Event], dict[str, str]]:
    if name == SYNE_MOASHA:
        from search_efficiency_syne import replay_moasha

        return replay_moasha(curves, recorded, seed, budget, args.concurrency, args.grace_period,
                             args.reduction_factor)
    row = SEARCHERS[name]
    algorithm = row["algorithm"]
    trials = len(curves) if algorithm == "grid" else 20 * len(curves)  # the others stop at the budget
    spec = replay_spec(recorded, algorithm, row["scheduler"], row.get("objectives"), seed, trials, args.concurrency,
                       args.grace_period, args.reduction_factor, row.get("scheduler_extra", {}),
                       row.get("search_extra", {}))
    return replay_tune(spec, curves, budget, args.time_scale, storage)


def replay(args) -> None:
    import yaml

    from labelmix.platform.space import grid_size
    from labelmix.platform.spec import parse_spec

    curves, metadata = read_curves(Path(args.curves))
    recorded = yaml.safe_load(metadata[META_SPEC].decode())
    size = grid_size(parse_spec(recorded))
    if len(curves) != size:  # a searcher would suggest a configuration without a curve
        sys.exit(f"{args.curves}: {len(curves)} curves for a grid of {size} configurations")
    compute, reference = grid_compute(curves), reference_point(curves)
    grid_hv = grid_hypervolume(curves, reference)
    budget = round(args.budget * compute)
    names, syne_tune = list(args.searchers), "ran"
    if SYNE_MOASHA in names:
        from search_efficiency_syne import unavailable

        if unavailable():
            syne_tune = unavailable()
            names.remove(SYNE_MOASHA)
            print(f"left out {SYNE_MOASHA}: {syne_tune}")
    if any(name in SEARCHERS for name in names):
        start_ray(args.concurrency)
    runs: dict[str, list] = {name: [] for name in names}  # per seed: hypervolume after each epoch
    tried: dict[str, list] = {name: [] for name in names}  # per seed: (trials, distinct configurations)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        for seed in range(args.seeds):
            for name in names:
                events, configs = replay_one(name, seed, curves, recorded, budget, args, storage)
                runs[name].append(np.round(hypervolume_curve(events, reference), 6).tolist())
                tried[name].append((len(configs), len(set(configs.values()))))
                print(f"seed {seed} {name}: {len(events)} epochs, {len(configs)} trials, hypervolume "
                      f"{runs[name][-1][-1] / grid_hv:.3f} of the grid's ({time.perf_counter() - started:.0f} s)",
                      flush=True)
    summaries = {name: {**summarise([np.asarray(c) for c in cs], grid_hv, compute),
                        "trials": spread([t for t, _ in tried[name]]),
                        "distinct_configurations": spread([d for _, d in tried[name]])}
                 for name, cs in runs.items()}
    print("\n".join(table_lines(summaries)))
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "step", "curves", "name", "plot")}
    figures = {
        "command": command_line(sys.argv[1:]),
        "curves": {"file": os.path.relpath(Path(args.curves).resolve(), REPO),
                   "made_by": metadata[META_COMMAND].decode(), "configurations": len(curves),
                   "epochs": len(next(iter(curves.values())).miou)},
        "grid": {"compute_epochs": compute, "hypervolume": grid_hv, "reference_point": list(reference)},
        "budget_epochs": budget, "settings": settings, "replay_seconds": round(time.perf_counter() - started, 1),
        "syne_tune": syne_tune, "searchers": summaries, "targets": check_targets(summaries, SYNE_MOASHA),
    }
    runs_file = RESULTS / f"{args.name}_runs.json"
    runs_file.write_text(json.dumps({"reference_point": list(reference), "grid_hypervolume": grid_hv, "runs": runs}))
    save(args.name, figures)
    plot(runs, compute, grid_hv, Path(args.plot))
    print(f"saved {runs_file} (per-seed curves) and {args.plot}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    rec = steps.add_parser("record", help="run the grid study and write the curve table")
    rec.add_argument("--spec", default=os.path.relpath(GRID_SPEC, REPO))
    rec.add_argument("--storage", default="studies", help="where the study folder goes")
    rec.add_argument("--from-study", help="read an already finished study folder instead of running one")
    rec.add_argument("--out", default=str(CURVES))
    rec.set_defaults(func=record)
    rep = steps.add_parser("replay", help="replay the searchers on the curve table")
    rep.add_argument("--curves", default=str(CURVES))
    rep.add_argument("--seeds", type=int, default=10)
    rep.add_argument("--searchers", nargs="+", default=[*DEFAULT_SEARCHERS, SYNE_MOASHA], choices=[*SEARCHERS, SYNE_MOASHA],
                     help="default: (a)-(f) of issue 12; variants: " + ", ".join(n for n in SEARCHERS if n not in DEFAULT_SEARCHERS))
    rep.add_argument("--budget", type=float, default=1.0, help="compute per search, as a fraction of the grid's")
    rep.add_argument("--concurrency", type=int, default=2)
    rep.add_argument("--grace-period", type=int, default=1)
    rep.add_argument("--reduction-factor", type=float, default=3.0)
    rep.add_argument("--time-scale", type=float, default=0.01,
                     help="a replayed epoch sleeps this times its recorded seconds, so that two trials interleave as "
                          "they did when recorded (at 0 a replayed trial ends before a second Ray actor has started)")
    rep.add_argument("--plot", default=str(PLOT))
    rep.add_argument("--name", default="search_efficiency", help="results/<name>.json and results/<name>_runs.json")
    rep.set_defaults(func=replay)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
