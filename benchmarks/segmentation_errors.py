"""Where a trained run's errors are: per class precision, recall and predicted/true area on the val
split, and where its false positives lie (inside the class's true boxes, within 4 pixels of them,
on other fluid, or in images without the class).

Run: .venv/bin/python benchmarks/segmentation_errors.py RUN_FOLDER   (a `labelmix train --out` folder)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.trainables.config import load_config  # noqa: E402
from labelmix.trainables.fit import build_run, load_checkpoint  # noqa: E402
from labelmix.trainables.losses import box_masks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder with config.json and checkpoint/")
    args = parser.parse_args()
    folder = Path(args.run)
    run = build_run(load_config(json.loads((folder / "config.json").read_text())))
    load_checkpoint(run, str(folder / "checkpoint"))
    model = run.teacher.module if run.config.keep_model == "teacher" else run.student
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(run.val.images[i : i + 64])[0].argmax(1) for i in range(0, len(run.val), 64)]).numpy()
    true = run.val.masks.numpy()
    boxes = box_masks(run.val.boxes, len(run.class_names), *true.shape[-2:]).numpy() > 0  # N x C x H x W
    rows = {}
    for c, name in enumerate(run.class_names[1:], start=1):
        predicted, actual = pred == c, true == c
        tp, fp = int((predicted & actual).sum()), predicted & ~actual
        near = np.stack([ndimage.binary_dilation(b, iterations=4) for b in boxes[:, c]])
        n_fp = max(int(fp.sum()), 1)
        rows[name] = {
            "precision": round(tp / max(int(predicted.sum()), 1), 3),
            "recall": round(tp / max(int(actual.sum()), 1), 3),
            "predicted_over_true": round(int(predicted.sum()) / max(int(actual.sum()), 1), 2),
            "fp_in_own_boxes": round(int((fp & boxes[:, c]).sum()) / n_fp, 2),
            "fp_within_4px_of_boxes": round(int((fp & near).sum()) / n_fp, 2),
            "fp_on_other_fluid": round(int((fp & (true > 0)).sum()) / n_fp, 2),
            "images_with_fp_but_no_class": round(float(np.mean([fp[i].any() and not actual[i].any() for i in range(len(pred))])), 2),
        }
    save(f"segmentation_errors_{folder.name}", {"run": str(folder), "classes": rows})


if __name__ == "__main__":
    main()
