"""Colormaps and overlays: matplotlib's inferno endpoints, signed maps, the overlay geometry."""

from __future__ import annotations

import numpy as np
from PIL import Image

from blackbox_xai.viz import LEGEND_HEIGHT, colorize, inferno, is_signed, overlay_image


def test_inferno_matches_matplotlib_at_known_points():
    # matplotlib's inferno: 0 -> (0, 0, 4), 0.5 -> (188, 55, 84), 1 -> (252, 255, 164)
    got = inferno(np.array([0.0, 0.5, 1.0])).astype(int)
    np.testing.assert_allclose(got, [[0, 0, 4], [188, 55, 84], [252, 255, 164]], atol=4)


def test_signed_maps_use_a_symmetric_diverging_scale():
    m = np.array([[-2.0, 0.0, 1.0]])
    assert is_signed(m) and not is_signed(np.array([[0.0, 1.0]]))
    rgb, lo, hi = colorize(m)
    assert (lo, hi) == (-2.0, 2.0)
    assert tuple(rgb[0, 1]) == (255, 255, 255)  # zero is white
    assert rgb[0, 0, 2] > rgb[0, 0, 0] and rgb[0, 2, 0] > rgb[0, 2, 2]  # negative blue, positive red


def test_overlay_leaves_the_photo_outside_the_box_and_at_zero():
    photo = Image.new("RGB", (60, 40), (10, 200, 30))
    m = np.zeros((8, 8))
    m[:4] = 1.0
    out = np.asarray(overlay_image(photo, m, box=(20, 0, 40, 40)))
    assert out.shape == (40 + LEGEND_HEIGHT, 60, 3)
    np.testing.assert_array_equal(out[:40, :20], np.asarray(photo)[:, :20])
    np.testing.assert_array_equal(out[39, 25], (10, 200, 30))  # map 0 there: fully transparent
    assert tuple(out[2, 30]) != (10, 200, 30)  # map 1 there: coloured
