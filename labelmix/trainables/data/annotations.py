"""Weak labels derived from masks, annotation-mix assignment, and the annotation cost model.

The trainables and the platform both import from here, so a mix means the same images and
the same hours everywhere (METHOD.md, "Annotation cost").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pydantic.dataclasses
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from scipy import ndimage

from labelmix.errors import UserError

ANNOTATION_TYPES: tuple[str, ...] = ("full", "box", "global", "none")
"""Annotation types, richest first; an image's type is stored as its index in this tuple."""

FULL, BOX, GLOBAL, NONE = range(4)

# 8-connectivity: a diagonal touch joins two pixels into one component (one box).
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def boxes_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """One tight box per 8-connected component per foreground class.

    Returns K x 5 int32 rows ``[class, y0, x0, y1, x1]`` (half-open: y1, x1 exclusive),
    ordered by class, then by component label (scan order of the component's first pixel).
    """
    rows = []
    for cls in range(1, num_classes):
        labelled, count = ndimage.label(mask == cls, structure=_CONNECTIVITY)
        for sl in ndimage.find_objects(labelled)[:count]:
            rows.append((cls, sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
    return np.asarray(rows, dtype=np.int32).reshape(-1, 5)


def box_fills(masks: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Class -> the share of each of its boxes that its mask fills (boxes K x 5 [cls, y0, x0, y1, x1], half-open)."""
    fills: dict[int, list[float]] = {}
    for mask, image_boxes in zip(masks, boxes):
        for cls, y0, x0, y1, x1 in np.asarray(image_boxes, dtype=np.int64):
            fills.setdefault(int(cls), []).append(float((mask[y0:y1, x0:x1] == cls).mean()))
    return {cls: np.array(values) for cls, values in sorted(fills.items())}


def global_label(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Classes with at least one pixel, as a bool vector of length num_classes."""
    present = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes] > 0
    return present


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid", populate_by_name=True))
class AnnotationMix:
    """Fractions of the training images per annotation type (they sum to 1), and the seed that
    picks which images get which type: the trial config's ``mix``, validated where it enters."""

    full: float = Field(1.0, ge=0, le=1)
    box: float = Field(0.0, ge=0, le=1)
    global_: float = Field(0.0, ge=0, le=1, alias="global")
    none: float = Field(0.0, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _simplex(self):
        total = sum(self.fractions)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"full+box+global+none must sum to 1, got {total:.6g}")
        return self

    @property
    def fractions(self) -> tuple[float, float, float, float]:
        return (self.full, self.box, self.global_, self.none)

    @classmethod
    def from_mapping(cls, values: Any, path: str = "mix") -> "AnnotationMix":
        """A complete mix as a study spec writes one, ``{full: 0.06, none: 0.94}``: missing types
        are 0, no seed. Refused with a UserError naming ``path`` (or ``path.<type>``)."""
        if not isinstance(values, Mapping):
            raise UserError(f"{path}: a complete mix is a mapping such as {{full: 0.06, none: 0.94}}, got {values!r}")
        unknown = set(values) - set(ANNOTATION_TYPES)
        if unknown:
            raise UserError(
                f"{path}: unknown annotation type(s) {sorted(unknown)}; allowed: {list(ANNOTATION_TYPES)}"
            )
        try:
            fractions = {name: float(values.get(name, 0.0)) for name in ANNOTATION_TYPES}
        except (TypeError, ValueError):
            raise UserError(f"{path}: mix fractions must be numbers, got {dict(values)!r}") from None
        try:
            return cls(**fractions)
        except ValidationError as exc:  # the fields' bounds or the simplex, worded for a complete mix
            error = exc.errors()[0]
            if error["loc"]:  # the first fraction out of [0, 1]
                raise UserError(f"{path}.{error['loc'][0]}: fraction must be in [0, 1], got {error['input']}") from None
            shown = ", ".join(f"{n}={v:g}" for n, v in fractions.items())
            raise UserError(f"{path}: fractions {error['msg'].removeprefix('Value error, ')} ({shown})") from None

    def as_dict(self) -> dict[str, float]:
        """The fractions by annotation type (the seed is not among them)."""
        return dict(zip(ANNOTATION_TYPES, self.fractions))


def mix_counts(n: int, mix: AnnotationMix) -> np.ndarray:
    """Images per type for n images: largest-remainder rounding of the cumulative fractions.

    Rounding the cumulative sums (not each type alone) keeps the counts summing to n and makes
    "at least this rich" counts monotone in the fractions, which the nesting relies on.
    """
    cumulative = np.rint(np.cumsum(mix.fractions) * n).astype(np.int64)
    cumulative[-1] = n
    return np.diff(np.concatenate([[0], cumulative]))


def class_balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A ranking of the images in which every class is shown as evenly as the images allow.

    ``labels`` is N x C bool (an image's classes, column 0 background, as ``global_label``). The
    strata are the foreground classes and "no foreground"; each next image is the first (in one
    seeded permutation) not yet ranked that shows the stratum shown least so far, ties going to
    the stratum with fewer images in all, then the lower column. Counts are of images: an image
    counts towards every class it shows. A stratum runs out when all its images are ranked.
    """
    labels = np.asarray(labels, dtype=bool)
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise ValueError(f"labels must be N x C with C >= 2 (background + a class), got shape {labels.shape}")
    foreground = labels[:, 1:]
    strata = np.concatenate([foreground, ~foreground.any(axis=1, keepdims=True)], axis=1)  # N x S
    permutation = np.random.default_rng(seed).permutation(len(labels))
    queues = [permutation[strata[permutation, s]] for s in range(strata.shape[1])]
    heads = [0] * len(queues)
    shown = np.zeros(strata.shape[1], dtype=np.int64)
    sizes = strata.sum(axis=0)
    ranked = np.zeros(len(labels), dtype=bool)
    order = []
    for _ in range(len(labels)):
        open_strata = []
        for s, queue in enumerate(queues):
            while heads[s] < len(queue) and ranked[queue[heads[s]]]:
                heads[s] += 1
            if heads[s] < len(queue):
                open_strata.append(s)
        s = min(open_strata, key=lambda s: (shown[s], sizes[s], s))  # every image is in some stratum
        image = queues[s][heads[s]]
        ranked[image] = True
        shown += strata[image]
        order.append(image)
    return np.asarray(order, dtype=np.int64)


def assign_mix(n: int, mix: AnnotationMix, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Annotation type (index into ANNOTATION_TYPES) of each of n training images.

    One seeded ranking orders the images; the first ranks get ``full``, the next ``box``, then
    ``global``, the rest ``none``. So, for one seed, the images labelled *at least* as richly as a
    type form a prefix of the ranking: a smaller full fraction labels a subset of what a larger one
    labels, and likewise for full+box and full+box+global. The ranking is a seeded permutation, or,
    given the images' class labels (N x C bool), ``class_balanced_order``.
    """
    if n < 0:
        raise UserError(f"number of images must be >= 0, got {n}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} class labels for {n} images")
    order = np.random.default_rng(seed).permutation(n) if labels is None else class_balanced_order(labels, seed)
    types_by_rank = np.repeat(np.arange(4, dtype=np.int8), mix_counts(n, mix))
    types = np.empty(n, dtype=np.int8)
    types[order] = types_by_rank
    return types


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CostModel:
    """Seconds of annotator time per label (METHOD.md; sources there): the config's ``cost``."""

    full_seconds: float = Field(240.0, ge=0)  # per image: Bearman et al. 2016, 239.7 s per VOC image
    box_seconds: float = Field(7.0, ge=0)  # per box: Papadopoulos et al. 2017, extreme clicking
    global_seconds: float = Field(1.0, ge=0)  # per class asked: Bearman et al. 2016

    @field_validator("full_seconds", "box_seconds", "global_seconds")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v!r}")
        return v


@dataclass(frozen=True)
class MixCost:
    counts: dict[str, int]
    hours: float
    hours_all_full: float
    pixel_label_reduction: float  # 1 - n_full / N
    cost_reduction: float  # 1 - cost(mix) / cost(all full)

    def metrics(self) -> dict[str, float]:
        """The DESIGN.md metric names: cost/hours, cost/reduction, labels/<type>, ..."""
        out = {f"labels/{name}": float(count) for name, count in self.counts.items()}
        out["cost/hours"] = self.hours
        out["cost/hours_all_full"] = self.hours_all_full
        out["cost/reduction"] = self.cost_reduction
        out["cost/pixel_label_reduction"] = self.pixel_label_reduction
        return out


def image_seconds(types: np.ndarray, box_counts: np.ndarray, num_classes: int, cost: CostModel,
                  classes_asked: bool = False) -> np.ndarray:
    """Annotation seconds of each image given its type and its number of boxes.

    A global label asks the annotator about every foreground class (background is not asked).
    ``classes_asked``: every image's classes were asked before the mix was assigned (the masks chosen
    by ``class_balanced_order``), so the masked and the unlabeled images pay a global label on top;
    box and global-label images' own labels already tell their classes.
    """
    asked = np.isin(types, (FULL, NONE)) * (num_classes - 1) * cost.global_seconds if classes_asked else 0.0
    per_type = np.stack(
        [
            np.full(len(types), cost.full_seconds),
            box_counts * cost.box_seconds,
            np.full(len(types), (num_classes - 1) * cost.global_seconds),
            np.zeros(len(types)),
        ]
    )  # 4 x N
    return per_type[types.astype(np.int64), np.arange(len(types))] + asked


def mix_cost(types: np.ndarray, box_counts: np.ndarray, num_classes: int, cost: CostModel,
             classes_asked: bool = False) -> MixCost:
    """Counts, hours and both readings of the paper's reduction for one assignment
    (``classes_asked`` as in ``image_seconds``)."""
    types = np.asarray(types)
    box_counts = np.asarray(box_counts)
    if types.shape != box_counts.shape:
        raise UserError(f"types and box_counts differ in length: {types.shape} vs {box_counts.shape}")
    n = len(types)
    counts = np.bincount(types.astype(np.int64), minlength=4)
    hours = float(image_seconds(types, box_counts, num_classes, cost, classes_asked).sum()) / 3600.0
    hours_full = n * cost.full_seconds / 3600.0
    return MixCost(
        counts={name: int(c) for name, c in zip(ANNOTATION_TYPES, counts)},
        hours=hours,
        hours_all_full=hours_full,
        pixel_label_reduction=float(1.0 - counts[FULL] / n) if n else 0.0,
        cost_reduction=1.0 - hours / hours_full if hours_full > 0 else 0.0,
    )


def type_names(types: Sequence[int]) -> list[str]:
    return [ANNOTATION_TYPES[t] for t in types]
