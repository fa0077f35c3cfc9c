"""fit(config, report) -> summary: one training run of METHOD.md, readable top to bottom.

No Ray and no MLflow in here: the platform passes ``report``, a function taking the epoch's
metrics and a checkpoint folder; ``labelmix train`` passes one that prints and keeps files.
"""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from labelmix.errors import UserError
from labelmix.trainables.augment import BatchAugmenter
from labelmix.trainables.batches import TensorSet, batch_indices, make_batch, on_device, to_tensors
from labelmix.trainables.config import TrainConfig, load_config
from labelmix.trainables.criterion import Criterion, build_criterion
from labelmix.trainables.box_shapes import learned_box_masks
from labelmix.trainables.data.annotations import BOX, FULL, MixCost, assign_mix, box_fills, mix_cost
from labelmix.trainables.data.store import ImageStore, load_store
from labelmix.trainables.metrics import BACKGROUND_OFFSETS, calibrated_scores, offset_confusions, segmentation_scores
from labelmix.trainables.model import build_model
from labelmix.trainables.teacher import make_teacher, rampup, update_teacher

Report = Callable[[Mapping[str, float], Optional[str]], None]
CHECKPOINT_FILE = "state.pt"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: the run stops at once instead of training on garbage."""


@dataclass
class Run:
    """Everything a training run holds; built once from the config."""

    config: TrainConfig
    device: torch.device
    train: TensorSet
    val: TensorSet
    test: TensorSet
    types: torch.Tensor  # annotation type per training image
    cost_metrics: dict[str, float]
    box_supervision: str  # resolved: "priors", "shapes" or "both" (resolve_box_supervision)
    class_names: tuple[str, ...]
    student: torch.nn.Module
    teacher: Any  # timm.utils.ModelEmaV3
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: Criterion  # every loss term, resolved once from the config
    precision: str  # the autocast precision in use (resolve_precision)
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    steps_per_epoch: int
    rng: np.random.Generator
    augmenter: Optional[BatchAugmenter]


def fit(config: TrainConfig | Mapping[str, Any], report: Report, resume_from: str | None = None) -> dict[str, float]:
    """Train for config.epochs; report after every epoch; return the final metrics."""
    config = config if isinstance(config, TrainConfig) else load_config(config)
    return train(build_run(config), report, resume_from)


def train(run: Run, report: Report, resume_from: str | None = None) -> dict[str, float]:
    """Train a built run (from its checkpoint folder ``resume_from``, if given); report after every epoch."""
    config = run.config
    start_epoch = load_checkpoint(run, resume_from) if resume_from else 0
    total_steps = config.epochs * run.steps_per_epoch
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        train_metrics = train_epoch(run, epoch, total_steps)
        metrics = {**train_metrics, "train/box_shapes": float(run.box_supervision != "priors"),
                   **run.cost_metrics, **evaluate_models(run, run.val, "val")}
        if epoch == config.epochs - 1:
            offset = metrics.get("val/background_offset", 0.0)  # chosen on val; test is never tuned on
            metrics.update(evaluate_models(run, run.test, "test", student_and_teacher=False, background_offset=offset))
        metrics.update({"epoch": float(epoch + 1), "time/epoch_s": time.perf_counter() - started})
        with tempfile.TemporaryDirectory(prefix="labelmix-ckpt-") as checkpoint_dir:
            save_checkpoint(run, epoch + 1, checkpoint_dir)
            report(metrics, checkpoint_dir)
    return metrics


def build_run(config: TrainConfig) -> Run:
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    store = load_store(resolve_store(config))
    train_store, types, cost = plan_annotations(config, store)

    precision = resolve_precision(config, device)
    train = to_tensors(train_store)
    box_supervision = resolve_box_supervision(config.box_supervision, train, types)
    if box_supervision != "priors":
        train = with_learned_box_masks(train, types, store.num_classes, config)
    student = build_model(
        config.encoder, store.num_classes, in_chans=1, ds_depth=config.ds_depth,
        pretrained=config.pretrained, decoder_channels=config.decoder_channels,
        decoder_scale=config.decoder_scale, unet_base_channels=config.unet_base_channels,
        input_stats=image_stats(train.images) if config.normalize_input else (0.0, 1.0),
    ).to(device)
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes are fixed within a run
    criterion = build_criterion(config, store.num_classes, student.ds_depth, device,
                                masked_fills=masked_box_fills(train_store, types) if config.box_fill == "auto" else None,
                                class_names=store.class_names, box_supervision=box_supervision)
    steps = config.steps_per_epoch or max(1, len(train_store) // config.batch_size)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return Run(
        config=config,
        device=device,
        train=on_device(train, device),  # batches are gathered and augmented on the device when it holds the set
        val=to_tensors(limit(store.split("val"), config.dataset.max_eval_images)),
        test=to_tensors(limit(store.split("test"), config.dataset.max_eval_images)),
        types=torch.from_numpy(types.astype(np.int64)),
        cost_metrics=cost.metrics(),
        box_supervision=box_supervision,
        class_names=store.class_names,
        student=student,
        teacher=make_teacher(student, config.ema_decay, warmup=config.ema_warmup),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, config.epochs * steps)),
        criterion=criterion,
        precision=precision,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        steps_per_epoch=steps,
        rng=np.random.default_rng(config.seed),
        augmenter=BatchAugmenter() if config.augment else None,
    )


def plan_annotations(config: TrainConfig, store: ImageStore) -> tuple[ImageStore, np.ndarray, MixCost]:
    """The training images, the annotation type of each, and what that mix costs."""
    train_store = limit(store.split("train"), config.dataset.max_train_images)
    if len(train_store) == 0:
        raise UserError("dataset: the store has no training images")
    classes_asked = config.mix_selection == "classes"
    types = assign_mix(len(train_store), config.mix, config.mix.seed,
                       labels=train_store.global_labels if classes_asked else None)
    return train_store, types, mix_cost(types, train_store.box_counts, store.num_classes, config.cost, classes_asked)


def with_learned_box_masks(train: TensorSet, types: np.ndarray, num_classes: int, config: TrainConfig) -> TensorSet:
    """``train`` with each box image's mask replaced by its learned pseudo-mask (box_shapes.py), from a
    crop network trained on the masked images alone; the masks of other images are left as they are."""
    masked, boxed = (torch.from_numpy(np.flatnonzero(types == kind)) for kind in (FULL, BOX))
    if len(boxed) == 0:
        return train
    low, high = config.box_shape_band
    pseudo = learned_box_masks(train.images, train.masks, train.boxes, masked, boxed, num_classes,
                               config.box_shape_steps, low, high, config.seed)
    masks = train.masks.clone()
    masks[boxed] = pseudo
    return replace(train, masks=masks)


def masked_boxes(train: TensorSet, types: np.ndarray) -> int:
    """How many boxes the masked training images hold: what learned box shapes learn from."""
    return sum(len(train.boxes[i]) for i in np.flatnonzero(types == FULL))


def resolve_box_supervision(setting: str, train: TensorSet, types: np.ndarray) -> str:
    """What the box images of a run learn from (``TrainConfig.box_supervision``): "auto" is "shapes"
    where every training image has a mask or boxes, some have boxes and the masked ones hold boxes to
    learn shapes from, and "priors" otherwise (beside image-level-labelled images the shapes lost to
    the priors: docs/RESULTS.md, "Learned box shapes as the default"); "shapes" or "both" without
    boxes on the masked images, in a mix with box images, is a UserError."""
    has_box_images = bool((types == BOX).any())
    learnable = masked_boxes(train, types) > 0
    if setting == "auto":
        only_masks_and_boxes = bool(np.isin(types, (FULL, BOX)).all())
        return "shapes" if has_box_images and learnable and only_masks_and_boxes else "priors"
    if setting != "priors" and has_box_images and not learnable:
        raise UserError(f"box_supervision: {setting} learns box shapes from the masked training images, and they hold "
                        "no boxes; give the mix more masks (mix.full) or set box_supervision to priors or auto")
    return setting


def masked_box_fills(train_store: ImageStore, types: np.ndarray) -> dict[int, np.ndarray]:
    """The box fills (``annotations.box_fills``) of the fully labelled training images only: what a
    team that masked those images knows about how its classes fill their boxes."""
    masked = np.flatnonzero(types == FULL)
    return box_fills([train_store.masks[i] for i in masked], [train_store.boxes[i] for i in masked])


def train_epoch(run: Run, epoch: int, total_steps: int) -> dict[str, float]:
    config = run.config
    run.student.train()
    sums: dict[str, float] = {}
    plan = batch_indices(run.types.numpy(), config.batch_size, run.steps_per_epoch, config.full_per_batch, run.rng,
                         share=config.full_per_batch_rule == "share")
    for i, index in enumerate(plan):
        step = epoch * run.steps_per_epoch + i
        batch = make_batch(run.train, run.types, index, run.augmenter).to(run.device)
        pseudo_weight = config.pseudo_weight * rampup(step, int(config.pseudo_rampup * total_steps))
        terms = loss_terms(run, batch, pseudo_weight)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {i + 1}: {detail}")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        update_teacher(run.teacher, run.student, step)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
    return {f"train/{name}": total / run.steps_per_epoch for name, total in sums.items()} | {
        "train/lr": run.scheduler.get_last_lr()[0]
    }


def loss_terms(run: Run, batch, pseudo_weight: float) -> dict[str, torch.Tensor]:
    """The loss of METHOD.md, one term per annotation type and weak-label component (criterion.py)."""
    with autocast(run):
        return run.criterion.terms(run.student, run.teacher.module, _memory_format(run, batch), pseudo_weight)


def autocast(run: Run):
    """The run's mixed-precision context (a no-op at fp32)."""
    if run.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if run.precision == "bf16" else torch.float16
    return torch.autocast(run.device.type, dtype=dtype)


def _memory_format(run: Run, batch):
    if run.config.channels_last:
        batch.images = batch.images.contiguous(memory_format=torch.channels_last)
    return batch


@torch.no_grad()
def confusions(model: torch.nn.Module, data: TensorSet, offsets, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """K x C x C over the split: one confusion matrix per background-logit offset (offset_confusions)."""
    model.eval()
    total = None
    for start in range(0, len(data), batch_size):
        main, _ = model(data.images[start : start + batch_size].to(device))
        cms = offset_confusions(main, data.masks[start : start + batch_size].to(device).long(), offsets)
        total = cms if total is None else total + cms
    return total.cpu().numpy()


def evaluate_models(run: Run, data: TensorSet, split: str, student_and_teacher: bool = True,
                    background_offset: Optional[float] = None) -> dict[str, float]:
    """Scores of the kept model under ``split/...``; with student_and_teacher also ``split/student/miou`` etc.

    The kept model is also scored calibrated (metrics.calibrated_scores): over BACKGROUND_OFFSETS,
    choosing ``split/background_offset``, or with the given ``background_offset`` (val's, for test).
    """
    if len(data) == 0:
        return {}
    models = {"student": run.student, "teacher": run.teacher.module}
    names = list(models) if student_and_teacher else [run.config.keep_model]
    out: dict[str, float] = {}
    for name in names:
        kept = name == run.config.keep_model
        calibration = () if not kept else BACKGROUND_OFFSETS if background_offset is None else (background_offset,)
        offsets = (0.0, *calibration)
        with autocast(run):
            cms = confusions(models[name], data, offsets, run.device)
        scores = segmentation_scores(cms[0], run.class_names, split)
        if kept:
            out.update(scores)
            out.update(calibrated_scores(cms[1:], calibration, run.class_names, split))
        out[f"{split}/{name}/miou"] = scores[f"{split}/miou"]
    return out


def save_checkpoint(run: Run, epochs_done: int, directory: str) -> None:
    state = {
        "config_digest": run.config.digest(),
        "epochs_done": epochs_done,
        "student": run.student.state_dict(),
        "teacher": run.teacher.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng_numpy": run.rng.bit_generator.state,
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "rng_python": random.getstate(),
    }
    torch.save(state, Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(run: Run, directory: str) -> int:
    """Restore a run saved by save_checkpoint; returns the number of epochs already done."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{directory}: no {CHECKPOINT_FILE} checkpoint in this folder")
    state = torch.load(path, map_location=run.device, weights_only=False)
    if state["config_digest"] != run.config.digest():
        raise UserError(f"{directory}: checkpoint was written by a different config; resume with the same config")
    run.student.load_state_dict(state["student"])
    run.teacher.load_state_dict(state["teacher"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.rng.bit_generator.state = state["rng_numpy"]
    torch.set_rng_state(state["rng_torch"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    random.setstate(state["rng_python"])
    return int(state["epochs_done"])


def kept_model_state(directory: str, keep: str = "teacher") -> dict[str, torch.Tensor]:
    """The weights of the kept model from a checkpoint folder (for export and MLflow)."""
    state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    weights = state[keep]
    return {k.removeprefix("module."): v for k, v in weights.items()} if keep == "teacher" else weights


def resolve_store(config: TrainConfig) -> Path:
    """The store path; a synthetic dataset is generated once into the cache folder."""
    if config.dataset.path is not None:
        return Path(config.dataset.path)
    from labelmix.trainables.data.synth_store import synthetic_store

    return synthetic_store(config.dataset.synthetic, Path(config.cache_dir))


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    """The precision a run uses: the config's, except that the default bf16 falls back to fp32 where
    bf16 has no hardware: a GPU without bf16, or a CPU without AVX-512 bf16 or AMX instructions
    (measured on such a Xeon, configs/full.yaml's step: bf16 + channels-last 1197 ms, fp32 538 ms;
    on an EPYC with them 298 against 695). An explicit bf16 is kept on the CPU (emulated, slow) and
    refused on a GPU without it; fp16 off CUDA is refused."""
    if config.precision == "fp16" and device.type != "cuda":
        raise UserError("precision: fp16 needs a CUDA device; use bf16 on the CPU")
    chosen = "precision" in config.model_fields_set
    if config.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if not chosen:
            return "fp32"
        raise UserError("precision: this GPU has no bf16; use fp16 (with a gradient scaler) or fp32")
    if config.precision == "bf16" and device.type == "cpu" and not chosen and not cpu_has_bf16():
        return "fp32"
    return config.precision


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 bf16 or AMX tiles), as torch reports it."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    if config.lr_schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def image_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of all pixels (the model's input standardisation)."""
    std = float(images.std()) if images.numel() > 1 else 0.0
    return float(images.mean()), std if std > 0 else 1.0


def limit(store: ImageStore, count: Optional[int]) -> ImageStore:
    return store if count is None or count >= len(store) else store.select(np.arange(count))


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' asked for but no CUDA device is visible")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
