"""Segmenters: contiguous labels, grid geometry, display-space invariance, caller label arrays."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox_xai.errors import BlackboxError
from blackbox_xai.segmentation import display_image, grid_labels, relabel, segment

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


@pytest.mark.parametrize("method", ["quickshift", "felzenszwalb"])
def test_superpixels_find_the_two_halves(method):
    img = two_colour_photo()
    labels = segment(img, method)
    assert labels.max() == 1  # two segments, labelled 0 and 1, split at column 16
    assert (labels[:, :16] == labels[0, 0]).all() and (labels[:, 16:] == 1 - labels[0, 0]).all()
    # the same photo as a normalised model input gives the same superpixels
    np.testing.assert_array_equal(segment(to_model_space(img), method), labels)


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
