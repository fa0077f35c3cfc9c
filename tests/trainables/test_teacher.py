"""EMA teacher, weak-label-constrained pseudo-labels, ramp-up."""

import math

import pytest
import torch
from torch import nn

from labelmix.errors import UserError
from labelmix.trainables.losses import box_masks
from labelmix.trainables.teacher import (
    allowed_classes,
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


def test_rampup():
    assert rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert rampup(100, 100) == 1.0
    assert rampup(500, 100) == 1.0
    assert rampup(7, 0) == 1.0
    with pytest.raises(UserError, match="rampup_steps"):
        rampup(0, -1)
