"""Pseudo-masks for box images from a box-conditioned network trained on the masked images.

The tightness prior and the pairwise term tell the main network only that a box's class crosses
every line of the box and spreads over similar neighbours; what shape a class takes inside its box
the 5% masked images know. Here they teach it to a small U-Net that sees one box at a time: the
crop around the box (the box widened by MARGIN of its size on each side, at least MIN_MARGIN
pixels, resampled to CROP x CROP) and a second channel marking the box, one logit per class out;
its loss reads the box's own class at the cells inside the box. Applied to every box of the box
images, its probabilities make each image a pseudo-mask: background outside all boxes (exact, as
the box label says), a box's class where the network is at least ``high`` sure, background where
every box over the pixel is at most ``low``, the rest ignored.

Coordinates follow augment.py: pixel (i, j) covers [j, j + 1) x [i, i + 1). A crop region is whole
pixels; cell k of CROP samples the region at ry0 + (k + 0.5) (ry1 - ry0) / CROP (bilinear for the
image, the pixel holding that point for masks and the box channel), and pasting back resizes the
CROP x CROP probabilities to the region with the same centres (``F.interpolate``, align_corners=False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from labelmix.trainables.losses import IGNORE
from labelmix.trainables.model import build_model

CROP = 32  # cells per side of a crop
MARGIN = 0.25  # context on each side, as a share of the box's larger side
MIN_MARGIN = 2  # pixels
BATCH = 32  # crops per training step
LR = 1e-3
BASE_CHANNELS = 16  # the crop U-Net's first block width


@dataclass(frozen=True)
class Crops:
    """Boxes cut out of their images, ready for the crop network."""

    inputs: Tensor  # K x 2 x CROP x CROP: image, and 1 at the cells inside the box
    boxes: Tensor  # K x 5 int64 [class, y0, x0, y1, x1]: the box of each crop
    regions: Tensor  # K x 4 int64 [y0, x0, y1, x1]: the widened, clipped region each crop samples
    owners: Tensor  # K int64: the image of each box

    @property
    def classes(self) -> Tensor:
        """K int64: each box's class."""
        return self.boxes[:, 0]


def regions(boxes: Tensor, height: int, width: int) -> Tensor:
    """K x 4 [y0, x0, y1, x1]: each box [cls, y0, x0, y1, x1] widened by its margin, clipped to the image."""
    y0, x0, y1, x1 = boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    margin = torch.maximum(((y1 - y0).maximum(x1 - x0).double() * MARGIN).round().long(), torch.tensor(MIN_MARGIN))
    return torch.stack([(y0 - margin).clamp(min=0), (x0 - margin).clamp(min=0),
                        (y1 + margin).clamp(max=height), (x1 + margin).clamp(max=width)], dim=1)


def _centres(start: Tensor, stop: Tensor) -> Tensor:
    """K x CROP: the pixel coordinates of each cell centre along one axis of each region."""
    k = (torch.arange(CROP, dtype=torch.float64) + 0.5) / CROP
    return start[:, None].double() + k[None] * (stop - start)[:, None].double()


def cut(images: Tensor, boxes: list[Tensor]) -> Crops:
    """The crops of every box of every image (``images`` N x 1 x H x W, ``boxes`` per image K x 5)."""
    h, w = images.shape[-2:]
    owners = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)])
    every = torch.cat([b.long() for b in boxes]) if len(owners) else torch.zeros(0, 5, dtype=torch.long)
    region = regions(every, h, w)
    # roi_align (aligned): one bilinear sample at each cell centre, in (x0, y0, x1, y1) pixel coordinates
    rois = torch.cat([owners[:, None], region[:, [1, 0, 3, 2]]], dim=1).to(images.dtype)
    image = roi_align(images, rois, (CROP, CROP), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    ys, xs = _centres(region[:, 0], region[:, 2]), _centres(region[:, 1], region[:, 3])  # K x CROP each
    inside = (((ys >= every[:, 1:2]) & (ys < every[:, 3:4]))[:, :, None]
              & ((xs >= every[:, 2:3]) & (xs < every[:, 4:5]))[:, None, :])  # K x CROP x CROP
    inputs = torch.cat([image, inside[:, None].to(image.dtype)], dim=1)
    return Crops(inputs, every, region, owners)


def targets(masks: Tensor, crops: Crops) -> Tensor:
    """K x CROP x CROP float: 1 where the pixel holding a cell centre has the box's class (``masks`` N x H x W)."""
    ys = _centres(crops.regions[:, 0], crops.regions[:, 2]).floor().long()  # K x CROP pixel rows
    xs = _centres(crops.regions[:, 1], crops.regions[:, 3]).floor().long()
    picked = masks.long()[crops.owners[:, None, None], ys[:, :, None], xs[:, None, :]]  # K x CROP x CROP
    return (picked == crops.classes[:, None, None]).float()


def crop_loss(logits: Tensor, crops_inside: Tensor, classes: Tensor, target: Tensor) -> Tensor:
    """BCE of each crop's own class logit against ``target``, averaged over the cells inside its box."""
    own = logits.float()[torch.arange(len(classes)), classes]  # K x CROP x CROP
    bce = F.binary_cross_entropy_with_logits(own, target, reduction="none")
    return (bce * crops_inside).sum() / crops_inside.sum().clamp(min=1)


def train_crop_net(crops: Crops, target: Tensor, num_classes: int, steps: int, generator: torch.Generator) -> torch.nn.Module:
    """A small U-Net fitted to the crops for ``steps`` steps of BATCH crops, each flipped left-right at random."""
    net = build_model("unet", num_classes, in_chans=2, ds_depth=0, unet_base_channels=BASE_CHANNELS)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR)
    net.train()
    for _ in range(steps):
        pick = torch.randint(len(crops.classes), (min(BATCH, len(crops.classes)),), generator=generator)
        inputs, goal = crops.inputs[pick], target[pick]
        flip = torch.rand(len(pick), generator=generator) < 0.5
        inputs = torch.where(flip[:, None, None, None], inputs.flip(-1), inputs)
        goal = torch.where(flip[:, None, None], goal.flip(-1), goal)
        logits, _ = net(inputs)
        loss = crop_loss(logits, inputs[:, 1], crops.classes[pick], goal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval()


@torch.no_grad()
def box_probabilities(net: torch.nn.Module, crops: Crops) -> Tensor:
    """K x CROP x CROP: the probability of each crop's own class (in chunks of 256 crops)."""
    parts = []
    for start in range(0, len(crops.classes), 256):
        logits, _ = net(crops.inputs[start:start + 256])
        classes = crops.classes[start:start + 256]
        parts.append(logits.float()[torch.arange(len(classes)), classes].sigmoid())
    return torch.cat(parts) if parts else torch.zeros(0, CROP, CROP)


def pseudo_masks(probs: Tensor, crops: Crops, count: int, size: tuple[int, int],
                 num_classes: int, low: float, high: float) -> Tensor:
    """``count`` x H x W uint8 pseudo-masks from each crop's probabilities (see the module docstring).

    Where boxes of two classes both pass ``high`` over a pixel, the more probable class wins.
    """
    h, w = size
    best = torch.zeros(count, num_classes, h, w)  # per image and class: the highest probability of its boxes
    covered = torch.zeros(count, h, w, dtype=torch.bool)
    for k, (box, region, i) in enumerate(zip(crops.boxes.tolist(), crops.regions.tolist(), crops.owners.tolist())):
        y0, x0, y1, x1 = region
        pasted = F.interpolate(probs[k][None, None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0, 0]
        c, by0, bx0, by1, bx1 = box
        inner = pasted[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
        best[i, c, by0:by1, bx0:bx1] = torch.maximum(best[i, c, by0:by1, bx0:bx1], inner)
        covered[i, by0:by1, bx0:bx1] = True
    top, label = best.max(dim=1)
    out = torch.full((count, h, w), IGNORE, dtype=torch.uint8)
    out[~covered | (top <= low)] = 0
    out[covered & (top >= high)] = label[covered & (top >= high)].to(torch.uint8)
    return out


def learned_box_masks(images: Tensor, masks: Tensor, boxes: list[Tensor], masked: Tensor, boxed: Tensor,
                      num_classes: int, steps: int, low: float, high: float, seed: int) -> Tensor:
    """Pseudo-masks (len(boxed) x H x W uint8) for the images ``boxed`` from a crop network trained on
    the boxes and masks of the images ``masked`` only (indices into ``images``, ``masks``, ``boxes``)."""
    generator = torch.Generator().manual_seed(seed)
    train = cut(images[masked], [boxes[i] for i in masked.tolist()])
    if len(train.classes) == 0:
        raise ValueError("learned_box_masks: the masked images hold no boxes to learn from")
    net = train_crop_net(train, targets(masks[masked], train), num_classes, steps, generator)
    apply = cut(images[boxed], [boxes[i] for i in boxed.tolist()])
    return pseudo_masks(box_probabilities(net, apply), apply, len(boxed), tuple(images.shape[-2:]), num_classes, low, high)
