"""Time inside the MLflow callback's result hook, on Tune's driver loop (it only queues records).

One trial's results (an epoch each: val/miou, cost/hours and 20 per-class IoUs) go through
``MlflowTracking.on_trial_result`` on a SQLite store; the figure is the wall time per call, with
the writer thread flushing every ``--flush-s`` seconds behind it. Target: at most 2 ms per call
(the overhead budget is 2 % of trial time; a trial reports about once a second or less often).
Then the queue is flushed and the metric history checked: every result reached MLflow.

Run: .venv/bin/python benchmarks/tracking_hooks.py [--calls 200 --flush-s 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

TARGET_S = 2e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--flush-s", type=float, default=5.0)
    args = parser.parse_args()

    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    from labelmix.platform.tracking import MlflowTracking

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        MlflowClient(uri).search_experiments()  # creates the tables before the clock starts
        callback = MlflowTracking(uri, "hooks", "hooks", "name: hooks\n", {}, Path(tmp) / "study",
                                  config_of=lambda trial: dict(trial.config), flush_s=args.flush_s)
        trial = Trial("__fake", trial_id="t0", stub=True)
        trial.config = {"mix": {"full": 0.5, "none": 0.5}, "ds_type": "none"}
        callback.on_trial_start(0, [trial], trial)
        started = time.perf_counter()
        for epoch in range(1, args.calls + 1):
            callback.on_trial_result(0, [trial], trial, {"epoch": float(epoch), "val/miou": 0.5, "cost/hours": 1.0,
                                                         **{f"val/iou/c{i}": 0.1 for i in range(args.classes)}})
        per_call = (time.perf_counter() - started) / args.calls
        flushed = callback.flush(timeout_s=120)
        history = MlflowClient(uri).get_metric_history(callback.child_ids["t0"], "val/iou/c0") if flushed else []

    save("tracking_hooks", {
        "calls": args.calls,
        "metrics_per_result": args.classes + 3,
        "flush_s": args.flush_s,
        "seconds_per_call": round(per_call, 6),
        "target_seconds_per_call": TARGET_S,
        "within_target": per_call <= TARGET_S,
        "all_results_logged": len(history) == args.calls,
        "load_average_1min": round(os.getloadavg()[0], 2),  # the machine's other work while it ran
    })


if __name__ == "__main__":
    main()
