"""Gradient and CAM methods on a Detection: the raw (pre-NMS) head entry at the matched anchor,
on the committed tiny detectors (tools/make_test_models.py tiny_yolo), whose anchor a = 8 i + j
reads only the 4 x 4 pixels of its own box (cell (i, j)); closed forms in numpy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import model_path
from onnx import numpy_helper
from PIL import Image

from blackbox_xai import Detection, explain, load_model
from blackbox_xai.cli import cli
from blackbox_xai.errors import BlackboxError
from blackbox_xai.model import one_hot
from blackbox_xai.targets import DetectionRawScore, Detector

LAYOUTS = ("yolov8", "yolov5", "boxes")
CELL, GRID = 4, 8


def weights(layout: str) -> dict[str, np.ndarray]:
    proto = onnx.load(model_path(f"tiny_{layout}"))
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def features(w: dict, x: np.ndarray) -> np.ndarray:
    """The 'features' layer (8, 8, 8): ReLU of the 4 x 4, stride-4 conv of x (3, 32, 32)."""
    patches = x.reshape(3, GRID, CELL, GRID, CELL).transpose(1, 3, 0, 2, 4).reshape(GRID, GRID, -1)
    conv = patches @ w["conv_w"].reshape(len(w["conv_w"]), -1).T + w["conv_b"]
    return np.maximum(conv, 0).transpose(2, 0, 1).astype(np.float64)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def raw_score(layout: str, w: dict, x: np.ndarray, anchor: int, k: int) -> float:
    """The detection's score in numpy: class k's sigmoid at the anchor, times the objectness
    for YOLOv5."""
    a = features(w, x)[:, anchor // GRID, anchor % GRID]
    cls = sigmoid(w["cls_w"][k, :, 0, 0] @ a + w["cls_b"][k])
    return cls * (sigmoid(w["obj_w"][0, :, 0, 0] @ a) if layout == "yolov5" else 1.0)


def score_gradient_wrt_features(layout: str, w: dict, x: np.ndarray, anchor: int, k: int
                                ) -> np.ndarray:
    """d score / d features (8, 8, 8): nonzero only at the anchor's cell (product rule for
    YOLOv5's objectness x class)."""
    i, j = divmod(anchor, GRID)
    a = features(w, x)[:, i, j]
    cls = sigmoid(w["cls_w"][k, :, 0, 0] @ a + w["cls_b"][k])
    g_cls = cls * (1 - cls) * w["cls_w"][k, :, 0, 0]
    if layout == "yolov5":
        obj = sigmoid(w["obj_w"][0, :, 0, 0] @ a)
        g = obj * g_cls + cls * obj * (1 - obj) * w["obj_w"][0, :, 0, 0]
    else:
        g = g_cls
    out = np.zeros((len(a), GRID, GRID))
    out[:, i, j] = g
    return out


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (3, 32, 32)).astype(np.float32)


def first_detection(model, x) -> Detection:
    (dets,) = Detector(model).detect(x[None], conf=0.25)
    return dets[0]


def box_mask(d: Detection) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in d.box)
    m = np.zeros((32, 32), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("layout", LAYOUTS)
def test_input_gradient_matches_finite_differences_of_the_raw_score(layout, x):
    model = load_model(model_path(f"tiny_{layout}"), device="cpu", task="detect")
    d = first_detection(model, x)
    before = model.n_queries
    scorer = DetectionRawScore(Detector(model), d, x)
    assert model.n_queries - before == 1  # one forward pass finds the anchor and its entries
    i, j = divmod(scorer.anchor, GRID)
    assert d.box == (CELL * j, CELL * i, CELL * j + 4, CELL * i + 4)  # the anchor that made it
    w = weights(layout)
    view = scorer.view()
    assert view is scorer.view()  # built once per (output, entries)
    scores, grad = view.input_gradient(x[None], one_hot(1, 1, 0))
    assert scores[0, 0] == pytest.approx(raw_score(layout, w, x, scorer.anchor, d.label), rel=1e-5)
    assert scores[0, 0] == pytest.approx(d.score, rel=1e-5)  # the confidence it reported
    rng = np.random.default_rng(1)
    inside = np.argwhere(box_mask(d))
    picks = [(c, *inside[rng.integers(len(inside))]) for c in range(3)] + [(0, 0, 0), (2, 31, 5)]
    eps = 1e-3
    for c, r, q in picks:
        up, down = x.astype(np.float64), x.astype(np.float64)
        up[c, r, q] += eps
        down[c, r, q] -= eps
        fd = (raw_score(layout, w, up, scorer.anchor, d.label)
              - raw_score(layout, w, down, scorer.anchor, d.label)) / (2 * eps)
        assert grad[0, c, r, q] == pytest.approx(fd, rel=1e-3, abs=1e-6), (c, r, q)
    assert np.abs(grad[0][:, ~box_mask(d)]).max() == 0
    assert np.abs(grad[0][:, box_mask(d)]).min() > 0


@pytest.mark.parametrize("method", ["saliency", "gradient-x-input", "integrated-gradients",
                                    "smoothgrad", "layercam"])
def test_gradient_maps_are_inside_the_detection_box(method, x):
    model = load_model(model_path("tiny_yolov8"), device="cpu", task="detect")
    d = first_detection(model, x)
    exp = explain(model, x, method, target=d, seed=0)
    if method == "layercam":  # the layer map: only the anchor's cell is nonzero
        i, j = divmod(exp.extras["detection"]["anchor"], GRID)
        cam = exp.extras["cam"].copy()
        assert cam[i, j] > 0
        cam[i, j] = 0
        assert np.abs(cam).max() == 0
        return
    m = np.abs(exp.map)
    assert m[box_mask(d)].min() > 0 and m[~box_mask(d)].max() == 0, method


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcam_matches_numpy_closed_form(layout, x):
    """Grad-CAM of the detection: alpha_c = mean_ij dS/dA_cij, cam = ReLU(sum_c alpha_c A_c);
    dS/dA is the anchor's cell only, so alpha_c = dS/dA_c(i, j) / 64."""
    model = load_model(model_path(f"tiny_{layout}"), device="cpu", task="detect")
    d = first_detection(model, x)
    exp = explain(model, x, "gradcam", target=d, layer="features")
    anchor = exp.extras["detection"]["anchor"]
    w = weights(layout)
    alpha = score_gradient_wrt_features(layout, w, x, anchor, d.label).mean(axis=(1, 2))
    cam = np.maximum(np.tensordot(alpha, features(w, x), 1), 0)
    np.testing.assert_allclose(exp.extras["weights"], alpha, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(exp.extras["cam"], cam, rtol=1e-4, atol=1e-7)
    assert exp.target == d.label and exp.score == pytest.approx(d.score, rel=1e-5)
    rec = exp.extras["detection"]
    assert rec["decoder"]["kind"] == layout and rec["raw_entries"]
    assert "objectness x class" in rec["score_function"] if layout == "yolov5" else True


def test_wrong_class_and_plain_functions_refuse(x):
    model = load_model(model_path("tiny_yolov8"), device="cpu", task="detect")
    with pytest.raises(BlackboxError, match="has 2 classes"):
        explain(model, x, "saliency", target=Detection((0, 0, 4, 4), 7))
    with pytest.raises(BlackboxError, match="no proposal of class 0 overlaps"):
        explain(model, x, "saliency", target=Detection((40, 40, 50, 50), 0))
    raw = model.raw_outputs
    with pytest.raises(BlackboxError, match="through the model's graph"):
        explain(lambda t: raw(t)[0], x, "gradcam", target=Detection((0, 0, 4, 4), 0))
    # NMS inside the graph: no fixed proposal to differentiate (checked on the graph's ops)
    model.proto.graph.node.append(onnx.helper.make_node(
        "NonMaxSuppression", ["boxes", "scores"], ["selected"]))
    with pytest.raises(BlackboxError, match="runs NMS inside its graph"):
        explain(model, x, "saliency", target=Detection((0, 0, 4, 4), 0))


def test_cli_explains_a_detection_with_gradcam(tmp_path):
    pixels = (np.random.default_rng(0).uniform(0, 1, (32, 32, 3)) * 255).astype(np.uint8)
    image = tmp_path / "noise.png"
    Image.fromarray(pixels).save(image)
    args = [model_path("tiny_yolov8"), str(image), "--device", "cpu", "--scale", "255",
            "--mean", "0", "--std", "1"]
    r = CliRunner().invoke(cli, ["explain", "gradcam", *args, "--detection", "0",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "gradcam target" in r.stdout and " box " in r.stdout
    manifest = json.loads((tmp_path / "out" / "noise_gradcam.json").read_text())
    assert manifest["extras"]["detection"]["raw_output"] == "output0"


def test_scorecam_weights_are_the_raw_scores_of_the_masked_inputs(x):
    """Score-CAM: s_k = S(x * H_k), H_k the min-max normalised, upsampled channel k; on the
    one-class view S is the raw score itself (not a softmax over one class, which is 1)."""
    from blackbox_xai.resample import upsample

    model = load_model(model_path("tiny_yolov5"), device="cpu", task="detect")
    d = first_detection(model, x)
    exp = explain(model, x, "scorecam", target=d, layer="features")
    anchor = exp.extras["detection"]["anchor"]
    w = weights("yolov5")
    act = features(w, x)
    lo, hi = act.min(axis=(1, 2), keepdims=True), act.max(axis=(1, 2), keepdims=True)
    norm = np.divide(act - lo, hi - lo, out=np.zeros_like(act), where=hi > lo)
    masks = upsample(norm, (32, 32))
    expected = [raw_score("yolov5", w, x * m[None], anchor, d.label) for m in masks]
    np.testing.assert_allclose(exp.extras["weights"], expected, rtol=1e-4, atol=1e-7)
    assert np.ptp(expected) > 0.01


def test_default_cam_layer_is_the_branching_map_with_a_gradient(x):
    """tiny_yolov5's 'features' feeds the class and the objectness convs (it branches, and the
    score reads it): the default layer of a detection's CAM, the same map as layer='features'."""
    model = load_model(model_path("tiny_yolov5"), device="cpu", task="detect")
    d = first_detection(model, x)
    default = explain(model, x, "gradcam", target=d)
    assert default.extras["layer"] == "features"
    np.testing.assert_allclose(default.map, explain(model, x, "gradcam", target=d,
                                                    layer="features").map)


def test_cli_evaluate_scores_a_detection_as_the_library_does(tmp_path):
    """``bbx evaluate --detection 0``: per method, the deletion / insertion AUCs of the
    detection's matched-score curves and the pointing game against the detection's own box,
    equal to the library's numbers for the same explanation."""
    from blackbox_xai.metrics import deletion_insertion, energy_pointing, pointing_hit

    pixels = (np.random.default_rng(0).uniform(0, 1, (32, 32, 3)) * 255).astype(np.uint8)
    image = tmp_path / "noise.png"
    Image.fromarray(pixels).save(image)
    args = [model_path("tiny_yolov8"), str(image), "--device", "cpu", "--scale", "255",
            "--mean", "0", "--std", "1"]
    r = CliRunner().invoke(cli, ["evaluate", *args, "--detection", "0", "--methods",
                                 "gradient-x-input,occlusion", "-o", "occlusion.window=8",
                                 "-o", "occlusion.stride=8", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    rows = {row["method"]: row for row in json.loads(
        (tmp_path / "out" / "metrics.json").read_text())["rows"]}
    model = load_model(model_path("tiny_yolov8"), device="cpu", task="detect")
    x = pixels.transpose(2, 0, 1).astype(np.float32) / 255
    det = first_detection(model, x)
    for method, opts in (("gradient-x-input", {}), ("occlusion", {"window": 8, "stride": 8})):
        exp = explain(model, x, method, target=det, **opts)
        curves = deletion_insertion(model, x, exp.map, det)
        row = rows[method]
        assert row["deletion_auc"] == pytest.approx(curves.deletion_auc, abs=1e-6)
        assert row["insertion_auc"] == pytest.approx(curves.insertion_auc, abs=1e-6)
        assert row["pointing_hit"] == pointing_hit(exp.map, det)
        assert row["energy_pointing"] == pytest.approx(energy_pointing(exp.map, det), abs=1e-6)
        assert (row["target"], row["prob"]) == (det.label, pytest.approx(det.score, abs=1e-6))
    bad = CliRunner().invoke(cli, ["evaluate", *args, "--detection", "0", "--target", "label"])
    assert bad.exit_code == 2 and "--detection" in bad.output
