"""The trial config: one frozen, validated model of every setting a training run reads.

Every "ours" decision of METHOD.md is a field here, so a study can search or ablate it. Field
names are nouns with units where they have them; errors name the field path.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Mapping, Optional, Sequence, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labelmix.errors import UserError, validated
from labelmix.trainables.data.annotations import AnnotationMix, CostModel
from labelmix.trainables.data.synth import SynthSettings

DsType = Literal["none", "standard", "multi_label"]  # deep supervision; the one list of its kinds
DS_TYPES: tuple[str, ...] = get_args(DsType)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """A store path, or the synthetic generator (generated once into the cache folder)."""

    path: Optional[str] = None
    synthetic: Optional[SynthSettings] = None  # METHOD.md, "What a real B-scan looks like"
    max_train_images: Optional[int] = Field(None, ge=1)  # keep the first N training images (smoke runs)
    max_eval_images: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of dataset.path or dataset.synthetic")
        return self


class TrainConfig(_Strict):
    # data and annotation
    dataset: DataConfig = DataConfig(synthetic=SynthSettings())
    mix: AnnotationMix = AnnotationMix()  # fractions per annotation type and the seed that assigns them
    # which images get the richest labels: "random" ranks the training images by a permutation seeded by
    # mix.seed; "classes" asks every image's classes first (an image-level label, charged in cost/hours
    # to the masked and unlabeled images) and ranks them so the masked images show every class, and
    # fluid-free images, as evenly as they allow (annotations.class_balanced_order). Both nest as mix.seed's ranking.
    # Measured on 5% masks (docs/RESULTS.md, "Masks that show every class"; 5 paired seeds): alone 0.654
    # calibrated val mIoU against 0.349 at random (higher at every seed, std 0.041 against 0.190); + 95%
    # boxes 0.750, 0.016 under all masks. "random" stays the default so that earlier rows keep their meaning
    mix_selection: Literal["random", "classes"] = "random"
    cost: CostModel = CostModel()
    # network
    encoder: str = "resnet18"  # any timm name with features_only, or "unet"
    pretrained: bool = False  # weights from the timm hub: off by default (no hub access here)
    decoder_channels: Optional[tuple[int, ...]] = None  # None: derived from the encoder's feature_info
    decoder_scale: float = Field(0.5, gt=0)  # x the derived widths: 0.5 halves the decoder's cost on CPU
    unet_base_channels: int = Field(64, ge=1)  # first block width of encoder "unet" (64 in the authors' code)
    normalize_input: bool = True  # the model standardises images with the training images' mean and std
    # deep supervision (METHOD.md "Losses")
    ds_type: DsType = "multi_label"
    ds_depth: int | Literal["max"] = "max"  # supervised decoder levels from the full-resolution end
    ds_weight: float = Field(0.2, ge=0)  # lambda_ds; 0.2: at 1.0 the DS terms slowed the main head (docs/RESULTS.md)
    ds_level_weights: Optional[tuple[float, ...]] = None  # coarsest first; None: all 1 (global and box terms use them too)
    foreground_weight: float = Field(10.0, ge=0)  # CE weight of every non-background class (background 1); fluid is ~1% of pixels
    # How foreground_weight acts. "weight": it scales the mask CE of fluid pixels, and the weak terms
    # (unweighted) pull the other way. "logit_adjust": every term on the main head (mask CE, exact
    # negatives, presence, box priors, pseudo-labels) reads the logits minus log(class weight)
    # (Menon et al., ICLR 2021), so all of them fit one calibrated model and the raw logits keep the
    # same fluid odds x foreground_weight that the weighted CE aims at.
    class_balance: Literal["weight", "logit_adjust"] = "weight"
    # cells with ignored pixels (uncertain pseudo-labels): a negative needs every pixel of the cell
    # labelled; "any_labelled" is the first rule (0.149 vs 0.366 val mIoU on box pseudo-masks, METHOD.md)
    ds_negative_rule: Literal["all_labelled", "any_labelled"] = "all_labelled"
    # weak labels, dense (weak_losses.py): each term a mean per pixel, line, box or cell, so 1 is
    # "as strong as a mask" per unit
    # exact negatives per pixel on the main head (box images, and global ones unless global_negative_weight is set); 3: 5% masks + 95% boxes, seed 0,
    # val mIoU 0.432 at 1, 0.473 at 3, 0.424 at 10 (docs/RESULTS.md)
    negative_weight: float = Field(3.0, ge=0)
    # the exact negatives of image-level-labelled images alone; None: negative_weight, as box images'.
    # Beside class-balanced masks they cost 0.124 calibrated val mIoU at every seed (docs/RESULTS.md,
    # annotation-types-balanced-global-terms); 0 turns them off where box images keep theirs
    global_negative_weight: float | None = Field(None, ge=0)
    tightness_weight: float = Field(1.0, ge=0)  # every row and column of a box holds its class
    # x tightness_weight for the boxes of the named classes ({IRF: 0.3}); classes not named keep 1.
    # Small, clustered objects and large ones may want different pulls: at tightness_weight 0.3 for
    # every class IRF rose and SRF was lost (docs/RESULTS.md, annotation-types-tightness); {IRF: 0.3}
    # lifted IRF and plain val mIoU (+0.013) but cost 0.045 calibrated over 5 paired seeds (-tightness-irf)
    tightness_class_weights: dict[str, float] = Field(default_factory=dict)
    box_line_sharpness: float = Field(50.0, gt=0)  # r of the smooth max along a box line (10 let whole lines fill: 0.386 vs 0.432, seed 0)
    box_size_weight: float = Field(1.0, ge=0)  # band on the share of a box its class fills
    # [low, high] for every class, or "auto": per class the 5th-95th percentile of the share of its
    # box each class fills on the run's own masked images (criterion.box_bands; on 5% masks + 95%
    # boxes +0.002, std 0.029, calibrated val mIoU over 5 paired seeds: not the default)
    box_fill: Union[tuple[float, float], Literal["auto"]] = (0.5, 0.9)
    # What box images learn from. "shapes": learned box shapes (box_shapes.py) as if they were masks:
    # a small box-conditioned U-Net, trained for box_shape_steps steps on the masked training images'
    # boxes and masks only, gives each box image a pseudo-mask (a box's class where it is at least
    # box_shape_band[1] sure, background where at most [0] and outside all boxes, the rest ignored),
    # and the box images pay box_shape_weight x the mask loss (CE and deep supervision) on it and no
    # other term (no box priors, exact negatives, weak DS targets or teacher); global-label and
    # unlabeled images keep theirs. "priors": the box priors (tightness, size band, pairwise), exact
    # negatives and the teacher, the defaults until 2026-12-07. "both": the learned shapes' mask loss
    # beside the priors. "auto" (default): "shapes" where every training image has a mask or boxes and
    # the masked ones hold boxes to learn from, else "priors" (a run reports which as train/box_shapes,
    # 1 or 0): beside 47.5% image-level-labelled images the shapes cost 0.278 calibrated val mIoU
    # against the priors at every one of 5 paired seeds (docs/RESULTS.md, "Learned box shapes as the default").
    # Measured (docs/RESULTS.md, "Learned box shapes"; 5 paired seeds each, val mIoU): on 5% masks + 95%
    # boxes "shapes" scored 0.124 plain over "priors" at every seed (+0.016 calibrated) and 0.044 plain
    # under all masks; on 10% masks + 90% boxes +0.093 plain at 4 of 5 seeds (+0.001 calibrated), 0.088
    # plain under all masks; "both" +0.001 calibrated on 5% + boxes.
    box_supervision: Literal["auto", "priors", "shapes", "both"] = "auto"
    box_shape_weight: float = Field(1.0, gt=0)
    box_shape_steps: int = Field(500, ge=1)
    box_shape_band: tuple[float, float] = (0.3, 0.7)
    # inside boxes, neighbours of similar intensity share a class (BoxInst). On 5% masks + 95% boxes weight 2,
    # dilation 2 and threshold 0.02 each lost at every one of 5 paired seeds (-0.118 / -0.223 / -0.040
    # calibrated val mIoU; docs/RESULTS.md, annotation-types-pairwise)
    pairwise_weight: float = Field(1.0, ge=0)
    pairwise_dilation: int = Field(1, ge=1)  # pixels between the two ends of a pair
    # |intensity difference| (images in [0, 1], smoothed) below which a pair counts as similar. 0.05: on
    # the synthetic training set 93% of such pairs inside boxes share a class (benchmarks/pairwise_prior.py)
    pairwise_threshold: float = Field(0.05, gt=0)
    # a present global class fills its top presence_area pixels. On 5% masks + 95% global labels off it
    # gained 0.058 calibrated val mIoU at each of 5 paired seeds, but the plain argmax lost classes;
    # over 64 pixels -0.074 (docs/RESULTS.md, annotation-types-global-presence). Beside class-balanced
    # masks (mix_selection: classes) it cost 0.093 at every seed and the exact negatives 0.124, each
    # added alone to the teacher's pseudo-labels (annotation-types-balanced-global-terms)
    presence_weight: float = Field(1.0, ge=0)
    presence_area: int = Field(16, ge=1)  # pixels at full resolution; 1 is the hard max
    # x ds_weights: the exact multi-label targets of the weak labels at the DS levels, for global-label
    # images and for box images. Boxes 0: on 5% masks + 95% boxes they cost 0.019 calibrated val mIoU
    # (std 0.036, 4 of 5 paired seeds) and doubled the spread; on 95% global labels they helped in the
    # mean (0.024, std 0.084, 4 of 5 seeds) (docs/RESULTS.md, annotation-types-box-ablation, -weak-ds)
    weak_ds_weight: float = Field(1.0, ge=0)
    box_ds_weight: float = Field(0.0, ge=0)
    # The first formulation (max-pooled global term, per-box MIL): weight x sum over levels of
    # ds_level_weights x the level's loss. Off by default: its hard max put the whole gradient on
    # one cell per image, 8x the masks' at 0.2 and nearly nothing at 0.02 (docs/RESULTS.md).
    global_weight: float = Field(0.0, ge=0)
    box_weight: float = Field(0.0, ge=0)
    box_positive_max_size: int = Field(16, ge=1)  # pooled-box positives only at levels no larger than this
    box_mil_weight: float = Field(1.0, ge=0)
    # teacher and pseudo-labels
    ema_decay: float = 0.99
    ema_warmup: bool = True  # timm's warm-up: decay min(ema_decay, 1 - (1 + step)^(-2/3)), so short runs' teachers keep up
    pseudo_weight: float = Field(1.0, ge=0)
    # pixels whose constrained top probability is below this are ignored (exact ones never are), and
    # whether the student learns weak images on a strong photometric view while the teacher sees the
    # weak one (FixMatch-style). The strong view is off: on 5% masks + 47.5% boxes + 47.5% global
    # labels it cost 0.068 val mIoU (with threshold 0.8) at each of 3 paired seeds (weak-ablation);
    # the teacher predicts on the student's own view. Threshold 0.9 (0 until 2026-12-07): on 5% masks
    # + 95% boxes +0.020 calibrated val mIoU (std 0.016, 4 of 5 paired seeds; 0.95 +0.005), on 95%
    # global labels +0.010 (0.054), on 95% unlabeled +0.004 (docs/RESULTS.md, annotation-types-box-teacher,
    # -threshold, -unlabeled). Beside class-balanced masks the strong view cost 0.092 on 95% unlabeled
    # images (0 of 5 paired seeds higher), 0.039 with strong_view_stats separate (docs/RESULTS.md,
    # annotation-types-balanced-teacher, -separate).
    pseudo_threshold: float = Field(0.9, ge=0, le=1)
    strong_augment: bool = False
    # BatchNorm under the strong view (read only with strong_augment). "shared": one forward pass over
    # the batch, the strong views of the weak images beside the masked images, so BatchNorm's batch
    # statistics (which normalise the masked images too) and its running averages (which the kept
    # model evaluates with) mix both views; every strong-view row measured before 2026-12-08 ran so.
    # "separate" (default): the student runs on the whole batch at its weak view (the masked images'
    # outputs, and the running averages, as without a strong view), then on the strong views alone
    # with the running averages frozen (criterion._two_passes, model.frozen_running_stats); one more
    # forward and backward of the weak images per step. Beside class-balanced 5% masks, separate
    # scored +0.053 calibrated val mIoU over shared on 95% unlabeled images (std 0.033, 5 of 5 paired
    # seeds) and +0.034 on 95% image-level labels (std 0.113, 4 of 5), yet both stay under the same
    # view (docs/RESULTS.md, "The strong view with its own BatchNorm statistics").
    strong_view_stats: Literal["shared", "separate"] = "separate"
    # "cutmix": the student learns unlabeled images' pseudo-labels on CutMix pairs (a rectangle of
    # 25-50% of one image pasted into another, the teacher's pseudo-labels of the unmixed images
    # pasted the same way; French et al., BMVC 2020), so the teacher's view and the student's differ
    # in context while their geometry agrees. Box and global-label images are never mixed. Off: on 5%
    # masks + 95% unlabeled it measured -0.016 calibrated val mIoU against 5% alone (std 0.089, 2 of 5
    # paired seeds higher), -0.130 with the strong view (docs/RESULTS.md, annotation-types-cutmix).
    pseudo_mix: Literal["none", "cutmix"] = "none"
    pseudo_rampup: float = Field(0.3, ge=0, le=1)  # fraction of all steps for the sigmoid ramp-up
    pseudo_ds: bool = True  # deep supervision on the pseudo-label too
    # foreground_weight for the pseudo-label CE. 1: the teacher's false positives are not amplified
    # (at 10 they fed back until the student marked fluid everywhere, docs/RESULTS.md)
    pseudo_foreground_weight: float = Field(1.0, ge=0)
    # Pseudo-labels from the teacher's logits minus log(class weight). Under the weighted mask CE the
    # logits carry about +log(foreground_weight) for every fluid class (the val-chosen background
    # offsets of all-mask runs: 1.75-2.0 against log 10 = 2.3, docs/RESULTS.md), so the plain argmax
    # over-fills boxes and marks fluid on unlabeled images; debiased, it reads the posterior the CE
    # weight shifted. No effect with class_balance logit_adjust (its pseudo-labels read adjusted logits).
    # Off: on 5% masks + 95% boxes it measured +0.008 (std 0.040) calibrated val mIoU over 5 paired seeds,
    # within noise, and left the val-chosen offsets where they were (docs/RESULTS.md)
    pseudo_debias: bool = False
    # Inside each class-c box the pseudo-label follows the size band (box_fill) instead of the argmax:
    # the low share of the box's pixels where the teacher's margin of c over background is largest
    # are c, those past the high share background, those between ignored (teacher.box_fill_pseudo_labels);
    # any lean of the teacher's logits to a class then cannot over-fill a box. Off: on 5% masks + 95%
    # boxes -0.013 (std 0.049) calibrated val mIoU over 5 paired seeds, 2 higher, the val-chosen
    # offsets unchanged (docs/RESULTS.md, annotation-types-pseudo-box-fill)
    pseudo_box_fill: bool = False
    keep_model: Literal["teacher", "student"] = "teacher"
    # optimisation
    epochs: int = Field(20, ge=1)
    steps_per_epoch: Optional[int] = Field(None, ge=1)  # None: one pass over the training images
    batch_size: int = Field(8, ge=1)  # 8: on CPU more, smaller steps learned faster per minute than 16
    # masked images in every batch when some are and some are not (batches.full_masks_per_batch); 0: a
    # plain shuffle. On 5% masks + 95% boxes 1 and 2 gave the same (+0.005, std 0.009, calibrated val
    # mIoU over 5 paired seeds), 4 cost 0.076 (std 0.062, 0 of 5 higher): the 43 masked images over-fit
    # (docs/RESULTS.md, annotation-types-masks-per-batch, -one-mask-per-batch)
    full_per_batch: int = Field(2, ge=0)
    # "fixed": full_per_batch masked images in every batch, whatever the mix; "share": at least that,
    # or the masks' share of the batch (rounded half up, one slot left for the others) where it is
    # more. Fixed: on 50% masks + 50% boxes the share (4 of 8) cost 0.056 (std 0.021) calibrated val
    # mIoU, 0 of 5 paired seeds higher; only a mix whose other images carry no loss gains from it
    # (50% masks alone +0.130; docs/RESULTS.md, annotation-types-headline-share)
    full_per_batch_rule: Literal["fixed", "share"] = "fixed"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    augment: bool = True  # joint geometric (flip, small affine) + intensity augmentation
    # run
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # autocast dtype of forward passes; fp16 (CUDA only) adds a gradient scaler. bf16 + channels-last:
    # 2.4x faster steps on this CPU, val mIoU within seed noise of fp32 (all masks, seeds 0-2: 0.680 /
    # 0.651 / 0.679 against 0.672 / 0.677 / 0.668; 5% alone: 0.242 / 0.541 / 0.178 against 0.269 /
    # 0.470 / 0.263; docs/RESULTS.md)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    channels_last: bool = True  # NHWC memory format for the model and its inputs
    threads: Optional[int] = Field(None, ge=1)  # torch intra-op threads; None: leave as is
    cache_dir: str = ".labelmix/cache"

    @field_validator("ema_decay")
    @classmethod
    def _decay_in_open_unit_interval(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("must be in the open interval (0, 1)")
        return v

    @field_validator("ds_depth")
    @classmethod
    def _depth_non_negative(cls, v):
        if v != "max" and v < 0:
            raise ValueError("must be >= 0 or 'max'")
        return v

    @field_validator("box_fill")
    @classmethod
    def _fill_band(cls, v):
        if v != "auto" and not _is_band(v):
            raise ValueError("must be [low, high] with 0 <= low <= high <= 1, or auto")
        return v

    @field_validator("box_shape_band")
    @classmethod
    def _shape_band(cls, v):
        if not _is_band(v):
            raise ValueError(f"must be [low, high] with 0 <= low <= high <= 1, got {list(v)}")
        return v

    @field_validator("tightness_class_weights")
    @classmethod
    def _class_weights(cls, v):
        bad = {name: w for name, w in v.items() if not (w >= 0 and w != float("inf"))}
        if bad:
            raise ValueError(f"weights must be finite numbers >= 0, got {bad}")
        return v

    @field_validator("ds_level_weights", "decoder_channels")
    @classmethod
    def _positive_entries(cls, v):
        if v is not None and any(x < 0 for x in v):
            raise ValueError("entries must be >= 0")
        return v

    @model_validator(mode="after")
    def _logit_adjust_needs_weight(self):
        if self.class_balance == "logit_adjust" and self.foreground_weight <= 0:
            raise ValueError("class_balance logit_adjust subtracts log(foreground_weight): foreground_weight must be > 0")
        if self.pseudo_debias and self.class_balance == "weight" and self.foreground_weight <= 0:
            raise ValueError("pseudo_debias subtracts log(foreground_weight): foreground_weight must be > 0")
        return self

    def digest(self) -> str:
        """Short hash of the whole config (checkpoint compatibility, cache keys)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _is_band(band: Sequence[float]) -> bool:
    """Whether ``band`` is an ordered [low, high] within [0, 1]."""
    return 0.0 <= band[0] <= band[1] <= 1.0


def class_weights_by_name(weights: Mapping[str, float], class_names: Sequence[str], field: str) -> tuple[float, ...] | None:
    """Per class index: the weight given to its name, 1 for the others; None when none is given.
    A name that is not a foreground class of the dataset is a UserError naming the classes."""
    if not weights:
        return None
    foreground = list(class_names[1:])
    unknown = sorted(set(weights) - set(foreground))
    if unknown:
        raise UserError(f"{field}: {unknown} are not foreground classes of the dataset; its classes with boxes: {foreground}")
    return tuple(1.0 if i == 0 else float(weights.get(name, 1.0)) for i, name in enumerate(class_names))


def load_config(data: Mapping[str, Any] | None, prefix: str = "", source: str = "") -> TrainConfig:
    """A TrainConfig from a plain dict (YAML, Tune's config), errors naming the field path."""
    return validated(TrainConfig, dict(data or {}), prefix, source)
