"""N identical trials through the platform versus the same fit() calls in a plain process pool.

Both sides run the same trial config with the same parallelism (``--concurrency`` processes, one
CPU and one torch thread each). The platform side is the whole `labelmix submit` path: Ray start,
OptunaSearch, scheduler, per-epoch reports with checkpoints, the trial table. Ratio = plain wall
time / platform wall time (ideal 1.0; target >= 0.90 for 30-second trials on 2 CPUs).

Run: .venv/bin/python benchmarks/platform_overhead.py [--trials 6 --concurrency 2 --steps 12 --name platform_overhead]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def trial_values(args, cache: str) -> dict:
    return {
        "dataset": {"synthetic": {"volumes": 8, "slices": 8, "height": 64, "width": 64, "seed": 0}},
        "mix": {"full": 0.5, "box": 0.2, "global": 0.2, "none": 0.1},
        "encoder": "test_resnet", "epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": 8,
        "threads": 1, "cache_dir": cache,
    }


def plain_trial(values: dict) -> float:
    from labelmix.trainables.fit import fit

    t0 = time.perf_counter()
    fit(values, lambda metrics, checkpoint_dir: None)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="steps per epoch (sets the trial length)")
    parser.add_argument("--name", default="platform_overhead", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()

    from labelmix.platform.spec import parse_spec
    from labelmix.platform.study import run_study
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import synthetic_store

    with tempfile.TemporaryDirectory() as tmp:
        values = trial_values(args, str(Path(tmp) / "cache"))
        store = synthetic_store(SynthSettings(**values["dataset"]["synthetic"]), Path(tmp) / "cache")
        values["dataset"] = {"path": str(store)}

        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.concurrency) as pool:
            trial_seconds = pool.map(plain_trial, [values] * args.trials)
        plain_s = time.perf_counter() - t0

        fixed = {k: v for k, v in values.items() if k not in ("dataset", "mix", "cache_dir")}
        spec = parse_spec({
            "name": "overhead", "dataset": values["dataset"],
            "objectives": [{"metric": "val/miou", "mode": "max"}],
            "space": {"seed": {"choice": [0]}}, "fixed": {**fixed, "mix": values["mix"]},
            "search": {"algorithm": "random", "trials": args.trials, "concurrency": args.concurrency, "seed": 0},
            "scheduler": {"type": "none"}, "resources": {"cpus": 1, "gpus": 0},
            "storage": {"path": str(Path(tmp) / "studies")},
        })
        t0 = time.perf_counter()
        result = run_study(spec, "benchmark")
        platform_s = time.perf_counter() - t0
        finished = int((result.table["status"] == "TERMINATED").sum())

    save(args.name, {
        "trials": args.trials, "concurrency": args.concurrency, "finished_on_platform": finished,
        "mean_trial_seconds_plain": round(sum(trial_seconds) / len(trial_seconds), 2),
        "plain_wall_seconds": round(plain_s, 2), "platform_wall_seconds": round(platform_s, 2),
        "ratio_plain_over_platform": round(plain_s / platform_s, 3), "target": 0.90,
    })


if __name__ == "__main__":
    main()
