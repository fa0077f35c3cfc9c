"""benchmarks/box_fill.py's pure part: the share of each box its class fills, by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from box_fill import box_fills  # noqa: E402


def test_box_fills_counts_the_class_pixels_inside_each_box():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1:3, 1:4] = 1  # 6 pixels of class 1
    mask[5:7, 5:7] = 2  # 4 pixels of class 2
    mask[5, 7] = 1  # a class-1 pixel inside the class-2 box counts for nothing there
    boxes = [np.array([[1, 1, 1, 3, 5], [2, 5, 5, 7, 8]])]  # 2 x 4 box around class 1 (6 of 8), 2 x 3 around class 2 (4 of 6)
    fills = box_fills([mask], boxes)
    assert sorted(fills) == [1, 2]
    assert fills[1].tolist() == pytest.approx([6 / 8])
    assert fills[2].tolist() == pytest.approx([4 / 6])
