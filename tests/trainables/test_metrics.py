"""Confusion matrix and IoU / Dice against numbers worked out by hand."""

import math

import numpy as np
import pytest
import torch

from labelmix.errors import UserError
from labelmix.trainables.metrics import BACKGROUND_OFFSETS, calibrated_scores, confusion_matrix, offset_confusions, segmentation_scores

NAMES = ["background", "IRF", "SRF"]


def test_confusion_matrix_with_ignore():
    target = torch.tensor([[0, 1, 2], [255, 1, 1]])
    pred = torch.tensor([[0, 2, 2], [1, 1, 0]])
    # pairs (truth, prediction): (0,0) (1,2) (2,2) (1,1) (1,0); the 255 pixel is skipped
    cm = confusion_matrix(pred, target, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 1]]


def test_scores_from_a_known_matrix():
    cm = np.array([[50, 2, 3], [4, 10, 1], [1, 5, 20]])
    # tp 50, 10, 20; fp (column sum - tp) 5, 7, 4; fn (row sum - tp) 5, 5, 6
    s = segmentation_scores(cm, NAMES, "val")
    iou = [50 / 60, 10 / 22, 20 / 30]
    dice = [100 / 110, 20 / 32, 40 / 50]
    for name, i, d in zip(NAMES, iou, dice):
        assert s[f"val/iou/{name}"] == pytest.approx(i)
        assert s[f"val/dice/{name}"] == pytest.approx(d)
    assert s["val/miou"] == pytest.approx((10 / 22 + 20 / 30) / 2)
    assert s["val/miou_bg"] == pytest.approx((50 / 60 + 10 / 22 + 20 / 30) / 3)
    assert s["val/mdice"] == pytest.approx((20 / 32 + 40 / 50) / 2)
    assert set(s) == {"val/miou", "val/miou_bg", "val/mdice"} | {
        f"val/{m}/{n}" for m in ("iou", "dice") for n in NAMES
    }


def test_absent_class_is_nan_and_left_out():
    s = segmentation_scores(np.array([[5, 0, 0], [0, 0, 0], [1, 0, 3]]), NAMES, "test")
    assert math.isnan(s["test/iou/IRF"]) and math.isnan(s["test/dice/IRF"])
    assert s["test/miou"] == pytest.approx(3 / 4)  # SRF only
    assert s["test/miou_bg"] == pytest.approx((5 / 6 + 3 / 4) / 2)


def test_all_foreground_absent_gives_nan_mean():
    s = segmentation_scores(torch.tensor([[5, 0, 0], [0, 0, 0], [0, 0, 0]]), NAMES, "val")
    assert math.isnan(s["val/miou"]) and math.isnan(s["val/mdice"])
    assert s["val/miou_bg"] == 1.0


def test_class_names_must_match():
    with pytest.raises(UserError, match="class_names"):
        segmentation_scores(np.eye(3), ["a", "b"], "val")


def test_offset_confusions_move_pixels_to_background_by_their_logit_gap():
    # three pixels, classes (background, IRF, SRF); gap = best foreground logit - background logit
    logits = torch.tensor([[0.0, 1.0, 0.5],    # gap 1.0 -> IRF until the offset reaches 1
                           [0.0, 0.2, 3.0],    # gap 3.0 -> SRF until the offset reaches 3
                           [2.0, 0.0, 1.0]])   # gap -1.0 -> background from offset -1 on
    logits = logits.T.reshape(1, 3, 1, 3)
    target = torch.tensor([[[1, 0, 0]]])
    cms = offset_confusions(logits, target, [-2.0, 0.0, 1.0, 3.0])
    # rows truth, columns prediction
    assert cms[0].tolist() == [[0, 0, 2], [0, 1, 0], [0, 0, 0]]  # -2: pixel 3 turns SRF too
    assert cms[1].tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]  # 0: plain argmax
    assert cms[2].tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 0]]  # 1: a tie goes to background
    assert cms[3].tolist() == [[2, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert torch.equal(cms[1], confusion_matrix(logits.argmax(1), target, 3))


def test_offset_confusions_keep_the_callers_offset_order_and_skip_ignored_pixels():
    logits = torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.2, 3.0], [2.0, 0.0, 1.0], [0.0, 9.0, 0.0]])  # gaps 1, 3, -1, 9
    logits = logits.T.reshape(1, 3, 1, 4)
    target = torch.tensor([[[1, 0, 0, 255]]])  # the fourth pixel is ignored
    cms = offset_confusions(logits, target, [3.0, -2.0, 1.0])
    assert cms[0].tolist() == [[2, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert cms[1].tolist() == [[0, 0, 2], [0, 1, 0], [0, 0, 0]]
    assert cms[2].tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 0]]


def test_calibrated_scores_pick_the_best_offset_ties_to_the_smallest():
    cms = np.array([
        [[8, 2, 0], [0, 2, 0], [0, 0, 2]],  # IRF 2/4, SRF 1 -> 0.75
        [[10, 0, 0], [0, 2, 0], [0, 0, 2]],  # 1.0
        [[10, 0, 0], [0, 2, 0], [0, 0, 2]],  # 1.0 again, at a larger offset
        [[10, 0, 0], [1, 1, 0], [0, 0, 2]],  # IRF 1/2 -> 0.75
    ])
    s = calibrated_scores(cms, [0.0, -0.5, 0.5, 3.0], NAMES, "val")
    assert s == {"val/miou_calibrated": 1.0, "val/background_offset": -0.5,
                 f"val/iou_calibrated/{NAMES[1]}": 1.0, f"val/iou_calibrated/{NAMES[2]}": 1.0}
    assert calibrated_scores(cms[3:], [3.0], NAMES, "test") == {
        "test/miou_calibrated": 0.75, "test/background_offset": 3.0,
        f"test/iou_calibrated/{NAMES[1]}": 0.5, f"test/iou_calibrated/{NAMES[2]}": 1.0}
    assert 0.0 in BACKGROUND_OFFSETS and (min(BACKGROUND_OFFSETS), max(BACKGROUND_OFFSETS)) == (-2.0, 6.0)
