"""Dense weak-label losses against values worked out by hand (log 2 = 0.693147, softplus(1) = 1.313262,
softplus(-1) = 0.313262, softplus(-2) = 0.126928)."""

import math

import pytest
import torch

from labelmix.trainables import losses as L
from labelmix.trainables import weak_losses as W

LOG2 = math.log(2.0)
SP1, SPm1, SPm2 = math.log1p(math.e), math.log1p(math.exp(-1)), math.log1p(math.exp(-2))


def test_negative_loss_is_minus_log_of_the_allowed_mass_per_pixel():
    logits = torch.zeros(1, 2, 1, 2)  # two classes, p = 0.5 each
    allowed = torch.tensor([[[[True, True]], [[False, True]]]])  # pixel 0: background only; pixel 1: both
    # pixel 0: -log 0.5; pixel 1: -log 1 = 0; mean over the 2 pixels
    assert W.negative_loss(logits, allowed).item() == pytest.approx(LOG2 / 2)


def test_negative_loss_of_an_absent_global_class_on_three_classes():
    logits = torch.tensor([[[[0.0]], [[math.log(2.0)]], [[0.0]]]])  # p = 1/4, 2/4, 1/4
    allowed = torch.tensor([[[[True]], [[False]], [[True]]]])  # class 1 absent from the image
    assert W.negative_loss(logits, allowed).item() == pytest.approx(-math.log(0.5))


def test_box_tightness_and_size_on_an_even_box():
    logits = torch.zeros(1, 2, 2, 2)  # p_c = 0.5 at every pixel
    boxes = [torch.tensor([[1, 0, 0, 2, 2]])]  # class 1 over the whole 2 x 2 image
    # each of the 2 rows and 2 columns: s = (log 2 + r log 0.5) / r; r = 2 -> -log(2) / 2
    tight, size = W.box_prior_losses(logits, boxes, sharpness=2.0, fill=[(0.5, 0.9), (0.6, 0.9)])
    assert tight.item() == pytest.approx(LOG2 / 2)
    assert size.item() == pytest.approx((0.6 - 0.5) ** 2)  # fill 0.5 below the band's 0.6
    # r = 1: s = log 2 + log 0.5 = 0, every line satisfied
    tight, size = W.box_prior_losses(logits, boxes, sharpness=1.0, fill=[(0.5, 0.9), (0.4, 0.9)])
    assert tight.item() == pytest.approx(0.0, abs=1e-7) and size.item() == 0.0


def test_the_size_band_is_the_boxed_class_own():
    logits = torch.zeros(1, 3, 2, 2)  # p = 1/3 for each of three classes everywhere
    boxes = [torch.tensor([[1, 0, 0, 2, 2], [2, 0, 0, 1, 2]])]  # a class-1 box and a class-2 box
    bands = [(0.0, 1.0), (0.5, 0.9), (0.0, 0.2)]  # class 1 fills 1/3 < 0.5; class 2 fills 1/3 > 0.2
    _, size = W.box_prior_losses(logits, boxes, sharpness=1.0, fill=bands)
    assert size.item() == pytest.approx(((0.5 - 1 / 3) ** 2 + (1 / 3 - 0.2) ** 2) / 2)


def test_box_tightness_sees_only_the_box_lines():
    logits = torch.zeros(1, 2, 3, 3)
    logits[0, 0] = 20.0  # background certain (p_1 = e^-20) everywhere ...
    logits[0, 0, 0, 0], logits[0, 1, 0, 0] = 0.0, 40.0  # ... but at (0, 0), where class 1 is
    box = [torch.tensor([[1, 0, 0, 1, 1]])]  # a 1 x 1 box there: its one row and column are satisfied
    tight, _ = W.box_prior_losses(logits, box, sharpness=10.0, fill=[(0.0, 1.0)] * 2)
    assert tight.item() == pytest.approx(0.0, abs=1e-6)
    wider = [torch.tensor([[1, 0, 0, 2, 1]])]  # rows 0-1 of column 0: row 1 holds no class-1 pixel
    tight, _ = W.box_prior_losses(logits, wider, sharpness=10.0, fill=[(0.0, 1.0)] * 2)
    # lines: row 0 ok, row 1 -log p_1 = 20, column 0 ok (its max is 1) -> mean over 3 lines 20 / 3
    assert tight.item() == pytest.approx(20.0 / 3, rel=1e-4)


def test_tightness_weighs_each_box_lines_by_its_class():
    logits = torch.zeros(1, 3, 3, 3)
    logits[0, 0] = 20.0  # background certain everywhere: log p_1 = log p_2 = -20 - log(1 + 2 e^-20)
    boxes = [torch.tensor([[1, 0, 0, 1, 2], [2, 1, 0, 3, 3]])]  # class 1: a 1 x 2 box; class 2: a 2 x 3 box
    log_p = -20.0 - math.log1p(2 * math.exp(-20.0))

    def line(n, r=50.0):  # relu(-s) of a line of n equal pixels: s = log p + log(n) / r
        return -(log_p + math.log(n) / r)

    class_1 = [line(2), line(1), line(1)]  # its row (2 pixels) and its 2 columns (1 pixel)
    class_2 = [line(3), line(3), line(2), line(2), line(2)]  # 2 rows of 3, 3 columns of 2
    plain, _ = W.box_prior_losses(logits, boxes, sharpness=50.0, fill=[(0.0, 1.0)] * 3)
    assert plain.item() == pytest.approx((sum(class_1) + sum(class_2)) / 8, rel=1e-5)
    weighted, _ = W.box_prior_losses(logits, boxes, sharpness=50.0, fill=[(0.0, 1.0)] * 3, line_weights=[1.0, 0.5, 1.0])
    assert weighted.item() == pytest.approx((0.5 * sum(class_1) + sum(class_2)) / 8, rel=1e-5)  # still / 8 lines
    none, _ = W.box_prior_losses(logits, boxes, sharpness=50.0, fill=[(0.0, 1.0)] * 3, line_weights=[1.0, 0.0, 0.0])
    assert none.item() == 0.0


def test_no_boxes_give_zero_priors_with_a_gradient_path():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    tight, size = W.box_prior_losses(logits, [torch.zeros(0, 5, dtype=torch.long)], 10.0, [(0.5, 0.9)] * 2)
    assert tight.item() == 0.0 and size.item() == 0.0
    (tight + size).backward()


def test_presence_loss_takes_the_mean_of_the_top_area_log_probabilities():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1, 0] = torch.tensor([math.log(3.0), 0.0, 0.0, -100.0])  # p_1 = 0.75, 0.5, 0.5, ~0
    present = torch.tensor([[1.0, 1.0]])
    got = W.presence_loss(logits, present, area=2).item()
    assert got == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2)
    assert W.presence_loss(logits, present, area=1).item() == pytest.approx(-math.log(0.75))  # the hard max
    assert W.presence_loss(logits, torch.tensor([[1.0, 0.0]]), area=2).item() == 0.0  # background only


def test_weak_ds_loss_box_fits_one_cell():
    # 4 x 4 image, level 2 x 2, classes bg and 1; a class-1 box filling cell (0, 0) exactly
    boxes = [torch.tensor([[1, 0, 0, 2, 2]])]
    allowed = L.box_masks(boxes, 2, 4, 4) > 0
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 1.0
    # class 1: positive at (0, 0) -> softplus(-1); negative at 3 cells -> softplus(1) each
    # background: certain at the 3 cells outside the box -> log 2 each; cell (0, 0) is all box: ignored
    expected = (SPm1 + 3 * SP1 + 3 * LOG2) / 7
    got = W.weak_ds_loss([logits], allowed, boxes, torch.zeros(1, 2), [0.5], area=16)
    assert got.item() == pytest.approx(0.5 * expected)


def test_weak_ds_loss_box_across_cells_has_no_positive_and_no_negative():
    boxes = [torch.tensor([[1, 1, 1, 3, 3]])]  # touches all four cells, fits none
    allowed = L.box_masks(boxes, 2, 4, 4) > 0
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 1.0
    # class 1 may be in every cell and certainly in none: ignored; background certain in all 4 cells
    got = W.weak_ds_loss([logits], allowed, boxes, torch.zeros(1, 2), [1.0], area=16)
    assert got.item() == pytest.approx(LOG2)


def test_weak_ds_loss_global_label_negatives_and_soft_presence():
    allowed = torch.ones(1, 3, 4, 4, dtype=torch.bool)
    allowed[:, 2] = False  # class 2 absent from the image
    present = torch.tensor([[1.0, 1.0, 0.0]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = torch.tensor([[2.0, 1.0], [0.0, -1.0]])
    # entries: class 2 negative at 4 cells (log 2 each); background and class 1 unknown per cell
    # presence of class 1 over cells: area 4 px of 16 -> 1 of the 4 cells -> top-1 = 2 -> softplus(-2)
    got = W.weak_ds_loss([logits], allowed, [torch.zeros(0, 5, dtype=torch.long)], present, [1.0], area=4)
    assert got.item() == pytest.approx(LOG2 + SPm2)
    # area 16 px: all 4 cells -> mean logit 0.5
    got = W.weak_ds_loss([logits], allowed, [torch.zeros(0, 5, dtype=torch.long)], present, [1.0], area=16)
    assert got.item() == pytest.approx(LOG2 + math.log1p(math.exp(-0.5)))


def test_multilabel_negative_needs_every_pixel_of_the_cell_labelled():
    mask = torch.tensor([[[0, L.IGNORE], [0, 0]]])  # one ignored pixel in a 2 x 2 image
    logits = torch.tensor([[[[2.0]], [[1.0]]]])  # one 1 x 1 cell: bg logit 2, class-1 logit 1
    # all_labelled: the cell is not fully labelled, so "class 1 absent" is unknown; bg is positive
    strict = L.multilabel_ds_loss([logits], mask, [1.0], negative_rule="all_labelled")
    assert strict.item() == pytest.approx(SPm2)
    loose = L.multilabel_ds_loss([logits], mask, [1.0], negative_rule="any_labelled")
    assert loose.item() == pytest.approx((SPm2 + SP1) / 2)
    full = torch.tensor([[[0, 0], [0, 0]]])  # no ignored pixel: both rules agree
    assert L.multilabel_ds_loss([logits], full, [1.0], "all_labelled").item() == pytest.approx((SPm2 + SP1) / 2)


def test_pairwise_loss_counts_similar_pairs_touching_the_region():
    # one row of 8 pixels, intensities 0 0 0 0 1 1 1 1 (a hard edge between pixels 3 and 4)
    images = torch.tensor([[[[0.0] * 4 + [1.0] * 4]]])
    logits = torch.zeros(1, 2, 1, 8)  # p = 0.5 / 0.5: P(same) = 0.25 + 0.25 = 0.5
    region = torch.zeros(1, 1, 8, dtype=torch.bool)
    region[0, 0, 0] = True
    # only the horizontal pair (0, 1) touches the region (one row: no vertical or diagonal pairs),
    # and after the sigma-1 blur its ends differ by 0.004 < 0.2
    got = W.pairwise_loss(logits, images, region, dilation=1, threshold=0.2)
    assert got.item() == pytest.approx(LOG2)
    edge = torch.zeros(1, 1, 8, dtype=torch.bool)
    edge[0, 0, 3:5] = True  # pairs (2,3), (3,4), (4,5) differ by 0.24, 0.40, 0.24 after the blur
    assert W.pairwise_loss(logits, images, edge, 1, 0.2).item() == 0.0  # none is similar at 0.2
    assert W.pairwise_loss(logits, images, edge, 1, 0.3).item() == pytest.approx(LOG2)  # the edge pair is not
    confident = torch.cat([torch.full((1, 1, 1, 8), 9.0), torch.full((1, 1, 1, 8), -9.0)], 1)  # all background
    assert W.pairwise_loss(confident, images, region, 1, 0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert W.pairwise_loss(logits, images, torch.zeros(1, 1, 8, dtype=torch.bool), 1, 0.2).item() == 0.0


def test_pairwise_loss_prefers_labels_that_follow_the_edge():
    images = torch.tensor([[[[0.0] * 4 + [1.0] * 4]]])
    region = torch.ones(1, 1, 8, dtype=torch.bool)
    follows = torch.zeros(1, 2, 1, 8)
    follows[0, 1, 0, :4] = 6.0  # class 1 on the dark half, background on the bright half
    crosses = torch.zeros(1, 2, 1, 8)
    crosses[0, 1, 0, :2] = 6.0  # class 1 on half of the dark half only: a label change inside it
    assert W.pairwise_loss(follows, images, region, 1, 0.2) < W.pairwise_loss(crosses, images, region, 1, 0.2)
