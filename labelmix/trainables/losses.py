"""Losses of METHOD.md as pure functions.

Conventions: masks are int64 B x H x W with ``IGNORE`` (255) for pixels without a label; level
logits are a sequence of B x C x h x w tensors, coarsest first, with one weight per level.
Every loss is a mean over what it counts (never a sum over the batch), so weights do not
scale with batch size or image size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from labelmix.errors import UserError
from labelmix.trainables.config import DS_TYPES

IGNORE = 255


def _check_weights(level_logits: Sequence[Tensor], weights: Sequence[float]) -> None:
    if len(weights) != len(level_logits):
        raise UserError(
            f"ds_weights: need one weight per DS level ({len(level_logits)} levels), got {len(weights)}"
        )


def _one_hot(mask: Tensor, num_classes: int) -> Tensor:
    """B x H x W int -> B x C x H x W float; ignore pixels are all-zero columns."""
    m = torch.where(mask == IGNORE, num_classes, mask)  # send ignore to an extra class ...
    oh = F.one_hot(m, num_classes + 1)[..., :num_classes]  # ... and drop it: B x H x W x C
    return oh.permute(0, 3, 1, 2).float()  # B x C x H x W


def _size(t: Tensor) -> tuple[int, int]:
    return int(t.shape[-2]), int(t.shape[-1])


def multilabel_targets(mask: Tensor, num_classes: int, size: tuple[int, int]) -> Tensor:
    """One-hot mask (background a channel) max-pooled to ``size``: B x C x h x w float.

    A cell is 1 for every class with a pixel in its window (adaptive pooling windows: floor
    start, ceil end). Ignore pixels contribute nothing.
    """
    return F.adaptive_max_pool2d(_one_hot(mask, num_classes), size)


def standard_targets(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Mask downsampled by nearest neighbour (cell i takes pixel floor(i * H / h)): B x h x w int64."""
    out = F.interpolate(mask[:, None].float(), size=size, mode="nearest")  # B x 1 x h x w
    return out[:, 0].long()


def class_weights(num_classes: int, foreground_weight: float) -> Tensor:
    """CE weight per class: background 1, every other class ``foreground_weight``."""
    weights = torch.full((num_classes,), float(foreground_weight))
    weights[0] = 1.0
    return weights


def cross_entropy(logits: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Softmax CE over non-ignored pixels; 0 (still differentiable) if there are none.

    With ``weight`` (one per class) each pixel's term is scaled by its class weight and the sum
    is still divided by the pixel count, not by the summed weights: up-weighting a rare class
    makes its pixels count more without shrinking the loss of images that lack it.
    """
    logits = logits.float()  # under autocast the logits may be bf16/fp16; the loss is summed in fp32
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    total = F.cross_entropy(logits, mask, weight=weight, ignore_index=IGNORE, reduction="sum")
    return total / (mask != IGNORE).sum().clamp(min=1)


def _multilabel_level(logits: Tensor, onehot: Tensor, valid: Tensor | None, negative_rule: str) -> Tensor:
    """Mean sigmoid BCE over the (cell, class) entries whose target is known.

    A cell is positive for a class with a labelled pixel of it in its window. ``negative_rule``
    says when a cell is a negative: "all_labelled" only when every pixel of its window is
    labelled (an ignored pixel might hold the class), "any_labelled" when at least one is (the
    first formulation: with ignored pixels it tells uncertain cells "absent").
    """
    size = _size(logits)
    target = F.adaptive_max_pool2d(onehot, size)  # B x C x h x w
    if valid is None:  # every pixel labelled: every entry is known under either rule
        return F.binary_cross_entropy_with_logits(logits, target)
    if negative_rule == "all_labelled":
        known = -F.adaptive_max_pool2d(-valid, size)  # B x 1 x h x w: min-pool, 1 where fully labelled
    else:
        known = F.adaptive_max_pool2d(valid, size)  # B x 1 x h x w: 1 where any pixel is labelled
    used = torch.maximum(target, known.expand_as(target))  # B x C x h x w
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * used
    return bce.sum() / used.sum().clamp(min=1)


def multilabel_ds_loss(
    level_logits: Sequence[Tensor], mask: Tensor, weights: Sequence[float], negative_rule: str = "all_labelled"
) -> Tensor:
    """sum_k w_k * mean BCE(level_k, multilabel_targets(mask, C, size_k)).

    The mean is over the (cell, class) entries with a known target, over the batch (see
    _multilabel_level for cells that hold ignored pixels; without them every entry counts).
    """
    _check_weights(level_logits, weights)
    loss = mask.new_zeros((), dtype=torch.float32)
    if not level_logits:
        return loss
    onehot = _one_hot(mask, level_logits[0].shape[1])  # computed once for all levels
    labelled = mask != IGNORE
    valid = None if bool(labelled.all()) else labelled[:, None].float()  # B x 1 x H x W, None: all labelled
    for logits, w in zip(level_logits, weights):
        loss = loss + w * _multilabel_level(logits.float(), onehot, valid, negative_rule)
    return loss


def standard_ds_loss(level_logits: Sequence[Tensor], mask: Tensor, weights: Sequence[float]) -> Tensor:
    """sum_k w_k * CE(level_k, nearest-neighbour mask at size_k)."""
    _check_weights(level_logits, weights)
    loss = mask.new_zeros((), dtype=torch.float32)
    for logits, w in zip(level_logits, weights):
        loss = loss + w * cross_entropy(logits, standard_targets(mask, _size(logits)))
    return loss


def ds_loss(
    kind: str, level_logits: Sequence[Tensor], mask: Tensor, weights: Sequence[float], negative_rule: str = "all_labelled"
) -> Tensor:
    """Deep-supervision loss of one kind: "none" (zero), "standard" or "multi_label"."""
    if kind == "multi_label":
        return multilabel_ds_loss(level_logits, mask, weights, negative_rule)
    if kind == "standard":
        return standard_ds_loss(level_logits, mask, weights)
    if kind == "none":
        return mask.new_zeros((), dtype=torch.float32)
    raise UserError(f"ds_kind: unknown deep supervision {kind!r}; allowed: {', '.join(DS_TYPES)}")


def global_loss(level_logits: Sequence[Tensor], global_labels: Tensor, weights: Sequence[float]) -> Tensor:
    """Image-level labels as the multi-label target at 1x1.

    ``global_labels`` B x C multi-hot (background 1). Per level: global max-pool of the logits
    (B x C), sigmoid BCE against the labels, mean; weighted sum over levels.
    """
    _check_weights(level_logits, weights)
    target = global_labels.float()
    loss = target.new_zeros(())
    for logits, w in zip(level_logits, weights):
        pooled = logits.amax(dim=(2, 3))  # B x C x h x w -> B x C
        loss = loss + w * F.binary_cross_entropy_with_logits(pooled, target)
    return loss


def box_masks(
    boxes: Sequence[Tensor], num_classes: int, height: int, width: int, device: torch.device | str | None = None
) -> Tensor:
    """B x C x H x W float: background 1 everywhere, channel c = union of the class-c boxes.

    ``boxes[i]`` is K_i x 5 ``[class, y0, x0, y1, x1]`` (half-open pixel coordinates). The
    result lives on ``device`` (default: that of the first boxes tensor, else the CPU).
    """
    if device is None and len(boxes):
        device = boxes[0].device
    out = torch.zeros(len(boxes), num_classes, height, width, device=device)
    out[:, 0] = 1.0
    for i, b in enumerate(boxes):
        for c, y0, x0, y1, x1 in b.tolist():
            out[i, c, y0:y1, x0:x1] = 1.0
    return out


def _box_regions(boxes: Sequence[Tensor], size: tuple[int, int], full: tuple[int, int], device) -> tuple:
    """Each box scaled to a level grid: (image index, class, N x h x w bool region).

    The region spans floor(start * h / H) .. ceil(end * h / H), at least one cell.
    """
    rows = [torch.cat([torch.full((len(b), 1), i, dtype=torch.long), b.long().cpu()], 1) for i, b in enumerate(boxes)]
    allb = torch.cat(rows).to(device) if rows else torch.zeros(0, 6, dtype=torch.long, device=device)  # N x 6
    (h, w), (H, W) = size, full
    img, cls = allb[:, 0], allb[:, 1]
    y0 = torch.div(allb[:, 2] * h, H, rounding_mode="floor").clamp(max=h - 1)
    x0 = torch.div(allb[:, 3] * w, W, rounding_mode="floor").clamp(max=w - 1)
    y1 = torch.maximum(-torch.div(-allb[:, 4] * h, H, rounding_mode="floor"), y0 + 1)  # ceil, >= y0 + 1
    x1 = torch.maximum(-torch.div(-allb[:, 5] * w, W, rounding_mode="floor"), x0 + 1)
    ys = torch.arange(h, device=device)[None, :, None]  # 1 x h x 1
    xs = torch.arange(w, device=device)[None, None, :]  # 1 x 1 x w
    region = (
        (ys >= y0[:, None, None]) & (ys < y1[:, None, None]) & (xs >= x0[:, None, None]) & (xs < x1[:, None, None])
    )  # N x h x w
    return img, cls, region


def box_loss(
    level_logits: Sequence[Tensor],
    box_mask: Tensor,
    boxes: Sequence[Tensor],
    weights: Sequence[float],
    positive_max_size: int = 16,
    mil_weight: float = 1.0,
) -> Tensor:
    """Boxes as an upper bound of the multi-label target (METHOD.md "boxes").

    Per level of size (h, w): P = box_mask max-pooled to (h, w). Cells with P == 0 are exact
    negatives (BCE target 0) at every level; cells with P == 1 get target 1 only where
    max(h, w) <= positive_max_size and are ignored at finer levels; the BCE is averaged over the
    cells used. Plus, per box, a multiple-instance term: BCE(max of the box's class logit over
    the box region on that level, 1), averaged over boxes, times ``mil_weight``.
    Weighted sum over levels.
    """
    _check_weights(level_logits, weights)
    full = _size(box_mask)
    loss = box_mask.new_zeros(())
    n_boxes = sum(len(b) for b in boxes)
    for logits, w in zip(level_logits, weights):
        size = _size(logits)
        pooled = F.adaptive_max_pool2d(box_mask, size)  # B x C x h x w
        bce = F.binary_cross_entropy_with_logits(logits, pooled, reduction="none")
        if max(size) <= positive_max_size:
            level = bce.mean()
        else:
            used = (pooled == 0).float()
            level = (bce * used).sum() / used.sum().clamp(min=1)
        if n_boxes and mil_weight:
            img, cls, region = _box_regions(boxes, size, full, logits.device)
            per_box = logits[img, cls]  # N x h x w: the box's class map on its image
            box_max = per_box.masked_fill(~region, float("-inf")).amax(dim=(1, 2))  # N
            level = level + mil_weight * F.softplus(-box_max).mean()  # BCE(x, 1) = softplus(-x)
        loss = loss + w * level
    return loss


def pseudo_label_loss(
    main_logits: Tensor,
    level_logits: Sequence[Tensor],
    pseudo: Tensor,
    ds_kind: str,
    ds_weights: Sequence[float],
    use_ds: bool = True,
    weight: Tensor | None = None,
    negative_rule: str = "all_labelled",
) -> Tensor:
    """CE of the main head against the teacher's pseudo-label (class ``weight`` as in
    cross_entropy), plus (``use_ds``) DS on it."""
    loss = cross_entropy(main_logits, pseudo, weight)
    if use_ds:
        loss = loss + ds_loss(ds_kind, level_logits, pseudo, ds_weights, negative_rule)
    return loss
