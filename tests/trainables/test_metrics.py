"""Confusion matrix and IoU / Dice against numbers worked out by hand."""

import math

import numpy as np
import pytest
import torch

from labelmix.errors import UserError
from labelmix.trainables.metrics import confusion_matrix, segmentation_scores

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
