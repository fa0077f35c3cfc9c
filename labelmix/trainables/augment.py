"""Augmentation of a whole batch at once, on the device its tensors are on.

The same distribution as ``batches.Augmenter`` (torchvision's RandomHorizontalFlip, then
RandomAffine(degrees=5, translate=(0.04, 0.04), scale=(0.95, 1.05)), then the intensity jitter),
but one affine matrix per image and a single ``grid_sample`` for the batch instead of a loop of
per-image torchvision calls on the CPU.

Coordinates are continuous pixel coordinates, x to the right and y down, with pixel (i, j)
covering [j, j + 1) x [i, i + 1): its centre lies at (j + 0.5, i + 0.5), and a half-open box
[y0, y1) x [x0, x1) covers exactly its pixels' squares. This is torchvision's convention, and
``grid_sample``'s with ``align_corners=False``. A mask pixel after the warp takes the label of the
source pixel whose square holds the inverse image of its centre, so that centre is the image of a
point inside the source box: bounding the four transformed box corners and rounding outwards
(``_boxes_back``) gives a box that still holds every pixel of the component.

Random numbers are drawn on the CPU (from ``generator`` or torch's global CPU generator, the one
that checkpoints save): a few numbers per image, the same draws on every device, no device sync.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from labelmix.trainables.batches import _boxes_back

DEGREES = 5.0  # rotation U(-DEGREES, DEGREES), clockwise on screen for positive angles (torchvision's affine)
TRANSLATE = 0.04  # translation U(-TRANSLATE, TRANSLATE) of width and height, rounded to whole pixels (torchvision)
SCALE = (0.95, 1.05)
GAMMA, CONTRAST, BRIGHTNESS = (0.8, 1.25), (0.85, 1.15), (-0.05, 0.05)
TINY = 1e-20  # the jitter's floor before its log


@dataclass
class AffineParams:
    """One geometric transform per image: flip first, then rotate and scale about the centre, then shift."""

    flip: torch.Tensor  # B bool: mirror left-right
    angle: torch.Tensor  # B float64 degrees
    translate: torch.Tensor  # B x 2 float64 pixels (x, y)
    scale: torch.Tensor  # B float64

    @staticmethod
    def identity(batch: int) -> "AffineParams":
        zeros = torch.zeros(batch, dtype=torch.float64)
        return AffineParams(torch.zeros(batch, dtype=torch.bool), zeros, torch.zeros(batch, 2, dtype=torch.float64), zeros + 1)


@dataclass
class IntensityParams:
    gamma: torch.Tensor  # B
    contrast: torch.Tensor  # B
    brightness: torch.Tensor  # B


class BatchAugmenter:
    """Joint geometric augmentation of images, masks and boxes, then intensity jitter of the images."""

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        self.generator = generator  # a CPU generator; None: torch's global one

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, boxes: list[torch.Tensor]):
        b, _, h, w = images.shape
        images, masks, boxes = warp(images, masks, boxes, self.sample_affine(b, h, w))
        return jitter(images, self.sample_intensity(b)), masks, boxes

    def sample_affine(self, batch: int, height: int, width: int) -> AffineParams:
        u = torch.rand(batch, 5, dtype=torch.float64, generator=self.generator)  # B x 5 in [0, 1)
        max_shift = torch.tensor([TRANSLATE * width, TRANSLATE * height], dtype=torch.float64)
        return AffineParams(
            flip=u[:, 0] < 0.5,
            angle=DEGREES * (2 * u[:, 1] - 1),
            translate=torch.round((2 * u[:, 2:4] - 1) * max_shift),  # B x 2 whole pixels
            scale=SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 4],
        )

    def sample_intensity(self, batch: int) -> IntensityParams:
        u = torch.rand(3, batch, dtype=torch.float64, generator=self.generator)  # 3 x B in [0, 1)
        gamma, contrast, brightness = (low + (high - low) * row for (low, high), row in zip((GAMMA, CONTRAST, BRIGHTNESS), u))
        return IntensityParams(gamma, contrast, brightness)


def affine_matrices(params: AffineParams, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(forward, inverse): B x 2 x 3 float64 NumPy maps between pixel coordinates.

    forward maps source to output, q = c + t + s R M (p - c); inverse maps back, p = c + M R^T (q - c - t) / s.
    c is the image centre, t the translation, s the scale, R the rotation [[cos, -sin], [sin, cos]]
    (torchvision's affine) and M the mirror diag(-1, 1) of flipped images (applied first, as in the
    old Compose). In NumPy: a few numbers per image, where each of the ~20 torch calls they took
    cost more than its work.
    """
    rad = params.angle.numpy() * (math.pi / 180.0)
    cos, sin, scale = np.cos(rad), np.sin(rad), params.scale.numpy()[:, None, None]
    mirror = np.where(params.flip.numpy(), -1.0, 1.0)  # B: -1 or 1
    forward = np.stack([mirror * cos, -sin, mirror * sin, cos], -1).reshape(-1, 2, 2) * scale  # s R M
    inverse = np.stack([mirror * cos, mirror * sin, -sin, cos], -1).reshape(-1, 2, 2) / scale  # M R^T / s
    shift = params.translate.numpy()  # B x 2
    centre = np.array([width / 2.0, height / 2.0])
    return (_about_centre(forward, shift, centre),
            _about_centre(inverse, -(inverse @ shift[:, :, None])[..., 0], centre))


def _about_centre(linear: np.ndarray, shift: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """B x 2 x 3 for x -> c + shift + linear (x - c), c the image centre."""
    offset = centre + shift - linear @ centre  # B x 2
    return np.concatenate([linear, offset[..., None]], axis=-1)


def sampling_grid(inverse: np.ndarray, height: int, width: int, device, dtype) -> torch.Tensor:
    """The grid_sample grid (align_corners=False): for every output pixel centre, its source point.

    ``F.affine_grid`` builds its base grid with ``linspace``, whose float32 values miss the pixel
    centres by up to 4e-6 pixel, so an identity or a flip would blend neighbours; the centres here
    are exact for power-of-two sizes, so those transforms copy pixels exactly.
    """
    linear, offset = inverse[:, :, :2], inverse[:, :, 2]  # B x 2 x 2, B x 2 (float64 NumPy)
    half = np.array([width / 2.0, height / 2.0])
    # Normalised coordinates n = p / half - 1:  n_src = (half^-1 L half) n_out + (L half + b) / half - 1
    theta_linear = linear * half / half[:, None]  # B x 2 x 2
    theta_offset = ((linear @ half) + offset) / half - 1  # B x 2
    # B x 2 x 3 (x coefficient, y coefficient, offset), moved to the device in one copy
    theta = torch.from_numpy(np.concatenate([theta_linear, theta_offset[..., None]], axis=-1)).to(device=device, dtype=dtype)
    b = theta.shape[0]
    xs = _pixel_centres(width, device, dtype).view(1, 1, 1, width)
    ys = _pixel_centres(height, device, dtype).view(1, 1, height, 1)
    # Elementwise rather than a matmul, so TF32 never rounds the grid: n_src = x theta[:, :, 0] + (y theta[:, :, 1] + theta[:, :, 2]).
    # Built as B x 2 x H x W planes (the broadcast runs over contiguous rows; 10x faster on one CPU thread
    # than broadcasting into the trailing pair) and handed to grid_sample as the permuted view.
    planes = (ys * theta[:, :, 1].view(b, 2, 1, 1) + theta[:, :, 2].view(b, 2, 1, 1)) + xs * theta[:, :, 0].view(b, 2, 1, 1)
    return planes.permute(0, 2, 3, 1)  # B x H x W x 2


@functools.lru_cache(maxsize=16)
def _pixel_centres(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """size pixel centres in normalised coordinates, (2 i + 1) / size - 1 (read-only, cached)."""
    return ((torch.arange(size, device=device, dtype=torch.float64) * 2 + 1) / size - 1).to(dtype)


def warp(images: torch.Tensor, masks: torch.Tensor, boxes: list[torch.Tensor], params: AffineParams):
    """Apply one affine transform per image: nearest for images and masks (torchvision's RandomAffine
    default, so the distribution is the old Augmenter's), corners for boxes.

    Outside the source image, images get 0 and masks 0 (background), as in torchvision.
    """
    b, _, h, w = images.shape
    forward, inverse = affine_matrices(params, h, w)
    grid = sampling_grid(inverse, h, w, images.device, images.dtype)
    # One grid_sample for both: the mask rides as the last channel (nearest copies labels, 0..255 are exact in float)
    both = torch.cat([images, masks[:, None].to(images.dtype)], dim=1)
    both = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    images, masks = both[:, :-1], both[:, -1].to(masks.dtype)  # B x C x H x W, B x H x W in the masks' dtype
    return images, masks, transform_boxes(boxes, forward, (h, w))


def transform_boxes(boxes: list[torch.Tensor], forward: np.ndarray, size) -> list[torch.Tensor]:
    """Per image K x 5 [cls, y0, x0, y1, x1] through its 2 x 3 forward map (NumPy): the bound of the four corners, rounded outwards.

    Boxes live on the CPU (``Batch.to`` moves them with the batch); the arithmetic runs in NumPy, a few
    rows per image.
    """
    counts = [len(box) for box in boxes]
    if sum(counts) == 0:
        return list(boxes)
    every = torch.cat(boxes).numpy()  # N x 5, all images' boxes
    owner = np.repeat(np.arange(len(boxes)), counts)  # N: the image of each box
    matrix = forward[owner]  # N x 2 x 3 float64
    x = every[:, [2, 4, 2, 4]].astype(np.float64)  # N x 4 corner x: x0, x1, x0, x1
    y = every[:, [1, 1, 3, 3]].astype(np.float64)  # N x 4 corner y: y0, y0, y1, y1
    moved_x = matrix[:, 0, 0:1] * x + matrix[:, 0, 1:2] * y + matrix[:, 0, 2:3]  # N x 4
    moved_y = matrix[:, 1, 0:1] * x + matrix[:, 1, 1:2] * y + matrix[:, 1, 2:3]  # N x 4
    xyxy = np.stack([moved_x.min(1), moved_y.min(1), moved_x.max(1), moved_y.max(1)], axis=1)  # N x 4
    # _boxes_back rounds, clips and drops empty boxes in one place; its first column carries each box's
    # index here, so the kept rows tell which boxes (of which images) survived.
    kept = _boxes_back(xyxy, np.arange(len(every)), size).numpy()
    rows = np.concatenate([every[kept[:, 0], :1], kept[:, 1:]], axis=1)  # N' x 5: the classes back in front
    return list(torch.from_numpy(rows).split(np.bincount(owner[kept[:, 0]], minlength=len(boxes)).tolist()))


def jitter(images: torch.Tensor, params: IntensityParams) -> torch.Tensor:
    """Per-image gamma, contrast and brightness (``batches._intensity``'s formula), clamped to [0, 1]."""
    # B x 1 x 1 x 1 each, moved in one copy
    gamma, contrast, brightness = torch.stack([params.gamma, params.contrast, params.brightness]).to(
        device=images.device, dtype=images.dtype).view(3, -1, 1, 1, 1)
    # x^gamma as exp(gamma log x): pow with a per-image exponent tensor took 4x as long on one CPU thread.
    # The clamp to TINY keeps log off 0, whose special-value path (log 0, then exp(-inf)) took 20x as long
    # as ordinary floats, and black borders are common after the warp; TINY^gamma < 1e-16 is 0 to float32
    # beside the brightness. In place after the clamp: one new tensor.
    out = images.clamp_min(TINY).log_().mul_(gamma).exp_().mul_(contrast)
    return out.add_(brightness).clamp_(0, 1)
