"""Colormaps and overlays: matplotlib's inferno endpoints, signed vs unsigned maps, the overlay."""

from __future__ import annotations

import numpy as np
from PIL import Image

from blackbox_xai.explanation import Explanation
from blackbox_xai.methods import all_methods
from blackbox_xai.viz import (
    LEGEND_HEIGHT,
    SIGNED_METHODS,
    UNSIGNED_METHODS,
    colorize,
    diverging,
    heatmap_image,
    inferno,
    is_signed_method,
    overlay_image,
)

RISE_LIKE = np.array([[-9.0, -7.0, -5.0]])  # weighted averages of negative logits: all < 0
OCCLUSION_LIKE = np.array([[-1.0, 0.0, 3.0]])  # score drops: both signs, 0 = no effect


def test_inferno_matches_matplotlib_at_known_points():
    # matplotlib's inferno: 0 -> (0, 0, 4), 0.5 -> (188, 55, 84), 1 -> (252, 255, 164)
    got = inferno(np.array([0.0, 0.5, 1.0])).astype(int)
    np.testing.assert_allclose(got, [[0, 0, 4], [188, 55, 84], [252, 255, 164]], atol=4)


def test_every_registered_method_has_exactly_one_kind():
    assert not SIGNED_METHODS & UNSIGNED_METHODS
    assert set(all_methods()) == SIGNED_METHODS | UNSIGNED_METHODS
    assert [is_signed_method(m) for m in ("occlusion", "rise", "scorecam", "cam", "gradcam")] == [
        True, False, False, True, False]


def test_signed_maps_use_a_symmetric_diverging_scale():
    rgb, lo, hi = colorize(np.array([[-2.0, 0.0, 1.0]]), signed=True)
    assert (lo, hi) == (-2.0, 2.0)
    assert tuple(rgb[0, 1]) == (255, 255, 255)  # zero is white
    assert rgb[0, 0, 2] > rgb[0, 0, 0] and rgb[0, 2, 0] > rgb[0, 2, 2]  # negative blue, positive red


def test_an_all_negative_relevance_map_spans_the_whole_sequential_scale():
    """RISE's map is not signed: its minimum is inferno(0) and its maximum inferno(1), not blue."""
    rgb, lo, hi = colorize(RISE_LIKE, signed=is_signed_method("rise"))
    assert (lo, hi) == (-9.0, -5.0)
    np.testing.assert_array_equal(rgb[0], inferno(np.array([0.0, 0.5, 1.0])))
    signed_rgb, _, _ = colorize(RISE_LIKE, signed=True)  # what the diverging rule painted
    assert (signed_rgb[0, :, 2] > signed_rgb[0, :, 0]).all()  # all blue: the bug


def test_a_mixed_sign_attribution_is_centred_at_zero():
    rgb, lo, hi = colorize(OCCLUSION_LIKE, signed=is_signed_method("occlusion"))
    assert (lo, hi) == (-3.0, 3.0)
    np.testing.assert_array_equal(rgb[0], diverging(np.array([-1 / 3, 0.0, 1.0])))
    assert tuple(rgb[0, 1]) == (255, 255, 255) and tuple(rgb[0, 2]) == (181, 5, 38)


def test_saved_pngs_use_the_methods_scale(tmp_path):
    """Explanation.save colours by the method: rise -> inferno min-max, occlusion -> diverging."""
    photo = Image.new("RGB", (3, 1), (0, 128, 0))
    for method, m, expected, legend_start in [
            ("rise", RISE_LIKE, inferno(np.array([0.0, 0.5, 1.0])), inferno(np.array(0.0))),
            ("occlusion", OCCLUSION_LIKE, diverging(np.array([-1 / 3, 0.0, 1.0])),
             diverging(np.array(-1.0)))]:
        exp = Explanation(map=m.astype(np.float32), method=method, target=0, score=0.0,
                          n_queries=1, seconds=0.0, seed=None, options={})
        exp.save(tmp_path, method, image=photo)
        heat = np.asarray(Image.open(tmp_path / f"{method}.png"))
        assert heat.shape == (1 + LEGEND_HEIGHT, 3, 3)
        np.testing.assert_array_equal(heat[0], expected)
        assert heat[1:7, 0].tolist() == [legend_start.tolist()] * 6  # the legend's left end
        overlay = np.asarray(Image.open(tmp_path / f"{method}_overlay.png"))
        assert overlay.shape == heat.shape
    np.testing.assert_array_equal(overlay[0, 1], (0, 128, 0))  # occlusion 0: the photo shows


def test_heatmap_legend_follows_the_kind():
    unsigned = np.asarray(heatmap_image(RISE_LIKE, signed=False))
    signed = np.asarray(heatmap_image(RISE_LIKE, signed=True))
    np.testing.assert_array_equal(unsigned[1, 0], inferno(np.array(0.0)))
    np.testing.assert_array_equal(signed[1, 0], diverging(np.array(-1.0)))


def test_overlay_leaves_the_photo_outside_the_box_and_at_zero():
    photo = Image.new("RGB", (60, 40), (10, 200, 30))
    m = np.zeros((8, 8))
    m[:4] = 1.0
    out = np.asarray(overlay_image(photo, m, box=(20, 0, 40, 40)))
    assert out.shape == (40 + LEGEND_HEIGHT, 60, 3)
    np.testing.assert_array_equal(out[:40, :20], np.asarray(photo)[:, :20])
    np.testing.assert_array_equal(out[39, 25], (10, 200, 30))  # map 0 there: fully transparent
    assert tuple(out[2, 30]) != (10, 200, 30)  # map 1 there: coloured


def test_unsigned_overlay_is_transparent_at_the_minimum_and_opaque_at_the_maximum():
    photo = Image.new("RGB", (8, 8), (10, 200, 30))
    m = np.full((8, 8), -4.0)
    m[:4] = -2.0
    out = np.asarray(overlay_image(photo, m, signed=False))
    np.testing.assert_array_equal(out[7, 0], (10, 200, 30))
    top = 0.7 * inferno(np.array(1.0)).astype(float) + 0.3 * np.array([10, 200, 30])
    np.testing.assert_allclose(out[0, 0], top, atol=2)


def test_the_tabulated_inferno_is_within_one_grey_level_of_its_polynomial():
    """The lookup table (4096 points) against Horner's evaluation of the fitted polynomial
    at 100 000 random points and both ends."""
    from blackbox_xai.viz import _inferno_exact, inferno

    t = np.concatenate([np.random.default_rng(0).random(100_000), [0.0, 1.0]])
    diff = np.abs(inferno(t).astype(int) - _inferno_exact(t).astype(int))
    assert diff.max() <= 1
    assert (inferno(np.array([0.0, 1.0])) == _inferno_exact(np.array([0.0, 1.0]))).all()
