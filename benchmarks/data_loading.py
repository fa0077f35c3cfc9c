"""Batch preparation per step: the per-image torchvision Augmenter against the whole-batch BatchAugmenter (target >= 5x).

Both prepare the same batches (make_batch: gather, augment, move to the device) and are interleaved,
alternating which goes first, so machine noise hits both alike: first back to back (--batches each,
the ratio), then around the compute of training steps of configs/full.yaml (student forward and
backward, optimizer, EMA teacher; --steps), as in fit's loop, so the data time reads as a share of
the step it feeds. The old path gathers from the CPU copy of the
training set and augments there; the new one gathers where build_run put the set (on the GPU with
--device cuda) and augments there. On CUDA every timing ends with torch.cuda.synchronize.

The step runs at the config's precision and memory format (``--precision bf16 --channels-last``), so
on a GPU this script also gives the step time at fp32 and bf16 (benchmarks/step_throughput.py keeps
its batch where make_batch left it and autocasts on the CPU, so it measures the CPU only).

Run: .venv/bin/python benchmarks/data_loading.py [--batches 50 --steps 20 --batch 8 --size 128 --threads 1 --device cpu]
     .venv/bin/python benchmarks/data_loading.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402
from step_throughput import labelmix_step  # noqa: E402

from labelmix.trainables.augment import BatchAugmenter  # noqa: E402
from labelmix.trainables.batches import Augmenter, TensorSet, batch_indices, make_batch  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.fit import build_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed (the first ones after warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")  # fp16 needs the loop's grad scaler
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fields = yaml.safe_load((ROOT / "configs" / "full.yaml").read_text())
    with tempfile.TemporaryDirectory() as cache:
        config = load_config({
            **fields,
            "dataset": {"synthetic": {"volumes": 6, "slices": 8, "height": args.size, "width": args.size}},
            "batch_size": args.batch, "threads": args.threads, "augment": True, "device": args.device, "cache_dir": cache,
            "precision": args.precision, "channels_last": args.channels_last,
        })
        run = build_run(config)
    device = run.device
    on_cpu = TensorSet(run.train.images.cpu(), run.train.masks.cpu(), run.train.global_labels.cpu(), run.train.boxes)
    old, new = Augmenter(), BatchAugmenter()
    prepare = {
        "old": lambda index: make_batch(on_cpu, run.types, index, old).to(device),
        "new": lambda index: make_batch(run.train, run.types, index, new).to(device),
    }
    plan = batch_indices(run.types.numpy(), args.batch, 2 * args.warmup + args.batches + args.steps, config.full_per_batch,
                         np.random.default_rng(0))

    def both(i, index, into):  # old and new on the same batch, alternating which goes first
        for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
            into.setdefault(name, []).append(timed(lambda: prepare[name](index), device))

    # 1. batch preparation alone, back to back
    alone: dict[str, list[float]] = {}
    for i, index in enumerate(plan[: args.warmup + args.batches]):
        both(i, index, alone if i >= args.warmup else {})
    # 2. inside training: each step's compute runs between preparations, as in fit's loop (cold caches)
    training: dict[str, list[float]] = {}
    for i, index in enumerate(plan[args.warmup + args.batches :]):
        seen = training if i >= args.warmup else {}
        both(i, index, seen)
        batch = prepare["new"](index)
        seen.setdefault("step", []).append(timed(lambda: labelmix_step(run, batch, i), device))

    def ms(values):
        return statistics.median(values) * 1000

    ratio = sum(alone["old"]) / sum(alone["new"])
    step = ms(training["step"])
    share = {name: ms(training[name]) / (ms(training[name]) + step) for name in ("old", "new")}
    kind = f"{args.precision}{'+cl' if args.channels_last else ''}"
    print(f"\nbatch of {args.batch} at {args.size}x{args.size}, {args.threads} thread(s), {device}")
    print(f"{'median ms':<34}{'alone':>8}{'in training':>13}{'share of step':>15}")
    for name, label in (("old", "old: Augmenter (CPU, per image)"), ("new", f"new: BatchAugmenter ({device.type}, batch)")):
        print(f"{label:<34}{ms(alone[name]):>8.2f}{ms(training[name]):>13.2f}{share[name]:>14.1%}")
    print(f"{'training step compute (' + kind + ')':<34}{'':>8}{step:>13.1f}")
    print(f"old / new: {ratio:.1f}x over {args.batches} batches each (target >= 5x on the CPU)\n")
    variant = "" if kind == "fp32" else f"_{args.precision}{'_cl' if args.channels_last else ''}"
    save("data_loading" + ("" if device.type == "cpu" else f"_{device.type}") + variant, {
        "device": str(device), "precision": args.precision, "channels_last": args.channels_last, "batch": args.batch,
        "size": args.size, "threads": args.threads, "batches": args.batches, "steps": args.steps, "config": "configs/full.yaml",
        "old_median_ms": round(ms(alone["old"]), 3), "new_median_ms": round(ms(alone["new"]), 3),
        "old_total_s": round(sum(alone["old"]), 4), "new_total_s": round(sum(alone["new"]), 4),
        "ratio_old_over_new": round(ratio, 2), "target": 5.0,
        "old_in_training_median_ms": round(ms(training["old"]), 3), "new_in_training_median_ms": round(ms(training["new"]), 3),
        "step_compute_median_ms": round(step, 2),
        # preparation / (preparation + compute), in training: the part of a step spent on its batch, unoverlapped
        "data_share_of_step_old": round(share["old"], 4), "data_share_of_step_new": round(share["new"], 4),
    })


if __name__ == "__main__":
    main()
