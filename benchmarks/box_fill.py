"""How much of its box each class fills on the training masks (the size band `box_fill`).

For every box of every training image of a store (default: the built-in synthetic set), the share
of the box's pixels that carry its class; per class the mean, median, 5th/10th/90th/95th
percentiles and the share of boxes below 0.5 and above 0.9 (the default band's ends). A team can
run it on its own few masks to pick `box_fill` (`box_fill: auto` reads the band off a run's own masked images).

Run: .venv/bin/python benchmarks/box_fill.py [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.cli import apply_overrides  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.data.annotations import box_fills  # noqa: E402
from labelmix.trainables.data.store import load_store  # noqa: E402
from labelmix.trainables.fit import resolve_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    config = load_config(apply_overrides({}, args.set))
    train = load_store(resolve_store(config)).split("train")
    rows = []
    for cls, fill in box_fills(train.masks, train.boxes).items():
        p5, p10, p90, p95 = np.percentile(fill, [5, 10, 90, 95])
        rows.append({"class": cls, "boxes": len(fill), "mean": round(float(fill.mean()), 3),
                     "median": round(float(np.median(fill)), 3), "p5": round(float(p5), 3), "p10": round(float(p10), 3),
                     "p90": round(float(p90), 3), "p95": round(float(p95), 3),
                     "below_0.5": round(float((fill < 0.5).mean()), 3), "above_0.9": round(float((fill > 0.9).mean()), 3)})
    print(f"{'class':>5s} {'boxes':>6s} {'mean':>6s} {'median':>6s} {'p5':>6s} {'p10':>6s} {'p90':>6s} {'p95':>6s} {'<0.5':>6s} {'>0.9':>6s}")
    for r in rows:
        print(f"{r['class']:5d} {r['boxes']:6d} {r['mean']:6.3f} {r['median']:6.3f} {r['p5']:6.3f} {r['p10']:6.3f} "
              f"{r['p90']:6.3f} {r['p95']:6.3f} {r['below_0.5']:6.3f} {r['above_0.9']:6.3f}")
    save("box_fill", {"images": len(train.masks), "set": args.set, "rows": rows})


if __name__ == "__main__":
    main()
