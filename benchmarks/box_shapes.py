"""How good the learned box shapes are: pseudo-masks of the box images against their true masks.

For each seed, the mix's masked training images train the crop network (box_shapes.py, the run's
``box_shape_steps`` and ``box_shape_band``) exactly as a trial with learned box shapes (``box_supervision`` shapes, both or auto) does;
its pseudo-masks of the mix's box images are then scored against the true masks those images
have in the store (which no trial reads): per class the IoU over the pixels the pseudo-mask labels,
the IoU counting its ignored pixels as misses, and the share of the class's true pixels it ignores.
Beside it, side by side: each box filled with its class (what a box says with no shape at all).

Run: .venv/bin/python benchmarks/box_shapes.py [--seeds 0 1] [--set FIELD=VALUE ...]
(default mix 5% masks + 95% boxes on the built-in synthetic set).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.cli import apply_overrides  # noqa: E402
from labelmix.trainables.batches import to_tensors  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.data.annotations import BOX, FULL  # noqa: E402
from labelmix.trainables.data.store import load_store  # noqa: E402
from labelmix.trainables.fit import plan_annotations, resolve_store, seed_everything, with_learned_box_masks  # noqa: E402
from labelmix.trainables.losses import IGNORE  # noqa: E402


def filled_boxes(boxes: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """N x H x W: every box filled with its class (later boxes over earlier ones)."""
    out = torch.zeros(len(boxes), *size, dtype=torch.long)
    for i, image_boxes in enumerate(boxes):
        for c, y0, x0, y1, x1 in image_boxes.tolist():
            out[i, y0:y1, x0:x1] = c
    return out


def scores(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> dict[str, dict[str, float]]:
    """Per foreground class: IoU over labelled pixels, IoU with ignored pixels as misses, share of true pixels ignored."""
    labelled = pred != IGNORE
    out = {}
    for c in range(1, num_classes):
        hit, true = (pred == c) & (truth == c), truth == c
        wrong = (pred == c) & (truth != c)
        out[str(c)] = {
            "iou_labelled": round(int(hit.sum()) / max(int((hit | wrong | (true & labelled)).sum()), 1), 3),
            "iou": round(int(hit.sum()) / max(int((true | wrong).sum()), 1), 3),
            "ignored": round(int((true & ~labelled).sum()) / max(int(true.sum()), 1), 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        base = {"mix": {"full": 0.05, "box": 0.95, "seed": seed}, "seed": seed}
        config = load_config(apply_overrides(base, args.set))
        store = load_store(resolve_store(config))
        train_store, types, _ = plan_annotations(config, store)
        train = to_tensors(train_store)
        masked, boxed = (torch.from_numpy(np.flatnonzero(types == kind)) for kind in (FULL, BOX))
        seed_everything(config.seed)
        started = time.perf_counter()
        pseudo = with_learned_box_masks(train, types, store.num_classes, config).masks[boxed].long()
        seconds = time.perf_counter() - started
        truth = train.masks[boxed].long()
        filled = filled_boxes([train.boxes[i] for i in boxed.tolist()], tuple(truth.shape[-2:]))
        rows.append({"seed": seed, "masked": len(masked), "boxed": len(boxed), "seconds": round(seconds, 1),
                     "labelled_share": round(float((pseudo != IGNORE).float().mean()), 4),
                     "learned": scores(pseudo, truth, store.num_classes),
                     "filled_boxes": scores(filled, truth, store.num_classes)})
    names = store.class_names
    print(f"{'seed':>4s} {'class':>6s} {'learned IoU (labelled)':>22s} {'learned IoU':>11s} {'ignored':>7s} {'filled boxes IoU':>16s}")
    for r in rows:
        for c, s in r["learned"].items():
            print(f"{r['seed']:4d} {names[int(c)]:>6s} {s['iou_labelled']:22.3f} {s['iou']:11.3f} {s['ignored']:7.3f}"
                  f" {r['filled_boxes'][c]['iou']:16.3f}")
    save("box_shapes", {"set": args.set, "class_names": list(names), "rows": rows})


if __name__ == "__main__":
    main()
