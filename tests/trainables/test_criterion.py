"""The loss built once from the config: which terms run, and which view each network sees."""

import math

import pytest
import torch

from labelmix.errors import UserError
from labelmix.trainables.batches import Batch
from labelmix.trainables.config import load_config
from labelmix.trainables.criterion import build_criterion
from labelmix.trainables.data.annotations import BOX, FULL, GLOBAL, NONE
from labelmix.trainables.losses import IGNORE


class Recorder(torch.nn.Module):
    """A stand-in network: zero logits for 4 classes, no DS levels; keeps what it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 4, *x.shape[-2:]), []


def _batch():
    images = torch.full((3, 1, 16, 16), 0.2)
    images[..., 8:] = 0.8  # dark left half, bright right half
    return Batch(
        images=images,
        masks=torch.zeros(3, 16, 16, dtype=torch.long),
        types=torch.tensor([FULL, BOX, NONE]),
        global_labels=torch.tensor([[1.0, 0, 0, 0]] * 3),
        boxes=[torch.zeros(0, 5, dtype=torch.long), torch.tensor([[1, 2, 2, 6, 6]]), torch.zeros(0, 5, dtype=torch.long)],
    )


def _terms(**fields):
    torch.manual_seed(0)
    student, teacher = Recorder(), Recorder()
    criterion = build_criterion(load_config({"ds_depth": 0, **fields}), 4, 0, torch.device("cpu"))
    terms = criterion.terms(student, teacher, _batch(), pseudo_weight=1.0)
    return terms, student.seen[0], teacher.seen[0]


def test_student_sees_a_strong_view_of_weak_images_and_the_teacher_the_weak_one():
    batch = _batch()
    terms, student_in, teacher_in = _terms(strong_augment=True, strong_view_stats="shared")  # one pass
    assert torch.equal(teacher_in, batch.images[1:])  # the teacher: the weak (as batched) view
    assert torch.equal(student_in[0], batch.images[0])  # a fully labelled image is left as it is
    assert not torch.allclose(student_in[1:], batch.images[1:], atol=1e-3)  # the views differ ...
    # ... but their geometry agrees: the strong view is photometric, the dark half stays where it was
    left, right = student_in[1:, ..., 1:7].mean((1, 2, 3)), student_in[1:, ..., 9:15].mean((1, 2, 3))
    assert bool((left < right).all())
    assert set(terms) == {"full", "negative", "tightness", "box_size", "pairwise", "pseudo"}


def test_without_strong_augment_both_see_the_same_view():
    batch = _batch()
    _, student_in, teacher_in = _terms(strong_augment=False)
    assert torch.equal(student_in, batch.images)
    assert torch.equal(teacher_in, batch.images[1:])


def test_separate_strong_stats_run_the_weak_view_of_the_batch_then_the_strong_views_alone():
    batch = _batch()
    shared, shared_in, _ = _terms(strong_augment=True, strong_view_stats="shared")
    torch.manual_seed(0)
    student, teacher = Recorder(), Recorder()
    config = load_config({"ds_depth": 0, "strong_augment": True})  # strong_view_stats: separate, the default
    terms = build_criterion(config, 4, 0, torch.device("cpu")).terms(student, teacher, batch, pseudo_weight=1.0)
    first, second = student.seen
    assert torch.equal(first, batch.images)  # the whole batch at its weak view
    assert torch.equal(second, shared_in[1:])  # then the weak images' strong views, the same draw as "shared"
    assert torch.equal(teacher.seen[0], batch.images[1:])
    assert {k: v.item() for k, v in terms.items()} == {k: v.item() for k, v in shared.items()}


class Normalised(torch.nn.Module):
    """A stand-in network whose 4 logits are one BatchNorm of the image: the layer the strong view
    would shift."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(1)

    def forward(self, x):
        return self.norm(x).expand(-1, 4, -1, -1), []


@pytest.mark.parametrize("stats", ["shared", "separate"])
def test_only_the_weak_view_updates_the_running_averages_when_separate(stats):
    """The batch's images are half 0.2, half 0.8: mean 0.5, so one update at momentum 0.1 from the
    weak view leaves a running mean of 0.05; the strong views (other intensities) move it elsewhere."""
    torch.manual_seed(0)
    student, teacher = Normalised(), Recorder()
    config = load_config({"ds_depth": 0, "strong_augment": True, "strong_view_stats": stats})
    build_criterion(config, 4, 0, torch.device("cpu")).terms(student, teacher, _batch(), pseudo_weight=1.0)
    running = student.norm.running_mean.item()
    if stats == "separate":
        assert running == pytest.approx(0.05)
    else:
        assert abs(running - 0.05) > 1e-3


def test_images_without_a_loss_keep_the_weak_view():
    torch.manual_seed(0)
    student, teacher = Recorder(), Recorder()
    config = load_config({"ds_depth": 0, "strong_augment": True, "strong_view_stats": "shared"})  # one pass
    criterion = build_criterion(config, 4, 0, torch.device("cpu"))
    batch = _batch()
    criterion.terms(student, teacher, batch, pseudo_weight=0.0)  # "5% alone": unlabeled images carry no loss
    seen = student.seen[0]
    assert torch.equal(seen[2], batch.images[2])  # the unlabeled image: weak view
    assert not torch.allclose(seen[1], batch.images[1], atol=1e-3)  # the box image still learns from a strong view
    assert teacher.seen == []  # no pseudo-labels at weight 0


def test_logit_adjust_every_main_head_term_reads_logits_minus_log_class_weight():
    """Zero logits, foreground weight 3: adjusted logits [0, -log 3, -log 3, -log 3], so background
    has probability 1/2 and each fluid class 1/6 (weighted CE instead: 1/4 each, background weight 1)."""
    adjusted, _, _ = _terms(class_balance="logit_adjust", foreground_weight=3.0)
    weighted, _, _ = _terms(class_balance="weight", foreground_weight=3.0)
    assert adjusted["full"].item() == pytest.approx(math.log(2))  # the all-background mask
    assert weighted["full"].item() == pytest.approx(math.log(4))
    # exact negatives on the box image, x negative_weight 3: 240 pixels outside the box allow only
    # background (-log 1/2), the 16 inside allow background and class 1 (-log 2/3)
    assert adjusted["negative"].item() == pytest.approx(3 * (240 * math.log(2) + 16 * math.log(1.5)) / 256)
    assert weighted["negative"].item() == pytest.approx(3 * (240 * math.log(4) + 16 * math.log(2)) / 256)
    # the teacher's adjusted logits make background the pseudo-label everywhere; unweighted CE on them
    assert adjusted["pseudo"].item() == pytest.approx(math.log(2))


def _box_and_global_batch():
    """A box image (one class-1 box of 4 x 4 pixels) and an image-level-labelled one without fluid."""
    return Batch(
        images=torch.full((2, 1, 16, 16), 0.5),
        masks=torch.zeros(2, 16, 16, dtype=torch.long),
        types=torch.tensor([BOX, GLOBAL]),
        global_labels=torch.tensor([[1.0, 1, 0, 0], [1.0, 0, 0, 0]]),
        boxes=[torch.tensor([[1, 2, 2, 6, 6]]), torch.zeros(0, 5, dtype=torch.long)],
    )


@pytest.mark.parametrize(("fields", "box_weight", "global_weight"), [
    ({}, 3.0, 3.0),  # None: image-level labels take negative_weight, as box images do
    ({"global_negative_weight": 0.0}, 3.0, 0.0),
    ({"global_negative_weight": 1.0, "negative_weight": 0.0}, 0.0, 1.0),
])
def test_global_negative_weight_weighs_the_image_level_labels_exact_negatives_alone(fields, box_weight, global_weight):
    """Zero logits over 4 classes (p = 1/4), unweighted CE. Box image: 240 pixels outside the box
    allow only background (-log 1/4), the 16 inside background and class 1 (-log 1/2). The
    fluid-free image-level label allows only background everywhere (-log 1/4 at all 256 pixels).
    The term is the mean over both images' pixels, each image's at its type's weight."""
    config = load_config({"ds_depth": 0, "class_balance": "weight", "foreground_weight": 1.0, "presence_weight": 0.0,
                          "tightness_weight": 0.0, "box_size_weight": 0.0, "pairwise_weight": 0.0, **fields})
    criterion = build_criterion(config, 4, 0, torch.device("cpu"))
    terms = criterion.terms(Recorder(), Recorder(), _box_and_global_batch(), pseudo_weight=0.0)
    box_loss = (240 * math.log(4) + 16 * math.log(2)) / 256
    assert set(terms) == {"negative"}
    assert terms["negative"].item() == pytest.approx((box_weight * box_loss + global_weight * math.log(4)) / 2)


def test_both_negative_weights_at_zero_leave_no_negative_term():
    config = load_config({"ds_depth": 0, "negative_weight": 0.0, "global_negative_weight": 0.0})
    terms = build_criterion(config, 4, 0, torch.device("cpu")).terms(
        Recorder(), Recorder(), _box_and_global_batch(), pseudo_weight=0.0)
    assert "negative" not in terms


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_global_negative_weight_refuses_what_is_not_a_weight(value):
    with pytest.raises(UserError, match="global_negative_weight"):
        load_config({"global_negative_weight": value})


class Constant(torch.nn.Module):
    """A stand-in network with the same logits at every pixel; keeps what it was given."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.logits.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:]).clone(), []


@pytest.mark.parametrize("debias", [False, True])
def test_pseudo_debias_reads_the_teacher_logits_minus_log_class_weight(debias):
    """Teacher logits [0, 0.5, 0, 0] at every pixel, foreground weight 3 (log 3 = 1.10): plainly its
    pseudo-label is class 1 wherever class 1 is allowed (the 16 pixels of the box, all 256 of the
    unlabeled image); debiased, 0.5 - log 3 < 0 and background wins everywhere. The student's
    logits [1, 0, 0, 0] make the two labels' CE differ: background log(e + 3) - 1, class 1 log(e + 3)."""
    student, teacher = Constant([1.0, 0.0, 0.0, 0.0]), Constant([0.0, 0.5, 0.0, 0.0])
    config = load_config({"ds_depth": 0, "foreground_weight": 3.0, "pseudo_debias": debias, "pseudo_threshold": 0})
    terms = build_criterion(config, 4, 0, torch.device("cpu")).terms(student, teacher, _batch(), pseudo_weight=1.0)
    background, fluid = math.log(math.e + 3) - 1, math.log(math.e + 3)
    expected = background if debias else (272 * fluid + 240 * background) / 512  # the box and unlabeled images' 512 pixels
    assert terms["pseudo"].item() == pytest.approx(expected)


def test_pseudo_box_fill_labels_each_box_by_its_size_band():
    """Teacher [0, 0.5, 0, 0] everywhere: plainly class 1 fills the box's 16 pixels. With pseudo_box_fill
    and the band (0.5, 0.9), equal margins rank in raster order: 8 pixels are class 1, round(14.4) = 14
    on are background (2), the 6 between ignored; the unlabeled image (no boxes) keeps class 1 on all
    256. Student [1, 0, 0, 0]: CE log(e + 3) - 1 on background, log(e + 3) on class 1, averaged over
    the 506 labelled pixels."""
    student, teacher = Constant([1.0, 0.0, 0.0, 0.0]), Constant([0.0, 0.5, 0.0, 0.0])
    config = load_config({"ds_depth": 0, "pseudo_box_fill": True, "pseudo_threshold": 0})
    terms = build_criterion(config, 4, 0, torch.device("cpu")).terms(student, teacher, _batch(), pseudo_weight=1.0)
    background, fluid = math.log(math.e + 3) - 1, math.log(math.e + 3)
    assert terms["pseudo"].item() == pytest.approx((264 * fluid + 242 * background) / 506)


def test_default_threshold_ignores_the_pixels_the_teacher_is_unsure_of():
    """Teacher [0, 0.5, 0, 0] everywhere. Inside the box (background or class 1 allowed) its top
    probability is e^0.5 / (1 + e^0.5) = 0.62, on the unlabeled image e^0.5 / (3 + e^0.5) = 0.35:
    both under the default 0.9, so ignored. Outside the box only background is allowed (confidence
    1): those 240 pixels keep background, CE log(e + 3) - 1 for the student [1, 0, 0, 0]."""
    student, teacher = Constant([1.0, 0.0, 0.0, 0.0]), Constant([0.0, 0.5, 0.0, 0.0])
    config = load_config({"ds_depth": 0})
    assert config.pseudo_threshold == 0.9
    terms = build_criterion(config, 4, 0, torch.device("cpu")).terms(student, teacher, _batch(), pseudo_weight=1.0)
    assert terms["pseudo"].item() == pytest.approx(math.log(math.e + 3) - 1)


def test_pseudo_debias_needs_a_positive_foreground_weight():
    with pytest.raises(UserError, match="pseudo_debias subtracts log"):
        load_config({"pseudo_debias": True, "foreground_weight": 0})


def test_logit_adjust_needs_a_positive_foreground_weight():
    with pytest.raises(UserError, match="foreground_weight must be > 0"):
        load_config({"class_balance": "logit_adjust", "foreground_weight": 0})


def test_tightness_class_weights_are_read_by_class_name():
    names = ("background", "IRF", "SRF", "PED")
    config = load_config({"ds_depth": 0, "tightness_class_weights": {"IRF": 0.3, "PED": 0.0}})
    criterion = build_criterion(config, 4, 0, torch.device("cpu"), class_names=names)
    assert criterion.tightness_class_weights == (1.0, 0.3, 1.0, 0.0)  # SRF not named: 1
    assert build_criterion(load_config({"ds_depth": 0}), 4, 0, torch.device("cpu"), class_names=names).tightness_class_weights is None


def test_tightness_class_weights_refuse_a_class_the_dataset_lacks():
    config = load_config({"ds_depth": 0, "tightness_class_weights": {"CNV": 0.5, "background": 1.0}})
    with pytest.raises(UserError, match=r"tightness_class_weights: \['CNV', 'background'\] are not foreground classes .*\['IRF', 'SRF', 'PED'\]"):
        build_criterion(config, 4, 0, torch.device("cpu"), class_names=("background", "IRF", "SRF", "PED"))


@pytest.mark.parametrize("weight", [-0.5, float("inf"), float("nan")])
def test_tightness_class_weights_must_be_finite_and_not_negative(weight):
    with pytest.raises(UserError, match="tightness_class_weights"):
        load_config({"tightness_class_weights": {"IRF": weight}})


class Pixelwise(torch.nn.Module):
    """A stand-in network that reads each pixel alone: class 1 where the image is brighter than 0.5
    (logit 20 (x - 0.5)), background elsewhere, classes 2 and 3 far below; records its inputs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        fluid = 20.0 * (x[:, 0] - 0.5)
        far = torch.full_like(fluid, -30.0)
        return torch.stack([torch.zeros_like(fluid), fluid, far, far], dim=1), []


def _unlabeled_pair():
    """One masked image and two unlabeled ones: the first dark everywhere (0.2), the second bright (0.8)."""
    images = torch.cat([torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.8)])
    empty = torch.zeros(0, 5, dtype=torch.long)
    return Batch(images=images, masks=torch.zeros(3, 16, 16, dtype=torch.long), types=torch.tensor([FULL, NONE, NONE]),
                 global_labels=torch.tensor([[1.0, 0, 0, 0]] * 3), boxes=[empty, empty, empty])


def test_cutmix_pastes_unlabeled_images_into_each_other_and_their_pseudo_labels_the_same_way():
    """The teacher labels the unmixed images (dark: background, bright: class 1); the student sees each
    unlabeled image with a rectangle of the other pasted in. Where the pseudo-labels are pasted like
    the images, the pixelwise student agrees with them at every pixel, so the pseudo-label CE is the
    small one of logits 0 and 6 (log(1 + e^-6) at each pixel); labels left unmixed would cost ~6 in
    the pasted rectangles."""
    batch = _unlabeled_pair()
    torch.manual_seed(0)
    student, teacher = Pixelwise(), Pixelwise()
    config = load_config({"ds_depth": 0, "pseudo_mix": "cutmix", "pseudo_threshold": 0})
    terms = build_criterion(config, 4, 0, torch.device("cpu")).terms(student, teacher, batch, pseudo_weight=1.0)
    assert torch.equal(teacher.seen[0], batch.images[1:])  # the teacher: the unmixed images
    seen = student.seen[0]
    assert torch.equal(seen[0], batch.images[0])  # the masked image is never mixed
    pasted = [(seen[i, 0] != batch.images[i, 0]).float().mean().item() for i in (1, 2)]
    assert all(0.2 <= share <= 0.55 for share in pasted)  # a 25-50% rectangle each (rounded to whole pixels)
    assert terms["pseudo"].item() == pytest.approx(math.log1p(math.exp(-6.0)), rel=1e-4)


def test_cutmix_leaves_the_views_alone_while_the_pseudo_label_weight_is_0():
    batch = _unlabeled_pair()
    student, teacher = Pixelwise(), Pixelwise()
    config = load_config({"ds_depth": 0, "pseudo_mix": "cutmix"})
    build_criterion(config, 4, 0, torch.device("cpu")).terms(student, teacher, batch, pseudo_weight=0.0)
    assert torch.equal(student.seen[0], batch.images)


def test_pseudo_mix_refuses_an_unknown_kind():
    with pytest.raises(UserError, match="pseudo_mix"):
        load_config({"pseudo_mix": "mixup"})


def test_box_shape_weight_reads_the_box_images_masks_as_a_weighted_mask_loss():
    """The box image's mask holds its learned pseudo-mask: class 1 on the box's 16 pixels, 16 more
    ignored, background on the other 224. Student [1, 0, 0, 0]: CE log(e + 3) - 1 on background,
    log(e + 3) x foreground weight 10 on class 1, over the 240 labelled pixels, x box_shape_weight 2.
    The masked and unlabeled images' masks are not read by this term."""
    batch = _batch()
    batch.masks[1, 2:6, 2:6] = 1
    batch.masks[1, 10:14, 10:14] = IGNORE
    batch.masks[0] = 2  # the masked image's own mask: its own term
    student, teacher = Constant([1.0, 0.0, 0.0, 0.0]), Constant([0.0, 0.0, 0.0, 0.0])
    config = load_config({"ds_depth": 0, "box_shape_weight": 2.0})
    terms = build_criterion(config, 4, 0, torch.device("cpu"), box_supervision="both").terms(student, teacher, batch, pseudo_weight=0.0)
    background, fluid = math.log(math.e + 3) - 1, math.log(math.e + 3)
    assert terms["box_shape"].item() == pytest.approx(2 * (224 * background + 16 * 10 * fluid) / 240)
    assert {"negative", "tightness", "box_size", "pairwise"} <= set(terms)  # "both": beside the box priors
    off = build_criterion(config, 4, 0, torch.device("cpu"), box_supervision="priors").terms(student, teacher, batch, pseudo_weight=0.0)
    assert "box_shape" not in off


def test_box_supervision_shapes_trains_box_images_on_their_learned_masks_alone():
    """Under "shapes" the box image pays the learned-mask loss (the value of the test above at weight
    1) and nothing else: no box prior or exact negative, no strong view, no teacher; the unlabeled image
    keeps its pseudo-label term. Teacher [0, 2, 0, 0]: class 1 at probability e^2 / (e^2 + 3) = 0.71,
    under the 0.9 threshold, so with threshold 0 the unlabeled image's pseudo-label is class 1
    everywhere and the student [1, 0, 0, 0] pays log(e + 3) (pseudo-label foreground weight 1)."""
    batch = _batch()
    batch.masks[1, 2:6, 2:6] = 1
    batch.masks[1, 10:14, 10:14] = IGNORE
    batch.masks[0] = 2
    student, teacher = Constant([1.0, 0.0, 0.0, 0.0]), Constant([0.0, 2.0, 0.0, 0.0])
    config = load_config({"ds_depth": 0, "strong_augment": True, "pseudo_threshold": 0})
    criterion = build_criterion(config, 4, 0, torch.device("cpu"), box_supervision="shapes")
    terms = criterion.terms(student, teacher, batch, pseudo_weight=1.0)
    background, fluid = math.log(math.e + 3) - 1, math.log(math.e + 3)
    assert set(terms) == {"full", "box_shape", "pseudo"}
    assert terms["box_shape"].item() == pytest.approx((224 * background + 16 * 10 * fluid) / 240)
    assert terms["full"].item() == pytest.approx(10 * fluid)  # the masked image: class 2 everywhere
    assert terms["pseudo"].item() == pytest.approx(fluid)
    assert torch.equal(teacher.seen[0], batch.images[2:])  # the teacher sees the unlabeled image only
    assert torch.equal(student.seen[0][:2], batch.images[:2])  # the box image keeps the weak view


def test_build_criterion_wants_a_resolved_box_supervision():
    with pytest.raises(ValueError, match="resolved"):
        build_criterion(load_config({"ds_depth": 0}), 4, 0, torch.device("cpu"), box_supervision="auto")
