"""Batches of mixed annotation types, from a store held in memory.

All four annotation types share one loader. Each image carries what its type allows the losses
to see: the mask (used for ``full`` only), its boxes (``box``), its global label (``global``).
The training loop indexes the mask with the ``full`` selector alone, so weak images never leak
pixel labels into a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from labelmix.trainables.data.annotations import FULL
from labelmix.trainables.data.store import ImageStore


@dataclass
class Batch:
    images: torch.Tensor  # B x 1 x H x W float
    masks: torch.Tensor  # B x H x W int64 (only rows of full images are read by the losses)
    types: torch.Tensor  # B int64: index into ANNOTATION_TYPES
    global_labels: torch.Tensor  # B x C float multi-hot, background 1
    boxes: list[torch.Tensor]  # per image K x 5 int64 [class, y0, x0, y1, x1], half-open

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.images.to(device, non_blocking=True),
            self.masks.to(device, non_blocking=True),
            self.types.to(device, non_blocking=True),
            self.global_labels.to(device, non_blocking=True),
            [b.to(device) for b in self.boxes],
        )


@dataclass
class TensorSet:
    """A split of the store as tensors (images scaled to [0, 1])."""

    images: torch.Tensor  # N x 1 x H x W float32
    masks: torch.Tensor  # N x H x W uint8
    global_labels: torch.Tensor  # N x C float32
    boxes: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.images)


def to_tensors(store: ImageStore) -> TensorSet:
    if store.uniform_size is None:
        from labelmix.errors import UserError

        raise UserError(
            "dataset: images of different sizes in one store; re-import with --size H W so trials can batch them"
        )
    scale = float(np.iinfo(store.images.dtype).max)
    images = torch.from_numpy(np.ascontiguousarray(store.images)).float().div_(scale).unsqueeze(1)  # N x 1 x H x W
    global_labels = torch.from_numpy(store.global_labels.astype(np.float32))
    global_labels[:, 0] = 1.0  # background is allowed everywhere
    return TensorSet(
        images=images,
        masks=torch.from_numpy(np.ascontiguousarray(store.masks)),
        global_labels=global_labels,
        boxes=[torch.from_numpy(b.astype(np.int64)) for b in store.boxes],
    )


def batch_indices(types: np.ndarray, batch_size: int, steps: int, full_per_batch: int, rng: np.random.Generator,
                  share: bool = False) -> np.ndarray:
    """steps x batch_size image indices for one epoch.

    When fully labelled images exist and ``full_per_batch`` > 0, every batch holds the same number
    of them (drawn from their own cycling permutation), the rest from the others: ``full_per_batch``,
    or with ``share`` their share of the batch (rounded half up) where that is more, leaving one slot
    for the others (full_masks_per_batch). A 5% mix so gets its masks into every batch.
    """
    n = len(types)
    full = np.flatnonzero(types == FULL)
    rest = np.flatnonzero(types != FULL)
    k = full_masks_per_batch(len(full), n, batch_size, full_per_batch, share) if len(full) and len(rest) else 0
    if k == 0:
        return _cycled(np.arange(n), steps * batch_size, rng).reshape(steps, batch_size)
    from_full = _cycled(full, steps * k, rng).reshape(steps, k)
    from_rest = _cycled(rest, steps * (batch_size - k), rng).reshape(steps, batch_size - k)
    batches = np.concatenate([from_full, from_rest], axis=1)  # steps x batch_size
    return rng.permuted(batches, axis=1)


def full_masks_per_batch(full: int, total: int, batch_size: int, full_per_batch: int, share: bool = False) -> int:
    """Masked images in each batch when ``full`` of ``total`` images are masked and some are not.

    0 when ``full_per_batch`` is 0 (no guarantee: a plain shuffle); ``batch_size`` when
    ``full_per_batch`` >= ``batch_size``; else ``full_per_batch``, or with ``share`` the larger of
    it and the masks' share of the batch rounded half up, at most ``batch_size`` - 1.
    """
    if full_per_batch == 0 or full_per_batch >= batch_size:
        return min(full_per_batch, batch_size)
    if not share:
        return full_per_batch
    masks_share = min(math.floor(batch_size * full / total + 0.5), batch_size - 1)
    return max(full_per_batch, masks_share)


def _cycled(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """count items from pool: successive shuffled passes, so each item is seen once per pass."""
    passes = -(-count // len(pool))
    if passes == 0:  # no slot left for this pool (full_per_batch >= batch_size): nothing to concatenate
        return pool[:0]
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:count]


def _geometric() -> v2.Transform:
    # Small, content-keeping transforms: the global label of an image stays true under them.
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=5, translate=(0.04, 0.04), scale=(0.95, 1.05)),
        ]
    )


class Augmenter:
    """Joint geometric augmentation of image, mask and boxes; intensity augmentation of the image."""

    def __init__(self) -> None:
        self.geometric = _geometric()

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, boxes: list[torch.Tensor]):
        out_images, out_masks, out_boxes = [], [], []
        size = images.shape[-2:]
        for image, mask, box in zip(images, masks, boxes):
            xyxy = box[:, [2, 1, 4, 3]].float()  # [cls, y0, x0, y1, x1] -> x0, y0, x1, y1
            img, msk, bb = self.geometric(
                tv_tensors.Image(image),
                tv_tensors.Mask(mask),
                tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=tuple(size)),
            )
            out_images.append(img.as_subclass(torch.Tensor))
            out_masks.append(msk.as_subclass(torch.Tensor))
            out_boxes.append(_boxes_back(bb.as_subclass(torch.Tensor), box[:, 0], size))
        images = torch.stack(out_images)
        return _intensity(images), torch.stack(out_masks), out_boxes


def _boxes_back(xyxy, classes, size) -> torch.Tensor:
    """Transformed float boxes (N x 4 x0, y0, x1, y1) -> integer half-open [cls, y0, x0, y1, x1], empty ones dropped.

    CPU tensors or arrays in, an int64 tensor out; the arithmetic runs in NumPy (boxes are a few
    per image, where each torch call's overhead outweighs its work).
    """
    h, w = size
    xyxy = np.asarray(xyxy, dtype=np.float64)
    x0, y0 = np.clip(np.floor(xyxy[:, 0]), 0, w), np.clip(np.floor(xyxy[:, 1]), 0, h)
    x1, y1 = np.clip(np.ceil(xyxy[:, 2]), 0, w), np.clip(np.ceil(xyxy[:, 3]), 0, h)
    out = np.stack([np.asarray(classes, dtype=np.float64), y0, x0, y1, x1], axis=1).astype(np.int64)
    keep = (out[:, 3] > out[:, 1]) & (out[:, 4] > out[:, 2])
    return torch.from_numpy(out[keep])


def _intensity(images: torch.Tensor) -> torch.Tensor:
    """Per-image gamma, contrast and brightness jitter (vectorised over the batch)."""
    b = images.shape[0]
    gamma = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.25)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.85, 1.15)
    brightness = torch.empty(b, 1, 1, 1).uniform_(-0.05, 0.05)
    return (images.clamp_min(0).pow(gamma) * contrast + brightness).clamp_(0, 1)


# (images, masks, boxes) -> the same, augmented: Augmenter (per image, CPU) or augment.BatchAugmenter (batch, any device)
Augment = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]

DEVICE_MEMORY_SHARE = 0.25  # most of a GPU's free memory a resident training set may take


def make_batch(data: TensorSet, types: torch.Tensor, index: np.ndarray, augmenter: Optional[Augment]) -> Batch:
    """Gather a batch where ``data`` lives (CPU, or the device after ``on_device``), then augment it there."""
    idx = torch.from_numpy(index)
    where = idx.to(data.images.device)  # images, masks and global labels live together (on_device moves all three)
    # index_select, not x[where]: the same rows, 3x (images) to 16x (uint8 masks) faster on one CPU thread
    images = data.images.index_select(0, where)
    masks = data.masks.index_select(0, where)  # the store's uint8 through augmentation, int64 for the losses
    boxes = [data.boxes[i] for i in index]
    if augmenter is not None:
        images, masks, boxes = augmenter(images, masks, boxes)
    return Batch(images, masks.long(), types.index_select(0, idx).long(), data.global_labels.index_select(0, where), boxes)


def on_device(data: TensorSet, device: torch.device) -> TensorSet:
    """The set's images, masks and global labels on a CUDA device when they fit, so batches are gathered there.

    They fit when they take at most DEVICE_MEMORY_SHARE of the device's free memory (trials may share
    a GPU); otherwise, and on the CPU, the set is returned as it is. Boxes stay on the CPU: they are
    few, and ``Batch.to`` moves each batch's.
    """
    if device.type != "cuda":
        return data
    size = sum(t.numel() * t.element_size() for t in (data.images, data.masks, data.global_labels))
    free, _ = torch.cuda.mem_get_info(device)
    if size > DEVICE_MEMORY_SHARE * free:
        return data
    return TensorSet(data.images.to(device), data.masks.to(device), data.global_labels.to(device), data.boxes)


def strong_view(images: torch.Tensor) -> torch.Tensor:
    """The student's strongly augmented view of a batch (FixMatch / UniMatch style), photometric only.

    Stronger gamma, contrast and brightness jitter than ``_intensity``, a Gaussian blur on half of
    the images and additive noise; no geometric change, so the teacher's pseudo-label on the weak
    view (the input here) and every weak label stay aligned with the student's pixels.
    """
    b = images.shape[0]
    gen = dict(device=images.device, dtype=images.dtype)
    gamma = torch.empty(b, 1, 1, 1, **gen).uniform_(0.6, 1.6)
    contrast = torch.empty(b, 1, 1, 1, **gen).uniform_(0.6, 1.4)
    brightness = torch.empty(b, 1, 1, 1, **gen).uniform_(-0.15, 0.15)
    out = images.clamp_min(0).pow(gamma) * contrast + brightness
    sigma = torch.empty(b, **gen).uniform_(0.3, 1.5)
    blurred = gaussian_blur(out, sigma)
    use_blur = (torch.rand(b, 1, 1, 1, device=images.device) < 0.5).to(images.dtype)
    out = use_blur * blurred + (1 - use_blur) * out
    noise = torch.randn_like(out) * torch.empty(b, 1, 1, 1, **gen).uniform_(0.0, 0.08)
    return (out + noise).clamp_(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image: B x 1 x H x W -> same (edge pixels repeated)."""
    b = images.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)  # B x K
    kernel = kernel / kernel.sum(1, keepdim=True)
    x = images.transpose(0, 1)  # 1 x B x H x W: one group per image
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=b)
    return x.transpose(0, 1)


CUTMIX_AREA = (0.25, 0.5)  # the share of the image a CutMix rectangle covers, uniform
CUTMIX_ASPECT = 3.0  # its height / width ratio, log-uniform in [1 / CUTMIX_ASPECT, CUTMIX_ASPECT]


def cutmix_masks(count: int, height: int, width: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``count`` x H x W bool: one axis-aligned rectangle per mixed image (French et al., BMVC 2020).

    Its area is a uniform share CUTMIX_AREA of the image, its aspect ratio log-uniform, its place
    uniform among the positions where it fits. Random numbers come from the CPU (``generator`` or
    torch's global CPU generator, the one checkpoints save).
    """
    u = torch.rand(count, 4, dtype=torch.float64, generator=generator)
    area = (CUTMIX_AREA[0] + (CUTMIX_AREA[1] - CUTMIX_AREA[0]) * u[:, 0]) * height * width
    aspect = torch.exp((2 * u[:, 1] - 1) * math.log(CUTMIX_ASPECT))  # height / width
    rect_h = torch.sqrt(area * aspect).round().clamp(1, height).long()
    rect_w = torch.sqrt(area / aspect).round().clamp(1, width).long()
    top = (u[:, 2] * (height - rect_h + 1)).floor().long()
    left = (u[:, 3] * (width - rect_w + 1)).floor().long()
    ys = torch.arange(height)[None, :, None]
    xs = torch.arange(width)[None, None, :]
    inside = ((ys >= top[:, None, None]) & (ys < (top + rect_h)[:, None, None])
              & (xs >= left[:, None, None]) & (xs < (left + rect_w)[:, None, None]))
    return inside.to(device)


def cut_mix(x: torch.Tensor, rows: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """``x`` with row ``rows[k]`` taking row ``rows[k - 1]``'s values inside ``cut[k]`` (k = 0 takes the last).

    ``x`` is B x H x W (labels) or B x C x H x W (images); ``rows`` n indices into B; ``cut`` n x H x W
    bool (``cutmix_masks``). Each mixed row pastes its predecessor's rectangle, so with n >= 2 no row
    is mixed with itself; rows not listed are unchanged. Images and their pseudo-labels mixed with the
    same ``rows`` and ``cut`` stay aligned pixel for pixel.
    """
    partners = rows.roll(1)
    where = cut if x.dim() == 3 else cut[:, None]
    out = x.clone()
    out[rows] = torch.where(where, x[partners], x[rows])
    return out
