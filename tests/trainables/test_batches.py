"""batches.py: every batch holds its fully labelled images, boxes follow the pixels they enclose, the
strong view changes intensities and never geometry (the per-batch augmenter: test_augment.py)."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from labelmix.errors import UserError
from labelmix.trainables.batches import (
    Augmenter,
    TensorSet,
    _boxes_back,
    _cycled,
    batch_indices,
    cut_mix,
    cutmix_masks,
    full_masks_per_batch,
    gaussian_blur,
    make_batch,
    strong_view,
    to_tensors,
)
from labelmix.trainables.data.annotations import BOX, FULL, GLOBAL, NONE, AnnotationMix, assign_mix, boxes_from_mask
from labelmix.trainables.data.store import ImageStore

# --- the epoch plan: batch_indices ----------------------------------------------------------------


def full_counts(plan: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Fully labelled images in each batch (row) of a plan."""
    return (types[plan] == FULL).sum(axis=1)


def test_every_batch_holds_full_per_batch_fully_labelled_images():
    types = np.array([FULL] * 3 + [BOX] * 4 + [NONE] * 3)  # 3 full among 10
    plan = batch_indices(types, batch_size=4, steps=6, full_per_batch=2, rng=np.random.default_rng(0))
    assert plan.shape == (6, 4)
    assert list(full_counts(plan, types)) == [2] * 6  # exactly 2: the other slots come from the rest
    # 12 draws from the 3 full images: 4 shuffled passes, each image 4 times; 12 from the 7 others:
    # one whole pass and 5 of the second, so each 1 or 2 times
    counts = np.bincount(plan.ravel(), minlength=10)
    assert list(counts[:3]) == [4, 4, 4]
    assert counts[3:].sum() == 12 and set(counts[3:]) == {1, 2} and (counts[3:] == 2).sum() == 5


def test_a_five_percent_mix_gets_its_masks_into_every_batch():
    types = assign_mix(40, AnnotationMix(full=0.05, box=0.95), seed=3)  # 2 masks among 40 images
    assert (types == FULL).sum() == 2
    plan = batch_indices(types, batch_size=8, steps=50, full_per_batch=2, rng=np.random.default_rng(1))
    assert (full_counts(plan, types) == 2).all()
    # without the guarantee most batches of 8 would hold none: (38 choose 8) / (40 choose 8) = 0.638
    plain = batch_indices(types, batch_size=8, steps=50, full_per_batch=0, rng=np.random.default_rng(1))
    assert (full_counts(plain, types) == 0).sum() > 20


def test_a_half_masked_mix_keeps_half_of_every_batch_masked_by_the_share_rule():
    types = np.array([FULL] * 20 + [BOX] * 20)
    plan = batch_indices(types, batch_size=8, steps=10, full_per_batch=2, rng=np.random.default_rng(4), share=True)
    assert list(full_counts(plan, types)) == [4] * 10  # the masks' share, 4 of 8, not the 2 guaranteed


def test_a_half_masked_mix_gets_full_per_batch_by_the_fixed_rule():
    types = np.array([FULL] * 20 + [BOX] * 20)
    plan = batch_indices(types, batch_size=8, steps=10, full_per_batch=2, rng=np.random.default_rng(4))
    assert list(full_counts(plan, types)) == [2] * 10


@pytest.mark.parametrize("full, total, batch_size, full_per_batch, expected", [
    (2, 40, 8, 2, 2),  # 5%: 0.4 of a batch, the guarantee's 2
    (8, 40, 8, 2, 2),  # 20%: 1.6 -> 2
    (20, 40, 8, 2, 4),  # 50%: 4
    (56, 100, 8, 2, 4),  # 56%: 4.48 -> 4
    (5, 16, 8, 2, 3),  # 31.25%: 2.5 rounds half up to 3
    (39, 40, 8, 2, 7),  # 97.5%: 7.8, one slot kept for the other images
    (20, 40, 8, 0, 0),  # no guarantee: a plain shuffle
    (20, 40, 8, 9, 8),  # a guarantee past the batch: all masked
])
def test_full_masks_per_batch_by_the_share_rule(full, total, batch_size, full_per_batch, expected):
    assert full_masks_per_batch(full, total, batch_size, full_per_batch, share=True) == expected


@pytest.mark.parametrize("full, total, batch_size, full_per_batch, expected", [
    (2, 40, 8, 2, 2),  # 5%
    (20, 40, 8, 2, 2),  # 50%: still 2, the share is not taken
    (39, 40, 8, 1, 1),  # 97.5%: 1
    (20, 40, 8, 0, 0),  # no guarantee: a plain shuffle
    (20, 40, 8, 9, 8),  # a guarantee past the batch: all masked
])
def test_full_masks_per_batch_by_the_fixed_rule(full, total, batch_size, full_per_batch, expected):
    assert full_masks_per_batch(full, total, batch_size, full_per_batch) == expected


def test_the_full_images_are_shuffled_into_every_position_of_the_batch():
    types = np.array([FULL] * 2 + [GLOBAL] * 6)
    plan = batch_indices(types, batch_size=4, steps=200, full_per_batch=1, rng=np.random.default_rng(2))
    positions = np.nonzero(types[plan] == FULL)[1]
    assert set(positions.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("batch_size, full_per_batch", [(2, 5), (2, 2), (1, 2)])
def test_full_per_batch_at_or_above_the_batch_size_fills_the_batch_with_full_images(batch_size, full_per_batch):
    types = np.array([FULL] * 3 + [NONE] * 5)
    plan = batch_indices(types, batch_size, steps=3, full_per_batch=full_per_batch, rng=np.random.default_rng(0))
    assert plan.shape == (3, batch_size) and (types[plan] == FULL).all()


@pytest.mark.parametrize("types, full_per_batch", [
    (np.array([NONE] * 4 + [BOX] * 4), 2),  # no full images: nothing to guarantee
    (np.array([FULL] * 8), 2),  # only full images: every batch is full anyway
    (np.array([FULL] * 2 + [BOX] * 6), 0),  # the guarantee switched off
])
def test_without_the_guarantee_an_epoch_is_a_plain_shuffle(types, full_per_batch):
    plan = batch_indices(types, batch_size=4, steps=2, full_per_batch=full_per_batch, rng=np.random.default_rng(5))
    assert sorted(plan.ravel().tolist()) == list(range(8))  # 8 draws of 8 images: each once


def test_the_plan_is_a_function_of_the_seed():
    types = assign_mix(30, AnnotationMix(full=0.2, box=0.3, none=0.5), seed=0)
    first, again, other = (batch_indices(types, 6, 10, 2, np.random.default_rng(s)) for s in (7, 7, 8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_cycled_sees_each_item_once_per_pass():
    pool = np.array([10, 11, 12, 13])
    drawn = _cycled(pool, 10, np.random.default_rng(0))
    assert sorted(drawn[:4]) == sorted(drawn[4:8]) == [10, 11, 12, 13]  # two whole passes
    assert len(set(drawn[8:])) == 2 and set(drawn[8:]) <= set(pool)  # and the start of a third


# --- boxes under the geometric augmentation -------------------------------------------------------


def blobs(size: int = 64) -> np.ndarray:
    """size x size mask: a class-1 disc and bar, a class-2 ellipse cut by the right edge."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=np.int64)
    mask[(yy - 30) ** 2 + (xx - 18) ** 2 <= 100] = 1
    mask[5:9, 30:45] = 1
    mask[((yy - 40) / 12.0) ** 2 + ((xx - 58) / 7.0) ** 2 <= 1] = 2
    return mask


def labelled_batch(mask: np.ndarray, copies: int):
    """copies of an image whose intensity is its label / 2, its mask and its tight boxes."""
    boxes = torch.from_numpy(boxes_from_mask(mask, 3).astype(np.int64))
    masks = torch.from_numpy(mask).repeat(copies, 1, 1)
    return masks[:, None].float() / 2, masks, [boxes] * copies  # B x 1 x H x W, B x H x W, B x (K x 5)


def tight_boxes(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(boxes_from_mask(mask.numpy(), 3).astype(np.int64))


def test_a_flip_and_a_whole_pixel_shift_move_the_boxes_onto_the_pixels_exactly():
    torch.manual_seed(0)  # torchvision's transforms draw from torch's global generator
    augment = Augmenter()
    augment.geometric = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=0, translate=(0.05, 0.05))])
    mask = blobs()
    mask[mask == 2] = 0
    mask[44:54, 40:48] = 2  # every object at least 3 pixels from the edges: a shift (at most 3) keeps it whole
    images, masks, boxes = labelled_batch(mask, copies=16)
    _, out_masks, out_boxes = augment(images, masks, boxes)
    flipped = 0
    for out_mask, out_box in zip(out_masks, out_boxes):
        assert torch.equal(out_box, tight_boxes(out_mask))  # the transformed boxes are the tight boxes
        flipped += int(out_box[1, 2] + out_box[1, 4] > 64)  # the disc (x 8..28) is right of centre only when mirrored
    assert 2 < flipped < 14


def test_boxes_enclose_every_pixel_of_their_object_under_the_full_geometric_augmentation():
    torch.manual_seed(1)
    augment = Augmenter()
    images, masks, boxes = labelled_batch(blobs(), copies=8)
    for _ in range(4):  # 32 draws of flip, rotation, shift and scale
        _, out_masks, out_boxes = augment(images, masks, boxes)
        for out_mask, out_box in zip(out_masks, out_boxes):
            tight = tight_boxes(out_mask)
            assert len(out_box) == len(tight) == 3 and torch.equal(out_box[:, 0], tight[:, 0])
            # each box holds its object's tight box (the pixels), and is at most 2 pixels larger
            assert (out_box[:, 1:3] <= tight[:, 1:3]).all() and (out_box[:, 3:] >= tight[:, 3:]).all(), (out_box, tight)
            assert int((out_box - tight).abs().max()) <= 2, (out_box, tight)


def test_image_and_mask_move_together_and_intensity_keeps_the_label_order():
    torch.manual_seed(2)
    images, masks, boxes = labelled_batch(blobs(), copies=8)
    out_images, out_masks, _ = Augmenter()(images, masks, boxes)
    assert out_masks.dtype == torch.int64 and set(out_masks.unique().tolist()) == {0, 1, 2}
    for image, mask in zip(out_images[:, 0], out_masks):
        # nearest-neighbour for both: each label keeps one intensity, the jitter is monotone
        values = [image[mask == cls] for cls in (0, 1, 2)]
        assert all(float(v.max() - v.min()) < 1e-6 for v in values)
        assert values[0][0] < values[1][0] < values[2][0]
    assert 0 <= out_images.min() and out_images.max() <= 1


def test_boxes_back_rounds_outwards_clamps_and_drops_empty_boxes():
    xyxy = torch.tensor([[1.2, 2.7, 5.1, 6.0],  # x0 y0 x1 y1 -> [y0, x0, y1, x1] = [2, 1, 6, 6]
                         [-3.0, -1.0, 10.0, 9.0],  # beyond the 8 x 10 canvas: clamped to it
                         [10.5, 1.0, 12.0, 3.0],  # wholly right of the canvas: empty, dropped
                         [4.0, 3.0, 4.0, 5.0]])  # zero width: dropped
    out = _boxes_back(xyxy, torch.tensor([1, 2, 3, 1]), (8, 10))
    assert out.dtype == torch.int64
    assert out.tolist() == [[1, 2, 1, 6, 6], [2, 0, 0, 8, 10]]


# --- the strong view: photometric only ------------------------------------------------------------


def square_images(count: int) -> torch.Tensor:
    """count x 1 x 32 x 32: a 0.9 square [8, 24) x [8, 24) on 0.1."""
    images = torch.full((count, 1, 32, 32), 0.1)
    images[:, :, 8:24, 8:24] = 0.9
    return images


def test_the_strong_view_changes_intensities_per_image_and_keeps_the_geometry():
    torch.manual_seed(0)
    images = square_images(64)
    before = images.clone()
    out = strong_view(images)
    assert torch.equal(images, before)  # the weak view is left as it was
    assert out.shape == images.shape and out.dtype == images.dtype and 0 <= out.min() and out.max() <= 1

    # Blur (radius 3) reaches at most 3 pixels, so pixels 3 away from the square's edge keep their
    # own level: c * (0.9^g - 0.1^g) >= 0.6 * 0.69 = 0.41 apart for any gamma g and contrast c drawn.
    inside = out[:, 0, 11:21, 11:21].mean((1, 2))
    ring = torch.ones(32, 32, dtype=torch.bool)
    ring[5:27, 5:27] = False  # 3 pixels or more outside the square
    outside = out[:, 0][:, ring].mean(1)
    assert ((inside - outside) > 0.3).all(), (inside - outside).min()
    # column profiles through the square: the square stays where it was, at [8, 24)
    profile = out[:, 0, 11:21, :].mean(1)  # B x W
    assert (profile[:, 11:21].min(1).values > profile[:, list(range(5)) + list(range(27, 32))].max(1).values).all()

    # photometric change: the levels move, differently for each image
    assert ((inside - 0.9).abs() + (outside - 0.1).abs() > 0.01).all()
    assert inside.std() > 0.02 and outside.std() > 0.02


def test_gaussian_blur_is_the_normalised_separable_kernel():
    impulse = torch.zeros(2, 1, 9, 9)
    impulse[:, 0, 4, 4] = 1.0
    out = gaussian_blur(impulse, torch.tensor([1.0, 0.5]))
    # sigma 1, radius 3: weights exp(-k^2 / 2) for k = -3..3, summing to 1 + 2 (e^-0.5 + e^-2 + e^-4.5)
    total = 1 + 2 * (math.exp(-0.5) + math.exp(-2) + math.exp(-4.5))
    assert out[0, 0, 4, 4].item() == pytest.approx(1 / total**2, rel=1e-6)
    assert out[0, 0, 4, 5].item() == pytest.approx(math.exp(-0.5) / total**2, rel=1e-6)
    assert out[0, 0, 4, 0].item() == 0.0  # 4 pixels away: beyond the radius
    assert out[1, 0, 4, 4] > out[0, 0, 4, 4]  # the smaller sigma keeps more at the centre
    assert torch.allclose(out.sum((2, 3)), torch.ones(2, 1))  # the mass is kept
    flat = torch.full((1, 1, 5, 7), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.5])), flat)  # edges repeated: a flat image stays flat


# --- gathering a batch ----------------------------------------------------------------------------


def test_make_batch_gathers_each_field_by_the_plans_indices():
    masks = torch.arange(4, dtype=torch.uint8)[:, None, None].repeat(1, 2, 2)  # image i's mask is all i
    data = TensorSet(images=masks[:, None].float() / 10, masks=masks, global_labels=torch.eye(4),
                     boxes=[torch.tensor([[1, 0, 0, 1, i + 1]]) for i in range(4)])
    types = torch.tensor([FULL, BOX, GLOBAL, NONE], dtype=torch.int8)
    batch = make_batch(data, types, np.array([2, 0, 2]), augmenter=None)
    assert batch.masks.dtype == torch.int64 and batch.masks[:, 0, 0].tolist() == [2, 0, 2]
    assert batch.images[:, 0, 0, 0].tolist() == pytest.approx([0.2, 0.0, 0.2])
    assert batch.types.dtype == torch.int64 and batch.types.tolist() == [GLOBAL, FULL, GLOBAL]
    assert batch.global_labels.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]]
    assert [b[0, 4].item() for b in batch.boxes] == [3, 1, 3]


def store_of(images, masks, num_classes: int = 3) -> ImageStore:
    n = len(images)
    return ImageStore(
        ids=np.arange(n), volumes=np.zeros(n), sources=np.array(["t"] * n), slices=np.arange(n),
        splits=np.array(["train"] * n), images=images, masks=masks,
        boxes=[boxes_from_mask(m, num_classes) for m in masks],
        global_labels=np.zeros((n, num_classes), bool), class_names=("background", "IRF", "SRF")[:num_classes],
    )


def test_to_tensors_scales_by_the_pixel_type_and_allows_background_everywhere():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    masks = np.array([[[0, 1], [0, 0]]], dtype=np.uint8)
    data = to_tensors(store_of(images, masks))
    assert data.images.shape == (1, 1, 2, 2) and data.images.dtype == torch.float32
    assert torch.allclose(data.images[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    assert data.global_labels.tolist() == [[1.0, 0.0, 0.0]]  # the stored labels were all False
    assert data.boxes[0].dtype == torch.int64 and data.boxes[0].tolist() == [[1, 0, 1, 1, 2]]
    wide = to_tensors(store_of(np.array([[[0, 65535]]], dtype=np.uint16), np.zeros((1, 1, 2), np.uint8)))
    assert wide.images[0, 0].tolist() == [[0.0, 1.0]]


def test_to_tensors_refuses_images_of_different_sizes():
    store = store_of([np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8)],
                     [np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8)])
    with pytest.raises(UserError, match="images of different sizes in one store; re-import with --size H W"):
        to_tensors(store)


def test_cut_mix_pastes_each_listed_row_from_the_one_before_it():
    """Rows 0 and 2 of three constant images (1, 2, 3) are mixed: row 0 takes row 2's values inside
    its cut (k = 0 takes the last listed row), row 2 takes row 0's; row 1 is not listed and stays."""
    x = torch.stack([torch.full((4, 4), v) for v in (1.0, 2.0, 3.0)])
    cut = torch.zeros(2, 4, 4, dtype=torch.bool)
    cut[0, :2, :2] = True  # top-left 2 x 2 of row 0
    cut[1, :, 3] = True  # last column of row 2
    out = cut_mix(x, torch.tensor([0, 2]), cut)
    expected0 = torch.ones(4, 4)
    expected0[:2, :2] = 3.0
    expected2 = torch.full((4, 4), 3.0)
    expected2[:, 3] = 1.0
    assert torch.equal(out[0], expected0) and torch.equal(out[1], x[1]) and torch.equal(out[2], expected2)
    images = cut_mix(x[:, None], torch.tensor([0, 2]), cut)  # B x C x H x W with the same cut: the same pixels
    assert torch.equal(images[:, 0], out)


def test_cutmix_masks_are_one_rectangle_of_a_quarter_to_half_the_image():
    generator = torch.Generator().manual_seed(0)
    masks = cutmix_masks(200, 32, 48, generator=generator)
    assert masks.shape == (200, 32, 48) and masks.dtype == torch.bool
    for mask in masks:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == height and cols[-1] - cols[0] + 1 == width  # contiguous
        assert int(mask.sum()) == height * width  # filled: a rectangle
        assert 0.2 <= height * width / (32 * 48) <= 0.55  # 25-50%, up to rounding to whole pixels and the image's edge
    again = cutmix_masks(200, 32, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
