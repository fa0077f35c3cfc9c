"""The trial table of a study folder, Ray-free: its file names, reading it back, the Pareto flag and
the frontier (used by the Tune callback in results.py, by ``labelmix table`` and by scripts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from labelmix.platform.frontier import pareto_mask

TRIALS_FILE = "trials.parquet"
FRONTIER_FILE = "frontier.parquet"
COST, SCORE = "cost/hours", "val/miou"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        else:
            out[name] = value
    return out


def read_table(directory: Path) -> pd.DataFrame:
    """The trial table of a study folder (empty when no trial has been recorded yet)."""
    path = Path(directory) / TRIALS_FILE
    return with_pareto(pd.read_parquet(path)) if path.is_file() else with_pareto(pd.DataFrame({"status": []}))


def with_pareto(frame: pd.DataFrame) -> pd.DataFrame:
    """Adds the ``pareto`` column: finished trials not dominated in (cost/hours min, val/miou max)."""
    frame = frame.copy()
    if frame.empty or COST not in frame or SCORE not in frame:
        frame["pareto"] = False
        return frame
    done = (frame["status"] == "TERMINATED").to_numpy()
    cost = np.where(done, frame[COST].astype(float).to_numpy(), np.nan)
    score = np.where(done, frame[SCORE].astype(float).to_numpy(), np.nan)
    frame["pareto"] = pareto_mask(cost, score)
    return frame


def frontier_of(frame: pd.DataFrame) -> pd.DataFrame:
    frame = with_pareto(frame)
    if COST not in frame:
        return frame.iloc[:0]
    return frame[frame["pareto"]].sort_values(COST).reset_index(drop=True)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
