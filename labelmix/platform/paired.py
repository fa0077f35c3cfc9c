"""Paired comparison of a study's cases over seeds (pure pandas; no Ray).

A study whose space searches ``seed`` next to ``space.cases`` (the built-in ``annotation-types``)
runs every case with the same seeds; for one seed the cases share weights' initialisation, batch
order and, through nested mixes, the masked images. So a case is compared with a baseline case
seed by seed: the table gives each case's mean and standard deviation over its finished seeds and
the mean and standard deviation of its paired differences to the baseline.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from labelmix.errors import UserError

SEED = "config/seed"


def combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The finished trials of several studies' tables as one: where two hold the same case and seed,
    the later table's trial counts (a case re-measured after a fix replaces the earlier one)."""
    done = [f[f["status"] == "TERMINATED"] for f in frames if "status" in f]
    if not done:
        return pd.DataFrame({"status": []})
    joined = pd.concat(done, ignore_index=True)
    if "case" not in joined or SEED not in joined:
        return joined
    return joined.drop_duplicates(subset=["case", SEED], keep="last").reset_index(drop=True)


def finished_cases(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """case x seed -> metric of the finished trials (one column per case, in first-seen order)."""
    for column in ("case", SEED, metric):
        if column not in frame:
            raise UserError(
                f"trial table: no {column!r} column; a paired table needs a study whose space searches "
                "`seed` and `cases` (for example the built-in annotation-types)"
            )
    done = frame[frame["status"] == "TERMINATED"]
    order = list(dict.fromkeys(frame["case"].dropna()))
    wide = done.pivot_table(index=SEED, columns="case", values=metric, aggfunc="first")
    return wide.reindex(columns=order)


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def paired_table(frame: pd.DataFrame, metric: str = "val/miou", baseline: str | None = None) -> pd.DataFrame:
    """One row per case: seeds, mean, std, min, max of ``metric``; with ``baseline`` also the paired
    difference to it (pairs, mean, std, and in how many pairs the case scored higher)."""
    wide = finished_cases(frame, metric)
    if baseline is not None and baseline not in wide.columns:
        raise UserError(f"--baseline: no case named {baseline!r}; cases: {', '.join(map(str, wide.columns))}")
    rows = []
    for case in wide.columns:
        values = wide[case].dropna().to_numpy(float)
        row = {"case": case, "seeds": len(values), "mean": float(values.mean()) if len(values) else math.nan,
               "std": _std(values), "min": float(values.min()) if len(values) else math.nan,
               "max": float(values.max()) if len(values) else math.nan}
        if baseline is not None:
            both = wide[[case, baseline]].dropna()
            diff = (both[case] - both[baseline]).to_numpy(float)
            row.update({"pairs": len(diff), "diff_mean": float(diff.mean()) if len(diff) else math.nan,
                        "diff_std": _std(diff), "higher": int((diff > 0).sum())})
        rows.append(row)
    return pd.DataFrame(rows)


def format_paired(table: pd.DataFrame, metric: str, baseline: str | None) -> str:
    """A markdown table (docs/RESULTS.md takes it as it is)."""
    columns = ["case", "seeds", "mean", "std", "min", "max"]
    header = ["case", "seeds", f"{metric} mean", "std", "min", "max"]
    if baseline is not None:
        columns += ["pairs", "diff_mean", "diff_std", "higher"]
        header += ["pairs", f"paired diff to {baseline}: mean", "std", "seeds higher"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in table[columns].itertuples(index=False):
        cells = []
        for name, value in zip(columns, row):
            if isinstance(value, float):
                cells.append("n/a" if math.isnan(value) else (f"{value:+.3f}" if name == "diff_mean" else f"{value:.3f}"))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
