"""The share of each box its class fills, by hand, and the size bands read off it (box_fill: auto)."""

import numpy as np
import pytest

from labelmix.trainables.criterion import box_bands
from labelmix.trainables.data.annotations import box_fills


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


def test_box_bands_are_one_pair_for_every_class_or_the_masked_boxes_percentiles():
    assert box_bands((0.5, 0.9), {}, 3) == ((0.5, 0.9),) * 3
    fills = {1: np.linspace(0.2, 0.8, 21), 2: np.array([0.7])}  # class 2: one box, too few to read a band off
    bands = box_bands("auto", fills, 4)
    assert bands[1] == pytest.approx((0.23, 0.77))  # 5th and 95th percentiles of 0.20, 0.23, ..., 0.80
    assert bands[0] == bands[2] == bands[3] == (0.5, 0.9)  # background, and classes without enough masked boxes
