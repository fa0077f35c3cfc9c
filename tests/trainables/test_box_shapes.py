"""Learned box shapes: crops around boxes, their targets, the crop loss and the pseudo-masks, by hand."""

import math

import numpy as np
import pytest
import torch

from labelmix.errors import UserError
from labelmix.trainables.batches import TensorSet
from labelmix.trainables.box_shapes import CROP, crop_loss, cut, learned_box_masks, pseudo_masks, regions, targets
from labelmix.trainables.config import load_config
from labelmix.trainables.data.annotations import BOX, FULL, boxes_from_mask
from labelmix.trainables.fit import resolve_box_supervision, with_learned_box_masks
from labelmix.trainables.losses import IGNORE


def test_regions_widen_each_box_by_a_quarter_of_its_larger_side_and_clip_to_the_image():
    boxes = torch.tensor([[1, 10, 20, 22, 30],  # 12 x 10: margin round(3.0) = 3
                          [2, 0, 0, 4, 4],  # 4 x 4: margin 1, raised to MIN_MARGIN 2, clipped at 0
                          [3, 60, 50, 64, 64]])  # 4 x 14: margin round(3.5) = 4, clipped at 64
    assert regions(boxes, 64, 64).tolist() == [[7, 17, 25, 33], [0, 0, 6, 6], [56, 46, 64, 64]]


def _one_box_image():
    """8 x 8, each pixel's value its column / 8; one class-1 box [2, 6) x [2, 6), whose region is the
    whole image (margin 2), so each pixel spans 4 x 4 cells of the crop."""
    images = (torch.arange(8.0) / 8).expand(1, 1, 8, 8).clone()
    return images, [torch.tensor([[1, 2, 2, 6, 6]])]


def test_cut_marks_the_box_and_samples_the_image_bilinearly_at_the_cell_centres():
    images, boxes = _one_box_image()
    crops = cut(images, boxes)
    assert crops.inputs.shape == (1, 2, CROP, CROP)
    assert crops.regions.tolist() == [[0, 0, 8, 8]] and crops.classes.tolist() == [1] and crops.owners.tolist() == [0]
    inside = torch.zeros(CROP, CROP)
    inside[8:24, 8:24] = 1  # pixels 2-5 are cells 8-23
    assert torch.equal(crops.inputs[0, 1], inside)
    # cell 16's centre lies at x = 16.5 / 4 = 4.125, between pixel centres 3.5 and 4.5: 3.625 / 8 bilinearly
    assert crops.inputs[0, 0, 5, 16].item() == pytest.approx(3.625 / 8)
    assert crops.inputs[0, 0, 5, 0].item() == pytest.approx(0.0)  # left of the first pixel centre: the edge value


def test_targets_read_the_pixel_under_each_cell_centre():
    images, boxes = _one_box_image()
    masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    masks[0, 2, 2] = 1  # one pixel of the box's class ...
    masks[0, 5, 5] = 2  # ... and one of another class, which is not the box's
    expected = torch.zeros(CROP, CROP)
    expected[8:12, 8:12] = 1
    assert torch.equal(targets(masks, cut(images, boxes))[0], expected)


def test_crop_loss_reads_each_crops_own_class_inside_its_box():
    """Own-class logit log 3 (probability 3/4) on 4 cells inside the box, 3 of them fluid: the mean BCE is
    (3 log(4/3) + log 4) / 4; the other classes' logits and the cells outside the box do not count."""
    logits = torch.full((1, 4, 2, 4), 50.0)  # other classes: far off, unread
    logits[0, 2] = math.log(3)
    inside = torch.tensor([[[1.0, 1, 0, 0], [1, 1, 0, 0]]])
    target = torch.tensor([[[1.0, 1, 0, 0], [1, 0, 0, 0]]])
    loss = crop_loss(logits, inside, torch.tensor([2]), target)
    assert loss.item() == pytest.approx((3 * math.log(4 / 3) + math.log(4)) / 4)


def _crops_for(boxes, size=8):
    return cut(torch.zeros(1, 1, size, size), [boxes])


@pytest.mark.parametrize("prob, expected", [(0.9, 2), (0.5, IGNORE), (0.1, 0)])
def test_pseudo_masks_label_a_box_by_the_band_and_leave_the_rest_background(prob, expected):
    boxes = torch.tensor([[2, 2, 2, 6, 6]])
    crops = _crops_for(boxes)
    out = pseudo_masks(torch.full((1, CROP, CROP), prob), crops, 1, (8, 8), 4, low=0.3, high=0.7)
    want = torch.zeros(8, 8, dtype=torch.uint8)
    want[2:6, 2:6] = expected
    assert torch.equal(out[0], want)


def test_pseudo_masks_give_an_overlap_to_the_more_probable_class():
    boxes = torch.tensor([[1, 0, 0, 4, 4], [2, 2, 2, 6, 6]])
    crops = _crops_for(boxes)
    probs = torch.stack([torch.full((CROP, CROP), 0.8), torch.full((CROP, CROP), 0.9)])
    out = pseudo_masks(probs, crops, 1, (8, 8), 4, low=0.3, high=0.7)[0]
    assert out[1, 1].item() == 1 and out[3, 3].item() == 2 and out[5, 5].item() == 2 and out[7, 7].item() == 0


def _discs(count, seed):
    """``count`` 16 x 16 images, bright (0.8) with one dark (0.1) disc of class 1 (radius 3) at a random place."""
    rng = np.random.default_rng(seed)
    images = np.full((count, 16, 16), 0.8, dtype=np.float32)
    masks = np.zeros((count, 16, 16), dtype=np.uint8)
    yy, xx = np.mgrid[:16, :16]
    for i in range(count):
        cy, cx = rng.integers(4, 12, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
        images[i][disc], masks[i][disc] = 0.1, 1
    boxes = [torch.from_numpy(boxes_from_mask(m, 2).astype(np.int64)) for m in masks]
    return torch.from_numpy(images)[:, None], torch.from_numpy(masks), boxes


@pytest.fixture
def one_thread():
    """One torch thread, as trials run: several threads on a busy machine spin instead of working."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_crop_network_learns_a_shape_a_filled_box_gets_wrong(one_thread):
    """Dark discs fill 29 of their 7 x 7 boxes' 49 pixels. Trained on 8 masked images, the pseudo-masks of
    8 others label the discs' corners background: at least 95% of the labelled box pixels right, where
    filling each box would get 29 / 49 = 59% right."""
    images, masks, boxes = _discs(16, seed=0)
    torch.manual_seed(0)
    pseudo = learned_box_masks(images, masks, boxes, torch.arange(8), torch.arange(8, 16), 2, steps=150,
                               low=0.3, high=0.7, seed=0)
    inside = torch.zeros(8, 16, 16, dtype=torch.bool)
    for j, b in enumerate(boxes[8:]):
        _, y0, x0, y1, x1 = b[0].tolist()
        inside[j, y0:y1, x0:x1] = True
    labelled = inside & (pseudo != IGNORE)
    assert labelled.sum() >= 0.9 * inside.sum()
    assert (pseudo[labelled] == masks[8:][labelled]).float().mean() >= 0.95
    assert bool((pseudo[~inside] == 0).all())  # outside every box: background, exactly


def test_box_supervision_auto_learns_shapes_where_the_masked_images_hold_boxes():
    images, masks, boxes = _discs(4, seed=1)
    train = TensorSet(images, masks, torch.ones(4, 2), boxes)
    assert resolve_box_supervision("auto", train, np.array([FULL, FULL, BOX, BOX])) == "shapes"
    assert resolve_box_supervision("auto", train, np.array([FULL, FULL, 2, 3])) == "priors"  # no box images
    # beside image-level-labelled or unlabeled images: the priors (the shapes lost there, docs/RESULTS.md)
    assert resolve_box_supervision("auto", train, np.array([FULL, FULL, BOX, 2])) == "priors"
    assert resolve_box_supervision("auto", train, np.array([FULL, FULL, BOX, 3])) == "priors"
    assert resolve_box_supervision("shapes", train, np.array([FULL, FULL, BOX, 2])) == "shapes"  # asked for
    assert resolve_box_supervision("both", train, np.array([FULL, FULL, BOX, BOX])) == "both"
    bare = TensorSet(images, masks, torch.ones(4, 2), [boxes[0][:0], boxes[1][:0], boxes[2], boxes[3]])
    assert resolve_box_supervision("auto", bare, np.array([FULL, FULL, BOX, BOX])) == "priors"  # nothing to learn from
    assert resolve_box_supervision("priors", bare, np.array([FULL, FULL, BOX, BOX])) == "priors"


@pytest.mark.parametrize("setting", ["shapes", "both"])
def test_box_shapes_asked_for_need_boxes_on_the_masked_images(setting):
    images, masks, boxes = _discs(4, seed=1)
    train = TensorSet(images, masks, torch.ones(4, 2), [boxes[0][:0], boxes[1][:0], boxes[2], boxes[3]])
    with pytest.raises(UserError, match=f"box_supervision: {setting} learns box shapes .* hold no boxes"):
        resolve_box_supervision(setting, train, np.array([FULL, FULL, BOX, BOX]))
    # without box images there is nothing to learn shapes for, and nothing to refuse
    assert resolve_box_supervision(setting, train, np.array([FULL, FULL, 3, 3])) == setting


def test_box_shapes_replace_only_the_box_images_masks(one_thread):
    images, masks, boxes = _discs(4, seed=1)
    train = TensorSet(images, masks.clone(), torch.ones(4, 2), boxes)
    types = np.array([FULL, BOX, FULL, 3])  # 3: unlabeled
    out = with_learned_box_masks(train, types, 2, load_config({"box_shape_steps": 2}))
    assert torch.equal(out.masks[[0, 2, 3]], masks[[0, 2, 3]]) and torch.equal(out.images, images)
    _, y0, x0, y1, x1 = boxes[1][0].tolist()
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert bool((out.masks[1][outside] == 0).all())  # background outside the box, whatever the network says
    assert torch.equal(train.masks, masks)  # the set it was given is left as it was


def test_box_shape_band_must_be_ordered_in_the_unit_interval():
    with pytest.raises(UserError, match="box_shape_band"):
        load_config({"box_shape_band": [0.8, 0.2]})
