"""Pointing game (15-pixel tolerance), energy pointing, and box files."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXAMPLES

from blackbox_xai.errors import BlackboxError
from blackbox_xai.metrics import annotation_for, box_mask, energy_pointing, load_boxes, pointing_hit

BOX = (40, 40, 60, 60)  # columns/rows 40..59


def peak(r: int, c: int, size: int = 100) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[r, c] = 1.0
    return m


@pytest.mark.parametrize("r, c, hit", [
    (50, 50, True),      # inside
    (50, 74, True),      # 15 px right of the last column (59)
    (50, 75, False),     # 16 px
    (25, 50, True),      # 15 px above the first row (40)
    (24, 50, False),
    (71, 71, False),     # diagonal: 12^2 + 12^2 > 15^2
    (68, 71, True),      # diagonal: 9^2 + 12^2 = 15^2
])
def test_pointing_tolerance(r, c, hit):
    assert pointing_hit(peak(r, c), BOX) is hit


def test_pointing_any_box_and_zero_tolerance():
    assert pointing_hit(peak(5, 5), [BOX, (0, 0, 10, 10)])
    assert not pointing_hit(peak(50, 60), BOX, tolerance=0)
    assert pointing_hit(peak(50, 59), BOX, tolerance=0)


def test_energy_pointing():
    m = np.zeros((100, 100), np.float32)
    m[45, 45] = 3.0   # inside
    m[10, 10] = 1.0   # outside
    m[80, 80] = -5.0  # negative evidence is ignored
    assert energy_pointing(m, BOX) == pytest.approx(0.75)
    assert box_mask((100, 100), BOX).sum() == 400
    assert np.isnan(energy_pointing(-np.ones((10, 10)), (0, 0, 5, 5)))


def test_json_boxes_of_the_examples():
    boxes = load_boxes(EXAMPLES / "boxes.json")
    assert set(boxes) == {"cat.jpg", "coffee.jpg", "rocket.jpg"}
    assert boxes["coffee.jpg"].boxes == ((31.0, 0.0, 178.0, 180.0),)
    assert boxes["coffee.jpg"].label == 967
    assert annotation_for(boxes, EXAMPLES / "rocket.jpg").label == 657
    assert annotation_for(boxes, "elsewhere/rocket.png").label == 657  # by stem
    assert annotation_for(boxes, "dog.jpg") is None


def test_csv_boxes(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("image,x0,y0,x1,y1,label\na.jpg,0,0,10,10,3\na.jpg,20,20,30,30,3\nb.jpg,1,2,3,4\n")
    boxes = load_boxes(p)
    assert boxes["a.jpg"].boxes == ((0, 0, 10, 10), (20, 20, 30, 30)) and boxes["a.jpg"].label == 3
    assert boxes["b.jpg"].label is None


@pytest.mark.parametrize("text, match", [
    ("a.jpg,0,0,10\n", "expected image"),
    ("a.jpg,10,0,5,5\n", "x0 < x1"),
    ("a.jpg,0,0,5,5,cat\n", "label"),
])
def test_bad_csv_boxes(tmp_path, text, match):
    p = tmp_path / "b.csv"
    p.write_text(text)
    with pytest.raises(BlackboxError, match=match):
        load_boxes(p)


def test_bad_json_boxes(tmp_path):
    p = tmp_path / "b.json"
    p.write_text('{"a.jpg": {"label": 1}}')
    with pytest.raises(BlackboxError, match="no 'box'"):
        load_boxes(p)
    with pytest.raises(BlackboxError, match="not found"):
        load_boxes(tmp_path / "missing.json")
