"""The frontier functions against hand-made points with hand-computed answers."""

import math

import numpy as np
import pytest

from labelmix.errors import UserError
from labelmix.platform.frontier import (
    crowding_distance,
    hypervolume_contribution,
    frontier_order,
    hypervolume,
    nondominated_ranks,
    pareto_mask,
    recommend,
)

NAN = float("nan")

# (cost, score): (3, 0.6) is dominated by (2, 0.7); the other three trade cost for score.
COST = [1.0, 2.0, 3.0, 4.0]
SCORE = [0.5, 0.7, 0.6, 0.9]


# --- pareto_mask --------------------------------------------------------------------------------


def test_pareto_mask_drops_the_dominated_point():
    assert pareto_mask(COST, SCORE).tolist() == [True, True, False, True]


def test_pareto_mask_returns_bool_array():
    mask = pareto_mask(np.array(COST), np.array(SCORE))
    assert mask.dtype == bool and mask.shape == (4,)


def test_pareto_mask_keeps_both_duplicates():
    assert pareto_mask([1, 1, 2], [0.5, 0.5, 0.4]).tolist() == [True, True, False]


def test_pareto_mask_equal_cost_lower_score_is_dominated():
    assert pareto_mask([1, 1], [0.5, 0.4]).tolist() == [True, False]


def test_pareto_mask_equal_score_higher_cost_is_dominated():
    assert pareto_mask([1, 2], [0.5, 0.5]).tolist() == [True, False]


def test_pareto_mask_nan_points_are_never_on_the_front_and_never_dominate():
    # (1, nan) would dominate (2, 0.5) if nan counted as a high score; (nan, 0.9) the same for cost
    cost = [1.0, 2.0, NAN, 3.0]
    score = [NAN, 0.5, 0.9, 0.6]
    assert pareto_mask(cost, score).tolist() == [False, True, False, True]


def test_pareto_mask_infinite_values_are_invalid_points():
    assert pareto_mask([0.0, 1.0, math.inf], [math.inf, 0.5, 0.9]).tolist() == [False, True, False]


def test_pareto_mask_empty_and_all_nan():
    assert pareto_mask([], []).tolist() == []
    assert pareto_mask([NAN, NAN], [0.1, 0.2]).tolist() == [False, False]


def test_pareto_mask_validates_inputs():
    with pytest.raises(UserError, match="2 costs and 3 scores"):
        pareto_mask([1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(UserError, match="1-D"):
        pareto_mask([[1, 2]], [[0.1, 0.2]])
    with pytest.raises(UserError, match="cost must be numbers"):
        pareto_mask(["a", "b"], [0.1, 0.2])


# --- hypervolume --------------------------------------------------------------------------------


def test_hypervolume_by_hand():
    # front (1,.5) (2,.7) (4,.9) against (5, 0): strips [1,2]x.5 + [2,4]x.7 + [4,5]x.9
    assert hypervolume(COST, SCORE, ref_cost=5, ref_score=0) == pytest.approx(0.5 + 1.4 + 0.9)


def test_hypervolume_ignores_points_outside_the_box():
    # box cost <= 3.5, score >= 0.55 holds (2,.7) and (3,.6); (2,.7) dominates (3,.6)
    area = hypervolume(COST, SCORE, ref_cost=3.5, ref_score=0.55)
    assert area == pytest.approx(1.5 * 0.15)


def test_hypervolume_dominated_and_duplicate_points_add_nothing():
    front_only = hypervolume([1, 2, 4], [0.5, 0.7, 0.9], 5, 0)
    assert hypervolume(COST + [2.0, 3.5], SCORE + [0.7, 0.1], 5, 0) == pytest.approx(front_only)


def test_hypervolume_empty_nan_and_boundary_points_give_zero():
    assert hypervolume([], [], 5, 0) == 0.0
    assert hypervolume([NAN, 1.0], [0.5, NAN], 5, 0) == 0.0
    assert hypervolume([5.0, 1.0], [0.9, 0.0], 5, 0) == 0.0  # on the box's edges: no width/height


def test_hypervolume_validates_the_reference_point():
    with pytest.raises(UserError, match="ref_cost must be finite"):
        hypervolume(COST, SCORE, ref_cost=math.inf, ref_score=0)
    with pytest.raises(UserError, match="ref_score must be finite"):
        hypervolume(COST, SCORE, ref_cost=5, ref_score=NAN)
    with pytest.raises(UserError, match="ref_cost must be a number"):
        hypervolume(COST, SCORE, ref_cost="five", ref_score=0)


# --- frontier_order -----------------------------------------------------------------------------


def test_frontier_order_sorts_front_by_cost():
    # the same points as COST/SCORE, shuffled: front is costs 1, 2, 4 at indices 1, 3, 0
    order = frontier_order([4.0, 1.0, 3.0, 2.0], [0.9, 0.5, 0.6, 0.7])
    assert order.tolist() == [1, 3, 0]


def test_frontier_order_duplicates_by_index_and_empty():
    assert frontier_order([2, 1, 1], [0.9, 0.5, 0.5]).tolist() == [1, 2, 0]
    assert frontier_order([], []).tolist() == []


# --- recommend ----------------------------------------------------------------------------------


def test_recommend_best_point_within_budget():
    assert recommend(COST, SCORE, budget=2.5) == 1
    assert recommend(COST, SCORE, budget=3.0) == 1  # (3, .6) fits but scores lower
    assert recommend(COST, SCORE, budget=4.0) == 3  # cost == budget fits
    assert recommend(COST, SCORE, budget=100) == 3


def test_recommend_returns_python_int():
    assert type(recommend(COST, SCORE, budget=2.5)) is int


def test_recommend_none_when_nothing_fits():
    assert recommend(COST, SCORE, budget=0.5) is None
    assert recommend([], [], budget=10) is None


def test_recommend_ties_go_to_lower_cost_then_lower_index():
    assert recommend([2, 1, 1, 3], [0.7, 0.7, 0.7, 0.1], budget=5) == 1


def test_recommend_skips_nan_points():
    assert recommend([1.0, NAN, 2.0], [0.1, 0.9, NAN], budget=5) == 0


def test_recommend_validates_budget():
    with pytest.raises(UserError, match="budget must be finite"):
        recommend(COST, SCORE, budget=math.inf)
    with pytest.raises(UserError, match="budget must be a number"):
        recommend(COST, SCORE, budget=None)


# --- nondominated_ranks -------------------------------------------------------------------------

# columns (cost/hours: min, val/miou: max)
#   A (1, .40), B (10, .70), D (20, .72) trade off: rank 0
#   C (12, .65) is dominated by B only: rank 1
#   E (15, .60) is dominated by B and C: rank 2
#   F (nan, .90) is invalid: the last rank
POINTS = np.array([[1, 0.40], [10, 0.70], [12, 0.65], [20, 0.72], [15, 0.60], [NAN, 0.90]])
SENSES = ["min", "max"]


def test_nondominated_ranks_by_hand():
    assert nondominated_ranks(POINTS, SENSES).tolist() == [0, 0, 1, 0, 2, 3]


def test_nondominated_ranks_respect_senses():
    # maximising cost too: D (20, .72) dominates all; then B, C, E trade off; A is last
    assert nondominated_ranks(POINTS[:5], ["max", "max"]).tolist() == [2, 1, 1, 0, 1]
    assert nondominated_ranks([[3.0], [1.0], [2.0], [1.0]], ["min"]).tolist() == [2, 0, 1, 0]
    assert nondominated_ranks([[3.0], [1.0], [2.0], [1.0]], ["max"]).tolist() == [0, 2, 1, 2]


def test_nondominated_ranks_three_objectives():
    points = [[1, 1, 1], [0, 2, 2], [2, 2, 2], [1, 1, 0]]
    # [1,1,0] dominates [1,1,1] and [2,2,2]; [0,2,2] is incomparable to it; [1,1,1] dominates [2,2,2]
    assert nondominated_ranks(points, ["min"] * 3).tolist() == [1, 0, 2, 0]


def test_nondominated_ranks_duplicates_share_a_rank():
    assert nondominated_ranks([[1, 1], [1, 1], [2, 2]], ["min", "min"]).tolist() == [0, 0, 1]


def test_nondominated_ranks_empty():
    assert nondominated_ranks(np.zeros((0, 2)), SENSES).tolist() == []
    assert nondominated_ranks([], SENSES).tolist() == []


def test_nondominated_ranks_validates():
    with pytest.raises(UserError, match="one entry per objective column"):
        nondominated_ranks(POINTS, ["min"])
    with pytest.raises(UserError, match="'min' or 'max'"):
        nondominated_ranks(POINTS, ["min", "maximise"])
    with pytest.raises(UserError, match="2-D"):
        nondominated_ranks([1.0, 2.0], ["min"])


# --- crowding_distance --------------------------------------------------------------------------


def test_crowding_distance_by_hand():
    # one front of four points, costs 1, 2, 4, 8 and scores .1, .5, .6, .9
    points = [[1, 0.1], [2, 0.5], [4, 0.6], [8, 0.9]]
    distance = crowding_distance(points, SENSES)
    # cost range 7, score range .8; the ends are inf
    # (2, .5): cost neighbours 1 and 4 -> 3/7; score neighbours .1 and .6 -> .5/.8
    # (4, .6): cost neighbours 2 and 8 -> 6/7; score neighbours .5 and .9 -> .4/.8
    assert distance[0] == math.inf and distance[3] == math.inf
    assert distance[1] == pytest.approx(3 / 7 + 0.5 / 0.8)
    assert distance[2] == pytest.approx(6 / 7 + 0.4 / 0.8)


def test_crowding_distance_is_per_front():
    distance = crowding_distance(POINTS, SENSES)
    # front 0 is A, B, D: A and D at the ends, B in the middle with 19/19 + .32/.32
    assert distance[0] == math.inf and distance[3] == math.inf
    assert distance[1] == pytest.approx(2.0)
    # C and E are alone in their fronts: ends of themselves; F (invalid) gets 0
    assert distance[2] == math.inf and distance[4] == math.inf
    assert distance[5] == 0.0


def test_crowding_distance_zero_range_objective_adds_nothing():
    # three duplicates form one front with zero range in both columns: no division by zero;
    # the first and last in index order are the ends, the middle one gets nothing
    distance = crowding_distance([[1, 3], [1, 3], [1, 3]], ["min", "min"])
    assert distance.tolist() == [math.inf, 0.0, math.inf]


def test_crowding_distance_empty():
    assert crowding_distance(np.zeros((0, 2)), SENSES).tolist() == []


# --- hypervolume_contribution -------------------------------------------------------------------


def test_hypervolume_contribution_by_hand():
    # the front of test_crowding_distance_by_hand as (cost min, score max): minimised (cost, -score);
    # worst (8, -0.1), best (1, -0.9), reference (8.7, -0.02)
    points = [[1, 0.1], [2, 0.5], [4, 0.6], [8, 0.9]]
    worth = hypervolume_contribution(points, SENSES)
    # along cost: width to the next cost (the last to 8.7) x height from the previous score (the
    # first from -0.02): 1 x 0.08, 2 x 0.4, 4 x 0.1, 0.7 x 0.3
    assert worth.tolist() == pytest.approx([0.08, 0.8, 0.4, 0.21])


def test_hypervolume_contribution_is_per_front_and_duplicates_add_nothing():
    points = [[1, 0.5], [1, 0.5], [2, 0.9], [3, 0.2], [float("nan"), 1.0]]
    worth = hypervolume_contribution(points, SENSES)
    # worst (3, -0.2), best (1, -0.9): reference (3.2, -0.13); front 0: the pair at (1, .5) and
    # (2, .9): the pair adds nothing each, (2, .9) 1.2 x 0.4; (3, .2) alone in front 1: 0.2 x 0.07
    assert worth.tolist() == pytest.approx([0.0, 0.0, 0.48, 0.014, 0.0])


def test_hypervolume_contribution_needs_two_objectives():
    with pytest.raises(ValueError, match="two objectives"):
        hypervolume_contribution([[1, 2, 3]], ["min", "min", "min"])

