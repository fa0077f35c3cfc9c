"""Batch augmentation: boxes keep their components, exact flips and identities, torchvision's distribution."""

import numpy as np
import pytest
import torch

from labelmix.trainables.augment import AffineParams, BatchAugmenter, warp
from labelmix.trainables.data.annotations import boxes_from_mask


def two_blobs(size: int = 64) -> torch.Tensor:
    """size x size mask: a class-1 disc left of centre, a class-2 ellipse touching the right edge."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=np.int64)
    mask[(yy - 30) ** 2 + (xx - 18) ** 2 <= 100] = 1
    mask[((yy - 40) / 12.0) ** 2 + ((xx - 58) / 7.0) ** 2 <= 1] = 2
    return torch.from_numpy(mask)


def batch_of(mask: torch.Tensor, copies: int):
    boxes = torch.from_numpy(boxes_from_mask(mask.numpy(), 3).astype(np.int64))
    images = mask[None, None].float().repeat(copies, 1, 1, 1) / 2  # B x 1 x H x W
    return images, mask.repeat(copies, 1, 1), [boxes] * copies


def test_every_mask_pixel_stays_inside_a_box_of_its_class():
    images, masks, boxes = batch_of(two_blobs(), copies=10)
    augment = BatchAugmenter(torch.Generator().manual_seed(0))
    for _ in range(5):  # 50 draws
        _, out_masks, out_boxes = augment(images, masks, boxes)
        for mask, box in zip(out_masks, out_boxes):
            for cls in (1, 2):
                ys, xs = torch.nonzero(mask == cls, as_tuple=True)
                own = box[box[:, 0] == cls]
                inside = (
                    (own[:, 1, None] <= ys) & (ys < own[:, 3, None]) & (own[:, 2, None] <= xs) & (xs < own[:, 4, None])
                ).any(0)
                assert bool(inside.all()), (cls, own)
                if len(ys):  # and the box is not vacuous: within 3 pixels of the component's tight box
                    tight = torch.stack([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
                    assert len(own) == 1 and int((own[0, 1:] - tight).abs().max()) <= 3, (own, tight)


def test_flip_alone_mirrors_image_mask_and_boxes_exactly():
    images = torch.rand(2, 1, 8, 16, generator=torch.Generator().manual_seed(0))
    masks = torch.randint(0, 3, (2, 8, 16), generator=torch.Generator().manual_seed(1))
    masks[0, 1, 2] = 255
    boxes = [torch.tensor([[1, 2, 3, 5, 7], [2, 0, 0, 4, 2]]), torch.zeros(0, 5, dtype=torch.int64)]
    params = AffineParams.identity(2)
    params.flip[:] = True
    out_images, out_masks, out_boxes = warp(images, masks, boxes, params)
    assert torch.equal(out_images, images.flip(-1))
    assert torch.equal(out_masks, masks.flip(-1))
    # width 16: x -> 16 - x, so [x0, x1) = [3, 7) becomes [9, 13) and [0, 2) becomes [14, 16)
    assert torch.equal(out_boxes[0], torch.tensor([[1, 2, 9, 5, 13], [2, 0, 14, 4, 16]]))
    assert out_boxes[1].shape == (0, 5)


def test_identity_returns_the_inputs():
    images, masks, boxes = batch_of(two_blobs(), copies=3)
    images = images + torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 0.5
    out_images, out_masks, out_boxes = warp(images, masks, boxes, AffineParams.identity(3))
    assert torch.allclose(out_images, images, atol=1e-6)
    assert torch.equal(out_masks, masks)
    assert all(torch.equal(a, b) for a, b in zip(out_boxes, boxes))


def test_whole_pixel_shift_moves_labels_and_ignore_pixels_with_background_fill():
    masks = two_blobs()[None].clone()
    masks[0, 5:9, 40:50] = 255
    params = AffineParams.identity(1)
    params.translate[0] = torch.tensor([3.0, -2.0])  # 3 right, 2 up
    _, out, _ = warp(torch.zeros(1, 1, 64, 64), masks, [torch.zeros(0, 5, dtype=torch.int64)], params)
    expected = torch.zeros_like(masks)
    expected[0, :62, 3:] = masks[0, 2:, :61]
    assert torch.equal(out, expected)


def test_masks_keep_their_labels_under_random_transforms():
    masks = two_blobs()[None].repeat(20, 1, 1)
    masks[:, 20:30, 25:40] = 255  # an ignore region inside the image
    images = masks[:, None].float() / 255
    no_boxes = [torch.zeros(0, 5, dtype=torch.int64)] * 20
    _, out, _ = BatchAugmenter(torch.Generator().manual_seed(3))(images, masks, no_boxes)
    assert out.dtype == torch.int64
    assert set(out.unique().tolist()) == {0, 1, 2, 255}
    ignored = (out == 255).sum((1, 2)).float()  # 150 pixels, scaled by s^2 with s in [0.95, 1.05]
    assert bool((ignored >= 150 * 0.95**2 - 15).all() and (ignored <= 150 * 1.05**2 + 15).all()), ignored


def test_parameters_follow_torchvisions_distribution():
    params = BatchAugmenter(torch.Generator().manual_seed(0)).sample_affine(2000, height=64, width=128)
    assert abs(params.flip.double().mean().item() - 0.5) <= 0.05
    assert -5 <= params.angle.min() < -4.9 and 4.9 < params.angle.max() <= 5
    assert 0.95 <= params.scale.min() < 0.951 and 1.049 < params.scale.max() <= 1.05
    # translate: U(-0.04, 0.04) of width (128 -> 5.12 px) and height (64 -> 2.56 px), rounded to whole pixels
    assert torch.equal(params.translate, params.translate.round())
    assert set(params.translate[:, 0].tolist()) == set(range(-5, 6))
    assert set(params.translate[:, 1].tolist()) == set(range(-3, 4))
    jitter = BatchAugmenter(torch.Generator().manual_seed(0)).sample_intensity(2000)
    ranges = ((jitter.gamma, (0.8, 1.25)), (jitter.contrast, (0.85, 1.15)), (jitter.brightness, (-0.05, 0.05)))
    for values, (low, high) in ranges:
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high


def test_half_of_the_batch_comes_out_mirrored():
    # a box on the left third lands on the right third exactly when the image was flipped
    boxes = [torch.tensor([[1, 8, 2, 24, 10]])] * 2000
    images, masks = torch.zeros(2000, 1, 32, 32), torch.zeros(2000, 32, 32, dtype=torch.int64)
    _, _, out = BatchAugmenter(torch.Generator().manual_seed(1))(images, masks, boxes)
    centres = torch.stack([(b[0, 2] + b[0, 4]) / 2 for b in out])
    assert bool(((centres < 12) | (centres > 20)).all())
    assert abs((centres > 16).double().mean().item() - 0.5) <= 0.05


def test_intensity_jitter_stays_in_the_unit_range():
    images = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    masks, boxes = torch.zeros(16, 32, 32, dtype=torch.int64), [torch.zeros(0, 5, dtype=torch.int64)] * 16
    out, _, _ = BatchAugmenter(torch.Generator().manual_seed(2))(images, masks, boxes)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, images)


def test_make_batch_takes_either_augmenter_and_keeps_a_cpu_set_where_it_is():
    from labelmix.trainables.batches import Augmenter, TensorSet, make_batch, on_device

    images, masks, boxes = batch_of(two_blobs(), copies=4)
    data = TensorSet(images, masks.to(torch.uint8), torch.ones(4, 3), boxes)
    assert on_device(data, torch.device("cpu")) is data
    types = torch.zeros(4, dtype=torch.int64)
    old, new = (make_batch(data, types, np.arange(4), augment) for augment in (Augmenter(), BatchAugmenter()))
    for field in ("images", "masks", "types", "global_labels"):
        a, b = getattr(old, field), getattr(new, field)
        assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device), field
    assert [(b.shape[1], b.dtype) for b in old.boxes] == [(b.shape[1], b.dtype) for b in new.boxes] == [(5, torch.int64)] * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_matches_the_cpu_batch_for_the_same_draws():
    images, masks, boxes = batch_of(two_blobs(), copies=8)
    cpu = BatchAugmenter(torch.Generator().manual_seed(0))(images, masks, boxes)
    gpu = BatchAugmenter(torch.Generator().manual_seed(0))(images.cuda(), masks.cuda(), boxes)
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-4)
    assert (gpu[1].cpu() == cpu[1]).double().mean() > 0.999  # nearest ties may round apart
    assert all(torch.equal(a.cpu(), b) for a, b in zip(gpu[2], cpu[2]))


def test_same_transform_as_torchvision_for_the_same_parameters():
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    from labelmix.trainables.batches import _boxes_back

    images, masks, boxes = batch_of(two_blobs(), copies=20)
    params = BatchAugmenter(torch.Generator().manual_seed(4)).sample_affine(20, 64, 64)
    _, out_masks, out_boxes = warp(images, masks, boxes, params)
    for i in range(20):
        mask = tv_tensors.Mask(masks[i])
        xyxy = tv_tensors.BoundingBoxes(boxes[i][:, [2, 1, 4, 3]].float(), format="XYXY", canvas_size=(64, 64))
        if params.flip[i]:
            mask, xyxy = TF.horizontal_flip(mask), TF.horizontal_flip(xyxy)
        args = dict(angle=float(params.angle[i]), translate=[int(t) for t in params.translate[i]],
                    scale=float(params.scale[i]), shear=[0.0, 0.0])
        expected_mask = TF.affine(mask, **args).as_subclass(torch.Tensor)
        expected_boxes = _boxes_back(TF.affine(xyxy, **args).as_subclass(torch.Tensor), boxes[i][:, 0], (64, 64))
        assert (out_masks[i] == expected_mask).double().mean() >= 0.998  # nearest-neighbour ties may round apart
        assert torch.equal(out_boxes[i], expected_boxes)


def test_the_gather_moves_pixels_as_grid_sample_nearest_would():
    """warp gathers nearest source pixels; grid_sample (nearest, align_corners=False, zeros) on the
    same inverse maps, in normalised coordinates, gives the same images and masks pixel for pixel."""
    import torch.nn.functional as F

    from labelmix.trainables.augment import affine_matrices

    b, h, w = 12, 64, 32
    images = torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(5))
    masks = torch.randint(0, 4, (b, h, w), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    params = BatchAugmenter(torch.Generator().manual_seed(7)).sample_affine(b, h, w)
    out_images, out_masks, _ = warp(images, masks, [torch.zeros(0, 5, dtype=torch.int64)] * b, params)

    inverse = torch.from_numpy(affine_matrices(params, h, w)[1])  # pixel units, float64
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    source_x = inverse[:, 0, 0, None, None] * xs + inverse[:, 0, 1, None, None] * ys + inverse[:, 0, 2, None, None]
    source_y = inverse[:, 1, 0, None, None] * xs + inverse[:, 1, 1, None, None] * ys + inverse[:, 1, 2, None, None]
    grid = torch.stack([source_x / (w / 2) - 1, source_y / (h / 2) - 1], -1).float()  # B x H x W x 2
    expect_images = F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    expect_masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    assert out_masks.dtype == torch.uint8
    assert torch.equal(out_images, expect_images)
    assert torch.equal(out_masks, expect_masks[:, 0].to(torch.uint8))
    assert 0 < int((out_masks != masks).sum()) and int((out_images == 0).sum()) > 0  # it moved things, with padding
