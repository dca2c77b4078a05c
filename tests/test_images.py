"""Reading photos: identical geometry to the historical whole-photo resize, the crop's source region
for extreme shapes, EXIF orientation, the decompression-bomb limit (API and CLI)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import EXAMPLES, SHIPPED, model_path
from PIL import Image

from blackbox_xai import preprocess
from blackbox_xai.cli import cli
from blackbox_xai.errors import ImageError
from blackbox_xai.preprocess import Preprocessing, read_image


def historical(img: Image.Image, pre: Preprocessing) -> tuple[np.ndarray, tuple]:
    """The implementation before source-coordinate crops: resize the whole photo, then crop."""
    (ch, cw), (w0, h0) = pre.crop, img.size
    s = max(pre.resize / min(w0, h0), ch / h0, cw / w0)
    w1, h1 = max(round(w0 * s), cw), max(round(h0 * s), ch)
    left, top = (w1 - cw) // 2, (h1 - ch) // 2
    arr = np.asarray(img.resize((w1, h1), Image.Resampling.BILINEAR).crop((left, top, left + cw, top + ch)),
                     np.float32)
    x = ((arr / pre.scale - np.float32(pre.mean)) / np.float32(pre.std)).transpose(2, 0, 1)
    sx, sy = w1 / w0, h1 / h0
    return x, (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)


@pytest.mark.parametrize("photo", ["cat.jpg", "coffee.jpg", "rocket.jpg"])
def test_photos_identical_to_historical_output(photo):
    pre = Preprocessing.for_model(SHIPPED, (224, 224))
    img = read_image(EXAMPLES / photo)
    x, box = pre.to_tensor(img)
    ref, ref_box = historical(img, pre)
    np.testing.assert_array_equal(x, ref)
    assert box == ref_box


def test_source_region_resize_within_one_grey_level(monkeypatch):
    pre = Preprocessing.for_model(SHIPPED, (224, 224))
    img = read_image(EXAMPLES / "cat.jpg")
    ref, ref_box = historical(img, pre)
    monkeypatch.setattr(preprocess, "_MAX_RESIZED_PIXELS", 0)  # force the source-region path
    x, box = pre.to_tensor(img)
    assert box == ref_box
    step = 1 / 255 / pre.std[0]  # one grey level in the model's units
    assert np.abs(x - ref).max() <= step * 1.0001 and np.mean(x != ref) < 0.01


def test_long_strip_resamples_only_the_crop():
    strip = Image.new("RGB", (20000, 1), (10, 20, 30))
    pre = Preprocessing(crop=(224, 224), resize=256, mean=0, std=1, scale=1)
    t0 = time.perf_counter()
    x, box = pre.to_tensor(strip)
    assert time.perf_counter() - t0 < 2  # the whole strip at 5,120,000 x 256 took 16 s and 5.5 GB
    np.testing.assert_array_equal(x, np.broadcast_to(np.float32([10, 20, 30])[:, None, None], (3, 224, 224)))
    left, top = (5_120_000 - 224) // 2, 16  # the centre crop of the 5,120,000 x 256 resize
    assert box == (left / 256, top / 256, (left + 224) / 256, (top + 224) / 256)


@pytest.mark.parametrize("orientation,turn", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_applied(tmp_path, orientation, turn):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(arr).save(path, exif=exif)
    np.testing.assert_array_equal(np.asarray(read_image(path)), np.rot90(arr, turn))


def _png(tmp_path, w, h):
    path = tmp_path / "big.png"
    Image.new("L", (w, h), 7).save(path)
    return path


def test_pixel_limit_is_an_image_error(tmp_path, monkeypatch):
    path = _png(tmp_path, 100, 50)
    with pytest.raises(ImageError, match=r"big.png has 100 x 50 = 5,000 pixels, over the limit of 4,999 .*--max-pixels"):
        read_image(path, max_pixels=4999)
    assert read_image(path, max_pixels=5000).size == (100, 50)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own error would fire above 2000
    with pytest.raises(ImageError, match="over the limit of 2,000"):
        read_image(path)
    assert read_image(path, max_pixels=10**6).size == (100, 50)  # our limit replaces Pillow's
    assert Image.MAX_IMAGE_PIXELS == 1000  # and Pillow's global is left as it was


def test_cli_pixel_limit(tmp_path):
    path, out = _png(tmp_path, 40, 40), tmp_path / "out"
    args = ["-q", "explain", "occlusion", model_path("tiny_cnn"), str(path), "--out", str(out)]
    r = CliRunner().invoke(cli, [*args, "--max-pixels", "1599"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [(f"error: image {path} has 40 x 40 = 1,600 pixels, over the limit "
                                      "of 1,599 (a decompression bomb?); raise it with --max-pixels")]
    assert not out.exists()
    r = CliRunner().invoke(cli, [*args, "--max-pixels", "1600", "--window", "16", "--stride", "16"])
    assert r.exit_code == 0, r.output
