"""Deletion / insertion and the pointing game with a Detection target: the curve is the
detection's matched score (D-RISE similarity), the annotation is its own box; closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox_xai import Detection, Region
from blackbox_xai.errors import BlackboxError
from blackbox_xai.metrics import (
    Annotation,
    box_mask,
    deletion_insertion,
    energy_pointing,
    pointing_hit,
)

SIZE = 16
BOX = (0.0, 0.0, 8.0, 4.0)  # x0, y0, x1, y1: rows 0..3, cols 0..7, 32 pixels


def yolov5_head(x: np.ndarray) -> np.ndarray:
    """A YOLOv5-layout head (N, 1, 5 + 2): one proposal with box BOX (cxcywh 4, 2, 8, 4),
    objectness = mean of channel 0 over BOX's pixels, class probabilities (1, 0); so its D-RISE
    similarity to Detection(BOX, 0) is IoU 1 x cos 1 x objectness = that mean."""
    out = np.zeros((len(x), 1, 7), np.float32)
    out[:, 0, :4] = [4, 2, 8, 4]
    out[:, 0, 4] = x[:, 0, :4, :8].mean(axis=(1, 2))
    out[:, 0, 5] = 1
    return out


def test_deletion_and_insertion_track_the_matched_score_closed_form():
    x = np.ones((3, SIZE, SIZE), np.float32)
    m = np.zeros((SIZE, SIZE))
    m[box_mask((SIZE, SIZE), BOX)] = 1  # the box's 32 pixels first (raster order), then the rest
    r = deletion_insertion(yolov5_head, x, m, Detection(BOX, 0), pixels_per_step=8,
                           substrate=np.zeros_like(x))
    t = np.arange(SIZE * SIZE // 8 + 1)  # 33 points; after step t, min(8 t, 32) box pixels changed
    changed = np.minimum(8 * t, 32) / 32
    np.testing.assert_allclose(r.deletion_curve, 1 - changed, atol=1e-6)
    np.testing.assert_allclose(r.insertion_curve, changed, atol=1e-6)
    fractions = t * 8 / SIZE ** 2
    assert r.deletion_auc == pytest.approx(np.trapezoid(1 - changed, fractions), abs=1e-6)
    assert r.insertion_auc == pytest.approx(np.trapezoid(changed, fractions), abs=1e-6)
    assert r.deletion_auc == pytest.approx(0.5 * 32 / 256, abs=1e-6)  # a ramp over 1/8 of [0, 1]
    assert r.n_queries == 2 * 33
    # the reverse order deletes the box last: the score stays 1 until 224 pixels are gone
    rev = deletion_insertion(yolov5_head, x, -m, Detection(BOX, 0), pixels_per_step=8,
                             substrate=np.zeros_like(x))
    assert rev.deletion_auc == pytest.approx(224 / 256 + 0.5 * 32 / 256, abs=1e-6)
    # a box the proposal overlaps by half: IoU 1/2 scales every point
    half = deletion_insertion(yolov5_head, x, m, Detection((0, 0, 8, 8), 0), pixels_per_step=8,
                              substrate=np.zeros_like(x))
    np.testing.assert_allclose(half.deletion_curve, 0.5 * (1 - changed), atol=1e-6)


def test_detection_target_refuses_softmax():
    x = np.ones((3, SIZE, SIZE), np.float32)
    with pytest.raises(BlackboxError, match="apply_softmax=True"):
        deletion_insertion(yolov5_head, x, np.zeros((SIZE, SIZE)), Detection(BOX, 0),
                           apply_softmax=True)


def test_region_target_tracks_the_summed_logits():
    """A 'segmentation net' z_0 = channel 0, z_1 = 0: the region's score is the sum of x_0 over it."""
    def seg(x):
        return np.stack([x[:, 0], np.zeros_like(x[:, 0])], axis=1)

    x = np.ones((3, 4, 4), np.float32)
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True  # 2 pixels
    m = np.arange(16, 0, -1, dtype=np.float64).reshape(4, 4)  # raster order
    r = deletion_insertion(seg, x, m, Region(0, mask), pixels_per_step=1,
                           substrate=np.zeros_like(x))
    np.testing.assert_allclose(r.deletion_curve, [2, 1] + [0] * 15, atol=1e-6)


def test_pointing_game_uses_the_detection_box():
    d = Detection((2.0, 3.0, 6.0, 5.0), 1)  # cols 2..5, rows 3..4
    m = np.zeros((10, 10))
    m[4, 5] = 3.0  # the maximum, inside the box
    m[0, 0] = 1.0  # positive mass outside
    assert pointing_hit(m, d, tolerance=0)
    assert energy_pointing(m, d) == pytest.approx(3 / 4)
    m[9, 9] = 5.0  # the maximum, 5 rows and 4 columns from the box's last pixel (row 4, col 5)
    assert not pointing_hit(m, d, tolerance=6.4) and pointing_hit(m, d, tolerance=41 ** 0.5)
    assert Annotation.of_detection(d) == Annotation(((2.0, 3.0, 6.0, 5.0),), 1)
