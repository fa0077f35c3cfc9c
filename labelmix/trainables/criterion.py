"""The loss of a run, built once from its config (nnU-Net's ``_build_loss``): each annotation type's
terms with their weights resolved, so the training step only routes images to them.

``Criterion.terms(student, teacher, batch, pseudo_weight)`` returns one scalar per named term;
the step sums them. Every term is a mean over what it counts (losses.py, weak_losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from labelmix.errors import UserError
from labelmix.trainables import losses, weak_losses
from labelmix.trainables.batches import Batch, cut_mix, cutmix_masks, strong_view
from labelmix.trainables.config import TrainConfig, class_weights_by_name
from labelmix.trainables.data.annotations import BOX, FULL, GLOBAL, NONE
from labelmix.trainables.model import frozen_running_stats
from labelmix.trainables.teacher import allowed_classes, box_fill_pseudo_labels, constrained_pseudo_labels

DsLoss = Callable[[Sequence[Tensor], Tensor, Sequence[float]], Tensor]


@dataclass(frozen=True)
class Criterion:
    """Weights and functions of every loss term of one run (see TrainConfig for each field)."""

    ds: DsLoss  # deep supervision on a (pseudo-)mask, of the run's ds_type and negative rule
    multi_label: bool  # ds_type is multi_label: weak labels then supervise the DS heads too
    ds_weights: tuple[float, ...]  # ds_weight x level weights
    level_weights: tuple[float, ...]  # the first formulation's global/box terms use these alone
    class_weights: Tensor | None  # None: unweighted CE (logit_adjust carries the class balance)
    pseudo_class_weights: Tensor | None
    logit_offset: Tensor | None  # C: log(class weight), subtracted from the main head's logits (logit_adjust)
    pseudo_offset: Tensor | None  # C: log(class weight), subtracted from the teacher's logits before pseudo-labelling (logit_adjust or pseudo_debias)
    negative_weight: float  # box images' exact negatives
    global_negative_weight: float  # image-level-labelled images' exact negatives
    tightness_weight: float
    tightness_class_weights: tuple[float, ...] | None  # per class, x tightness_weight; None: 1 for all
    box_size_weight: float
    box_fill: tuple[tuple[float, float], ...]  # per class: the size band's (low, high)
    box_line_sharpness: float
    pairwise_weight: float
    pairwise_dilation: int
    pairwise_threshold: float
    presence_weight: float
    presence_area: int
    weak_ds_weight: float  # global-label images
    box_ds_weight: float  # box images
    max_pool_global_weight: float
    max_pool_box_weight: float
    box_positive_max_size: int
    box_mil_weight: float
    pseudo_threshold: float
    pseudo_box_fill: bool  # inside boxes the pseudo-label follows the size band (box_fill_pseudo_labels)
    pseudo_ds: bool
    strong_augment: bool
    separate_strong_stats: bool  # strong_view_stats "separate": the strong views run in a pass of their own
    pseudo_mix: str  # "none" or "cutmix": unlabeled images learn their pseudo-labels on CutMix pairs
    box_shape_weight: float  # box images' masks hold learned pseudo-masks (box_shapes.py); 0: not read
    box_as_masks: bool  # box_supervision "shapes": box images pay only the box_shape term

    def terms(self, student, teacher, batch: Batch, pseudo_weight: float) -> dict[str, Tensor]:
        full, box = batch.types == FULL, batch.types == BOX
        shape_rows = box if self.box_shape_weight > 0 else torch.zeros_like(box)
        if self.box_as_masks:  # every weak-label path below sees the box images as masked ones
            batch = replace(batch, types=torch.where(box, FULL, batch.types))
        weak = batch.types != FULL
        images = batch.images
        # The student learns weak images from a strong view; the teacher sees the weak one. Images
        # that carry no loss (unlabeled ones while the pseudo-label weight is 0, as in "5% alone")
        # keep the weak view: a strong view there only shifts the BatchNorm statistics (measured:
        # 5% alone, seed 0, 0.265 val mIoU with the weak view, 0.117 with the strong one).
        strong = weak & ((batch.types != NONE) | (pseudo_weight > 0))
        strong = strong if self.strong_augment else torch.zeros_like(strong)
        if strong.any():
            images = torch.where(strong[:, None, None, None], strong_view(images), images)
        # CutMix (French et al., BMVC 2020): the student sees unlabeled images in pairs, a rectangle of
        # one pasted into the other, and learns the teacher's pseudo-labels of the two unmixed images
        # pasted the same way. Only unlabeled images: their pseudo-label is their only loss, so the
        # mixed view replaces nothing another term reads.
        unlabeled = (batch.types == NONE).nonzero().flatten()
        cut = None
        if self.pseudo_mix == "cutmix" and pseudo_weight > 0 and len(unlabeled) >= 2:
            cut = cutmix_masks(len(unlabeled), *images.shape[-2:], device=images.device)
            images = cut_mix(images, unlabeled, cut)
        if self.separate_strong_stats and strong.any():
            main, levels = _two_passes(student, batch.images, images, strong)
        else:
            main, levels = student(images)
        main = self.adjusted(main)
        terms: dict[str, Tensor] = {}
        if full.any():
            terms["full"] = self._mask_loss(main, levels, batch.masks, full)
        if shape_rows.any():  # the masks of box images are learned pseudo-masks here
            terms["box_shape"] = self.box_shape_weight * self._mask_loss(main, levels, batch.masks, shape_rows)
        if weak.any():
            allowed = None  # unlabeled images only: every class is allowed everywhere
            if ((batch.types == BOX) | (batch.types == GLOBAL)).any():
                box_mask = losses.box_masks(batch.boxes, main.shape[1], *main.shape[-2:], device=main.device)
                allowed = allowed_classes(batch.types, batch.global_labels, box_mask)  # B x C x H x W
                terms |= self._weak_terms(main, levels, batch, allowed, box_mask)
            if pseudo_weight > 0:
                with torch.no_grad():
                    teacher_main, _ = teacher(batch.images[weak])
                    pseudo = constrained_pseudo_labels(
                        self.pseudo_logits(teacher_main), None if allowed is None else allowed[weak], self.pseudo_threshold
                    )
                    if self.pseudo_box_fill and bool((batch.types[weak] == BOX).any()):
                        weak_boxes = [b if t == BOX else b[:0] for b, t in zip(batch.boxes, batch.types.tolist()) if t != FULL]
                        pseudo = box_fill_pseudo_labels(pseudo, teacher_main, weak_boxes, self.box_fill)
                    if cut is not None:  # the unlabeled rows' places among the weak rows
                        pseudo = cut_mix(pseudo, (weak.cumsum(0) - 1)[unlabeled], cut)
                terms["pseudo"] = pseudo_weight * (
                    losses.cross_entropy(main[weak], pseudo, self.pseudo_class_weights)
                    + (self.ds([lv[weak] for lv in levels], pseudo, self.ds_weights) if self.pseudo_ds else 0.0)
                )
        if not terms:  # e.g. only unlabeled images during the pseudo-label ramp-up
            terms["zero"] = main.sum() * 0.0
        return terms

    def _mask_loss(self, main: Tensor, levels, masks: Tensor, rows: Tensor) -> Tensor:
        """The mask loss of the images ``rows`` selects: CE on the main head and deep supervision."""
        return losses.cross_entropy(main[rows], masks[rows], self.class_weights) + self.ds(
            [lv[rows] for lv in levels], masks[rows], self.ds_weights
        )

    def adjusted(self, logits: Tensor) -> Tensor:
        """The logits every main-head term reads: as they are, or minus log(class weight)."""
        if self.logit_offset is None:
            return logits
        return logits.float() - self.logit_offset[:, None, None]

    def pseudo_logits(self, teacher_logits: Tensor) -> Tensor:
        """The teacher's logits its pseudo-labels read: as they are, or minus log(class weight)."""
        if self.pseudo_offset is None:
            return teacher_logits
        return teacher_logits.float() - self.pseudo_offset[:, None, None]

    def _weak_terms(self, main, levels, batch: Batch, allowed: Tensor, box_mask: Tensor) -> dict[str, Tensor]:
        box, glob = batch.types == BOX, batch.types == GLOBAL
        labelled = box | glob
        terms: dict[str, Tensor] = {}
        if not labelled.any():
            return terms
        if self.negative_weight > 0 or self.global_negative_weight > 0:
            terms["negative"] = self._negative_term(main, allowed, box, labelled)
        boxes = [b if is_box else b[:0] for b, is_box in zip(batch.boxes, box.tolist())]  # box images' boxes only
        if box.any() and (self.tightness_weight > 0 or self.box_size_weight > 0):
            rows = box.nonzero().flatten().tolist()
            tight, size = weak_losses.box_prior_losses(
                main[box], [boxes[i] for i in rows], self.box_line_sharpness, self.box_fill, self.tightness_class_weights
            )
            terms["tightness"] = self.tightness_weight * tight
            terms["box_size"] = self.box_size_weight * size
        if box.any() and self.pairwise_weight > 0:
            inside = box_mask[box, 1:].amax(1) > 0  # B' x H x W: inside any box
            terms["pairwise"] = self.pairwise_weight * weak_losses.pairwise_loss(
                main[box], batch.images[box], inside, self.pairwise_dilation, self.pairwise_threshold
            )
        present = batch.global_labels * glob[:, None]  # B x C: image-level labels of global images only
        if glob.any() and self.presence_weight > 0:
            terms["presence"] = self.presence_weight * weak_losses.presence_loss(
                main[glob], present[glob], self.presence_area
            )
        if levels and self.multi_label:
            parts = [weight * weak_losses.weak_ds_loss(
                         [lv[rows] for lv in levels], allowed[rows], [boxes[i] for i in rows.nonzero().flatten().tolist()],
                         present[rows], self.ds_weights, self.presence_area)
                     for rows, weight in ((glob, self.weak_ds_weight), (box, self.box_ds_weight)) if weight > 0 and rows.any()]
            if parts:
                terms["weak_ds"] = sum(parts)
        terms |= self._max_pool_terms(levels, batch, box_mask, box, glob)
        return terms

    def _negative_term(self, main: Tensor, allowed: Tensor, box: Tensor, labelled: Tensor) -> Tensor:
        """The exact negatives of the labelled images, each at its annotation type's weight."""
        if self.negative_weight == self.global_negative_weight:  # one weight: the sum as before the split, to the bit
            return self.negative_weight * weak_losses.negative_loss(main[labelled], allowed[labelled])
        weights = torch.where(box, self.negative_weight, self.global_negative_weight)[labelled]
        return weak_losses.negative_loss(main[labelled], allowed[labelled], weights)

    def _max_pool_terms(self, levels, batch: Batch, box_mask: Tensor, box: Tensor, glob: Tensor) -> dict[str, Tensor]:
        """The first formulation (hard max over the map / over the box), kept for ablations."""
        terms: dict[str, Tensor] = {}
        if glob.any() and levels and self.max_pool_global_weight > 0:
            terms["global"] = self.max_pool_global_weight * losses.global_loss(
                [lv[glob] for lv in levels], batch.global_labels[glob], self.level_weights
            )
        if box.any() and levels and self.max_pool_box_weight > 0:
            rows = box.nonzero().flatten().tolist()
            terms["box"] = self.max_pool_box_weight * losses.box_loss(
                [lv[box] for lv in levels], box_mask[box], [batch.boxes[i] for i in rows], self.level_weights,
                positive_max_size=self.box_positive_max_size, mil_weight=self.box_mil_weight,
            )
        return terms


# box_fill auto: the band of a class covers the 5th-95th percentile of its masked boxes' fills; a
# class with fewer masked boxes than this keeps the default band
AUTO_FILL_PERCENTILES = (5.0, 95.0)
AUTO_FILL_MIN_BOXES = 3
DEFAULT_FILL = (0.5, 0.9)


def box_bands(box_fill, fills: Mapping[int, np.ndarray], num_classes: int) -> tuple[tuple[float, float], ...]:
    """The size band of each class (index = class): ``box_fill`` itself for every class, or with
    "auto" read off ``fills`` (class -> the shares of its boxes it fills on the masked images,
    ``annotations.box_fills``)."""
    if box_fill != "auto":
        return (tuple(box_fill),) * num_classes
    bands = []
    for cls in range(num_classes):
        values = fills.get(cls, np.empty(0))
        enough = cls > 0 and len(values) >= AUTO_FILL_MIN_BOXES
        bands.append(tuple(float(v) for v in np.percentile(values, AUTO_FILL_PERCENTILES)) if enough else DEFAULT_FILL)
    return tuple(bands)


def build_criterion(config: TrainConfig, num_classes: int, depth: int, device: torch.device,
                    masked_fills: Mapping[int, np.ndarray] | None = None,
                    class_names: Sequence[str] | None = None, box_supervision: str = "priors") -> Criterion:
    """The run's loss: every choice of the config resolved once. ``masked_fills``: the box fills of
    the masked training images (``annotations.box_fills``), read by ``box_fill: auto``;
    ``class_names``: the dataset's (index = class), read by the per-class weights;
    ``box_supervision``: the config's, resolved (fit.resolve_box_supervision: not "auto")."""
    if box_supervision not in ("priors", "shapes", "both"):
        raise ValueError(f"build_criterion: box_supervision must be resolved, got {box_supervision!r}")
    level_weights = tuple(config.ds_level_weights or (1.0,) * depth)
    if len(level_weights) != depth:
        raise UserError(f"ds_level_weights: {len(level_weights)} weights for {depth} supervised levels")
    ds = partial(_ds_of_kind, config.ds_type, config.ds_negative_rule)
    adjust = config.class_balance == "logit_adjust"
    log_weights = losses.class_weights(num_classes, config.foreground_weight).log().to(device)
    return Criterion(
        ds=ds,
        multi_label=config.ds_type == "multi_label",
        # lambda_ds scales deep supervision only; the weak-label terms have their own weights.
        ds_weights=tuple(config.ds_weight * w for w in level_weights),
        level_weights=level_weights,
        class_weights=(None if adjust else losses.class_weights(num_classes, config.foreground_weight).to(device)),
        pseudo_class_weights=(None if adjust else losses.class_weights(num_classes, config.pseudo_foreground_weight).to(device)),
        logit_offset=log_weights if adjust else None,
        pseudo_offset=log_weights if adjust or config.pseudo_debias else None,  # logit_adjust's pseudo-labels read adjusted logits too
        negative_weight=config.negative_weight,
        global_negative_weight=(config.negative_weight if config.global_negative_weight is None
                                else config.global_negative_weight),
        tightness_weight=config.tightness_weight,
        tightness_class_weights=class_weights_by_name(
            config.tightness_class_weights, class_names or [str(i) for i in range(num_classes)], "tightness_class_weights"),
        box_size_weight=config.box_size_weight,
        box_fill=box_bands(config.box_fill, masked_fills or {}, num_classes),
        box_line_sharpness=config.box_line_sharpness,
        pairwise_weight=config.pairwise_weight,
        pairwise_dilation=config.pairwise_dilation,
        pairwise_threshold=config.pairwise_threshold,
        presence_weight=config.presence_weight,
        presence_area=config.presence_area,
        weak_ds_weight=config.weak_ds_weight,
        box_ds_weight=config.box_ds_weight,
        max_pool_global_weight=config.global_weight,
        max_pool_box_weight=config.box_weight,
        box_positive_max_size=config.box_positive_max_size,
        box_mil_weight=config.box_mil_weight,
        pseudo_threshold=config.pseudo_threshold,
        pseudo_box_fill=config.pseudo_box_fill,
        pseudo_ds=config.pseudo_ds,
        strong_augment=config.strong_augment,
        separate_strong_stats=config.strong_view_stats == "separate",
        pseudo_mix=config.pseudo_mix,
        box_shape_weight=0.0 if box_supervision == "priors" else config.box_shape_weight,
        box_as_masks=box_supervision == "shapes",
    )


def _two_passes(student, weak_images: Tensor, student_images: Tensor, strong: Tensor):
    """The student's outputs when the strong views keep out of the BatchNorm statistics
    (``strong_view_stats: separate``): one pass over the whole batch at its weak view, whose rows
    not in ``strong`` are kept and which alone updates the running averages, and one pass over the
    ``strong`` rows of ``student_images`` (their strong views), normalised by their own batch
    statistics, whose outputs replace those rows."""
    main, levels = student(weak_images)
    rows = strong.nonzero().flatten()
    with frozen_running_stats(student):
        strong_main, strong_levels = student(student_images[rows])
    return main.index_copy(0, rows, strong_main), [lv.index_copy(0, rows, s) for lv, s in zip(levels, strong_levels)]


def _ds_of_kind(kind: str, negative_rule: str, level_logits, mask, weights) -> Tensor:
    return losses.ds_loss(kind, level_logits, mask, weights, negative_rule)
