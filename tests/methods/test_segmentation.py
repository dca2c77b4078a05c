"""Segmenters: contiguous labels, grid geometry, display-space invariance, caller label arrays,
size-scaled superpixel defaults and the refusal of too few segments."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXAMPLES
from PIL import Image

from blackbox_xai import explain
from blackbox_xai.errors import BlackboxError
from blackbox_xai.segmentation import (
    DEFAULTS,
    display_image,
    grid_labels,
    relabel,
    scaled_defaults,
    segment,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def two_colour_photo() -> np.ndarray:
    """32 x 32 uint8: red left half, blue right half, mild noise; every channel spans 0..255."""
    rng = np.random.default_rng(0)
    img = np.zeros((32, 32, 3), np.int64)
    img[:, :16], img[:, 16:] = (200, 30, 30), (20, 40, 220)
    img = np.clip(img + rng.integers(-10, 11, img.shape), 0, 255)
    img[0, 0], img[-1, -1] = (0, 0, 0), (255, 255, 255)
    return img.astype(np.uint8)


def to_model_space(img: np.ndarray) -> np.ndarray:
    return ((img / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


def cat(side: int) -> np.ndarray:
    """The example cat photo resized to side x side, uint8 (H, W, 3)."""
    img = Image.open(EXAMPLES / "cat.jpg").convert("RGB")
    return np.asarray(img.resize((side, side), Image.Resampling.BILINEAR))


def test_relabel_is_contiguous_and_order_preserving():
    got = relabel(np.array([[5, 5, 9], [2, 2, 9]]))
    np.testing.assert_array_equal(got, [[1, 1, 2], [0, 0, 2]])


@pytest.mark.parametrize("h,w,grid", [(32, 32, 7), (224, 224, 7), (30, 17, 4), (32, 32, 1)])
def test_grid_cells_are_near_equal_rectangles_in_row_major_order(h, w, grid):
    labels = grid_labels(h, w, grid)
    assert labels.shape == (h, w) and labels.max() == grid * grid - 1
    assert labels[0, 0] == 0 and labels[-1, -1] == grid * grid - 1
    assert labels[0, -1] == grid - 1 and labels[-1, 0] == grid * (grid - 1)
    sizes = np.bincount(labels.ravel())
    row_sizes = np.bincount(labels[:, 0] // grid)  # pixel rows per row of cells
    assert row_sizes.max() - row_sizes.min() <= 1  # rows of cells differ by at most one pixel
    for k in range(grid * grid):  # every cell is a full rectangle
        ys, xs = np.nonzero(labels == k)
        assert sizes[k] == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)


def test_grid_finer_than_the_image_still_gives_contiguous_labels():
    labels = grid_labels(8, 8, 10)
    np.testing.assert_array_equal(labels, np.arange(64).reshape(8, 8))


def test_display_image_ignores_the_per_channel_normalisation():
    img = two_colour_photo()
    x1 = to_model_space(img)
    x2 = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    np.testing.assert_allclose(display_image(x1), img / 255.0, atol=1e-6)
    np.testing.assert_allclose(display_image(x2), img / 255.0, atol=1e-12)
    np.testing.assert_array_equal(display_image(img), img / 255.0)


@pytest.mark.parametrize("method,at_224", [("quickshift", {"kernel_size": 4, "max_dist": 200}),
                                            ("felzenszwalb", {"min_size": 100})])
def test_superpixels_follow_the_colour_edge(method, at_224):
    img = two_colour_photo()
    labels = segment(img, method)
    left, right = set(np.unique(labels[:, :16])), set(np.unique(labels[:, 16:]))
    assert not left & right and len(left | right) >= 4  # never across column 16
    # the same photo as a normalised model input gives the same superpixels
    np.testing.assert_array_equal(segment(to_model_space(img), method), labels)
    # the 224-px values, given explicitly, are used as given: exactly the two halves
    halves = segment(img, method, min_segments=2, **at_224)
    assert halves.max() == 1
    assert (halves[:, :16] == halves[0, 0]).all() and (halves[:, 16:] == 1 - halves[0, 0]).all()


def test_defaults_at_224_px_are_unchanged():
    assert scaled_defaults("quickshift", (224, 224)) == {"kernel_size": 4, "max_dist": 200,
                                                         "ratio": 0.2}
    assert scaled_defaults("felzenszwalb", (224, 224)) == {"scale": 200.0, "sigma": 0.5,
                                                           "min_size": 100}
    for method in DEFAULTS:
        assert scaled_defaults(method, (224, 224)) == DEFAULTS[method]
        assert scaled_defaults(method, (112, 448)) == DEFAULTS[method]  # same area
    from skimage import segmentation as sk

    img = cat(224)
    np.testing.assert_array_equal(  # lime_image's quickshift call on the same photo
        segment(img, "quickshift"),
        relabel(sk.quickshift(img / 255.0, kernel_size=4, max_dist=200, ratio=0.2)))


def test_defaults_scale_with_the_side_and_the_area():
    q32, f32 = scaled_defaults("quickshift", (32, 32)), scaled_defaults("felzenszwalb", (32, 32))
    assert q32["kernel_size"] == 1.0  # 4 / 7 = 0.57, raised to scikit-image's minimum of 1
    assert q32["max_dist"] == pytest.approx(200 / 7) and q32["ratio"] == 0.2
    assert f32["min_size"] == 2 and f32["scale"] == 200.0  # round(100 / 49)
    q448 = scaled_defaults("quickshift", (448, 448))
    f448 = scaled_defaults("felzenszwalb", (448, 448))
    assert (q448["kernel_size"], q448["max_dist"], f448["min_size"]) == (8.0, 400.0, 400)
    assert scaled_defaults("slic", (32, 32)) == DEFAULTS["slic"]  # a count: not scaled


@pytest.mark.parametrize("method,low,high", [("quickshift", 8, 20), ("felzenszwalb", 10, 30)])
def test_a_32_px_photo_gets_a_few_segments_where_the_224_px_values_find_one(method, low, high):
    img = cat(32)
    assert low <= segment(img, method).max() + 1 <= high
    unscaled = {"kernel_size": 4, "max_dist": 200} if method == "quickshift" else {"min_size": 100}
    with pytest.raises(BlackboxError, match=f"^{method} found 1 segment on the 32 x 32 input, "
                                            "fewer than the 4 needed: use --segments grid$"):
        segment(img, method, **unscaled)


@pytest.mark.parametrize("method", ["quickshift", "slic", "felzenszwalb"])
def test_a_flat_image_is_one_segment_and_refused(method):
    flat = np.full((3, 28, 32), 0.3, np.float32)
    with pytest.raises(BlackboxError, match=f"^{method} found 1 segment on the 28 x 32 input.*"
                                            "--segments grid$"):
        segment(flat, method)
    np.testing.assert_array_equal(segment(flat, method, min_segments=1), np.zeros((28, 32)))
    assert segment(flat, "grid").max() + 1 == 49  # what the error suggests works


@pytest.mark.parametrize("method", ["lime", "shapley"])
def test_segment_methods_refuse_too_few_superpixels(linear_query, method):
    flat = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(BlackboxError, match="quickshift found 1 segment.*--segments grid"):
        explain(linear_query, flat, method, segments="quickshift")
    exp = explain(linear_query, flat, method, segments="grid", seed=0)
    assert len(exp.extras["attributions"]) == 49


def test_slic_segments_never_cross_the_colour_edge_and_are_contiguous():
    labels = segment(two_colour_photo(), "slic")
    left, right = set(np.unique(labels[:, :16])), set(np.unique(labels[:, 16:]))
    assert not left & right and len(left) > 1 and len(right) > 1
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_segmenter_options_are_passed_through():
    x = to_model_space(two_colour_photo())
    assert segment(x, "slic", n_segments=4).max() + 1 < segment(x, "slic").max() + 1


def test_caller_label_array_is_checked_and_relabelled():
    x = np.zeros((3, 4, 4), np.float32)
    labels = np.array([[7, 7, 3, 3]] * 2 + [[40, 40, 3, 3]] * 2)
    np.testing.assert_array_equal(segment(x, labels), relabel(labels))
    np.testing.assert_array_equal(segment(x, labels), [[1, 1, 0, 0]] * 2 + [[2, 2, 0, 0]] * 2)
    with pytest.raises(BlackboxError, match="shape"):
        segment(x, np.zeros((4, 5), int))
    with pytest.raises(BlackboxError, match="integer"):
        segment(x, np.zeros((4, 4)))


def test_unknown_segmenter_names_the_choices():
    with pytest.raises(BlackboxError, match="quickshift"):
        segment(np.zeros((3, 8, 8), np.float32), "watershed")
