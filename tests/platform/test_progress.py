"""The progress bar: exact text from a trial table, and the time-left estimate."""

import io

import pandas as pd

from labelmix.platform.progress import Progress, bar, duration, estimate_left, progress_line
from labelmix.platform.trial_table import with_pareto


def _table():
    return with_pareto(pd.DataFrame({
        "trial_id": ["r", "a", "b", "c", "d"],
        "status": ["TERMINATED", "TERMINATED", "ERROR", "RUNNING", "PENDING"],
        "reference": [True, False, False, False, False],
        "started_at": [0.0, 0.0, 10.0, 100.0, None],
        "ended_at": [60.0, 40.0, 12.0, None, None],
        "val/miou": [0.7, 0.45, None, None, None],
        "best/val/miou": [0.7, 0.45, None, 0.2, None],
        "cost/hours": [9.0, 1.0, None, None, None],
    }))


def test_duration_and_bar():
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]
    assert bar(3, 6, width=10) == "#####-----" and bar(0, 0, width=4) == "----"


def test_estimate_left_spreads_the_rest_over_the_slots():
    assert estimate_left([], 3, [], 2) is None
    # mean 50 s: 2 not started (100 s) + one running for 20 s (30 s left), over 2 slots
    assert estimate_left([40.0, 60.0], 2, [20.0], 2) == 65.0


def test_progress_line_counts_finished_failed_running_and_best_without_the_reference():
    line = progress_line("qs", _table(), total=6, concurrency=2, elapsed=125.0, now=120.0)
    # done 2 + failed 1 of 6; best searched 0.45 (the reference's 0.7 is not searched); front: trial a;
    # left: mean of the finished 50 s x 2 not started + (50 - 20) running = 130 s over 2 slots
    assert line == ("[qs] ##########---------- 3/6 trials (1 running, 1 failed) | best val/miou 0.450 | frontier 1 | "
                    "2m05s | ~1m05s left")


def test_a_log_gets_lines_and_a_terminal_one_redrawn_line():
    log = io.StringIO()
    progress = Progress("qs", 6, 2, _table, stream=log, interval_s=3600)
    progress.show(force=True)
    progress.show()  # within the interval: nothing
    progress.on_experiment_end([])  # a log already has the last line
    assert len(log.getvalue().splitlines()) == 1 and log.getvalue().startswith("[qs] ")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    progress = Progress("qs", 6, 2, _table, stream=term)
    progress.show(force=True)
    progress.on_experiment_end([])
    text = term.getvalue()
    assert text.startswith("\r[qs] ") and text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
