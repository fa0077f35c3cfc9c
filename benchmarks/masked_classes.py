"""What the masked images of a mix hold: per seed, how many of them show each class, and its pixels.

At a 5% mask budget a seed's 43 masked images are a small sample of the classes; this prints, per
seed, the number of masked training images that hold each foreground class and how many pixels
of it they hold (the images a trial's mix assigns masks to: ``mix.seed`` = the seed, as in a study's
paired grid). With ``--trials PARQUET --case NAME`` it adds that case's val IoU per class at each
seed beside the counts, so a lost class can be read against how few masked images showed it.

Run: .venv/bin/python benchmarks/masked_classes.py [--seeds 0 1 2 3 4] [--set mix.full=0.05 ...]
     [--trials docs/studies/trials/STUDY/trials.parquet --case "5% alone"] [--name masked_classes]
(default: 5% masks + 95% unlabeled on the built-in synthetic set; the other images' types do not
change which images are masked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.cli import apply_overrides  # noqa: E402
from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.data.annotations import FULL  # noqa: E402
from labelmix.trainables.data.store import load_store  # noqa: E402
from labelmix.trainables.fit import plan_annotations, resolve_store  # noqa: E402


def masked_class_counts(masks: list[np.ndarray], num_classes: int) -> tuple[list[int], list[int]]:
    """Per foreground class: how many of ``masks`` hold it, and how many pixels of it they hold."""
    images = [sum(int((m == c).any()) for m in masks) for c in range(1, num_classes)]
    pixels = [sum(int((m == c).sum()) for m in masks) for c in range(1, num_classes)]
    return images, pixels


def case_ious(path: str, case: str, names: list[str]) -> dict[int, list[float]]:
    """Seed -> val IoU per foreground class of ``case`` in a study's trials table."""
    table = pd.read_parquet(path)
    rows = table[table["case"] == case]
    if rows.empty:
        raise SystemExit(f"--case: no case named {case!r} in {path}; cases: {sorted(table['case'].dropna().unique())}")
    return {int(r["config/seed"]): [float(r[f"val/iou/{n}"]) for n in names] for _, r in rows.iterrows()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--trials", help="a study's trials.parquet: add a case's val IoU per class")
    parser.add_argument("--case", help="the case of --trials to read")
    parser.add_argument("--name", default="masked_classes", help="results/<name>.json (default masked_classes)")
    args = parser.parse_args()
    if bool(args.trials) != bool(args.case):
        parser.error("--trials and --case go together")
    base = apply_overrides({"mix": {"full": 0.05, "none": 0.95}}, args.set)
    rows = []
    for seed in args.seeds:
        config = load_config({**base, "seed": seed, "mix": {**base["mix"], "seed": seed}})
        store = load_store(resolve_store(config))
        train_store, types, _ = plan_annotations(config, store)
        masked = [train_store.masks[i] for i in np.flatnonzero(types == FULL)]
        images, pixels = masked_class_counts(masked, store.num_classes)
        rows.append({"seed": seed, "masked_images": len(masked), "images_with": images, "pixels": pixels})
    names = list(store.class_names[1:])
    if args.trials:
        ious = case_ious(args.trials, args.case, names)
        for row in rows:
            row["val_iou"] = ious.get(row["seed"])
    print(f"{'seed':>4} {'masked':>6}  " + "  ".join(f"{n + ' images/pixels':>22}" for n in names)
          + ("  val IoU " + " / ".join(names) if args.trials else ""))
    for row in rows:
        cells = "  ".join(f"{i:>13} / {p:>6}" for i, p in zip(row["images_with"], row["pixels"]))
        iou = " / ".join(f"{v:.3f}" for v in row["val_iou"]) if row.get("val_iou") else ""
        print(f"{row['seed']:>4} {row['masked_images']:>6}  {cells}  {iou}")
    save(args.name, {"set": args.set, "trials": args.trials, "case": args.case, "class_names": names, "rows": rows})


if __name__ == "__main__":
    main()
