"""MLflow logging overhead: the same study with tracking on and off, side by side in one run.

Both studies run the same trials (same spec, seed and trial length) on a local Ray; the one with
tracking logs params, per-epoch metrics, the frontier artifacts and the frontier trials' models
into a SQLite store in its study folder. Overhead = (wall with - wall without) / wall without,
and the same for the summed trial time reported by Tune (time_total_s of each trial).
Target: at most 2%.

Run: .venv/bin/python benchmarks/logging_overhead.py [--trials 4 --steps 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
