"""Losses against hand-computed values, and which heads a DS loss reaches."""

import math

import pytest
import torch

from labelmix.errors import UserError
from labelmix.trainables import losses as L
from labelmix.trainables.model import build_model

LOG2 = math.log(2.0)

# 4x4 mask, classes 0..2, one ignore pixel
MASK = torch.tensor(
    [
        [
            [0, 0, 1, 1],
            [0, 0, 1, 1],
            [0, 2, 0, 0],
            [0, 0, 0, 255],
        ]
    ]
)


def sp(x):  # softplus: BCE-with-logits of logit x against target 0 is sp(x), against 1 is sp(-x)
    return math.log1p(math.exp(x))


def test_multilabel_targets_2x2_and_1x1():
    t = L.multilabel_targets(MASK, 3, (2, 2))
    expected = torch.tensor(
        [
            [
                [[1.0, 0.0], [1.0, 1.0]],  # background
                [[0.0, 1.0], [0.0, 0.0]],  # class 1
                [[0.0, 0.0], [1.0, 0.0]],  # class 2: its one pixel marks the whole cell
            ]
        ]
    )
    assert torch.equal(t, expected)
    assert torch.equal(L.multilabel_targets(MASK, 3, (1, 1)), torch.tensor([[[[1.0]], [[1.0]], [[1.0]]]]))


def test_multilabel_targets_ignore_contributes_nothing():
    mask = torch.full((1, 2, 2), 255)
    mask[0, 0, 0] = 1
    t = L.multilabel_targets(mask, 2, (2, 2))
    assert torch.equal(t, torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]]))


def test_standard_targets_nearest():
    # cell (i, j) takes pixel (2i, 2j)
    assert torch.equal(L.standard_targets(MASK, (2, 2)), torch.tensor([[[0, 1], [0, 0]]]))
    mask = MASK.clone()
    mask[0, 2, 2] = 255
    assert torch.equal(L.standard_targets(mask, (2, 2)), torch.tensor([[[0, 1], [0, 255]]]))
    assert L.standard_targets(MASK, (2, 2)).dtype == torch.int64


def test_cross_entropy_one_pixel():
    logits = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    expected = -(3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))  # -log softmax_2
    assert L.cross_entropy(logits, torch.tensor([[[2]]])).item() == pytest.approx(expected, rel=1e-6)
    # a second, ignored pixel changes nothing (mean over labelled pixels only)
    two = torch.tensor([[1.0, 9.0], [2.0, -4.0], [3.0, 0.5]]).reshape(1, 3, 1, 2)
    assert L.cross_entropy(two, torch.tensor([[[2, 255]]])).item() == pytest.approx(expected, rel=1e-6)


def test_class_weights_background_one_rest_foreground():
    assert torch.equal(L.class_weights(4, 3.0), torch.tensor([1.0, 3.0, 3.0, 3.0]))


def test_weighted_cross_entropy_scales_terms_and_divides_by_pixel_count():
    # two pixels: class 0 (weight 1) and class 2 (weight 3), zero logits over 3 classes:
    # each term is log 3, so the loss is (1 * log 3 + 3 * log 3) / 2 = 2 log 3
    logits = torch.zeros(1, 3, 1, 2)
    mask = torch.tensor([[[0, 2]]])
    loss = L.cross_entropy(logits, mask, L.class_weights(3, 3.0))
    assert loss.item() == pytest.approx(2 * math.log(3), rel=1e-6)
    # ignored pixels count neither in the sum nor in the divisor
    assert L.cross_entropy(logits, torch.tensor([[[255, 2]]]), L.class_weights(3, 3.0)).item() == pytest.approx(
        3 * math.log(3), rel=1e-6
    )


def test_cross_entropy_all_ignored_is_zero_with_grad():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = L.cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_multilabel_ds_loss_values():
    # zero logits: every term is log 2, so each level's mean is log 2
    levels = [torch.zeros(1, 3, 1, 1), torch.zeros(1, 3, 2, 2)]
    assert L.multilabel_ds_loss(levels, MASK, [0.5, 2.0]).item() == pytest.approx(2.5 * LOG2)
    # one 1x1 level, logits (2, -1, 0), targets (1, 1, 1): mean of sp(-2), sp(1), sp(0)
    lv = [torch.tensor([2.0, -1.0, 0.0]).reshape(1, 3, 1, 1)]
    expected = (sp(-2) + sp(1) + sp(0)) / 3
    assert L.multilabel_ds_loss(lv, MASK, [1.0]).item() == pytest.approx(expected, rel=1e-6)


def test_multilabel_ds_loss_leaves_out_all_ignore_cells():
    mask = torch.tensor([[[1, 1, 255, 255], [1, 1, 255, 255]]])  # right cell has no labelled pixel
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, :, 0, 1] = 7.0  # would cost a lot if the ignored cell were a negative
    # left cell: background target 0 (sp(0)), class 1 target 1 (sp(0))
    assert L.multilabel_ds_loss([logits], mask, [1.0]).item() == pytest.approx(LOG2)


def test_standard_ds_loss_zero_logits():
    levels = [torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4, 4)]
    assert L.standard_ds_loss(levels, MASK, [1.0, 0.5]).item() == pytest.approx(1.5 * math.log(3))


def test_ds_loss_dispatch_and_errors():
    levels = [torch.randn(1, 3, 2, 2)]
    assert L.ds_loss("none", levels, MASK, [1.0]).item() == 0.0
    assert L.ds_loss("standard", levels, MASK, [1.0]) == L.standard_ds_loss(levels, MASK, [1.0])
    assert L.ds_loss("multi_label", levels, MASK, [1.0]) == L.multilabel_ds_loss(levels, MASK, [1.0])
    with pytest.raises(UserError, match="ds_kind: unknown deep supervision 'deep'; allowed: none, standard, multi_label"):
        L.ds_loss("deep", levels, MASK, [1.0])
    with pytest.raises(UserError, match="ds_weights: need one weight per DS level"):
        L.multilabel_ds_loss(levels, MASK, [1.0, 1.0])


def test_global_loss_equals_multilabel_ds_loss_at_1x1():
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 4, (3, 8, 8), generator=g)
    mask[0] = 0  # an image with background only
    levels = [torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 4, 4, generator=g)]
    weights = [0.3, 1.0]
    labels = L.multilabel_targets(mask, 4, (1, 1)).flatten(1)  # B x C x 1 x 1 -> B x C
    pooled = [t.amax(dim=(2, 3), keepdim=True) for t in levels]
    got = L.global_loss(levels, labels, weights)
    assert got.item() == pytest.approx(L.multilabel_ds_loss(pooled, mask, weights).item(), rel=1e-6)


def test_box_masks_two_boxes():
    boxes = [torch.tensor([[1, 0, 0, 2, 2], [2, 1, 3, 4, 5]]), torch.zeros(0, 5, dtype=torch.int64)]
    m = L.box_masks(boxes, 3, 4, 5)
    expected0 = torch.tensor(
        [
            [[1, 1, 1, 1, 1]] * 4,
            [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
            [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]],
        ],
        dtype=torch.float32,
    )
    assert m.shape == (2, 3, 4, 5)
    assert torch.equal(m[0], expected0)
    assert torch.equal(m[1, 0], torch.ones(4, 5)) and not m[1, 1:].any()  # no box: class absent


BOX = [torch.tensor([[1, 0, 0, 2, 2]])]  # class 1, rows 0-1, cols 0-1 of a 4x4 image
BOX_MASK = L.box_masks(BOX, 2, 4, 4)


def test_box_negatives_only_at_fine_levels():
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0] = 7.0  # background: positive everywhere, ignored at a fine level
    logits[0, 1, :2, :2] = -9.0  # class 1 inside its box: positive, ignored at a fine level
    # used: the 12 class-1 cells outside the box, zero logits, target 0 -> log 2 each
    loss = L.box_loss([logits], BOX_MASK, BOX, [1.0], positive_max_size=2, mil_weight=0.0)
    assert loss.item() == pytest.approx(LOG2)


def test_box_positives_used_at_coarse_levels():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 3.0  # the class-1 cell that pools the box
    fine = L.box_loss([logits], BOX_MASK, BOX, [1.0], positive_max_size=1, mil_weight=0.0)
    # 2x2 counts as fine: only the three class-1 negatives, logit 0
    assert fine.item() == pytest.approx(LOG2)
    coarse = L.box_loss([logits], BOX_MASK, BOX, [1.0], positive_max_size=2, mil_weight=0.0)
    # all 8 cells: 4 background positives sp(-0), class-1 positive sp(-3), 3 negatives sp(0)
    assert coarse.item() == pytest.approx((7 * LOG2 + sp(-3)) / 8, rel=1e-6)
    two = L.box_loss([logits, logits], BOX_MASK, BOX, [0.5, 2.0], positive_max_size=1, mil_weight=0.0)
    assert two.item() == pytest.approx(2.5 * LOG2)


def test_box_mil_term():
    # image 0: class-1 box rows 2-3 of 4 -> rows 1-2 of a 3x3 level; cols 1-3 of 4 -> cols 0-2
    # image 1: class-1 box rows 0-0, cols 0-0 -> cell (0, 0)
    boxes = [torch.tensor([[1, 2, 1, 4, 4]]), torch.tensor([[1, 0, 0, 1, 1]])]
    box_mask = L.box_masks(boxes, 2, 4, 4)
    logits = torch.zeros(2, 2, 3, 3)
    logits[0, 1] = torch.tensor([[9.0, 9.0, 9.0], [-1.0, 0.5, -2.0], [-3.0, 2.0, -4.0]])
    logits[1, 1] = torch.tensor([[-1.0, 9.0, 9.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    without = L.box_loss([logits], box_mask, boxes, [1.0], mil_weight=0.0)
    with_mil = L.box_loss([logits], box_mask, boxes, [1.0], mil_weight=0.5)
    # box maxima: 2.0 (row 0's 9s are outside the box) and -1.0; BCE against 1 is sp(-max)
    expected = 0.5 * (sp(-2.0) + sp(1.0)) / 2
    assert (with_mil - without).item() == pytest.approx(expected, rel=1e-6)


def test_pseudo_label_loss():
    g = torch.Generator().manual_seed(1)
    main = torch.randn(2, 3, 8, 8, generator=g)
    levels = [torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 4, 4, generator=g)]
    pseudo = torch.randint(0, 3, (2, 8, 8), generator=g)
    pseudo[0, :4] = 255
    ce = L.cross_entropy(main, pseudo)
    ds = L.multilabel_ds_loss(levels, pseudo, [1.0, 1.0])
    assert L.pseudo_label_loss(main, levels, pseudo, "multi_label", [1.0, 1.0]).item() == pytest.approx((ce + ds).item())
    assert L.pseudo_label_loss(main, levels, pseudo, "multi_label", [1.0, 1.0], use_ds=False) == ce


@pytest.mark.parametrize("depth", [0, 2, 5])
def test_ds_loss_reaches_exactly_the_built_heads(depth):
    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, ds_depth=depth, unet_base_channels=2)
    mask = torch.randint(0, 3, (2, 16, 16))
    main, levels = model(torch.randn(2, 1, 16, 16))
    assert len(levels) == depth == len(model.ds_heads)
    loss = L.cross_entropy(main, mask) + L.ds_loss("multi_label", levels, mask, [1.0] * depth)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    for head in model.ds_heads:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # no other head exists: the only "head" parameters are the main head and the d DS heads
    head_params = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("ds_heads") else "")
                   for n, _ in model.named_parameters() if "head" in n}
    assert head_params == {"head"} | {f"ds_heads.{i}" for i in range(depth)}
    # the d heads sit on the d finest levels (strides 16, 8, 4, 2, 1 coarsest first)
    assert model.ds_reductions == [16, 8, 4, 2, 1][5 - depth:]
