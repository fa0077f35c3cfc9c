"""EMA teacher, weak-label-constrained pseudo-labels, ramp-up."""

import math

import pytest
import torch
from torch import nn

from labelmix.errors import UserError
from labelmix.trainables.losses import IGNORE, box_masks
from labelmix.trainables.teacher import (
    allowed_classes,
    box_fill_pseudo_labels,
    constrained_pseudo_labels,
    make_teacher,
    rampup,
    update_teacher,
)


def _set(model, weight, bias, mean, var, batches):
    lin, bn = model[0], model[1]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([weight]))
        lin.bias.copy_(torch.tensor([bias]))
        bn.running_mean.copy_(torch.tensor([mean]))
        bn.running_var.copy_(torch.tensor([var]))
        bn.num_batches_tracked.fill_(batches)


def test_one_ema_step_weights_and_bn_buffers():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    _set(model, [1.0, 2.0], 0.5, 0.0, 1.0, 0)
    teacher = make_teacher(model, 0.9)
    _set(model, [3.0, -2.0], 1.5, 2.0, 3.0, 5)
    update_teacher(teacher, model, step=1)  # plain EMA from the first step (no warm-up copy)
    t_lin, t_bn = teacher.module[0], teacher.module[1]
    # teacher = 0.9 * teacher + 0.1 * student
    assert torch.allclose(t_lin.weight, torch.tensor([[1.2, 1.6]]))
    assert torch.allclose(t_lin.bias, torch.tensor([0.6]))
    assert torch.allclose(t_bn.running_mean, torch.tensor([0.2]))
    assert torch.allclose(t_bn.running_var, torch.tensor([1.2]))
    assert t_bn.num_batches_tracked.item() == 5  # integer buffers are copied
    assert not teacher.module.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert model[0].weight.requires_grad  # the student is untouched


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_ema_decay_is_validated(decay):
    with pytest.raises(UserError, match=r"ema_decay: must be in the open interval \(0, 1\)"):
        make_teacher(nn.Linear(1, 1), decay)


def _weak_batch(seed, c=4, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    types = torch.tensor([0, 1, 2, 3, 1, 2])
    b = len(types)
    global_labels = torch.rand(b, c, generator=g) < 0.5
    global_labels[:, 0] = True
    boxes = []
    for _ in range(b):
        rows = []
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
            cls = int(torch.randint(1, c, (1,), generator=g))
            y0, x0 = (int(v) for v in torch.randint(0, h - 1, (2,), generator=g))
            y1 = int(torch.randint(y0 + 1, h + 1, (1,), generator=g))
            x1 = int(torch.randint(x0 + 1, w + 1, (1,), generator=g))
            rows.append([cls, y0, x0, y1, x1])
        boxes.append(torch.tensor(rows, dtype=torch.int64).reshape(-1, 5))
    logits = torch.randn(b, c, h, w, generator=g) * 3
    return types, global_labels, box_masks(boxes, c, h, w), logits


@pytest.mark.parametrize("seed", range(5))
def test_pseudo_labels_respect_the_weak_label(seed):
    types, global_labels, box_mask, logits = _weak_batch(seed)
    allowed = allowed_classes(types, global_labels, box_mask)
    pseudo = constrained_pseudo_labels(logits, allowed)
    assert pseudo.dtype == torch.int64 and pseudo.shape == (6, 8, 8)
    for i, t in enumerate(types.tolist()):
        if t == 2:  # global: only classes of the global label
            assert set(pseudo[i].unique().tolist()) <= set(torch.nonzero(global_labels[i]).flatten().tolist())
        if t == 1:  # box: class c only inside a class-c box
            chosen = box_mask[i].gather(0, pseudo[i][None])[0]  # H x W: box mask of the chosen class
            assert bool((chosen == 1).all())
        if t in (0, 3):  # full, none: unconstrained argmax
            assert torch.equal(pseudo[i], logits[i].argmax(0))
    assert allowed[:, 0].all()


def test_allowed_classes_literal():
    types = torch.tensor([2, 1])
    global_labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    box_mask = box_masks([torch.zeros(0, 5, dtype=torch.int64), torch.tensor([[2, 0, 0, 1, 1]])], 3, 1, 2)
    allowed = allowed_classes(types, global_labels, box_mask)
    expected = torch.tensor(
        [
            [[[True, True]], [[False, False]], [[True, True]]],
            [[[True, True]], [[False, False]], [[True, False]]],
        ]
    )
    assert torch.equal(allowed, expected)


def test_threshold_marks_low_confidence_pixels():
    # pixel 0 confident for class 1; pixel 1 uniform; pixel 2 confident for class 1, but class 1
    # is not allowed there, so the rest renormalise to (0.5, 0.5)
    logits = torch.tensor([[0.0, 8.0, 0.0], [0.0, 0.0, 0.0], [0.0, 8.0, 0.0]]).T.reshape(1, 3, 1, 3)
    allowed = torch.ones(1, 3, 1, 3, dtype=torch.bool)
    allowed[0, 1, 0, 2] = False
    assert constrained_pseudo_labels(logits, allowed).tolist() == [[[1, 0, 0]]]
    assert constrained_pseudo_labels(logits, allowed, threshold=0.6).tolist() == [[[1, 255, 255]]]


def _row(*margins_by_class):
    """1 x C x 1 x W teacher logits: background 0, class c's row of margins."""
    return torch.tensor([[0.0] * len(margins_by_class[0]), *margins_by_class]).reshape(1, len(margins_by_class) + 1, 1, -1)


def test_box_fill_ranks_a_box_by_the_teacher_margin():
    # one class-1 box over the first 4 of 6 pixels, margins 3, 1, 2, -1 (ranks 0, 2, 1, 3); band
    # (0.25, 0.75): round(1) = 1 pixel is class 1, round(3) = 3 from rank 3 on background, ranks 1-2 ignored
    logits = _row([3.0, 1.0, 2.0, -1.0, 5.0, 5.0])
    pseudo = torch.tensor([[[1, 1, 1, 1, 1, 0]]])
    boxes = [torch.tensor([[1, 0, 0, 1, 4]])]
    bands = ((0.0, 1.0), (0.25, 0.75))
    expected = [[[1, IGNORE, IGNORE, 0, 1, 0]]]  # outside the box: the labels as given
    assert box_fill_pseudo_labels(pseudo, logits, boxes, bands).tolist() == expected
    # a per-class offset of the teacher's logits does not move the ranks
    assert box_fill_pseudo_labels(pseudo, logits + torch.tensor([0.0, 7.0]).view(1, 2, 1, 1), boxes, bands).tolist() == expected
    assert pseudo.tolist() == [[[1, 1, 1, 1, 1, 0]]]  # the input is left as it was


def test_box_fill_overlapping_boxes_and_images_without_boxes():
    # box A, class 1, pixels 0-2, margins 2, 1, 0; box B, class 2, pixels 1-3, margins 0, 3, 1; band
    # (1/3, 2/3) for both: one pixel of each box is its class, one ignored, one background.
    # A: 0 -> 1, 1 -> ignored, 2 -> background; B: 1 -> background, 2 -> 2, 3 -> ignored.
    # A top share wins over the other box's background, a share between over a background.
    logits = torch.cat([_row([2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0])] * 2)
    pseudo = torch.tensor([[[3, 3, 3, 3]], [[3, 3, 3, 3]]])
    boxes = [torch.tensor([[1, 0, 0, 1, 3], [2, 0, 1, 1, 4]]), torch.zeros(0, 5, dtype=torch.int64)]
    third = (1 / 3, 2 / 3)
    out = box_fill_pseudo_labels(pseudo, logits, boxes, ((0.0, 1.0), third, third))
    assert out.tolist() == [[[1, IGNORE, 2, IGNORE]], [[3, 3, 3, 3]]]
    # two boxes whose top shares meet on a pixel: the later box's class
    same = [torch.tensor([[1, 0, 0, 1, 1], [2, 0, 0, 1, 1]])]
    assert box_fill_pseudo_labels(pseudo[:1], logits[:1], same, ((0.0, 1.0), (1.0, 1.0), (1.0, 1.0))).tolist() == [[[2, 3, 3, 3]]]


def test_rampup():
    assert rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert rampup(100, 100) == 1.0
    assert rampup(500, 100) == 1.0
    assert rampup(7, 0) == 1.0
    with pytest.raises(UserError, match="rampup_steps"):
        rampup(0, -1)
