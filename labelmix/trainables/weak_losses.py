"""Dense weak-label losses (METHOD.md "Weak labels"): exact negatives per pixel, box tightness and
size priors, image-level presence by top-k pooling, and the exact multi-label targets of boxes and
global labels at the deep-supervision levels.

Every term is a mean over what it counts (pixels, lines, boxes, cells), like the mask CE, so that
weight 1 means "as strong as a mask" per unit it counts. ``allowed`` is the B x C x H x W bool map
of where each class may occur under an image's weak label (``teacher.allowed_classes``): False is
exact knowledge (class c cannot be there), True is no knowledge.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from labelmix.trainables.batches import gaussian_blur

Boxes = Sequence[Tensor]  # per image K x 5 int64 [class, y0, x0, y1, x1], half-open


def negative_loss(logits: Tensor, allowed: Tensor, image_weights: Tensor | None = None) -> Tensor:
    """Exact negatives: mean over pixels of -log(softmax mass on the classes allowed there).

    A pixel where every class is allowed contributes 0; outside all boxes (only background allowed)
    the term is the background CE; an absent global class takes no probability anywhere.
    ``image_weights`` (B): each image's pixels count times its weight, the mean still over all
    B x H x W pixels (None: every image at 1).
    """
    logp = logits.float().log_softmax(1)  # B x C x H x W
    allowed_logp = logp.masked_fill(~allowed, float("-inf")).logsumexp(1)  # B x H x W
    if image_weights is None:
        return -allowed_logp.mean()
    return -(allowed_logp.mean((1, 2)) * image_weights).mean()


def box_prior_losses(logits: Tensor, boxes: Boxes, sharpness: float,
                     fill: Sequence[tuple[float, float]],
                     line_weights: Sequence[float] | None = None) -> tuple[Tensor, Tensor]:
    """(tightness, size) for the class-c boxes of each image, on the main head.

    Tightness (Hsu et al. 2019): every row and every column of a tight class-c box holds class c
    somewhere. Per line, the smooth maximum s = logsumexp(r * log p_c) / r over the line's pixels
    (r = ``sharpness``; s >= max log p_c); the loss is relu(-s), so a line is satisfied once its
    best pixels are confidently c. Mean over all lines of all boxes, each line's loss times
    ``line_weights[c]`` of its box's class (None: 1 for every class), so a class at weight 1 pulls
    as it would alone and one at 0 not at all.
    Size (Kervadec et al. 2020): the mean probability of c inside the box, f, should lie in
    ``fill[c]`` = (low, high), the band of class c; loss relu(low - f)^2 + relu(f - high)^2, mean
    over boxes.
    Both are 0 (and differentiable) without boxes.
    """
    logp = logits.float().log_softmax(1)  # B x C x H x W
    lines, classes, lines_per_box, fills, lows, highs = [], [], [], [], [], []
    for i, image_boxes in enumerate(boxes):
        for c, y0, x0, y1, x1 in image_boxes.tolist():
            patch = logp[i, c, y0:y1, x0:x1]  # h x w
            lines.append(torch.logsumexp(sharpness * patch, dim=1) / sharpness)  # one per row
            lines.append(torch.logsumexp(sharpness * patch, dim=0) / sharpness)  # one per column
            classes.append(c)
            lines_per_box.append(patch.shape[0] + patch.shape[1])  # its rows and columns
            fills.append(patch.exp().mean())
            lows.append(fill[c][0])
            highs.append(fill[c][1])
    if not fills:
        zero = logits.sum() * 0.0
        return zero, zero
    line_losses = F.relu(-torch.cat(lines))
    if line_weights is not None:  # each box's rows and columns take its class's weight
        per_box = torch.tensor([float(line_weights[c]) for c in classes], device=line_losses.device)
        line_losses = line_losses * per_box.repeat_interleave(torch.tensor(lines_per_box, device=line_losses.device))
    tightness = line_losses.mean()
    f = torch.stack(fills)
    low, high = f.new_tensor(lows), f.new_tensor(highs)
    size = (F.relu(low - f) ** 2 + F.relu(f - high) ** 2).mean()
    return tightness, size


def topk_mean(values: Tensor, k: int) -> Tensor:
    """B x C x H x W -> B x C: mean of the k largest values of each map (k clipped to the map)."""
    flat = values.flatten(2)  # B x C x HW
    return flat.topk(min(max(k, 1), flat.shape[-1]), dim=2).values.mean(2)


def presence_loss(logits: Tensor, present: Tensor, area: int) -> Tensor:
    """Image-level positives: each present foreground class fills its top ``area`` pixels.

    -mean of the top-``area`` log-probabilities of class c, averaged over the (image, class) pairs
    with ``present`` True; background is not counted (it is always present). ``area`` 1 is the hard
    max of the first formulation; larger spreads the gradient over that many pixels.
    """
    present = present.bool().clone()
    present[:, 0] = False
    if not present.any():
        return logits.sum() * 0.0
    pooled = topk_mean(logits.float().log_softmax(1), area)  # B x C
    return -pooled[present].mean()


def _box_cells(boxes: Boxes, num_classes: int, size: tuple[int, int], full: tuple[int, int], device) -> Tensor:
    """B x C x h x w bool: cells of a level grid that contain a whole class-c box.

    Cell (i, j) covers rows floor(i H / h) .. ceil((i + 1) H / h) (adaptive pooling windows); a box
    whose first and last pixel fall in one cell's window lies inside it, so its class is certainly
    present in that cell.
    """
    (h, w), (H, W) = size, full
    out = torch.zeros(len(boxes), num_classes, h, w, dtype=torch.bool, device=device)
    for i, image_boxes in enumerate(boxes):
        for c, y0, x0, y1, x1 in image_boxes.tolist():
            cy, cx = y0 * h // H, x0 * w // W
            if y1 <= -(-(cy + 1) * H // h) and x1 <= -(-(cx + 1) * W // w):
                out[i, c, cy, cx] = True
    return out


def weak_ds_loss(
    level_logits: Sequence[Tensor],
    allowed: Tensor,
    boxes: Boxes,
    present: Tensor,
    weights: Sequence[float],
    area: int,
) -> Tensor:
    """Multi-label deep supervision from weak labels, only where the target is exact.

    Per level (h x w cells, sigmoid BCE): target 0 where no pixel of the cell allows the class
    (exact negatives, at every level); target 1 for background where the cell holds a pixel on which
    only background is allowed, and for class c where the cell contains a whole class-c box; every
    other (cell, class) is ignored. Mean over the used entries. Plus, for each present foreground
    class of ``present`` (global labels; all False for box images), BCE(top-k mean of the level's
    logits, 1) with k = the cells that ``area`` full-resolution pixels cover. Weighted sum over levels.
    """
    loss = allowed.new_zeros((), dtype=torch.float32)
    if not level_logits:
        return loss
    full = (int(allowed.shape[-2]), int(allowed.shape[-1]))
    allowed_f = allowed.float()
    only_background = (~allowed[:, 1:].any(1, keepdim=True)).float()  # B x 1 x H x W
    present = present.bool().clone()
    present[:, 0] = False
    for logits, w in zip(level_logits, weights):
        size = (int(logits.shape[-2]), int(logits.shape[-1]))
        logits = logits.float()
        negative = F.adaptive_max_pool2d(allowed_f, size) == 0  # B x C x h x w
        positive = _box_cells(boxes, logits.shape[1], size, full, logits.device)
        positive[:, :1] |= F.adaptive_max_pool2d(only_background, size) > 0
        used = negative | positive
        bce = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
        level = (bce * used).sum() / used.sum().clamp(min=1)
        if present.any():
            cells = math.ceil(area * size[0] * size[1] / (full[0] * full[1]))
            pooled = topk_mean(logits, cells)  # B x C
            level = level + F.softplus(-pooled[present]).mean()  # BCE(x, 1) = softplus(-x)
        loss = loss + w * level
    return loss


def _pairs(t: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """The two ends of every pixel pair (p, p + (dy, dx)) inside the image: ... x H' x W' each (dy >= 0)."""
    h, w = t.shape[-2:]
    x0, x1 = max(0, -dx), w - max(0, dx)
    return t[..., : h - dy, x0:x1], t[..., dy:, x0 + dx : x1 + dx]


PAIR_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))  # each unordered 8-neighbour pair once


def pairwise_loss(logits: Tensor, images: Tensor, region: Tensor, dilation: int, threshold: float) -> Tensor:
    """Neighbours of similar intensity take the same class (BoxInst's pairwise term, Tian et al. 2021).

    For each pair of pixels ``dilation`` apart (8 directions) with at least one end in ``region``
    (B x H x W bool, e.g. inside a box) and whose intensities, smoothed against speckle, differ by
    less than ``threshold``: -log P(same class) = -log sum_k p_k(p) p_k(q). Mean over those pairs.
    So inside a box the class follows the image's edges instead of filling the box.
    """
    logp = logits.float().log_softmax(1)  # B x C x H x W
    smooth = gaussian_blur(images.float(), torch.ones(images.shape[0], device=images.device))[:, 0]  # B x H x W
    total, count = logits.new_zeros((), dtype=torch.float32), 0
    for dy, dx in PAIR_OFFSETS:
        dy, dx = dy * dilation, dx * dilation
        lp, lq = _pairs(logp, dy, dx)
        ip, iq = _pairs(smooth, dy, dx)
        rp, rq = _pairs(region, dy, dx)
        used = (rp | rq) & ((ip - iq).abs() < threshold)  # B x H' x W'
        same = torch.logsumexp(lp + lq, dim=1)  # B x H' x W': log sum_k p_k(p) p_k(q)
        total = total - (same * used).sum()
        count += int(used.sum())
    return total / max(count, 1)
