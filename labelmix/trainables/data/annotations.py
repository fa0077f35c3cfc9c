"""Weak labels derived from masks, annotation-mix assignment, and the annotation cost model.

The trainables and the platform both import from here, so a mix means the same images and
the same hours everywhere (METHOD.md, "Annotation cost").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
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


def global_label(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Classes with at least one pixel, as a bool vector of length num_classes."""
    present = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes] > 0
    return present


@dataclass(frozen=True)
class AnnotationMix:
    """Fractions of the training images per annotation type; they sum to 1."""

    full: float = 1.0
    box: float = 0.0
    global_: float = 0.0
    none: float = 0.0

    def __post_init__(self) -> None:
        for name, value in zip(ANNOTATION_TYPES, self.fractions):
            if not (0.0 <= value <= 1.0) or not np.isfinite(value):
                raise UserError(f"mix.{name}: fraction must be in [0, 1], got {value}")
        total = sum(self.fractions)
        if abs(total - 1.0) > 1e-6:
            raise UserError(
                f"mix: fractions full+box+global+none must sum to 1, got {total:.6g} "
                f"({', '.join(f'{n}={v:g}' for n, v in zip(ANNOTATION_TYPES, self.fractions))})"
            )

    @property
    def fractions(self) -> tuple[float, float, float, float]:
        return (self.full, self.box, self.global_, self.none)

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> "AnnotationMix":
        """From ``{"full": .., "box": .., "global": .., "none": ..}``; missing types are 0."""
        unknown = set(values) - set(ANNOTATION_TYPES)
        if unknown:
            raise UserError(
                f"mix: unknown annotation type(s) {sorted(unknown)}; allowed: {list(ANNOTATION_TYPES)}"
            )
        return cls(*(float(values.get(name, 0.0)) for name in ANNOTATION_TYPES))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(ANNOTATION_TYPES, self.fractions))


def mix_counts(n: int, mix: AnnotationMix) -> np.ndarray:
    """Images per type for n images: largest-remainder rounding of the cumulative fractions.

    Rounding the cumulative sums (not each type alone) keeps the counts summing to n and makes
    "at least this rich" counts monotone in the fractions, which the nesting relies on.
    """
    cumulative = np.rint(np.cumsum(mix.fractions) * n).astype(np.int64)
    cumulative[-1] = n
    return np.diff(np.concatenate([[0], cumulative]))


def assign_mix(n: int, mix: AnnotationMix, seed: int) -> np.ndarray:
    """Annotation type (index into ANNOTATION_TYPES) of each of n training images.

    One seeded permutation ranks the images; the first ranks get ``full``, the next ``box``,
    then ``global``, the rest ``none``. So, for one seed, the images labelled *at least* as
    richly as a type form a prefix of the ranking: a smaller full fraction labels a subset of
    what a larger one labels, and likewise for full+box and full+box+global.
    """
    if n < 0:
        raise UserError(f"number of images must be >= 0, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    types_by_rank = np.repeat(np.arange(4, dtype=np.int8), mix_counts(n, mix))
    types = np.empty(n, dtype=np.int8)
    types[order] = types_by_rank
    return types


@dataclass(frozen=True)
class CostModel:
    """Seconds of annotator time per label (METHOD.md; sources there)."""

    full_seconds: float = 240.0  # per image: Bearman et al. 2016, 239.7 s per VOC image
    box_seconds: float = 7.0  # per box: Papadopoulos et al. 2017, extreme clicking
    global_seconds: float = 1.0  # per class asked: Bearman et al. 2016

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not np.isfinite(value) or value < 0:
                raise UserError(f"cost.{name}: must be a finite number >= 0, got {value}")


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


def image_seconds(types: np.ndarray, box_counts: np.ndarray, num_classes: int, cost: CostModel) -> np.ndarray:
    """Annotation seconds of each image given its type and its number of boxes.

    A global label asks the annotator about every foreground class (background is not asked).
    """
    per_type = np.stack(
        [
            np.full(len(types), cost.full_seconds),
            box_counts * cost.box_seconds,
            np.full(len(types), (num_classes - 1) * cost.global_seconds),
            np.zeros(len(types)),
        ]
    )  # 4 x N
    return per_type[types.astype(np.int64), np.arange(len(types))]


def mix_cost(types: np.ndarray, box_counts: np.ndarray, num_classes: int, cost: CostModel) -> MixCost:
    """Counts, hours and both readings of the paper's reduction for one assignment."""
    types = np.asarray(types)
    box_counts = np.asarray(box_counts)
    if types.shape != box_counts.shape:
        raise UserError(f"types and box_counts differ in length: {types.shape} vs {box_counts.shape}")
    n = len(types)
    counts = np.bincount(types.astype(np.int64), minlength=4)
    hours = float(image_seconds(types, box_counts, num_classes, cost).sum()) / 3600.0
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
