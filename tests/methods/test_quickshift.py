"""Our vectorised quickshift against scikit-image's, label for label."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from skimage import segmentation as sk
from skimage.color import rgb2lab

from blackbox_xai import quickshift as qs
from blackbox_xai.quickshift import quickshift, rgb_to_lab

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    img = Image.open(os.path.join(EXAMPLES, f"{name}.jpg")).convert("RGB").resize(size)
    return np.asarray(img, np.float64) / 255.0


def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"cat_150x130": photo("cat", (150, 130)), "coffee_61x45": photo("coffee", (61, 45)),
            "rocket_90x120": photo("rocket", (90, 120)), "noise": rng.random((40, 50, 3)),
            # flat blocks: equal colours make equal distances, so ties in scan order matter
            "blocks": np.kron(rng.random((4, 4, 3)), np.ones((10, 10, 1))),
            "tiny": rng.random((3, 5, 3))}


@pytest.mark.parametrize("name", list(images()))
def test_lab_conversion_is_scikit_images_bit_for_bit(name):
    img = images()[name]
    np.testing.assert_array_equal(rgb_to_lab(img), rgb2lab(img))


@pytest.mark.parametrize("name", list(images()))
@pytest.mark.parametrize("params", [{"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
                                    {"kernel_size": 1, "max_dist": 10, "ratio": 0.5},
                                    {"kernel_size": 2.5, "max_dist": 30, "ratio": 1.0}])
def test_labels_equal_scikit_images(name, params):
    img = images()[name]
    ours = quickshift(img, **params)
    np.testing.assert_array_equal(ours, sk.quickshift(img, **params))
    assert ours.max() > 0 or name == "tiny"  # a real segmentation, not one region


def test_labels_do_not_depend_on_the_core_count(monkeypatch):
    img = photo("cat", (140, 130))  # above THREADED_PIXELS: the threaded path
    assert img.shape[0] * img.shape[1] >= qs.THREADED_PIXELS
    threaded = quickshift(img, kernel_size=3, max_dist=50, ratio=0.3)
    monkeypatch.setattr(qs.os, "cpu_count", lambda: 1)
    np.testing.assert_array_equal(quickshift(img, kernel_size=3, max_dist=50, ratio=0.3), threaded)
    np.testing.assert_array_equal(threaded, sk.quickshift(img, kernel_size=3, max_dist=50,
                                                          ratio=0.3))


def test_presmoothing_and_raw_colours_follow_scikit_image():
    img = photo("rocket", (60, 50))
    for params in [{"sigma": 1.5}, {"convert2lab": False, "max_dist": 0.5, "kernel_size": 2}]:
        np.testing.assert_array_equal(quickshift(img, **params), sk.quickshift(img, **params))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        quickshift(np.zeros((8, 8, 3)), kernel_size=0.5)
    with pytest.raises(ValueError, match="RGB"):
        quickshift(np.zeros((8, 8, 2)))
