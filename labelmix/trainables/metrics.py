"""Confusion matrix -> per-class IoU and Dice, mIoU (METHOD.md "Task").

Scores are computed from one confusion matrix accumulated over a whole split, not averaged
per image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from labelmix.errors import UserError
from labelmix.trainables.losses import IGNORE


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """C x C int64 on the inputs' device: rows = truth, columns = prediction; IGNORE targets skipped."""
    valid = target != IGNORE
    index = target[valid].long() * num_classes + pred[valid].long()  # flat (truth, prediction)
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _nanmean(x: np.ndarray) -> float:
    """Mean of the non-nan entries; nan (without a warning) if there are none."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def segmentation_scores(cm: np.ndarray, class_names: Sequence[str], prefix: str) -> dict[str, float]:
    """IoU and Dice per class and their means.

    Keys: ``{prefix}/miou`` (foreground classes, all but index 0), ``{prefix}/miou_bg`` (all
    classes), ``{prefix}/mdice`` (foreground), ``{prefix}/iou/{name}`` and
    ``{prefix}/dice/{name}`` for every class. A class with neither truth nor prediction has
    IoU and Dice nan and is left out of the means.
    """
    if isinstance(cm, Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise UserError(
            f"class_names: {len(class_names)} names for a confusion matrix of shape {cm.shape}; "
            "need one name per row"
        )
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp  # predicted as the class, truly another
    fn = cm.sum(axis=1) - tp  # truly the class, predicted as another
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    scores = {
        f"{prefix}/miou": _nanmean(iou[1:]),
        f"{prefix}/miou_bg": _nanmean(iou),
        f"{prefix}/mdice": _nanmean(dice[1:]),
    }
    for name, i, d in zip(class_names, iou, dice):
        scores[f"{prefix}/iou/{name}"] = float(i)
        scores[f"{prefix}/dice/{name}"] = float(d)
    return scores


# Constants added to the background logit before the argmax when a split is scored calibrated
# (``calibrated_scores``): the class-weighted loss (foreground_weight) moves the argmax towards
# fluid by design, and with few masks the models over-segment; one offset chosen on val gave back
# 0.08-0.16 val mIoU at seed 0 (benchmarks/calibration.py, docs/RESULTS.md).
BACKGROUND_OFFSETS: tuple[float, ...] = tuple(round(-2.0 + 0.25 * i, 2) for i in range(33))  # -2 .. 6


def offset_confusions(logits: Tensor, target: Tensor, offsets: Sequence[float]) -> Tensor:
    """K x C x C: the confusion matrix of argmax(logits + offset on the background logit) per offset.

    logits N x C x H x W with background at index 0; a tie goes to background, as argmax does;
    IGNORE targets skipped. One pass whatever K: each pixel's gap (best foreground logit minus the
    background logit) is bucketed by how many offsets lie below it, one bincount over (truth, best
    foreground class, bucket) holds every offset's matrix, and a cumulative sum over buckets reads them out.
    """
    num_classes, k = logits.shape[1], len(offsets)
    logits = logits.float()
    foreground, foreground_class = logits[:, 1:].max(1)  # class index - 1
    valid = target != IGNORE
    gap = (foreground - logits[:, 0])[valid].contiguous()  # background wins where offset >= gap
    ordered, order = torch.tensor(offsets, dtype=torch.float32, device=gap.device).sort()
    bucket = torch.searchsorted(ordered, gap)  # offsets strictly below the gap: foreground wins at those
    index = (target[valid].long() * (num_classes - 1) + foreground_class[valid]) * (k + 1) + bucket
    counts = torch.bincount(index, minlength=num_classes * (num_classes - 1) * (k + 1))
    counts = counts.view(num_classes, num_classes - 1, k + 1)  # truth x best foreground class x bucket
    foreground_wins = counts.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # at sorted offset j: buckets above j
    background_wins = (counts.sum(-1, keepdim=True) - foreground_wins).sum(1, keepdim=True)  # truth x 1 x K
    sorted_cms = torch.cat([background_wins, foreground_wins], dim=1).permute(2, 0, 1)  # K x truth x prediction
    cms = torch.empty_like(sorted_cms)
    cms[order] = sorted_cms
    return cms


def calibrated_scores(cms: np.ndarray, offsets: Sequence[float], class_names: Sequence[str], prefix: str) -> dict[str, float]:
    """``{prefix}/miou_calibrated`` and ``{prefix}/background_offset``: the best foreground mIoU over
    the offsets' confusion matrices (K x C x C) and its offset, ties to the smallest |offset|; and
    ``{prefix}/iou_calibrated/{name}`` for every foreground class at that offset (which class a
    calibrated score loses). Scoring val over BACKGROUND_OFFSETS chooses the offset; scoring test
    with that one offset alone reports it honestly."""
    if len(cms) != len(offsets) or not len(offsets):
        raise ValueError(f"{len(cms)} confusion matrices for {len(offsets)} offsets")
    scored = [(segmentation_scores(cm, class_names, prefix), offset) for cm, offset in zip(cms, offsets)]
    finite = [(s, o) for s, o in scored if not np.isnan(s[f"{prefix}/miou"])] or scored
    best, offset = max(finite, key=lambda pair: (pair[0][f"{prefix}/miou"], -abs(pair[1])))
    per_class = {f"{prefix}/iou_calibrated/{name}": best[f"{prefix}/iou/{name}"] for name in class_names[1:]}
    return {f"{prefix}/miou_calibrated": best[f"{prefix}/miou"], f"{prefix}/background_offset": float(offset), **per_class}
