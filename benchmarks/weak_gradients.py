"""How hard each loss term pulls on the shared network: gradient norms per term and DS level.

For a config (default configs/full5_weak.yaml) this builds the training run, draws training batches
exactly as fit does, and for each term of the loss measures the norm of its gradient on the
parameters the terms share (encoder and decoder, not the heads), averaged over the batches:
the mask cross-entropy of the main head, and per DS level the multi-label DS on masks, the
global-label term, the box term's exact-negative BCE and its per-box multiple-instance (MIL) term,
each with the weight the config gives it. Also the cosine between the summed weak-label gradient
and the mask gradient. With --checkpoint the network is a trained one instead of the initial one.
Results: results/weak_gradients[_checkpoint]_w<global weight>-<box weight>.json.

Run: .venv/bin/python benchmarks/weak_gradients.py [--config configs/full5_weak.yaml --batches 4 --set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.cli import apply_overrides, read_yaml  # noqa: E402
from labelmix.trainables import losses  # noqa: E402
from labelmix.trainables.data.annotations import BOX, FULL, GLOBAL  # noqa: E402
from labelmix.trainables.batches import batch_indices, make_batch  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.fit import build_run, load_checkpoint  # noqa: E402


def term_losses(run, batch) -> dict[str, torch.Tensor]:
    """Every weighted term of the loss on one batch, split by DS level: name -> scalar."""
    config = run.config
    main, levels = run.student(batch.images)
    full, glob, box = batch.types == FULL, batch.types == GLOBAL, batch.types == BOX
    out = {"mask CE": losses.cross_entropy(main[full], batch.masks[full], run.class_weights)}
    box_mask = losses.box_masks(batch.boxes, main.shape[1], *main.shape[-2:], device=main.device)[box]
    box_list = [batch.boxes[i] for i in box.nonzero().flatten().tolist()]
    for k, level in enumerate(levels):
        only = [0.0] * len(levels)
        only[k] = 1.0
        out[f"L{k} mask DS"] = run.ds_weights[k] * losses.ds_loss(config.ds_type, [lv[full] for lv in levels], batch.masks[full], only)
        scale = run.level_weights[k]
        if glob.any():
            out[f"L{k} global"] = scale * config.global_weight * losses.global_loss(
                [lv[glob] for lv in levels], batch.global_labels[glob], only)
        if box.any():
            box_levels = [lv[box] for lv in levels]
            bce = losses.box_loss(box_levels, box_mask, box_list, only, config.box_positive_max_size, mil_weight=0.0)
            both = losses.box_loss(box_levels, box_mask, box_list, only, config.box_positive_max_size, config.box_mil_weight)
            out[f"L{k} box BCE"] = scale * config.box_weight * bce
            out[f"L{k} box MIL"] = scale * config.box_weight * (both - bce)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/full5_weak.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--checkpoint", default=None, help="a labelmix train run's checkpoint folder")
    args = parser.parse_args()

    config = load_config(apply_overrides(read_yaml(Path(args.config)), args.set), source=args.config)
    run = build_run(config)
    if args.checkpoint:
        load_checkpoint(run, args.checkpoint)
    run.student.train()
    shared = [p for name, p in run.student.named_parameters() if not name.startswith(("head", "ds_heads"))]
    plan = batch_indices(run.types.numpy(), config.batch_size, args.batches, config.full_per_batch, np.random.default_rng(0))
    grads: dict[str, list[torch.Tensor]] = {}
    for index in plan:
        batch = make_batch(run.train, run.types, index, run.augmenter)
        terms = term_losses(run, batch)
        for name, value in terms.items():
            g = torch.autograd.grad(value, shared, retain_graph=True, allow_unused=True)
            flat = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, shared)])
            grads.setdefault(name, []).append(flat)
    mean = {name: torch.stack(g).mean(0) for name, g in grads.items()}
    norms = {name: round(float(g.norm()), 4) for name, g in mean.items()}
    mask = sum(g for name, g in mean.items() if "mask" in name)
    weak = sum((g for name, g in mean.items() if "global" in name or "box" in name), torch.zeros_like(mask))
    print(f"{'term':16s} {'|grad|':>8s}")
    for name, value in norms.items():
        print(f"{name:16s} {value:8.4f}")
    name = f"weak_gradients{'_checkpoint' if args.checkpoint else ''}_w{config.global_weight:g}-{config.box_weight:g}"
    save(name, {
        "config": args.config, "set": args.set, "checkpoint": args.checkpoint, "batches": args.batches,
        "global_weight": config.global_weight, "box_weight": config.box_weight,
        "gradient_norm": norms,
        "mask_total": round(float(mask.norm()), 4),
        "weak_total": round(float(weak.norm()), 4),
        "cosine_weak_mask": round(float(torch.nn.functional.cosine_similarity(weak, mask, 0)), 4) if weak.norm() > 0 else None,
    })


if __name__ == "__main__":
    main()
