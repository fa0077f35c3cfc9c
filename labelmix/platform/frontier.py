"""The cost-versus-quality frontier: Pareto mask, hypervolume, budget recommendation.

Pure numpy, no Ray and no MLflow, so the CLI, the tracking callback and the scheduler share one
definition of "on the front".

Conventions, the same in every function:
- cost is minimised, score is maximised (the 2-D functions); ``nondominated_ranks`` and
  ``crowding_distance`` take any number of objectives with a sense ('min' or 'max') per column.
- A point with a NaN or infinite value (a diverged trial, an unknown cost) is not a valid point: it is
  never on the front, never dominates another point, never fits a budget and adds no area. In the
  N-objective functions such points form the last rank.
- Exact duplicates do not dominate each other: both are on the front.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from labelmix.errors import UserError

__all__ = [
    "pareto_mask",
    "hypervolume",
    "frontier_order",
    "recommend",
    "nondominated_ranks",
    "crowding_distance",
    "hypervolume_contribution",
]

_SENSES = ("min", "max")


# --- validation ---------------------------------------------------------------------------------


def _as_vector(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise UserError(f"{name} must be numbers, got {values!r}: {error}") from None
    if array.ndim != 1:
        raise UserError(f"{name} must be 1-D (one value per point), got shape {array.shape}")
    return array


def _cost_score(cost, score) -> tuple[np.ndarray, np.ndarray]:
    cost = _as_vector(cost, "cost")
    score = _as_vector(score, "score")
    if cost.shape != score.shape:
        raise UserError(
            f"cost and score must have one value per point, got {cost.size} costs "
            f"and {score.size} scores"
        )
    return cost, score


def _finite_number(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{name} must be finite, got {value!r}")
    return number


def _as_minimised(objectives, senses: Sequence[str]) -> np.ndarray:
    """N x M objectives -> the same with 'max' columns negated, so that lower is better everywhere."""
    try:
        values = np.asarray(objectives, dtype=float)
    except (TypeError, ValueError) as error:
        raise UserError(f"objectives must be numbers: {error}") from None
    if values.ndim == 1 and values.size == 0 and not isinstance(senses, str):
        values = values.reshape(0, len(senses))  # no points yet
    if values.ndim != 2:
        raise UserError(
            f"objectives must be 2-D (one row per point, one column per objective), "
            f"got shape {values.shape}"
        )
    if isinstance(senses, str):
        raise UserError(f"senses must be a sequence of 'min'/'max', one per column, got {senses!r}")
    senses = list(senses)
    if len(senses) != values.shape[1]:
        raise UserError(
            f"senses must have one entry per objective column: {values.shape[1]} columns, "
            f"{len(senses)} senses {senses!r}"
        )
    bad = [sense for sense in senses if sense not in _SENSES]
    if bad:
        raise UserError(f"senses must each be 'min' or 'max', got {bad!r}")
    sign = np.array([1.0 if sense == "min" else -1.0 for sense in senses])
    return values * sign  # N x M, all minimised


# --- two objectives: cost (min) and score (max) -------------------------------------------------


def _pareto_mask(cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Front of validated arrays, O(n log n).

    Sorted by cost, a point is on the front iff it has the best score among the points of its own
    cost and a strictly better score than every point of strictly lower cost (a cheaper point with
    an equal score would dominate it).
    """
    mask = np.zeros(cost.shape, dtype=bool)
    valid = np.flatnonzero(np.isfinite(cost) & np.isfinite(score))
    if valid.size == 0:
        return mask
    order = valid[np.lexsort((-score[valid], cost[valid]))]  # cost asc, then score desc
    best_cheaper = -np.inf  # best score among points with strictly lower cost
    start = 0
    while start < order.size:
        stop = start
        while stop < order.size and cost[order[stop]] == cost[order[start]]:
            stop += 1
        group = order[start:stop]
        best_here = score[group[0]]  # the group is sorted by score, best first
        if best_here > best_cheaper:
            mask[group[score[group] == best_here]] = True
        best_cheaper = max(best_cheaper, best_here)
        start = stop
    return mask


def pareto_mask(cost, score) -> np.ndarray:
    """True for points no other point dominates (lower or equal cost and higher or equal score,
    one of them strictly). Duplicated points are both on the front; NaN/inf points never are."""
    cost, score = _cost_score(cost, score)
    return _pareto_mask(cost, score)


def frontier_order(cost, score) -> np.ndarray:
    """Indices of the front points, by cost ascending (then by index, for duplicates)."""
    cost, score = _cost_score(cost, score)
    front = np.flatnonzero(_pareto_mask(cost, score))
    return front[np.argsort(cost[front], kind="stable")]


def hypervolume(cost, score, ref_cost: float, ref_score: float) -> float:
    """Area dominated by the front inside the box cost <= ref_cost, score >= ref_score.

    Each point dominates the rectangle [cost, ref_cost] x [ref_score, score]; this is the area of
    their union. Points outside the box add nothing. Larger is better; the reference point is what a
    study considers "worthless" (e.g. the cost of labelling everything fully and a score of 0).
    """
    cost, score = _cost_score(cost, score)
    ref_cost = _finite_number(ref_cost, "ref_cost")
    ref_score = _finite_number(ref_score, "ref_score")
    inside = (cost <= ref_cost) & (score >= ref_score)
    cost, score = cost[inside], score[inside]
    front = np.flatnonzero(_pareto_mask(cost, score))
    front = front[np.argsort(cost[front], kind="stable")]
    # Along the front, score rises with cost: between one point's cost and the next, the union's
    # height is that point's score.
    widths = np.diff(np.append(cost[front], ref_cost))
    heights = score[front] - ref_score
    return float(np.sum(widths * heights))


def recommend(cost, score, budget: float) -> int | None:
    """Index of the best-scoring point whose cost fits the budget (cost <= budget).

    Ties go to the lower cost, then to the lower index. None when no valid point fits.
    """
    cost, score = _cost_score(cost, score)
    budget = _finite_number(budget, "budget")
    fits = np.flatnonzero(np.isfinite(cost) & np.isfinite(score) & (cost <= budget))
    if fits.size == 0:
        return None
    # lexsort sorts by the last key first: score desc, then cost asc, then index asc
    best = fits[np.lexsort((fits, cost[fits], -score[fits]))[0]]
    return int(best)


# --- any number of objectives (used by the ParetoASHA scheduler) --------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    """Non-dominated ranks of an N x M all-minimised array. O(N^2 M) memory-light peeling."""
    n = values.shape[0]
    ranks = np.full(n, -1, dtype=int)
    valid = np.all(np.isfinite(values), axis=1)
    index = np.flatnonzero(valid)
    points = values[index]
    # dominates[i, j]: point i dominates point j (<= everywhere, < somewhere)
    less_equal = np.ones((index.size, index.size), dtype=bool)
    less = np.zeros((index.size, index.size), dtype=bool)
    for column in points.T:
        less_equal &= column[:, None] <= column[None, :]
        less |= column[:, None] < column[None, :]
    dominates = less_equal & less
    remaining = np.ones(index.size, dtype=bool)
    rank = 0
    while remaining.any():
        # a remaining point is in this front when no remaining point dominates it
        dominated = (dominates & remaining[:, None]).any(axis=0)
        front = remaining & ~dominated
        ranks[index[front]] = rank
        remaining &= ~front
        rank += 1
    ranks[~valid] = rank  # invalid points (NaN/inf) share the last rank
    return ranks


def nondominated_ranks(objectives, senses: Sequence[str]) -> np.ndarray:
    """Rank of each row: 0 for the non-dominated front, 1 for the front once rank 0 is removed, ...

    objectives is N x M, senses gives 'min' or 'max' for each of the M columns. Rows with a NaN or
    infinite value share the rank after the last front of valid rows.
    """
    return _ranks(_as_minimised(objectives, senses))


def crowding_distance(objectives, senses: Sequence[str]) -> np.ndarray:
    """NSGA-II crowding distance of each row within its own non-dominated front.

    Per objective, the front is sorted; the two end points get inf and each interior point adds the
    gap between its neighbours divided by the front's range in that objective (objectives with zero
    range add nothing). Larger means a less crowded, more valuable point. Rows in the invalid last
    rank (NaN/inf values) get 0.
    """
    values = _as_minimised(objectives, senses)
    ranks = _ranks(values)
    distance = np.zeros(values.shape[0])
    valid = np.all(np.isfinite(values), axis=1)
    for rank in np.unique(ranks[valid]):
        members = np.flatnonzero(ranks == rank)
        front = values[members]  # size x M
        for column in front.T:
            order = np.argsort(column, kind="stable")
            distance[members[order[0]]] = np.inf
            distance[members[order[-1]]] = np.inf
            span = column[order[-1]] - column[order[0]]
            if members.size > 2 and span > 0:
                gaps = (column[order[2:]] - column[order[:-2]]) / span
                distance[members[order[1:-1]]] += gaps
    return distance


def hypervolume_contribution(objectives, senses: Sequence[str]) -> np.ndarray:
    """Exclusive hypervolume of each row within its own non-dominated front (two objectives).

    The area a point alone dominates in its front (SMS-EMOA's selection measure; Beume et al. 2007),
    against a reference point 10% of the valid rows' range beyond their worst value in each
    objective. Unlike crowding distance, an end of the front is not worth infinitely much: a cheap
    point whose score equals the worst of all rows adds no area. Duplicated points add nothing each;
    rows in the invalid last rank get 0. Only for two objectives (``ValueError`` otherwise).
    """
    values = _as_minimised(objectives, senses)
    if values.shape[1] != 2:
        raise ValueError(f"hypervolume_contribution: two objectives, got {values.shape[1]}")
    ranks = _ranks(values)
    contribution = np.zeros(values.shape[0])
    valid = np.all(np.isfinite(values), axis=1)
    if not valid.any():
        return contribution
    worst, best = values[valid].max(axis=0), values[valid].min(axis=0)
    reference = worst + 0.1 * (worst - best)
    for rank in np.unique(ranks[valid]):
        members = np.flatnonzero(ranks == rank)
        order = members[np.lexsort((values[members, 1], values[members, 0]))]  # first objective ascending
        first, second = values[order, 0], values[order, 1]  # along a front the second one falls
        widths = np.append(first[1:], reference[0]) - first
        heights = np.insert(second[:-1], 0, reference[1]) - second
        contribution[order] = np.clip(widths, 0, None) * np.clip(heights, 0, None)
    return contribution

