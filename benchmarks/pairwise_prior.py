"""How well "neighbours of similar intensity share a class" holds inside boxes (the pairwise prior).

On every third training image of a store (default: the built-in synthetic set), for neighbouring
pixel pairs (the pairwise term's 4 directions, at dilation 1 and 2) with at least one end inside a
foreground box: the share of pairs passing the similarity threshold (|blurred intensity difference|
< threshold) that truly share a class, how many same-class pairs pass, and how many cross-class
pairs pass. A team can run it on its own few masks to pick `pairwise_threshold`.

Run: .venv/bin/python benchmarks/pairwise_prior.py [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.cli import apply_overrides  # noqa: E402
from labelmix.trainables.batches import gaussian_blur, to_tensors  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.data.store import load_store  # noqa: E402
from labelmix.trainables.fit import resolve_store  # noqa: E402
from labelmix.trainables.losses import box_masks  # noqa: E402
from labelmix.trainables.weak_losses import PAIR_OFFSETS, _pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    config = load_config(apply_overrides({}, args.set))
    store = load_store(resolve_store(config))
    train = to_tensors(store.split("train"))
    index = torch.arange(0, len(train), 3)
    images, masks = train.images[index], train.masks[index].long()
    height, width = images.shape[-2:]
    inside = box_masks([train.boxes[i] for i in index.tolist()], store.num_classes, height, width)[:, 1:].amax(1) > 0
    smooth = gaussian_blur(images, torch.ones(len(index)))[:, 0]  # B x H x W, as pairwise_loss blurs
    rows = []
    for dilation in (1, 2):
        for threshold in (0.02, 0.05, 0.1, 0.2):
            same_used = cross_used = same_all = cross_all = 0
            for dy, dx in PAIR_OFFSETS:
                a, b = _pairs(smooth, dy * dilation, dx * dilation)
                ma, mb = _pairs(masks, dy * dilation, dx * dilation)
                ra, rb = _pairs(inside, dy * dilation, dx * dilation)
                region, similar, same = ra | rb, (a - b).abs() < threshold, ma == mb
                same_used += int((region & similar & same).sum())
                cross_used += int((region & similar & ~same).sum())
                same_all += int((region & same).sum())
                cross_all += int((region & ~same).sum())
            rows.append({"dilation": dilation, "threshold": threshold,
                         "precision": round(same_used / max(same_used + cross_used, 1), 3),
                         "same_pairs_used": round(same_used / max(same_all, 1), 3),
                         "cross_pairs_used": round(cross_used / max(cross_all, 1), 3)})
    print(f"{'dilation':>8s} {'threshold':>9s} {'share same':>10s} {'same used':>9s} {'cross used':>10s}")
    for r in rows:
        print(f"{r['dilation']:8d} {r['threshold']:9.2f} {r['precision']:10.3f} {r['same_pairs_used']:9.3f} {r['cross_pairs_used']:10.3f}")
    save("pairwise_prior", {"images": len(index), "set": args.set, "rows": rows})


if __name__ == "__main__":
    main()
