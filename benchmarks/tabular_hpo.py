"""The pure parts of the search-efficiency benchmark: the recorded curve table, the hypervolume of
the cost/mIoU frontier against compute used, the compute needed to reach a target, the summary.

No Ray here (tests/platform/test_search_efficiency.py runs these in the fast suite); the plot
needs matplotlib.

Conventions:
- compute is counted in epochs consumed: one reported result (one epoch of one trial) is one unit;
  the full grid costs configurations x epochs.
- a trial's point on the frontier is its last reported (cost/hours, val/miou), as in the study's
  trial table: a trial stopped at epoch 1 counts with its epoch-1 mIoU.
- cost is minimised, mIoU maximised; the reference point is fixed from the table
  (:func:`reference_point`), the same for every searcher and seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from labelmix.platform.frontier import hypervolume

COST, SCORE = "cost/hours", "val/miou"
# The reference cost is this factor times the table's largest cost, so that the most expensive
# configuration (all masks) still adds area when its mIoU is the best; the reference mIoU is 0.
REFERENCE_COST_FACTOR = 1.1
TARGET_FRACTION = 0.95  # "reaches 95% of the full grid's hypervolume"
LEVELS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # fractions of the grid's compute reported in the table


@dataclass(frozen=True)
class Curve:
    """One recorded configuration: its annotation cost and its per-epoch val mIoU and seconds."""

    cost: float
    miou: np.ndarray  # one value per epoch, epoch 1 first
    seconds: np.ndarray  # the recorded wall time of each epoch


Event = tuple[str, float, float]  # (trial id, cost/hours, val/miou) of one reported epoch, in report order


def config_key(sampled: Mapping) -> str:
    """The curve table's key of a configuration: its sampled values as sorted JSON."""
    return json.dumps(dict(sampled), sort_keys=True)


def curves_of(frame) -> dict[str, Curve]:
    """key -> Curve from a curve table (one row per configuration and epoch: ``config``, ``epoch``,
    ``cost/hours``, ``val/miou``, ``seconds``). Every configuration must have the same epochs 1..E."""
    curves = {}
    epochs = None
    for key, rows in frame.sort_values("epoch").groupby("config", sort=True):
        got = rows["epoch"].astype(int).tolist()
        if epochs is None:
            epochs = got
        if got != epochs or got != list(range(1, len(got) + 1)):
            raise ValueError(f"configuration {key}: epochs {got}, expected 1..{len(epochs)} like the others")
        curves[key] = Curve(float(rows[COST].iloc[0]), rows[SCORE].to_numpy(float), rows["seconds"].to_numpy(float))
    return curves


def reference_point(curves: Mapping[str, Curve]) -> tuple[float, float]:
    """(reference cost, reference mIoU) of every hypervolume here."""
    return REFERENCE_COST_FACTOR * max(curve.cost for curve in curves.values()), 0.0


def grid_hypervolume(curves: Mapping[str, Curve], reference: tuple[float, float]) -> float:
    """The full grid's hypervolume: every configuration trained to its last epoch."""
    cost = [curve.cost for curve in curves.values()]
    score = [curve.miou[-1] for curve in curves.values()]
    return hypervolume(cost, score, *reference)


def grid_compute(curves: Mapping[str, Curve]) -> int:
    """Epochs the full grid consumes."""
    return sum(len(curve.miou) for curve in curves.values())


def hypervolume_curve(events: Iterable[Event], reference: tuple[float, float]) -> np.ndarray:
    """Hypervolume after each reported epoch: element k-1 is the frontier's after k epochs of compute,
    each trial counting with its last reported point."""
    latest: dict[str, tuple[float, float]] = {}
    out = []
    for trial_id, cost, score in events:
        latest[trial_id] = (cost, score)
        points = np.array(list(latest.values()))  # trials x (cost, score)
        out.append(hypervolume(points[:, 0], points[:, 1], *reference))
    return np.array(out, dtype=float)


def at_compute(curve: np.ndarray, compute: Sequence[int]) -> np.ndarray:
    """The hypervolume curve read at the given compute (epochs): 0 before the first epoch, the last
    value after a search that ended before its budget."""
    padded = np.concatenate([[0.0], curve])  # padded[k]: after k epochs
    index = np.minimum(np.asarray(compute, dtype=int), len(curve))
    return padded[index]


def compute_to_reach(curve: np.ndarray, target: float) -> int | None:
    """The fewest epochs after which the hypervolume is at least ``target``; None if it never is."""
    reached = np.flatnonzero(curve >= target - 1e-12)
    return int(reached[0]) + 1 if reached.size else None


def spread(values: Sequence[float]) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def summarise(curves_by_seed: Sequence[np.ndarray], grid_hv: float, compute: int,
              levels: Sequence[float] = LEVELS, target: float = TARGET_FRACTION) -> dict:
    """One searcher's figures over seeds: normalised hypervolume (hypervolume / the grid's) at each
    level (fraction of the grid's compute), and the compute to reach ``target`` of the grid's
    hypervolume, in epochs and as a fraction of the grid's compute. A seed that never reaches the
    target counts as infinite in the median and is left out of the mean."""
    at = {f"{level:g}": spread([float(at_compute(c, [round(level * compute)])[0]) / grid_hv for c in curves_by_seed])
          for level in levels}
    needed = [compute_to_reach(c, target * grid_hv) for c in curves_by_seed]
    reached = [n for n in needed if n is not None]
    median = float(np.median([math.inf if n is None else n for n in needed]))
    return {
        "seeds": len(curves_by_seed),
        "hypervolume_fraction_at_compute_fraction": at,
        "compute_to_target": {
            "per_seed_epochs": needed,
            "seeds_reaching": len(reached),
            "median_epochs": median if math.isfinite(median) else None,
            "median_fraction": median / compute if math.isfinite(median) else None,
            **({f"{k}_fraction": v / compute for k, v in spread(reached).items()} if reached else {}),
        },
        "epochs_used": spread([len(c) for c in curves_by_seed]),
    }


def table_lines(summaries: Mapping[str, dict], levels: Sequence[float] = LEVELS) -> list[str]:
    """The printed table: mean (std) of hypervolume / the grid's at each compute level (fraction of
    the grid's epochs), and the compute to the target: median, [min, max] of the seeds reaching it."""
    head = f"{'searcher':<22}" + "".join(f"{f'HV@{level:.0%}':>16}" for level in levels)
    head += f"{'to 95%: median':>16}{'[min, max]':>14}{'reached':>9}"
    lines = [head]
    for name, s in summaries.items():
        row = f"{name:<22}"
        for level in levels:
            cell = s["hypervolume_fraction_at_compute_fraction"][f"{level:g}"]
            row += f"{cell['mean']:>8.3f} ({cell['std']:.3f})"
        c = s["compute_to_target"]
        median = "never" if c["median_fraction"] is None else f"{c['median_fraction']:.1%}"
        bounds = f"[{c['min_fraction']:.0%}, {c['max_fraction']:.0%}]" if c["seeds_reaching"] else "-"
        row += f"{median:>16}{bounds:>14}{c['seeds_reaching']:>5}/{s['seeds']}"
        lines.append(row)
    return lines


def check_targets(summaries: Mapping[str, dict], rival: str, searcher: str = "nsga2+pareto_asha",
                  most: float = 0.30) -> dict[str, Any]:
    """The targets: ``searcher`` reaches the target hypervolume with at most ``most`` of the grid's
    compute, and with no more compute than ``rival`` (medians over seeds; a median of "never" fails
    the first and loses the second, two medians of "never" leave the second undecided; None where
    a searcher was not run)."""
    if searcher not in summaries:
        return {"within": None, "no_more_than_rival": None}
    mine = summaries[searcher]["compute_to_target"]["median_fraction"]
    theirs = summaries[rival]["compute_to_target"]["median_fraction"] if rival in summaries else None
    if rival not in summaries or (mine is None and theirs is None):
        versus = None
    else:
        versus = mine is not None and (theirs is None or mine <= theirs)
    return {"searcher": searcher, "rival": rival, "most_fraction": most, "median_fraction": mine,
            "rival_median_fraction": theirs, "within": mine is not None and mine <= most,
            "no_more_than_rival": versus}


def plot(runs: Mapping[str, list], compute: int, grid_hv: float, path: Path) -> None:
    """Hypervolume / the grid's against compute / the grid's, one line per searcher (mean over
    seeds), shaded between the 25th and 75th percentile over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(compute + 1)
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curves in runs.items():
        values = np.array([at_compute(np.asarray(c), x) for c in curves]) / grid_hv  # seeds x compute
        line, = ax.plot(x / compute, values.mean(axis=0), label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(x / compute, np.percentile(values, 25, axis=0), np.percentile(values, 75, axis=0),
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(TARGET_FRACTION, color="grey", linestyle="--", linewidth=1)
    ax.axvline(0.3, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("compute used (fraction of the full grid's epochs)")
    ax.set_ylabel("hypervolume / the full grid's")
    ax.set_title("cost/mIoU frontier found against compute (mean over seeds; shaded: 25th-75th percentile)",
                 fontsize=9)
    ax.set(xlim=(0, 1), ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
