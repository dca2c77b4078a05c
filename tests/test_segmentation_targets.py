"""Segmentation targets: a Region's score (the sum of class k's logits over it) on a tiny
segmentation net with a closed form, the black-box and gradient routes, the CLI's --class,
--region and --mask, and the PP-OCRv4 text detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import model_path
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from blackbox_xai import Region, explain, load_model
from blackbox_xai.cli import cli
from blackbox_xai.errors import BlackboxError, ModelInputError
from blackbox_xai.targets import RegionScore

SIZE = 16
W = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0], [-1.0, 0.5, 2.0]], np.float32)  # (K, C)
B = np.array([0.1, -0.2, 0.3], np.float32)
PPOCR = Path(__file__).parent / "third_party" / "ppocrv4_det.onnx"


def logits(x: np.ndarray) -> np.ndarray:
    """The tiny net's logits in numpy: z_k = sum_c W_kc x_c + b_k, (N, 3, H, W)."""
    return (np.einsum("kc,nchw->nkhw", W, x) + B[None, :, None, None]).astype(np.float32)


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory) -> str:
    """A 1x1 Conv (3 -> K = 3 maps) then Softmax over the classes: (N, 3, 16, 16) -> same."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probs"], axis=1)], "seg", [x], [y],
        [numpy_helper.from_array(W[:, :, None, None], "w"), numpy_helper.from_array(B, "b")])
    path = tmp_path_factory.mktemp("seg") / "seg.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return str(path)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE)).astype(np.float32)


def box_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[y0:y1, x0:x1] = True
    return m


def occlusion_closed_form(x: np.ndarray, k: int, mask: np.ndarray, window: int) -> np.ndarray:
    """Occlusion (zero baseline, stride = window, tiling) of s = sum_R z_k: a pixel gets the
    drop of its window, sum over the window's pixels in R of sum_c W_kc x_c."""
    contrib = np.einsum("c,chw->hw", W[k], x) * mask
    out = np.zeros((SIZE, SIZE))
    for i in range(0, SIZE, window):
        for j in range(0, SIZE, window):
            out[i:i + window, j:j + window] = contrib[i:i + window, j:j + window].sum()
    return out


def test_load_segment_keeps_the_logits_before_the_softmax(seg_onnx, x):
    model = load_model(seg_onnx, device="cpu", task="segment")
    assert (model.task, model.num_classes, model.activation) == ("segment", 3, "Softmax")
    np.testing.assert_allclose(model.logits(x[None]), logits(x[None]), atol=1e-5)
    with pytest.raises(ModelInputError, match="explain a Region target"):
        model(x[None])
    with pytest.raises(ModelInputError, match="score='logit'"):
        load_model(seg_onnx, device="cpu", task="segment", score="prob")


def test_region_score_is_the_sum_of_the_class_logits(seg_onnx, x):
    model = load_model(seg_onnx, device="cpu", task="segment")
    mask = box_mask(2, 9, 4, 13)
    score = RegionScore(model, Region(2, mask), x)
    expected = float(logits(x[None])[0, 2][mask].sum(dtype=np.float64))
    assert score(x[None])[0, 0] == pytest.approx(expected, abs=1e-4)
    assert score.describe() == {"label": 2, "pixels": 63, "map_hw": [16, 16], "source": "mask",
                                "score_function": "sum of class k's logits over the region"}


def test_default_region_is_the_argmax_pixels(seg_onnx, x):
    model = load_model(seg_onnx, device="cpu", task="segment")
    predicted = logits(x[None])[0].argmax(axis=0) == 1
    score = RegionScore(model, Region(1), x)
    np.testing.assert_array_equal(score.mask, predicted)
    assert score.describe()["source"] == "predicted (argmax)"
    assert score.describe()["pixels"] == int(predicted.sum()) > 0
    # a one-channel map: the pixels with logit > 0 (sigmoid probability > 0.5)
    one = RegionScore(lambda t: logits(t)[:, :1], Region(0), x)
    np.testing.assert_array_equal(one.mask, logits(x[None])[0, 0] > 0)
    with pytest.raises(BlackboxError, match="has 3 classes"):
        RegionScore(model, Region(3), x)


@pytest.mark.parametrize("through", ["model", "function"])
def test_occlusion_equals_the_closed_form(seg_onnx, x, through):
    model = load_model(seg_onnx, device="cpu", task="segment") if through == "model" else logits
    mask = box_mask(3, 11, 5, 14)
    exp = explain(model, x, "occlusion", target=Region(0, mask), window=4, stride=4)
    np.testing.assert_allclose(exp.map, occlusion_closed_form(x, 0, mask, 4), atol=1e-4)
    assert exp.target == 0
    assert exp.score == pytest.approx(float(logits(x[None])[0, 0][mask].sum()), abs=1e-4)
    assert exp.extras["region"]["pixels"] == 72
    assert exp.n_queries == 1 + 16


def test_gradient_x_input_equals_the_closed_form(seg_onnx, x):
    """d s / d x_c,ij = W_kc [ij in R], so gradient x input = sum_c W_kc x_c,ij [ij in R]."""
    model = load_model(seg_onnx, device="cpu", task="segment")
    mask = box_mask(0, 7, 2, 16)
    exp = explain(model, x, "gradient-x-input", target=Region(1, mask))
    np.testing.assert_allclose(exp.map, np.einsum("c,chw->hw", W[1], x) * mask, atol=1e-5)
    assert exp.model["task"] == "segment" and exp.extras["region"]["label"] == 1
    assert exp.score == pytest.approx(float(logits(x[None])[0, 1][mask].sum()), abs=1e-4)
    with pytest.raises(BlackboxError, match="pass a Model"):
        explain(logits, x, "gradient-x-input", target=Region(1, mask))


def test_meaningful_perturbation_with_finite_differences_runs_on_a_region(seg_onnx, x):
    model = load_model(seg_onnx, device="cpu", task="segment")
    region = box_mask(4, 12, 4, 12)
    exp = explain(model, x, "meaningful-perturbation", target=Region(0, region),
                  grad="fd", iterations=3, mask_size=4)
    # the score optimised is the region's summed class-0 logit, z_0 = W_0 . x + b_0 (closed form)
    z0 = np.einsum("c,chw->hw", W[0], x) + B[0]
    assert exp.score == pytest.approx(float(z0[region].sum()), rel=1e-5)
    assert exp.extras["initial_score"] == pytest.approx(exp.score, rel=1e-5)
    assert exp.map.shape == (SIZE, SIZE) and 0 <= exp.map.min() <= exp.map.max() <= 1


def test_region_from_image_maps_pixel_centres():
    # a 32x32 photo whose whole area is the input; the 16x16 map's pixel j centres at 2j + 1
    region = Region.from_image(0, (0, 0, 32, 32), (16, 16), box=(4, 8, 12, 32), source="box")
    np.testing.assert_array_equal(region.mask, box_mask(4, 16, 2, 6))
    photo = np.zeros((32, 32), np.uint8)
    photo[0:4, 30:32] = 7
    region = Region.from_image(2, (0, 0, 32, 32), (16, 16), image_mask=photo)
    np.testing.assert_array_equal(region.mask, box_mask(0, 2, 15, 16))
    with pytest.raises(BlackboxError, match="covers no pixel"):
        Region.from_image(0, (0, 0, 32, 32), (16, 16), box=(40, 40, 50, 50))


@pytest.fixture
def photo(tmp_path) -> str:
    """A 32x32 photo (resized to the 16x16 input by the sidecar-free --resize 16 16)."""
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def _run(*args: str):
    return CliRunner().invoke(cli, ["explain", *args, "--device", "cpu", "--resize", "16", "16",
                                    "--scale", "255", "--mean", "0.5", "--std", "0.5"])


def test_cli_region_and_mask(seg_onnx, photo, tmp_path):
    r = _run("occlusion", seg_onnx, photo, "--class", "1", "--region", "8,0,24,16", "--window",
             "4", "--stride", "4", "--out", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    assert "occlusion target 1 region 64 px" in r.stdout
    region = json.loads((tmp_path / "a" / "photo_occlusion.json").read_text())["extras"]["region"]
    assert region == {"label": 1, "pixels": 64, "map_hw": [16, 16],
                      "source": "--region 8,0,24,16",
                      "score_function": "sum of class k's logits over the region"}
    png = np.zeros((32, 32), np.uint8)
    png[0:16, 8:24] = 255
    Image.fromarray(png).save(tmp_path / "m.png")
    r2 = _run("occlusion", seg_onnx, photo, "--class", "1", "--mask", str(tmp_path / "m.png"),
              "--window", "4", "--stride", "4", "--out", str(tmp_path / "b"))
    assert r2.exit_code == 0, r2.output
    a = np.load(tmp_path / "a" / "photo_occlusion.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "photo_occlusion.npy"), a)
    r3 = _run("gradient-x-input", seg_onnx, photo, "--class", "0")
    assert r3.exit_code == 0, r3.output
    assert "gradient-x-input target 0 region" in r3.stdout


def test_cli_refuses_bad_region_options(seg_onnx, photo, tmp_path):
    r = _run("occlusion", seg_onnx, photo, "--region", "0,0,8,8")
    assert r.exit_code == 2 and "a region target is --class k" in r.stderr
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "small.png")
    r = _run("occlusion", seg_onnx, photo, "--class", "0", "--mask", str(tmp_path / "small.png"))
    assert r.exit_code == 2 and "is 8x8; the image photo.png is 32x32" in r.stderr


def test_cli_refuses_region_options_on_a_classifier(photo):
    r = CliRunner().invoke(cli, ["explain", "occlusion", model_path("tiny_cnn"), photo,
                                 "--class", "0", "--device", "cpu"])
    assert r.exit_code == 2
    errors = [line for line in r.stderr.splitlines() if not line.startswith("bbx: ")]
    assert len(errors) == 1 and "not a segmentation map (N, K, H, W)" in errors[0]


def test_ppocrv4_text_detector_region(tmp_path):
    r = CliRunner().invoke(cli, ["explain", "occlusion", str(PPOCR), "examples/cat.jpg",
                                 "--class", "0", "--region", "0,0,451,300", "--window", "160",
                                 "--stride", "160", "--device", "cpu", "--out",
                                 str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    amap = np.load(tmp_path / "o" / "cat_occlusion.npy")
    assert amap.shape == (320, 320) and np.isfinite(amap).all() and np.abs(amap).max() > 0
    region = json.loads((tmp_path / "o" / "cat_occlusion.json").read_text())["extras"]["region"]
    assert region["pixels"] > 0 and region["map_hw"] == [320, 320]
