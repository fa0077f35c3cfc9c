"""How much of a trained run's mIoU is lost to its decision bias: the kept model's val and test mIoU
when a constant is added to the background logit before the argmax (one offset for all foreground
classes, and one per class found by coordinate ascent), the offsets chosen on the val split and
the test split scored with them.

A class-weighted loss (foreground weight 10) moves the argmax towards foreground by design; with
few masks the model over-segments (benchmarks/segmentation_errors.py). Every run now reports the
one-offset calibration itself (val/miou_calibrated, test/miou_calibrated: metrics.calibrated_scores);
this script adds the per-class offsets, to show how much a finer calibration would add.

Run: .venv/bin/python benchmarks/calibration.py RUN_FOLDER [RUN_FOLDER ...]   (`labelmix train --out` folders)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.fit import build_run, load_checkpoint  # noqa: E402
from labelmix.trainables.metrics import (  # noqa: E402
    BACKGROUND_OFFSETS, calibrated_scores, confusion_matrix, offset_confusions, segmentation_scores,
)


@torch.no_grad()
def logits_of(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + 64])[0].float() for i in range(0, len(images), 64)])


def miou(logits: torch.Tensor, masks: torch.Tensor, offsets: np.ndarray, names) -> float:
    """Foreground mIoU of argmax(logits + offsets), offsets one per class."""
    shifted = logits + torch.as_tensor(offsets, dtype=logits.dtype).view(1, -1, 1, 1)
    cm = confusion_matrix(shifted.argmax(1), masks.long(), len(names))
    return segmentation_scores(cm, names, "x")["x/miou"]


def per_class_offsets(logits: torch.Tensor, masks: torch.Tensor, names, start: float) -> np.ndarray:
    """Coordinate ascent on val: each foreground class's own offset (as minus its logit), two passes."""
    offsets = np.zeros(len(names))
    offsets[0] = start
    for _ in range(2):
        for c in range(1, len(names)):
            best, best_value = offsets[c], miou(logits, masks, offsets, names)
            for value in np.arange(-3.0, 3.01, 0.25):
                trial = offsets.copy()
                trial[c] = value
                score = miou(logits, masks, trial, names)
                if score > best_value + 1e-9:
                    best, best_value = value, score
            offsets[c] = best
    return offsets


def calibrate(folder: Path) -> dict:
    run = build_run(load_config(json.loads((folder / "config.json").read_text())))
    load_checkpoint(run, str(folder / "checkpoint"))
    model = run.teacher.module if run.config.keep_model == "teacher" else run.student
    names = run.class_names
    val, test = logits_of(model, run.val.images), logits_of(model, run.test.images)
    chosen = calibrated_scores(offset_confusions(val, run.val.masks.long(), BACKGROUND_OFFSETS).numpy(), BACKGROUND_OFFSETS, names, "val")
    best = chosen["val/background_offset"]
    one = np.zeros(len(names))
    one[0] = best
    per_class = per_class_offsets(val, run.val.masks, names, best)
    zero = np.zeros(len(names))
    return {
        "val_miou_uncalibrated": round(miou(val, run.val.masks, zero, names), 4),
        "test_miou_uncalibrated": round(miou(test, run.test.masks, zero, names), 4),
        "background_offset": best,
        "val_miou_offset": round(chosen["val/miou_calibrated"], 4),
        "test_miou_offset": round(miou(test, run.test.masks, one, names), 4),
        "per_class_offsets": [float(v) for v in per_class],
        "val_miou_per_class": round(miou(val, run.val.masks, per_class, names), 4),
        "test_miou_per_class": round(miou(test, run.test.masks, per_class, names), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders with config.json and checkpoint/")
    parser.add_argument("--name", default="calibration", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    rows = {}
    for folder in map(Path, args.runs):
        rows[str(folder)] = row = calibrate(folder)
        print(f"{folder}: val {row['val_miou_uncalibrated']:.3f} -> {row['val_miou_offset']:.3f} (bg +{row['background_offset']}) "
              f"-> {row['val_miou_per_class']:.3f} per class; test {row['test_miou_uncalibrated']:.3f} -> "
              f"{row['test_miou_offset']:.3f} -> {row['test_miou_per_class']:.3f}", flush=True)
    save(args.name, {"runs": rows})


if __name__ == "__main__":
    main()
