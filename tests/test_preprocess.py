"""Image -> tensor: the shipped sidecar recipe, crop geometry, inversion, bad images."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXAMPLES, SHIPPED
from PIL import Image

from blackbox_xai.errors import BlackboxError, ImageError
from blackbox_xai.preprocess import Preprocessing, read_image


def test_sidecar_recipe_by_hand():
    pre = Preprocessing.for_model(SHIPPED, (224, 224))
    assert pre.resize == 256 and pre.crop == (224, 224) and len(pre.labels) == 1000
    img = read_image(EXAMPLES / "cat.jpg")  # 451 x 300
    x, box = pre.to_tensor(img)
    w1, h1 = round(451 * 256 / 300), 256
    left, top = (w1 - 224) // 2, (h1 - 224) // 2
    ref = np.asarray(img.resize((w1, h1), Image.Resampling.BILINEAR), np.float32)
    ref = ref[top:top + 224, left:left + 224] / 255.0
    ref = ((ref - np.array(pre.mean)) / np.array(pre.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    s = w1 / 451
    np.testing.assert_allclose(box, (left / s, top / (h1 / 300), (left + 224) / s, (top + 224) / (h1 / 300)))


def test_to_pixels_inverts_normalisation():
    pre = Preprocessing(crop=(8, 8), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), channel_order="BGR")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    x, box = pre.to_tensor(img)
    assert box == (0.0, 0.0, 8.0, 8.0)
    np.testing.assert_array_equal(pre.to_pixels(x), np.asarray(img))


def test_bad_images_and_options(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageError, match="cannot decode"):
        read_image(bad)
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(BlackboxError, match="interpolation"):
        Preprocessing(interpolation="cubic-ish")
