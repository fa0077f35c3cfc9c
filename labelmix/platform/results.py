"""Driver-side record of a study: the trial table and the frontier (the progress bar: progress.py).

A Tune callback keeps one row per trial (decoded config, last and best metrics, status, node,
start and end times) and rewrites ``trials.parquet`` and ``frontier.parquet`` atomically each
time a trial ends, so an interrupted study keeps what it had. On resume the old table is read
back first: trials that finished before are kept as they were. The Pareto flag and the frontier
follow the spec's objectives (``labelmix.platform.trial_table``); the MLflow callback logs the
frontier of :meth:`ResultsTable.frame` rather than keeping a table of its own.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray.tune import Callback

from labelmix.platform.space import case_name, is_reference, trial_config
from labelmix.platform.trial_table import (  # noqa: F401  (format_frontier: the CLI imports it from here)
    FRONTIER_FILE,
    REFERENCE,
    TRIALS_FILE,
    as_objectives,
    flatten,
    format_frontier,
    frontier_axes,
    frontier_rows,
    with_pareto,
    write_parquet,
)

_KEPT_PREFIXES = ("val/", "test/", "cost/", "labels/", "train/loss", "epoch", "status/", "time/", "node/", "gpu/")


class ResultsTable(Callback):
    def __init__(self, directory: Path, spec: Any) -> None:
        self.directory = Path(directory)
        self.spec = spec
        self.rows: dict[str, dict[str, Any]] = {}
        self._load()

    # Tune pickles the callbacks with the experiment and, on restore, uses that copy: the rows are
    # left out of the pickle and read back from the study folder when the experiment starts again.
    def __getstate__(self):
        return {**self.__dict__, "rows": {}}

    def setup(self, **info):
        self._load()

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        return as_objectives(self.spec.objectives)

    @property
    def _quality(self) -> tuple[str, str, str]:
        """(metric, mode, column) of the frontier's quality axis; column: ``best/val/miou`` by default."""
        metric, mode = frontier_axes(self.objectives)[1]
        return metric, mode, f"best/{metric}"

    def _load(self) -> None:
        path = self.directory / TRIALS_FILE
        if path.is_file():
            for row in pd.read_parquet(path).to_dict("records"):
                self.rows.setdefault(row["trial_id"], row)

    # ---- Tune callback hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        if self._frozen(trial):
            return
        row = self._row(trial)
        row.update(status="RUNNING", started_at=time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._frozen(trial):
            return
        row = self._row(trial)
        row.update({k: _number(v) for k, v in result.items() if k.startswith(_KEPT_PREFIXES)})
        row["node_ip"] = result.get("node_ip", row.get("node_ip"))
        metric, mode, best = self._quality
        score, before = _number(result.get(metric)), row.get(best)
        if isinstance(score, float) and not math.isnan(score):
            keep = before is not None and not math.isnan(before)
            row[best] = (max if mode == "max" else min)(score, before) if keep else score

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "TERMINATED", trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "ERROR", trials)

    def on_experiment_end(self, trials, **info):
        self.write()

    # ---- table
    def _frozen(self, trial) -> bool:
        """A finished trial's row never changes. After a restore from a snapshot taken before Tune
        saw it finish, Tune restarts it from its last checkpoint, which has nothing left to train."""
        return self.rows.get(trial.trial_id, {}).get("status") == "TERMINATED"

    def _row(self, trial) -> dict[str, Any]:
        if trial.trial_id not in self.rows:
            try:
                config = flatten(trial_config(self.spec, trial.config), "config/")
                config[REFERENCE] = is_reference(trial.config)
                name = case_name(self.spec, trial.config)
                if name is not None:
                    config["case"] = name
            except Exception as exc:  # a config that fails validation is recorded, and the trial errors
                config = {"config/error": str(exc)}
            self.rows[trial.trial_id] = {"trial_id": trial.trial_id, "status": "PENDING", **config}
        return self.rows[trial.trial_id]

    def _finish(self, trial, status: str, trials) -> None:
        if self._frozen(trial):
            return
        row = self._row(trial)
        row.update(status=status, ended_at=time.time())
        error_file = getattr(trial, "error_file", None)
        if status == "ERROR" and error_file and Path(error_file).is_file():
            row["error"] = Path(error_file).read_text()[-2000:]
        self.write()

    def frame(self) -> pd.DataFrame:
        """The trial table with its ``pareto`` column, flagged on the spec's objectives."""
        return with_pareto(pd.DataFrame(list(self.rows.values())), self.objectives)

    def write(self) -> None:
        if not self.rows:
            return
        frame = self.frame()
        write_parquet(frame, self.directory / TRIALS_FILE)
        write_parquet(frontier_rows(frame), self.directory / FRONTIER_FILE)


def _number(value):
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None if value is None else value

