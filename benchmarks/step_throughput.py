"""One training step of labelmix against a bare PyTorch loop doing the same math (target ratio >= 0.95).

The step: student forward and backward (cross-entropy + multi-label deep supervision on the fully
labelled images, teacher pseudo-labels with multi-label DS on the others), optimizer step, teacher
forward, EMA update of weights and BatchNorm buffers. Both loops use the same model, the same batch
and the same optimizer settings; their steps are interleaved so that machine noise hits both alike.

Both loops run at the same precision and memory format (``--precision bf16 --channels-last``); the
unlabeled half of the batch gets the student's strong view in both (the same augmentation function).

Run: .venv/bin/python benchmarks/step_throughput.py [--steps 20 --encoder unet --batch 8 --size 128 --threads 1]
     .venv/bin/python benchmarks/step_throughput.py --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.trainables.batches import make_batch, strong_view  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.fit import build_run, loss_terms  # noqa: E402
from labelmix.trainables.teacher import update_teacher  # noqa: E402


def labelmix_step(run, batch, step):
    terms = loss_terms(run, batch, pseudo_weight=1.0)
    loss = sum(terms.values())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    update_teacher(run.teacher, run.student, step)
    return loss.item()


def bare_step(model, teacher, optimizer, batch, decay, num_classes, class_weight, pseudo_class_weight, ds_weight, autocast):
    """The same math written out in plain PyTorch (the model standardises its input itself)."""
    x, y, full = batch.images, batch.masks, batch.types == 0
    with autocast():
        loss = _bare_loss(model, teacher, x, y, full, num_classes, class_weight, pseudo_class_weight, ds_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        t_params = list(teacher.parameters()) + [b for b in teacher.buffers() if b.dtype.is_floating_point]
        s_params = list(model.parameters()) + [b for b in model.buffers() if b.dtype.is_floating_point]
        torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    return loss.item()


def _bare_loss(model, teacher, x, y, full, num_classes, class_weight, pseudo_class_weight, ds_weight):
    student_x = torch.where(full[:, None, None, None], x, strong_view(x))
    main, levels = model(student_x)
    main, levels = main.float(), [lv.float() for lv in levels]

    def ml_ds(levels, target):
        onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()  # B x C x H x W
        return ds_weight * sum(
            F.binary_cross_entropy_with_logits(lv, F.adaptive_max_pool2d(onehot, lv.shape[-2:])) for lv in levels
        )

    def ce(logits, target, weight):  # class-weighted terms over the pixel count, as labelmix's cross_entropy
        return F.cross_entropy(logits, target, weight=weight, reduction="sum") / target.numel()

    loss = ce(main[full], y[full], class_weight) + ml_ds([lv[full] for lv in levels], y[full])
    with torch.no_grad():
        teacher_main, _ = teacher(x[~full])
        pseudo = teacher_main.argmax(1)
    return loss + ce(main[~full], pseudo, pseudo_class_weight) + ml_ds([lv[~full] for lv in levels], pseudo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--encoder", default="unet")  # configs/full.yaml's network
    parser.add_argument("--unet-base-channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        config = load_config({
            "dataset": {"synthetic": {"volumes": 6, "slices": 8, "height": args.size, "width": args.size}},
            "mix": {"full": 0.5, "none": 0.5}, "encoder": args.encoder, "batch_size": args.batch,
            "unet_base_channels": args.unet_base_channels,
            "augment": False, "cache_dir": cache, "threads": args.threads, "full_per_batch": args.batch // 2,
            "precision": args.precision, "channels_last": args.channels_last,
            "pseudo_threshold": 0.0,  # every pixel labelled: the bare loop's one-hot DS needs no ignore rule
        })
        run = build_run(config)
    batch = make_batch(run.train, run.types, torch.arange(args.batch).numpy() % len(run.train), None).to(run.device)
    batch.types[: args.batch // 2] = 0
    batch.types[args.batch // 2 :] = 3
    if args.channels_last:
        batch.images = batch.images.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def autocast():
        return torch.autocast(run.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    model = copy.deepcopy(run.student)
    teacher = copy.deepcopy(run.teacher.module).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_classes = len(run.class_names)

    times = {"labelmix": [], "bare": []}
    for i in range(args.warmup + args.steps):
        for name in ("labelmix", "bare") if i % 2 == 0 else ("bare", "labelmix"):
            t0 = time.perf_counter()
            if name == "labelmix":
                labelmix_step(run, batch, i)
            else:
                bare_step(
                    model, teacher, optimizer, batch, config.ema_decay, n_classes, run.criterion.class_weights,
                    run.criterion.pseudo_class_weights, config.ds_weight, autocast,
                )
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    total = {k: sum(v) for k, v in times.items()}
    save("step_throughput" + ("" if args.precision == "fp32" and not args.channels_last else f"_{args.precision}{'_cl' if args.channels_last else ''}"), {
        "precision": args.precision, "channels_last": args.channels_last,
        "encoder": args.encoder, "unet_base_channels": args.unet_base_channels, "batch": args.batch, "size": args.size, "threads": args.threads, "steps": args.steps,
        "labelmix_median_s": round(med["labelmix"], 4), "bare_median_s": round(med["bare"], 4),
        "labelmix_total_s": round(total["labelmix"], 3), "bare_total_s": round(total["bare"], 3),
        "ratio_bare_over_labelmix": round(total["bare"] / total["labelmix"], 3), "target": 0.95,
    })


if __name__ == "__main__":
    main()
