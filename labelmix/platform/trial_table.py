"""The trial table of a study, Ray-free: its names, its objectives, the Pareto flag, the frontier,
the budget recommendation and the frontier as text.

One row per trial: ``trial_id``, ``status``, metrics by their DESIGN.md names, ``config/<field>``.
The Tune callback of results.py keeps it (``trials.parquet``, ``frontier.parquet``), mlflow_runs.py logs
its frontier to MLflow, browse.py rebuilds it from MLflow runs; all of them use the functions here.

Objectives are (metric, mode) pairs, as a spec's ``objectives`` lists them. The frontier has two axes
(:func:`frontier_axes`): a cost axis x and a quality axis y. A study with one objective gets the
default of the missing kind, so its frontier is still cost versus quality. A table carries the
objectives it was flagged on in ``frame.attrs["objectives"]`` (set by :func:`with_pareto`, kept in the
Parquet file), so a table read back knows its axes.

A row counts only when its trial finished (Tune's TERMINATED, MLflow's FINISHED) and was trained (not
over the budget cap): any other row has NaN for every objective, so it is never on the front and is
never recommended. The study's reference trial (``reference`` column True, spec ``reference``) counts
but is compared with, not searched: it is never on the front and never recommended either.

Only the standard library loads with this module (the CLI builds its parser from browse.py, which
uses these names); numpy, pandas and the frontier maths load when a function needs them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# --- names ----------------------------------------------------------------------------------------

TRIALS_FILE = "trials.parquet"
FRONTIER_FILE = "frontier.parquet"
RUNS_FILE = "mlflow_runs.json"  # the study's MLflow run ids, in the study folder
COST, SCORE = "cost/hours", "val/miou"
OVER_BUDGET = "status/over_budget"  # 1.0: the trial was over budget.max_hours and not trained
DONE = ("TERMINATED", "FINISHED")  # a finished trial in Tune's table, a finished run in MLflow's
TAG_STUDY, TAG_ROLE, TAG_TRIAL = "labelmix.study", "labelmix.role", "labelmix.trial_id"
TAG_PARENT, TAG_ERROR = "mlflow.parentRunId", "labelmix.error"
TAG_OBJECTIVES = "labelmix.objectives"  # on the study run: the spec's objectives as JSON
TAG_PARETO, TAG_FRONTIER_SIZE = "pareto", "labelmix.frontier_size"
REFERENCE = "reference"  # True on the row of the study's reference trial
TOLERANCE = 0.05  # "within 0.05 of the reference": the recommendation's default tolerance
MIX_COLUMNS = ("config/mix.full", "config/mix.box", "config/mix.global", "config/mix.none")

Objective = tuple[str, str]  # (metric, mode): mode is "min" or "max"
DEFAULT_OBJECTIVES: tuple[Objective, ...] = ((SCORE, "max"), (COST, "min"))


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


def run_url(uri: str, experiment_id: str, run_id: str) -> Optional[str]:
    """The run's page in the MLflow UI (servers only)."""
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# --- objectives -----------------------------------------------------------------------------------


def as_objectives(items: Any = None) -> tuple[Objective, ...]:
    """(metric, mode) pairs from a spec's objectives (``Objective`` models), mappings with ``metric``
    and ``mode``, pairs, or their JSON text (:func:`objectives_json`); None gives the default."""
    if items is None:
        return DEFAULT_OBJECTIVES
    if isinstance(items, str):
        items = json.loads(items)
    out = []
    for item in items:
        if isinstance(item, Mapping):
            metric, mode = item["metric"], item["mode"]
        elif hasattr(item, "metric"):
            metric, mode = item.metric, item.mode
        else:
            metric, mode = item
        if mode not in ("min", "max"):
            raise ValueError(f"objective {metric!r}: mode must be 'min' or 'max', got {mode!r}")
        out.append((str(metric), str(mode)))
    if not 1 <= len(out) <= 2 or len({m for m, _ in out}) != len(out):
        raise ValueError(f"objectives: one or two different metrics, got {out}")
    return tuple(out)


def objectives_json(objectives: Any) -> str:
    return json.dumps([{"metric": m, "mode": mode} for m, mode in as_objectives(objectives)])


def frontier_axes(objectives: Any = None) -> tuple[Objective, Objective]:
    """(x, y): the cost axis and the quality axis of the frontier. y is the first objective that is
    not a ``cost/`` metric (else the first), x the other one; a lone objective is paired with the
    default objective of the other kind."""
    objectives = as_objectives(objectives)
    if len(objectives) == 1:
        (only,) = objectives
        objectives = (only, DEFAULT_OBJECTIVES[0] if only[0].startswith("cost/") else DEFAULT_OBJECTIVES[1])
    quality = [i for i, (metric, _) in enumerate(objectives) if not metric.startswith("cost/")]
    y = quality[0] if quality else 0
    return objectives[1 - y], objectives[y]


def table_objectives(frame: pd.DataFrame) -> tuple[Objective, ...]:
    """The objectives a table was flagged on (its ``attrs``), else the default."""
    return as_objectives(frame.attrs.get("objectives"))


def _objectives_of(frame: pd.DataFrame, objectives: Any) -> tuple[Objective, ...]:
    return table_objectives(frame) if objectives is None else as_objectives(objectives)


# --- the maths ------------------------------------------------------------------------------------


def counted(frame: pd.DataFrame) -> np.ndarray:
    """True for the rows that count: finished, and trained (not over the budget cap)."""
    import numpy as np
    import pandas as pd

    done = frame["status"].isin(DONE).to_numpy(bool) if "status" in frame else np.zeros(len(frame), bool)
    if OVER_BUDGET in frame:
        done = done & ~(pd.to_numeric(frame[OVER_BUDGET], errors="coerce").fillna(0.0).to_numpy(float) > 0)
    return done


def reference_rows(frame: pd.DataFrame) -> np.ndarray:
    """True for the rows of the reference trial (all False without the column)."""
    import numpy as np

    if REFERENCE not in frame:
        return np.zeros(len(frame), bool)
    return frame[REFERENCE].astype("boolean").fillna(False).to_numpy(bool)


def searched_values(frame: pd.DataFrame, objectives: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cost_and_score` with NaN on the reference rows: what the front and the recommendation read."""
    import numpy as np

    cost, score = cost_and_score(frame, objectives)
    ref = reference_rows(frame)
    return np.where(ref, np.nan, cost), np.where(ref, np.nan, score)


def objective_values(frame: pd.DataFrame, objectives: Any = None) -> np.ndarray:
    """N x 2 values of the frontier axes (x, y) as reported, NaN where a row does not count or lacks
    the metric. ``objectives`` None: the table's own."""
    import numpy as np
    import pandas as pd

    axes = frontier_axes(_objectives_of(frame, objectives))
    columns = [pd.to_numeric(frame[m], errors="coerce").to_numpy(float) if m in frame else np.full(len(frame), np.nan)
               for m, _ in axes]
    values = np.column_stack(columns).reshape(len(frame), 2)  # N x 2
    values[~counted(frame)] = np.nan
    return values


def cost_and_score(frame: pd.DataFrame, objectives: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The axes as ``frontier.py`` takes them: x to minimise, y to maximise ('max' x, 'min' y negated)."""
    (_, x_mode), (_, y_mode) = frontier_axes(_objectives_of(frame, objectives))
    values = objective_values(frame, objectives)
    return values[:, 0] * (1.0 if x_mode == "min" else -1.0), values[:, 1] * (1.0 if y_mode == "max" else -1.0)


def with_pareto(frame: pd.DataFrame, objectives: Any = None) -> pd.DataFrame:
    """Adds the ``pareto`` column (counted rows that no other row dominates on the frontier axes) and
    records the objectives in ``attrs``. ``objectives`` None: the table's own, else the default."""
    from labelmix.platform.frontier import pareto_mask

    objectives = _objectives_of(frame, objectives)
    frame = frame.copy()
    frame["pareto"] = pareto_mask(*searched_values(frame, objectives))
    frame.attrs["objectives"] = [list(o) for o in objectives]
    return frame


def frontier_rows(flagged: pd.DataFrame) -> pd.DataFrame:
    """The rows of a flagged table (``pareto`` column) on the front, cheapest first."""
    import numpy as np

    if "pareto" not in flagged:
        raise ValueError("frontier_rows needs a table with a pareto column (with_pareto)")
    cost, score = cost_and_score(flagged)
    front = np.flatnonzero(flagged["pareto"].fillna(False).to_numpy(bool))
    order = front[np.lexsort((-score[front], cost[front]))]  # cost ascending, then score descending
    return flagged.iloc[order].reset_index(drop=True)


def frontier_of(frame: pd.DataFrame, objectives: Any = None) -> pd.DataFrame:
    """The frontier of a table for ``objectives`` (None: the table's own, else the default)."""
    return frontier_rows(with_pareto(frame, objectives))


def counted_hours(frame: pd.DataFrame, objectives: Any = None) -> np.ndarray:
    """cost/hours of the counted rows with a value on both frontier axes, NaN elsewhere."""
    import numpy as np
    import pandas as pd

    hours = pd.to_numeric(frame[COST], errors="coerce").to_numpy(float) if COST in frame else np.full(len(frame), np.nan)
    searched = np.isfinite(objective_values(frame, objectives)).all(axis=1) & ~reference_rows(frame)
    return np.where(searched, hours, np.nan)


def recommend_index(frame: pd.DataFrame, budget_hours: float, objectives: Any = None) -> Optional[int]:
    """Position of the row with the best quality (y) among :func:`counted_hours` within the budget
    (ties: fewer hours, then the earlier row); None when none fits."""
    from labelmix.platform.frontier import recommend

    return recommend(counted_hours(frame, objectives), cost_and_score(frame, objectives)[1], budget_hours)


def reference_quality(frame: pd.DataFrame, objectives: Any = None) -> Optional[float]:
    """The quality (y, as reported) of the reference: the mean over its counted rows; None without one."""
    import numpy as np

    values = objective_values(frame, objectives)[reference_rows(frame), 1]
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def near_reference(frame: pd.DataFrame, tolerance: float = TOLERANCE, objectives: Any = None) -> np.ndarray:
    """Positions of the searched rows whose quality is within ``tolerance`` of the reference (or
    better); empty without a reference."""
    import numpy as np

    target = reference_quality(frame, objectives)
    if target is None:
        return np.zeros(0, int)
    cost, score = searched_values(frame, objectives)  # x minimised, y maximised
    (_, y_mode) = frontier_axes(_objectives_of(frame, objectives))[1]
    floor = (target if y_mode == "max" else -target) - tolerance
    return np.flatnonzero(np.isfinite(cost) & np.isfinite(score) & (score >= floor - 1e-12))


def recommend_near(frame: pd.DataFrame, tolerance: float = TOLERANCE, objectives: Any = None) -> Optional[int]:
    """Position of the cheapest searched row within ``tolerance`` of the reference (ties: the better
    quality, then the earlier row); without such a row, the best searched row; None when no
    searched row counts."""
    import numpy as np

    cost, score = searched_values(frame, objectives)  # x minimised, y maximised
    near = near_reference(frame, tolerance, objectives)
    if len(near):
        return int(near[np.lexsort((near, -score[near], cost[near]))[0]])
    valid = np.flatnonzero(np.isfinite(cost) & np.isfinite(score))
    if not len(valid):
        return None
    return int(valid[np.lexsort((valid, cost[valid], -score[valid]))[0]])


# --- files and text -------------------------------------------------------------------------------


def read_table(directory: Path, objectives: Any = None) -> pd.DataFrame:
    """The trial table of a study folder, flagged on ``objectives`` (None: those it was written with);
    empty when no trial has been recorded yet."""
    import pandas as pd

    path = Path(directory) / TRIALS_FILE
    return with_pareto(pd.read_parquet(path) if path.is_file() else pd.DataFrame({"status": []}), objectives)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def format_frontier(frame: pd.DataFrame, objectives: Any = None) -> str:
    """The frontier as a readable table: its two axes, hours and mIoU, the mix, the main searched
    settings. ``objectives`` None: the table's own."""
    if frame.empty:
        return "(no finished trials on the frontier yet)"
    x, y = frontier_axes(_objectives_of(frame, objectives))
    cols = dict.fromkeys(["trial_id", x[0], y[0], COST, SCORE, "cost/reduction", *MIX_COLUMNS,
                          "config/ds_type", "config/ds_depth", "config/ema_decay"])
    shown = frame[[c for c in cols if c in frame]].rename(columns=lambda c: c.removeprefix("config/"))
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def describe_reference(frame: pd.DataFrame, tolerance: float = TOLERANCE, objectives: Any = None) -> list[str]:
    """Lines under the frontier: the reference trial (when the study has one) and the recommendation
    of :func:`recommend_near` with the reason it was chosen."""
    import numpy as np

    from labelmix.platform.plots import mix_label

    (x, _), (y, y_mode) = frontier_axes(_objectives_of(frame, objectives))
    values = objective_values(frame, objectives)
    ref = reference_rows(frame)
    target = reference_quality(frame, objectives)
    lines = []
    if ref.any():
        first = int(np.flatnonzero(ref)[0])
        name = frame["case"].iloc[first] if "case" in frame and isinstance(frame["case"].iloc[first], str) else REFERENCE
        if target is None:
            lines.append(f"reference ({name}): not finished")
        else:
            lines.append(f"reference ({name}, trial {frame['trial_id'].iloc[first]}): {y} {target:.3f}, "
                         f"{x} {values[first, 0]:.3f}")
    best = recommend_near(frame, tolerance, objectives)
    if best is None:
        return lines
    within = best in near_reference(frame, tolerance, objectives)
    if target is None:
        why = "the best trial (the study has no reference)"
    elif within:
        why = f"the cheapest trial at most {tolerance:g} below the reference" if y_mode == "max" else \
            f"the cheapest trial at most {tolerance:g} above the reference"
    else:
        why = f"no trial is within {tolerance:g} of the reference; the best one"
    row = frame.iloc[best]
    lines.append(f"recommended: trial {row['trial_id']} ({mix_label(row)}), {y} {values[best, 1]:.3f}, "
                 f"{x} {values[best, 0]:.3f}: {why}")
    return lines
