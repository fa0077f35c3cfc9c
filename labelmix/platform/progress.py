"""What a study shows while it runs: one progress bar, and nothing from the other tools unless asked.

:class:`Progress` is a Tune callback. On a terminal it redraws one line in place (at most once a
second); elsewhere (a log file, CI) it prints a line when a trial starts or ends and at most every
``interval_s`` otherwise. The line: trials finished / running / failed of the total, the best value
of the quality objective, the frontier size, the time elapsed and an estimate of the time left
(mean duration of the finished trials, over the concurrency). Counts come from the trial table
(``table_of``: :meth:`labelmix.platform.results.ResultsTable.frame`), so a resumed study counts the
trials it finished before.

:func:`quiet_others` turns down Ray's, Tune's, MLflow's and Optuna's own log lines (``--verbose``
keeps them).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Callable, Optional, TextIO

from ray.tune import Callback

from labelmix.platform.trial_table import frontier_axes, reference_rows, table_objectives

NOISY_LOGGERS = ("ray", "mlflow", "alembic", "optuna", "urllib3", "filelock")


def quiet_others() -> None:
    """Warnings and errors only from the other tools; Tune's own reporter off (its progress tables,
    the TensorBoard hint): the study's progress bar replaces them."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic reporter, which prints nothing at verbose 0
    os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read when mlflow is first imported
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name == "ray" else logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def bar(done: int, total: int, width: int = 20) -> str:
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return "#" * filled + "-" * (width - filled)


def estimate_left(durations: list[float], remaining: int, running_ages: list[float], concurrency: int) -> Optional[float]:
    """Seconds left: each trial not started takes the mean finished duration, each running one the
    rest of it; spread over ``concurrency`` slots. None before any trial finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = remaining * mean + sum(max(mean - age, 0.0) for age in running_ages)
    return work / max(1, concurrency)


def progress_line(name: str, frame, total: int, concurrency: int, elapsed: float, now: float) -> str:
    """The progress text of a trial table (``status``, ``started_at``, ``ended_at``, ``pareto``, the
    quality objective's ``best/<metric>`` column)."""
    import pandas as pd

    status = frame["status"] if "status" in frame else pd.Series([], dtype=object)
    done, failed = int((status == "TERMINATED").sum()), int((status == "ERROR").sum())
    running = int((status == "RUNNING").sum())
    metric, mode = frontier_axes(table_objectives(frame))[1]
    column = f"best/{metric}"
    searched = frame[~reference_rows(frame)] if len(frame) else frame
    values = pd.to_numeric(searched[column], errors="coerce").dropna() if column in searched else pd.Series([], dtype=float)
    best = (values.max() if mode == "max" else values.min()) if len(values) else math.nan
    frontier = int(frame["pareto"].sum()) if "pareto" in frame else 0
    finished = frame[status == "TERMINATED"] if len(frame) else frame
    durations = []
    if len(finished) and {"started_at", "ended_at"} <= set(frame.columns):
        spans = pd.to_numeric(finished["ended_at"], errors="coerce") - pd.to_numeric(finished["started_at"], errors="coerce")
        durations = [float(v) for v in spans.dropna() if v >= 0]
    ages = []
    if running and "started_at" in frame:
        ages = [now - float(v) for v in pd.to_numeric(frame.loc[status == "RUNNING", "started_at"], errors="coerce").dropna()]
    left = estimate_left(durations, max(0, total - done - failed - running), ages, concurrency)
    best_text = "-" if math.isnan(best) else f"{best:.3f}"
    left_text = "" if left is None else f" | ~{duration(left)} left"
    failed_text = f", {failed} failed" if failed else ""
    return (f"[{name}] {bar(done + failed, total)} {done + failed}/{total} trials ({running} running{failed_text}) | "
            f"best {metric} {best_text} | frontier {frontier} | {duration(elapsed)}{left_text}")


class Progress(Callback):
    def __init__(self, name: str, total: int, concurrency: int, table_of: Callable, stream: Optional[TextIO] = None,
                 interval_s: float = 30.0) -> None:
        self.name, self.total, self.concurrency = name, total, concurrency
        self.table_of = table_of
        self.stream = stream
        self.interval_s = interval_s
        self._start = time.monotonic()
        self._wall_start = time.time()
        self._last = -math.inf
        self._width = 0

    def __getstate__(self):  # Tune pickles callbacks with the experiment; a stream does not pickle
        return {**self.__dict__, "stream": None}

    def setup(self, **info):
        self._start, self._last = time.monotonic(), -math.inf

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    @property
    def _tty(self) -> bool:
        return bool(getattr(self._out, "isatty", lambda: False)())

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (1.0 if self._tty else self.interval_s):
            return
        self._last = now
        line = progress_line(self.name, self.table_of(), self.total, self.concurrency, now - self._start, time.time())
        if self._tty:
            self._out.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._out.write(line + "\n")
        self._out.flush()

    def on_step_end(self, iteration, trials, **info):
        self.show()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.show(force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.show(force=True)

    def on_experiment_end(self, trials, **info):
        if self._tty:  # the last line stays; a log already has it from the last trial's end
            self.show(force=True)
            self._out.write("\n")
            self._out.flush()
