"""A study of many one-step trials with tracking on: each trial in the trial table and MLflow exactly
once, and the driver's memory (RSS of `labelmix submit`, and of its Ray GCS server) as trials accumulate.

Issue 13 item 9. The trial is the smallest fit (test_resnet, 32x32, one epoch of one step), two at a
time, tracked into SQLite in the study folder; the checks and the measurement are those of the slow test
tests/platform/test_faults.py::test_a_study_of_200_short_trials_records_each_once, whose numbers this
saves to benchmarks/results/study_load.json (--trials sizes it up or down).

Run: .venv/bin/python benchmarks/study_load.py [--trials 200 --concurrency 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    from tests.platform.test_faults import run_load_study

    with tempfile.TemporaryDirectory(prefix="labelmix-study-load-") as tmp:
        found = run_load_study(Path(tmp), args.trials, args.concurrency)
    every_trial_once = (found["table_rows"] == found["table_unique_trials"] == found["table_terminated"]
                        == found["mlflow_children"] == found["mlflow_unique_children"] == args.trials
                        and found["mlflow_parents"] == 1 and found["mlflow_children_match_table"])
    save("study_load", {**found, "every_trial_once": every_trial_once,
                        "command": f"benchmarks/study_load.py --trials {args.trials} --concurrency {args.concurrency}"})
    if not every_trial_once:
        sys.exit(1)


if __name__ == "__main__":
    main()
