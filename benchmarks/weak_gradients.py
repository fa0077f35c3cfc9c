"""How hard each loss term pulls on the shared network: the gradient norm of every term.

For a config (default configs/full5_weak.yaml) this builds the training run, draws training batches
exactly as fit does, and for each term of the run's loss (criterion.py: the mask term, the dense
weak-label terms, the pseudo-label term at its full weight, and the first formulation's max-pooled
global/box terms where their weights are set) measures the norm of its gradient on the parameters
the terms share (encoder and decoder, not the heads), averaged over the batches, and its ratio to
the mask term's. Also the cosine between the summed weak-label gradient and the mask gradient.
With --checkpoint the network is a trained one instead of the initial one.
Results: results/weak_gradients[_checkpoint]_<config name>.json.

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
from labelmix.trainables.batches import batch_indices, make_batch  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.fit import build_run, load_checkpoint, loss_terms  # noqa: E402

MASK_TERMS = ("full",)
NOT_WEAK = ("full", "pseudo", "zero")


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
        terms = loss_terms(run, batch, pseudo_weight=config.pseudo_weight)
        for name, value in terms.items():
            g = torch.autograd.grad(value, shared, retain_graph=True, allow_unused=True)
            flat = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, shared)])
            grads.setdefault(name, []).append(flat)
    mean = {name: torch.stack(g).mean(0) for name, g in grads.items()}
    norms = {name: round(float(g.norm()), 4) for name, g in mean.items()}
    mask = sum(g for name, g in mean.items() if name in MASK_TERMS)
    weak = sum((g for name, g in mean.items() if name not in NOT_WEAK), torch.zeros_like(mask))
    ratios = {name: round(value / norms["full"], 3) for name, value in norms.items()}
    print(f"{'term':12s} {'|grad|':>8s} {'/ mask':>7s}")
    for name, value in norms.items():
        print(f"{name:12s} {value:8.4f} {ratios[name]:7.3f}")
    name = f"weak_gradients{'_checkpoint' if args.checkpoint else ''}_{Path(args.config).stem}"
    save(name, {
        "config": args.config, "set": args.set, "checkpoint": args.checkpoint, "batches": args.batches,
        "gradient_norm": norms, "ratio_to_mask": ratios,
        "mask_total": round(float(mask.norm()), 4),
        "weak_total": round(float(weak.norm()), 4),
        "cosine_weak_mask": round(float(torch.nn.functional.cosine_similarity(weak, mask, 0)), 4) if weak.norm() > 0 else None,
    })


if __name__ == "__main__":
    main()
