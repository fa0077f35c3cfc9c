"""Mean-teacher parts of METHOD.md "Student and teacher": EMA teacher, weak-label-constrained
pseudo-labels, and the sigmoid ramp-up of the pseudo-label weight."""

from __future__ import annotations

import math

import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from labelmix.errors import UserError
from labelmix.trainables.data.annotations import BOX, GLOBAL
from labelmix.trainables.losses import IGNORE


def make_teacher(model: nn.Module, decay: float, warmup: bool = False) -> ModelEmaV3:
    """EMA copy of ``model`` (weights and BatchNorm buffers), in eval mode, without gradients.

    Default: plain EMA, teacher = decay * teacher + (1 - decay) * student at every update.
    ``warmup=True`` uses timm's decay warm-up (1 - (1 + step)^(-2/3), capped at ``decay``).
    """
    if not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
        raise UserError(f"ema_decay: must be in the open interval (0, 1), e.g. 0.99 or 0.999; got {decay!r}")
    teacher = ModelEmaV3(model, decay=float(decay), use_warmup=warmup)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def update_teacher(teacher: ModelEmaV3, model: nn.Module, step: int) -> None:
    """One EMA step after an optimizer step.

    ``step`` only matters with warm-up: ModelEmaV3 given a step also copies the student outright
    at steps 0 and 1 (decay 0), so plain EMA passes no step.
    """
    teacher.update(model, step=step if teacher.use_warmup else None)


def allowed_classes(types: Tensor, global_labels: Tensor, box_mask: Tensor) -> Tensor:
    """B x C x H x W bool: where each class may appear under each image's weak label.

    ``types`` B (0 full, 1 box, 2 global, 3 none); ``global_labels`` B x C multi-hot;
    ``box_mask`` B x C x H x W (see losses.box_masks). A global label allows its classes
    everywhere, boxes allow class c inside its boxes; full and none allow everything;
    background is always allowed.
    """
    b, c, h, w = box_mask.shape
    allowed = torch.ones(b, c, h, w, dtype=torch.bool, device=box_mask.device)
    from_global = (global_labels > 0)[:, :, None, None].expand(b, c, h, w)  # B x C -> B x C x H x W
    is_global = (types == GLOBAL)[:, None, None, None]
    is_box = (types == BOX)[:, None, None, None]
    allowed = torch.where(is_global, from_global, allowed)
    allowed = torch.where(is_box, box_mask > 0, allowed)
    allowed[:, 0] = True
    return allowed


def constrained_pseudo_labels(teacher_logits: Tensor, allowed: Tensor | None, threshold: float = 0.0) -> Tensor:
    """Hard pseudo-label B x H x W int64 from teacher logits restricted to the allowed classes.

    Disallowed classes get -inf before the softmax (so the probabilities renormalise over the
    allowed ones; ``allowed`` None: every class everywhere); pixels whose top probability is below
    ``threshold`` become IGNORE.
    """
    logits = teacher_logits.float()
    probs = (logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))).softmax(dim=1)
    top, label = probs.max(dim=1)
    if threshold > 0:
        label = label.masked_fill(top < threshold, IGNORE)
    return label


def box_fill_pseudo_labels(pseudo: Tensor, teacher_logits: Tensor, boxes, bands) -> Tensor:
    """``pseudo`` (B x H x W) with each box's pixels relabelled by the size band of its class.

    ``boxes``: per image K x 5 [class, y0, x0, y1, x1] (half-open; empty for images without boxes);
    ``bands``: per class (low, high), the share of its box a class fills. Inside a class-c box of
    n pixels, ranked by the teacher's margin logit_c - logit_background: the first round(low x n)
    are c, those from round(high x n) on are background, those between are IGNORE, so a teacher
    whose logits lean to one class (any per-class offset) fills each box no more and no less than
    the band says. Where boxes overlap, a pixel in the top share of any box takes its class (of
    two, the later box's); else one between in any box is ignored; else it is background. Pixels
    outside all boxes keep their label.
    """
    out = pseudo.clone()
    logits = teacher_logits.float()
    h, w = pseudo.shape[-2:]
    for i, image_boxes in enumerate(boxes):
        if len(image_boxes) == 0:
            continue
        top = torch.full((h, w), -1, dtype=torch.int64, device=pseudo.device)
        middle = torch.zeros((h, w), dtype=torch.bool, device=pseudo.device)
        covered = torch.zeros((h, w), dtype=torch.bool, device=pseudo.device)
        for c, y0, x0, y1, x1 in image_boxes.tolist():
            margin = (logits[i, c, y0:y1, x0:x1] - logits[i, 0, y0:y1, x0:x1]).flatten()
            n = margin.numel()
            rank = torch.empty(n, dtype=torch.int64, device=pseudo.device)
            rank[margin.argsort(descending=True, stable=True)] = torch.arange(n, device=pseudo.device)
            rank = rank.view(y1 - y0, x1 - x0)
            low, high = bands[c]
            k_low, k_high = round(low * n), round(high * n)
            top[y0:y1, x0:x1] = torch.where(rank < k_low, c, top[y0:y1, x0:x1])
            middle[y0:y1, x0:x1] |= (rank >= k_low) & (rank < k_high)
            covered[y0:y1, x0:x1] = True
        label = torch.where(covered, 0, out[i])
        label = torch.where(middle, IGNORE, label)
        out[i] = torch.where(top >= 0, top, label)
    return out


def rampup(step: int, rampup_steps: int) -> float:
    """Sigmoid ramp exp(-5 (1 - t)^2) with t = clip(step / rampup_steps, 0, 1); 1 if no ramp."""
    if rampup_steps < 0:
        raise UserError(f"rampup_steps: must be >= 0, got {rampup_steps}")
    if rampup_steps == 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
