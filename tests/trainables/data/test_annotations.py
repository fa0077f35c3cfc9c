import numpy as np
import pytest

from labelmix.errors import UserError, validated
from labelmix.trainables.data.annotations import (
    AnnotationMix,
    CostModel,
    assign_mix,
    boxes_from_mask,
    class_balanced_order,
    global_label,
    mix_cost,
    mix_counts,
)


def test_two_components_of_one_class_give_two_boxes():
    mask = np.zeros((6, 8), np.uint8)
    mask[0:2, 0:3] = 1  # component 1 of class 1
    mask[4:6, 5:8] = 1  # component 2 of class 1
    mask[3, 1] = 2  # one pixel of class 2
    boxes = boxes_from_mask(mask, 4)
    assert boxes.tolist() == [[1, 0, 0, 2, 3], [1, 4, 5, 6, 8], [2, 3, 1, 4, 2]]


def test_diagonal_pixels_are_one_component():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = mask[1, 1] = 3
    assert boxes_from_mask(mask, 4).tolist() == [[3, 0, 0, 2, 2]]


def test_empty_mask_has_no_boxes_and_global_label_is_background_only():
    mask = np.zeros((5, 5), np.uint8)
    assert boxes_from_mask(mask, 4).shape == (0, 5)
    assert global_label(mask, 4).tolist() == [True, False, False, False]


def test_global_label_lists_present_classes():
    mask = np.array([[0, 2], [2, 3]], np.uint8)
    assert global_label(mask, 4).tolist() == [True, False, True, True]


def test_mix_counts_sum_to_n_and_round_cumulatively():
    assert mix_counts(10, AnnotationMix(0.05, 0.25, 0.3, 0.4)).tolist() == [0, 3, 3, 4]
    assert mix_counts(7, AnnotationMix(0.5, 0.0, 0.0, 0.5)).tolist() == [4, 0, 0, 3]
    assert mix_counts(0, AnnotationMix()).tolist() == [0, 0, 0, 0]


def test_assignment_is_deterministic_and_counts_match():
    mix = AnnotationMix(0.1, 0.2, 0.3, 0.4)
    a = assign_mix(100, mix, seed=3)
    assert np.array_equal(a, assign_mix(100, mix, seed=3))
    assert np.bincount(a, minlength=4).tolist() == [10, 20, 30, 40]
    assert not np.array_equal(a, assign_mix(100, mix, seed=4))


def test_assignment_is_nested():
    small = assign_mix(200, AnnotationMix(0.05, 0.10, 0.25, 0.60), seed=7)
    large = assign_mix(200, AnnotationMix(0.20, 0.30, 0.10, 0.40), seed=7)
    # smaller full fraction labels a subset of what the larger one labels
    assert set(np.flatnonzero(small == 0)) <= set(np.flatnonzero(large == 0))
    # "at least box" (full or box) is nested too, and so is "at least global"
    assert set(np.flatnonzero(small <= 1)) <= set(np.flatnonzero(large <= 1))
    assert set(np.flatnonzero(small <= 2)) <= set(np.flatnonzero(large <= 2))  # 0.40 vs 0.60


def test_class_balanced_order_shows_the_least_shown_stratum_next():
    # columns: background, A, B. Strata: A = {0, 1, 2}, B = {2}, no foreground = {3, 4, 5}.
    labels = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=bool)
    order = class_balanced_order(labels, seed=5)
    # 1: all shown 0, B has fewest images -> 2 (shows A and B). 2: "none" shown 0 -> a fluid-free image.
    # 3: A and "none" shown once each (B has run out), same size, A's column first -> an A image.
    # 4: none (1 < 2). 5: A and none tie again -> A. 6: none.
    assert order[0] == 2
    permutation = np.random.default_rng(5).permutation(6)
    assert order[[1, 3, 5]].tolist() == [i for i in permutation if i in (3, 4, 5)]  # in the seed's order
    assert order[[2, 4]].tolist() == [i for i in permutation if i in (0, 1)]
    assert not np.array_equal(class_balanced_order(labels, seed=6)[1:], order[1:])


def test_class_balanced_masks_show_a_rare_class_that_random_ones_miss():
    labels = np.zeros((200, 3), dtype=bool)
    labels[:, 0] = True
    labels[:100, 1] = True  # a common class in 100 images
    labels[100:106, 2] = True  # a rare class in 6 others; 94 images show neither
    mix = AnnotationMix(full=0.05, none=0.95)  # 10 masked images
    masked = labels[assign_mix(200, mix, seed=1, labels=labels) == 0]
    # strata by fewest shown, ties to the smaller: rare, none, common, rare, none, common, rare, none, common, rare
    assert [masked[:, 2].sum(), masked[:, 1].sum(), (~masked[:, 1:].any(axis=1)).sum()] == [4, 3, 3]
    assert sum(labels[assign_mix(200, mix, seed=s) == 0][:, 2].sum() == 0 for s in range(10)) >= 5  # random: mostly none
    small = assign_mix(200, AnnotationMix(0.05, 0.10, 0.25, 0.60), seed=7, labels=labels)
    large = assign_mix(200, AnnotationMix(0.20, 0.30, 0.10, 0.40), seed=7, labels=labels)
    assert set(np.flatnonzero(small == 0)) <= set(np.flatnonzero(large == 0))  # nested as the random ranking
    assert set(np.flatnonzero(small <= 1)) <= set(np.flatnonzero(large <= 1))
    with pytest.raises(ValueError, match="3 class labels for 200 images"):
        assign_mix(200, mix, seed=1, labels=labels[:3])


def test_cost_when_every_image_was_asked_its_classes_first():
    types = np.array([0, 1, 2, 3])
    boxes = np.array([2, 2, 2, 2])
    asked = mix_cost(types, boxes, num_classes=4, cost=CostModel(), classes_asked=True)
    # full 240 + 3, box 2 * 7 (its boxes tell its classes), global 3, none 0 + 3 = 263 s
    assert asked.hours == pytest.approx(263 / 3600)
    assert mix_cost(types, boxes, num_classes=4, cost=CostModel()).hours == pytest.approx(257 / 3600)


def test_cost_of_a_known_mix():
    types = np.array([0, 0, 1, 1, 2, 3, 3, 3, 3, 3])  # 2 full, 2 box, 1 global, 5 none
    boxes = np.array([5, 5, 3, 1, 9, 9, 9, 9, 9, 9])  # only box-type images count their boxes
    cost = mix_cost(types, boxes, num_classes=4, cost=CostModel())
    # 2 * 240 + (3 + 1) * 7 + 1 * 3 classes * 1 = 480 + 28 + 3 = 511 s
    assert cost.hours == pytest.approx(511 / 3600)
    assert cost.hours_all_full == pytest.approx(10 * 240 / 3600)
    assert cost.pixel_label_reduction == pytest.approx(0.8)
    assert cost.cost_reduction == pytest.approx(1 - 511 / 2400)
    assert cost.counts == {"full": 2, "box": 2, "global": 1, "none": 5}
    m = cost.metrics()
    assert m["labels/full"] == 2 and m["cost/hours"] == pytest.approx(511 / 3600)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"full": 0.5, "box": 0.6, "global_": 0.0, "none": 0.0}, "sum to 1"),
        ({"full": -0.1, "box": 0.6, "global_": 0.5, "none": 0.0}, "mix.full"),
        ({"full": 1.5, "box": 0.0, "global_": 0.0, "none": -0.5}, "mix.full"),
    ],
)
def test_bad_mix_is_refused(kwargs, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):  # as a config's mix validates it
        validated(AnnotationMix, kwargs, prefix="mix")
    with pytest.raises(ValueError, match=field.removeprefix("mix.")):  # built in code: pydantic's ValidationError
        AnnotationMix(**kwargs)


def test_mix_from_mapping():
    assert AnnotationMix.from_mapping({"full": 0.25, "global": 0.75}).as_dict() == {
        "full": 0.25, "box": 0.0, "global": 0.75, "none": 0.0}
    with pytest.raises(UserError, match="unknown annotation type"):
        AnnotationMix.from_mapping({"pixels": 1.0})


@pytest.mark.parametrize("mix, message", [
    ({"full": 0.5, "box": 0.6}, "space.mix.choice.0: fractions full+box+global+none must sum to 1, got 1.1 "
                                "(full=0.5, box=0.6, global=0, none=0)"),
    ({"global": 1.5}, "space.mix.choice.0.global: fraction must be in [0, 1], got 1.5"),
    ({"full": "half"}, "space.mix.choice.0: mix fractions must be numbers, got {'full': 'half'}"),
    ({"full": 1, "seed": 3}, "space.mix.choice.0: unknown annotation type(s) ['seed']"),
    (0.5, "space.mix.choice.0: a complete mix is a mapping such as {full: 0.06, none: 0.94}, got 0.5"),
])
def test_a_complete_mix_is_refused_at_its_path(mix, message):
    with pytest.raises(UserError) as info:
        AnnotationMix.from_mapping(mix, "space.mix.choice.0")
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("seconds, message", [
    (-1, "cost.box_seconds: Input should be greater than or equal to 0 (got -1)"),
    (float("inf"), "cost.box_seconds: must be a finite number, got inf"),
])
def test_bad_cost_is_refused(seconds, message):
    with pytest.raises(UserError) as info:
        validated(CostModel, {"box_seconds": seconds}, prefix="cost")
    assert str(info.value) == message
    with pytest.raises(ValueError, match="box_seconds"):
        CostModel(box_seconds=seconds)
