"""Image -> tensor: presets, precedence, ONNX metadata, geometry, channels, the manifest record,
sidecar and box-file validation (API and CLI)."""

from __future__ import annotations

import hashlib
import json
import logging
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import EXAMPLES, SHIPPED, model_path
from PIL import Image

from blackbox_xai import explain
from blackbox_xai.cli import cli
from blackbox_xai.errors import BlackboxError, ImageError
from blackbox_xai.metrics import load_boxes
from blackbox_xai.preprocess import Preprocessing, read_image, read_metadata, read_sidecar


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


# ---- presets, precedence, metadata --------------------------------------------------------------
TINY = model_path("tiny_cnn")  # 3 x 32 x 32 input, 5 classes
RGB = (10, 20, 30)


def uniform(size=(12, 10), rgb=RGB) -> Image.Image:
    """A one-colour photo: any resampling keeps its pixel values exactly."""
    return Image.new("RGB", size, rgb)


def tiny_copy(tmp_path, props=None, sidecar=None):
    """tests/models/tiny_cnn.onnx in tmp_path, with metadata_props and a sidecar (text or dict)."""
    proto = onnx.load(TINY)
    onnx.helper.set_model_props(proto, props or {})
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    if sidecar is not None:
        data = sidecar if isinstance(sidecar, bytes) else (
            sidecar if isinstance(sidecar, str) else json.dumps(sidecar)).encode()
        (tmp_path / "m.onnx.json").write_bytes(data)
    return path


@pytest.mark.parametrize("preset,expected", [
    ("torchvision", [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]),
    ("tf", [10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1]),
    ("caffe", [30 - 103.939, 20 - 116.779, 10 - 123.68]),  # BGR, mean in BGR order
    ("zero-one", [10 / 255, 20 / 255, 30 / 255]),
    ("zero-255", [10, 20, 30]),
])
def test_presets_pixel_values(preset, expected):
    pre = Preprocessing.for_model(TINY, (32, 32), preset=preset)
    x, _ = pre.to_tensor(uniform())
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-6)
    assert x.shape == (3, 32, 32) and np.ptp(x, axis=(1, 2)).max() == 0
    assert pre.sources["mean"] == f"preset {preset}"
    # torchvision keeps its 256 -> 224 ratio at the model's size: 32 / 0.875 = 36.6 -> 37
    assert pre.resize == (37 if preset == "torchvision" else None)


def test_precedence_flags_preset_sidecar_metadata_guess(tmp_path):
    path = tiny_copy(tmp_path, {"Image.BitmapPixelFormat": "Bgr8", "Image.NominalPixelRange": "Normalized_1_1",
                                "classes": "a,b,c,d,e"},
                     {"preprocess": {"resize": 40, "mean": [0.1, 0.2, 0.3]}, "labels": list("vwxyz")})
    pre = Preprocessing.for_model(path, (32, 32))
    assert pre.sources == {"crop": "model", "resize": "sidecar", "mode": "guessed", "pad": "guessed",
                           "interpolation": "guessed", "scale": "metadata", "mean": "sidecar",
                           "std": "metadata", "channel_order": "metadata", "gamma": "guessed",
                           "labels": "sidecar"}
    assert (pre.resize, pre.mean, pre.std, pre.scale, pre.channel_order) == (40, (0.1, 0.2, 0.3), (0.5,), 255, "BGR")
    pre = Preprocessing.for_model(path, (32, 32), preset="zero-255", mean=0.25, flag_prefix="--")
    assert (pre.resize, pre.mean, pre.std, pre.scale, pre.channel_order) == (40, (0.25,), (1.0,), 1.0, "RGB")
    assert pre.sources["mean"] == "flag" and pre.sources["std"] == "preset zero-255"
    (tmp_path / "m.onnx.json").unlink()
    pre = Preprocessing.for_model(path, (32, 32))
    assert pre.labels == tuple("abcde") and pre.sources["labels"] == "metadata"
    assert pre.sources["mean"] == "metadata" and pre.resize is None


@pytest.mark.parametrize("props,expected", [
    ({"Image.BitmapPixelFormat": "Rgb8", "Image.NominalPixelRange": "NominalRange_0_255"},
     {"channel_order": "RGB", "scale": 1.0, "mean": (0.0,), "std": (1.0,)}),
    ({"Image.NominalPixelRange": "Normalized_0_1", "Image.ColorSpaceGamma": "Linear"},
     {"scale": 255.0, "mean": (0.0,), "std": (1.0,), "gamma": "linear"}),
    ({"Image.NominalPixelRange": "NominalRange_16_235"},
     {"scale": 1.0, "mean": (-16 * 255 / 219,), "std": (255 / 219,)}),
    ({"labels": '["cat", "dog"]'}, {"labels": ("cat", "dog")}),
    ({"names": "{0: 'person', 1: 'bicycle'}"}, {"labels": ("person", "bicycle")}),
    ({"Classes": "cat\ndog\nfox"}, {"labels": ("cat", "dog", "fox")}),
    ({"Image.BitmapPixelFormat": "Yuv"}, {}),  # not understood: ignored
    # Windows ML's default range when a pixel format but no range is given (Custom Vision)
    ({"Image.BitmapPixelFormat": "Bgr8"},
     {"channel_order": "BGR", "scale": 1.0, "mean": (0.0,), "std": (1.0,)}),
])
def test_read_metadata(tmp_path, props, expected):
    assert read_metadata(tiny_copy(tmp_path, props)) == expected


def test_metadata_16_235_and_linear_pixel_values(tmp_path):
    path = tiny_copy(tmp_path, {"Image.NominalPixelRange": "NominalRange_16_235"})
    x, _ = Preprocessing.for_model(path, (32, 32)).to_tensor(uniform(rgb=(0, 128, 255)))
    np.testing.assert_allclose(x[:, 0, 0], [16, 16 + 128 * 219 / 255, 235], rtol=1e-6)
    path = tiny_copy(tmp_path, {"Image.NominalPixelRange": "Normalized_0_1", "Image.ColorSpaceGamma": "Linear"})
    pre = Preprocessing.for_model(path, (32, 32))
    x, _ = pre.to_tensor(uniform(rgb=(0, 10, 128)))
    np.testing.assert_allclose(x[:, 0, 0], [0, 10 / 255 / 12.92, ((128 / 255 + 0.055) / 1.055) ** 2.4], rtol=1e-5)
    np.testing.assert_array_equal(pre.to_pixels(x)[0, 0], [0, 10, 128])


GUESSED = ("preprocessing of tiny_cnn.onnx guessed (no sidecar tiny_cnn.onnx.json, preset or image "
           "metadata): resize to 32 x 32, bilinear; RGB, (pixel / 255 - mean) / std, mean 0, std 1; "
           "state it with --preset torchvision|tf|caffe|zero-one|zero-255, the flags, or a sidecar")


def test_guess_is_said_once_and_not_when_stated(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="blackbox_xai"):
        Preprocessing.for_model(TINY, (32, 32))
        Preprocessing.for_model(TINY, (32, 32), preset="zero-one")
        Preprocessing.for_model(tiny_copy(tmp_path, {"Image.BitmapPixelFormat": "Rgb8",
                                                     "Image.NominalPixelRange": "Normalized_0_1"}), (32, 32))
    assert [r.getMessage() for r in caplog.records] == [GUESSED]


# ---- geometry and channels ----------------------------------------------------------------------
PHOTO = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)  # h 6, w 8


def test_exact_resize_then_crop_pixels_and_box():
    pre = Preprocessing(crop=(4, 4), resize=(6, 8), scale=1)  # resize to the photo's own size: no resampling
    x, box = pre.to_tensor(Image.fromarray(PHOTO))
    np.testing.assert_array_equal(x, PHOTO[1:5, 2:6].transpose(2, 0, 1))
    assert box == (2.0, 1.0, 6.0, 5.0)


def test_letterbox_pixels_and_box():
    pre = Preprocessing(crop=(8, 8), mode="letterbox", pad=114, scale=1)
    x, box = pre.to_tensor(Image.fromarray(PHOTO))  # 8 wide already: pad 1 row above and below
    np.testing.assert_array_equal(x[:, 1:7], PHOTO.transpose(2, 0, 1))
    assert (x[:, 0] == 114).all() and (x[:, 7] == 114).all()
    assert box == (0.0, -1.0, 8.0, 7.0)  # the tensor's footprint in the photo, padding included
    x, box = Preprocessing(crop=(3, 3), mode="letterbox", scale=1).to_tensor(Image.fromarray(PHOTO))
    assert box == (0.0, 0.0, 8.0, 9.0)  # 8 x 6 -> 3 x 2 (x 3/8, x 1/3), the padding row below
    assert (x[:, 2] == 0).all() and (x[:, :2] > 0).any()


def test_grey_model_one_value_and_refused_three():
    pre = Preprocessing.for_model(TINY, (32, 32), channels=1, mean=0.5, std=0.25)
    x, _ = pre.to_tensor(uniform(rgb=(100, 100, 100)), channels=1)
    assert x.shape == (1, 32, 32) and x[0, 0, 0] == pytest.approx((100 / 255 - 0.5) / 0.25)
    with pytest.raises(BlackboxError, match=r"^--mean has 3 values but the model has 1 channel: give 1$"):
        Preprocessing.for_model(TINY, (32, 32), channels=1, mean=(0.5,) * 3, flag_prefix="--")
    with pytest.raises(BlackboxError, match=r"^preset torchvision: mean has 3 values but the model has 1 channel"):
        Preprocessing.for_model(TINY, (32, 32), channels=1, preset="torchvision")


@pytest.mark.parametrize("kwargs,message", [
    ({"mean": (0.5, 0.5)}, r"^mean has 2 values but the model has 3 channels: give 1 or 3$"),
    ({"std": (float("nan"),)}, r"^std = \(nan,\): values must be finite$"),
    ({"std": 0}, r"^std = 0: values must be > 0$"),
    ({"scale": 0}, r"^scale = 0: give a finite number > 0"),
    ({"resize": (0,)}, r"^resize = \(0,\): give a positive integer or \[height, width\]$"),
    ({"crop": (32, 32, 3)}, r"^crop = \(32, 32, 3\): give a positive integer"),
    ({"crop": (16, 16)}, r"^crop 16 16 does not match the model's fixed input 32 x 32$"),
    ({"pad": 300}, r"^pad = 300: give an integer pixel value 0-255$"),
    ({"mode": "letterbox", "resize": 40}, r"^resize 40 \(from argument\) and letterbox \(from argument\) exclude"),
    ({"preset": "torch"}, r"^unknown preset 'torch'; did you mean: torchvision\?$"),
])
def test_bad_options_one_line(kwargs, message):
    with pytest.raises(BlackboxError, match=message):
        Preprocessing.for_model(TINY, (32, 32), **kwargs)


def test_manifest_records_preprocessing_and_image_sha256(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(PHOTO).save(path)
    pre = Preprocessing.for_model(TINY, (32, 32), preset="zero-one")
    p = pre.prepare(path)
    exp = explain(lambda x: x.reshape(len(x), -1)[:, :5], p.tensor, "occlusion", window=16, stride=16,
                  inputs=p.inputs)
    inputs = json.loads(json.dumps(exp.manifest()))["inputs"]
    assert inputs["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert inputs["size"] == [8, 6] and inputs["box"] == [0.0, 0.0, 8.0, 6.0]
    assert inputs["preprocessing"] == {
        "crop": [32, 32], "resize": None, "mode": "crop", "pad": 0, "interpolation": "bilinear",
        "scale": 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB",
        "gamma": "sRGB", "channels": 3,
        "sources": {"crop": "model", "resize": "guessed", "mode": "guessed", "pad": "guessed",
                    "interpolation": "guessed", "scale": "preset zero-one", "mean": "preset zero-one",
                    "std": "preset zero-one", "channel_order": "preset zero-one", "gamma": "guessed"}}


# ---- sidecars and box files: every field checked, the file and field named ----------------------
SIDECAR_CASES = {
    "mean_string": ({"preprocess": {"mean": "0.5"}}, r"m.onnx.json: preprocess.mean = '0.5': give a number or a list"),
    "mean_length": ({"preprocess": {"mean": [0.5, 0.5]}},
                    r"m.onnx.json: preprocess.mean has 2 values but the model has 3 channels: give 1 or 3$"),
    "std_nan": ('{"preprocess": {"std": [NaN, 1, 1]}}', r"m.onnx.json: preprocess.std = \[nan, 1, 1\]: values must be finite$"),
    "resize_string": ({"preprocess": {"resize": "256"}}, r"m.onnx.json: preprocess.resize = '256': give a positive integer"),
    "crop_triple": ({"preprocess": {"crop": [32, 32, 3]}}, r"m.onnx.json: preprocess.crop = \[32, 32, 3\]: give a positive"),
    "unknown_key": ({"preprocess": {"mena": [0.5]}}, r"m.onnx.json: unknown preprocess field 'mena'; did you mean: mean, mode\?$"),
    "unknown_top": ({"label": ["a"]}, r"m.onnx.json: unknown key 'label'; did you mean: labels\?$"),
    "not_object": ([1, 2], r"m.onnx.json: expected a JSON object with 'preprocess' and 'labels'$"),
    "not_utf8": (b'{"labels": ["caf\xe9"]}', r"m.onnx.json: not UTF-8 text \(byte 0xe9 at offset 16\)$"),
    "bad_json": ('{"preprocess": {', r"m.onnx.json: invalid JSON \(Expecting property name enclosed in double quotes, line 1 column 17\)$"),
    "labels_fewer": ({"labels": ["a", "b", "c", "d"]}, r"m.onnx.json: labels has 4 entries but the model has 5 classes$"),
    "labels_more": ({"labels": list("abcdef")}, r"m.onnx.json: labels has 6 entries but the model has 5 classes$"),
    "labels_type": ({"labels": [1, 2, 3, 4, 5]}, r"m.onnx.json: labels must be a list of strings$"),
}


@pytest.mark.parametrize("case", SIDECAR_CASES)
def test_bad_sidecar_api(tmp_path, case):
    content, message = SIDECAR_CASES[case]
    path = tiny_copy(tmp_path, sidecar=content)
    with pytest.raises(BlackboxError, match=message):
        Preprocessing.for_model(path, (32, 32), num_classes=5)


def cli_error(args, out) -> str:
    """Run the CLI; it must exit 2 with exactly one line (on stderr) and write nothing to ``out``."""
    r = CliRunner().invoke(cli, ["-q", *map(str, args), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: "), r.output
    assert not out.exists() or not any(out.iterdir())
    return r.stderr.strip()


@pytest.mark.parametrize("case", SIDECAR_CASES)
def test_bad_sidecar_cli(tmp_path, case):
    content, message = SIDECAR_CASES[case]
    path = tiny_copy(tmp_path, sidecar=content)
    line = cli_error(["explain", "occlusion", path, EXAMPLES / "cat.jpg"], tmp_path / "out")
    assert re.search(message, line) and str(tmp_path / "m.onnx.json") in line


BOX_CASES = {
    "not_utf8": ("b.json", b'{"caf\xe9.jpg": [1, 2, 3, 4]}', r"b.json: not UTF-8 text \(byte 0xe9 at offset 5\)$"),
    "nan_json": ("b.json", b'{"cat.jpg": {"box": [1, NaN, 3, 4]}}',
                 r"b.json \['cat.jpg'\]: \[1, nan, 3, 4\]: coordinates must be finite$"),
    "nan_csv": ("b.csv", b"cat.jpg,1,nan,3,4\n", r"b.csv:1: \[1.0, nan, 3.0, 4.0\]: coordinates must be finite$"),
    "length": ("b.json", b'{"cat.jpg": [1, 2, 3]}', r"b.json \['cat.jpg'\]: \[1, 2, 3\] is not \[x0, y0, x1, y1\]$"),
    "x1_lt_x0": ("b.csv", b"image,x0,y0,x1,y1\ncat.jpg,5,1,3,4\n", r"b.csv:2: \[5.0, 1.0, 3.0, 4.0\]: need x0 < x1"),
    "second_box": ("b.json", b'{"cat.jpg": {"boxes": [[0, 0, 2, 2], [0, 0, "a", 2]]}}',
                   r"b.json \['cat.jpg'\] box 1: \[0, 0, 'a', 2\]: coordinates must be numbers$"),
}


@pytest.mark.parametrize("case", BOX_CASES)
def test_bad_box_file_api_and_cli(tmp_path, case):
    name, content, message = BOX_CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BlackboxError, match=message):
        load_boxes(path)
    line = cli_error(["evaluate", TINY, EXAMPLES / "cat.jpg", "--boxes", path, "--fast"], tmp_path / "out")
    assert re.search(message, line) and str(path) in line


def test_good_sidecar_read_back(tmp_path):
    path = tiny_copy(tmp_path, sidecar={"preprocess": {"resize": [40, 48], "crop": 32, "mean": 0.5,
                                                       "mode": "crop"}, "labels": list("abcde")})
    assert read_sidecar(tmp_path / "m.onnx.json", 3, 5) == {
        "resize": (40, 48), "crop": (32, 32), "mean": (0.5,), "mode": "crop", "labels": tuple("abcde")}
    assert Preprocessing.for_model(path, (32, 32), num_classes=5).labels == tuple("abcde")


# ---- the flags on the command line --------------------------------------------------------------
def test_cli_flags_reach_the_tensor(tmp_path):
    from blackbox_xai import load_model

    img = tmp_path / "u.png"
    uniform((50, 40)).save(img)
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["-q", "explain", "occlusion", TINY, str(img), "--window", "16", "--stride", "16",
                                 "--preset", "caffe", "--resize", "40", "48", "--crop", "32", "32",
                                 "--std", "2", "--out", str(out)])
    assert r.exit_code == 0 and r.stderr == "", r.output
    pre = json.loads((out / "u_occlusion.json").read_text())["inputs"]["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["mean"], pre["std"], pre["scale"], pre["channel_order"]) == (
        [40, 48], [32, 32], [103.939, 116.779, 123.68], [2.0, 2.0, 2.0], 1.0, "BGR")
    assert pre["sources"]["std"] == "flag" and pre["sources"]["mean"] == "preset caffe"
    x = Preprocessing.for_model(TINY, (32, 32), preset="caffe", resize=(40, 48), std=2).prepare(img).tensor
    exp = explain(load_model(TINY), x, "occlusion", window=16, stride=16)
    np.testing.assert_allclose(np.load(out / "u_occlusion.npy"), exp.map, rtol=1e-6)


@pytest.mark.parametrize("flags,message", [
    (["--mean", "0.5", "0.5"], "error: --mean has 2 values but the model has 3 channels: give 1 or 3"),
    (["--std", "nan"], "error: --std = (nan,): values must be finite"),
    (["--resize", "0"], "error: --resize = (0.0,): give a positive integer or [height, width]"),
    (["--crop", "16"], "error: --crop 16 16 does not match the model's fixed input 32 x 32"),
    (["--pad", "300", "--letterbox"], "error: --pad = 300: give an integer pixel value 0-255"),
    (["--letterbox", "--resize", "40"],
     "error: resize 40 (from flag) and letterbox (from flag) exclude each other: drop one (--no-letterbox)"),
])
def test_cli_bad_flags_one_line(tmp_path, flags, message):
    assert cli_error(["explain", "occlusion", TINY, EXAMPLES / "cat.jpg", *flags], tmp_path / "out") == message


def test_cli_says_once_that_preprocessing_was_guessed():
    r = CliRunner().invoke(cli, ["predict", TINY, str(EXAMPLES / "cat.jpg"), str(EXAMPLES / "coffee.jpg")])
    assert r.exit_code == 0
    assert [line for line in r.stderr.splitlines() if "guessed" in line] == [f"bbx: {GUESSED}"]
    r = CliRunner().invoke(cli, ["predict", TINY, str(EXAMPLES / "cat.jpg"), "--preset", "tf"])
    assert r.exit_code == 0 and "guessed" not in r.stderr


def test_inspect_shows_preprocessing_and_its_sources(tmp_path):
    path = tiny_copy(tmp_path, {"Image.BitmapPixelFormat": "Bgr8", "Image.NominalPixelRange": "NominalRange_0_255"})
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == (
        "preprocessing  resize to 32 x 32, bilinear; BGR, (pixel / 1 - mean) / std, mean 0, std 1 (from model: "
        "crop; guessed: resize, mode, pad, interpolation, gamma; metadata: scale, mean, std, channel_order)")
