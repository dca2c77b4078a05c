"""One tiny model per exporter idiom (tools/make_test_models.py, issue 9), through the graph path.

For each classifier idiom: the input gradient of the backward graph against central finite
differences of the model's own ONNX Runtime outputs; Grad-CAM against its closed form (every
idiom's head after the CAM layer is linear in the logits, so dy_t/dA_kij = W_kt / (h w) exactly,
and A comes from an ONNX Runtime run of the original file with the layer added as an output);
integrated-gradients completeness; and the CLI. The spatial-output net must be refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, model_path
from onnx import helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.graph import load
from blackbox_xai.graph.inspect import feature_map
from blackbox_xai.model import one_hot

IMAGE = EXAMPLES / "cat.jpg"


@dataclass(frozen=True)
class Idiom:
    name: str
    layer: str  # the default CAM layer
    layout: str  # its layout
    logits: str  # the tensor explained with score="logit"
    head: tuple[str, bool]  # the linear head's weight initializer, stored as (K, C) or not
    output: str | None = None  # --output, where the model has several
    fp16: bool = False


IDIOMS = [
    Idiom("idiom_ir3_opset7_fp16", "relu1", "NCHW", "conv10", ("fc_w", True), fp16=True),
    Idiom("idiom_tf2onnx_nhwc", "model/conv2d/Relu__7:0", "NHWC", "dense", ("fc_w", False)),
    Idiom("idiom_keras2onnx_prelu", "p_re_lu_1/add:0", "NHWC", "dense_1/BiasAdd:0",
          ("fc_w", False)),
    Idiom("idiom_torch1_flatten", "10", "NCHW", "19", ("fc.weight", True)),
    Idiom("idiom_paddle_reshape", "relu_0.tmp_0", "NCHW", "linear_0.tmp_1", ("fc_w", False)),
    Idiom("idiom_logsoftmax", "features", "NCHW", "logits", ("fc_w", False)),
    Idiom("idiom_rank0_output", "features", "NCHW", "scores", ("fc_w", False)),
    Idiom("idiom_three_outputs", "features", "NCHW", "logits", ("fc_w", False), output="logits"),
]
IDS = [i.name for i in IDIOMS]


def x_for(seed: int = 0) -> np.ndarray:
    return (0.5 * np.random.default_rng(seed).standard_normal((3, 32, 32))).astype(np.float32)


def session_with(path: str, extra: list[str]) -> tuple[ort.InferenceSession, str, bool]:
    """An ONNX Runtime session on the original file with ``extra`` tensors added as outputs;
    the input's name and whether it is NHWC."""
    m = onnx.load(path)
    elem = m.graph.input[0].type.tensor_type.elem_type
    m.graph.output.extend(helper.make_tensor_value_info(t, elem, None) for t in extra)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    dims = m.graph.input[0].type.tensor_type.shape.dim
    return sess, m.graph.input[0].name, dims[3].dim_value == 3


def forward(path: str, x: np.ndarray, tensors: list[str], fp16: bool) -> list[np.ndarray]:
    """Values of ``tensors`` for one NCHW input, computed by ONNX Runtime on the original file."""
    sess, name, nhwc = session_with(path, tensors)
    feed = (x.transpose(1, 2, 0) if nhwc else x)[None].astype(np.float16 if fp16 else np.float32)
    outs = sess.run(tensors, {name: feed})
    return [o.astype(np.float64) for o in outs]


def head_weights(path: str, idiom: Idiom) -> np.ndarray:
    """W (C, K) of the linear head after global pooling."""
    name, kc = idiom.head
    w = next(numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.name == name)
    w = w.astype(np.float64).reshape(w.shape[0], -1)
    return w.T if kc else w


@pytest.fixture(scope="module", params=IDIOMS, ids=IDS)
def idiom(request) -> Idiom:
    return request.param


@pytest.fixture(scope="module")
def model(idiom):
    return load_model(model_path(idiom.name), device="cpu", output=idiom.output)


# ---- graph inspection (layouts) ---------------------------------------------------------------
def test_default_layer_and_its_layout(idiom):
    layer = feature_map(load(model_path(idiom.name)))
    assert (layer.name, layer.layout) == (idiom.layer, idiom.layout)
    h, w = (layer.shape[2:] if layer.layout == "NCHW" else layer.shape[1:3])
    assert (h, w) == (32, 32)


def test_layers_command_shows_the_layout(run):
    r = run("layers", model_path("idiom_tf2onnx_nhwc"))
    assert r.exit_code == 0, r.output
    rows = {line[2:].split()[0]: line for line in r.output.splitlines()[1:]}
    assert rows["model/conv2d/Relu__7:0"].startswith("* ")
    assert rows["model/conv2d/Relu__7:0"].split()[2:4] == ["?x32x32x4", "NHWC"]
    assert rows["model/conv2d/Relu:0"].split()[1:3] == ["?x4x32x32", "NCHW"]


# ---- numbers through the Python API -----------------------------------------------------------
def test_scores_are_the_logits(idiom, model):
    """score="logit" (the default) explains the tensor before any final Softmax/LogSoftmax."""
    x = x_for()
    (logits,) = forward(model_path(idiom.name), x, [idiom.logits], idiom.fp16)
    np.testing.assert_allclose(model(x[None]), logits.reshape(1, -1), rtol=1e-5 if not idiom.fp16
                               else 2e-3, atol=1e-5 if not idiom.fp16 else 2e-3)


def test_input_gradient_matches_finite_differences(idiom, model):
    """<dy_t/dx, v> against (y_t(x + eps v) - y_t(x - eps v)) / 2 eps along v = g / max|g| and 5
    random directions. The nets are piecewise linear, so the error is float rounding plus the few
    ReLU kinks a step crosses: bounded relative to sum |g v| (to |<g, v>| along g itself)."""
    x = x_for()
    t = int(np.argmax(model(x[None])))
    scores, g = model.input_gradient(x[None], one_hot(1, model.num_classes, t))
    np.testing.assert_allclose(scores, model(x[None]), rtol=1e-3, atol=1e-3)
    g = g[0].astype(np.float64)
    v = np.random.default_rng(1).standard_normal((6, *x.shape))
    v[0] = g / np.abs(g).max()
    eps, tol = (1e-2, 2.5e-2) if idiom.fp16 else (1e-3, 2e-3)
    step = (eps * v).astype(np.float32)
    fd = (model(x + step)[:, t].astype(np.float64) - model(x - step)[:, t]) / (2 * eps)
    analytic = (g * v).sum(axis=(1, 2, 3))
    assert abs(analytic[0]) > 1e-2
    assert fd[0] == pytest.approx(analytic[0], rel=tol)
    bound = tol * np.abs(g * v).sum(axis=(1, 2, 3))
    assert np.all(np.abs(analytic - fd) <= bound), (analytic, fd, bound)


def test_gradcam_equals_the_closed_form(idiom, model):
    """alpha_k = mean_ij dy_t/dA_kij = W_kt / (h w) for a pooled linear head; M = ReLU(sum alpha A)."""
    path = model_path(idiom.name)
    x = x_for()
    t = int(np.argmax(model(x[None])))
    exp = explain(model, x, "gradcam", target=t)
    assert (exp.extras["layer"], exp.extras["layout"]) == (idiom.layer, idiom.layout)
    (act,) = forward(path, x, [idiom.layer], idiom.fp16)
    act = act[0].transpose(2, 0, 1) if idiom.layout == "NHWC" else act[0]
    alpha = head_weights(path, idiom)[:, t] / (32 * 32)
    tol = 2e-2 if idiom.fp16 else 1e-4
    np.testing.assert_allclose(exp.extras["weights"], alpha, rtol=tol, atol=tol * np.abs(alpha).max())
    expected = np.maximum(np.tensordot(alpha, act, axes=1), 0)
    assert expected.max() > 0
    np.testing.assert_allclose(exp.extras["cam"], expected, rtol=tol, atol=tol * expected.max())
    np.testing.assert_allclose(exp.map, expected, rtol=tol, atol=tol * expected.max())


def test_integrated_gradients_completeness(idiom, model):
    """sum(IG) = y_t(x) - y_t(0) up to the midpoint rule's error on a piecewise-linear path."""
    x = x_for()
    t = int(np.argmax(model(x[None])))
    exp = explain(model, x, "integrated-gradients", target=t, steps=64)
    delta = float(model(x[None])[0, t] - model(np.zeros_like(x)[None])[0, t])
    assert exp.extras["score_difference"] == pytest.approx(delta, rel=1e-5, abs=1e-5)
    tol = 0.05 if idiom.fp16 else 0.01
    assert abs(delta) > 1e-2
    assert float(exp.extras["attributions"].sum()) == pytest.approx(delta, rel=tol, abs=1e-3)
    np.testing.assert_allclose(exp.map, exp.extras["attributions"].sum(axis=0), rtol=1e-6, atol=1e-7)


# ---- the command line -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "integrated-gradients"])
def test_cli_explains_every_classifier_idiom(run, tmp_path, idiom, method):
    extra = ["--output", idiom.output] if idiom.output else []
    r = run("explain", method, model_path(idiom.name), IMAGE, "--out", tmp_path, *extra)
    assert r.exit_code == 0, r.output
    m = np.load(tmp_path / f"cat_{method}.npy")
    assert m.shape == (32, 32) and np.isfinite(m).all() and np.abs(m).max() > 0


def test_cli_needs_output_when_the_model_has_several(run, tmp_path):
    r = run("explain", "gradcam", model_path("idiom_three_outputs"), IMAGE, "--out", tmp_path)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and "--output" in errors[0] and "output=" not in errors[0]
    assert all(name in errors[0] for name in ("logits", "probs", "features"))
    assert not any(tmp_path.iterdir())


def test_cli_logit_score_explains_the_tensor_before_logsoftmax(run, tmp_path):
    """With --score logit, Grad-CAM's weights are W_t / (h w), so on a 32 x 32 layer (no
    resampling) its map times h w is ReLU of the CAM map sum_k W_kt A_k; with --score logprob
    the weights are (W_t - sum_j p_j W_j) / (h w) and the identity fails."""
    path = model_path("idiom_logsoftmax")
    maps = {}
    for method, score in [("gradcam", "logit"), ("cam", "logit"), ("gradcam", "logprob")]:
        out = tmp_path / f"{method}_{score}"
        r = run("explain", method, path, IMAGE, "--score", score, "--out", out)
        assert r.exit_code == 0, r.output
        maps[method, score] = np.load(out / f"cat_{method}.npy")
        manifest = json.loads((out / f"cat_{method}.json").read_text())
        if score == "logit":
            assert "logits" in json.dumps(manifest)  # the manifest names the tensor explained
    cam = np.maximum(maps["cam", "logit"], 0)
    assert cam.max() > 0
    np.testing.assert_allclose(maps["gradcam", "logit"] * 32 * 32, cam, rtol=1e-4,
                               atol=1e-5 * cam.max())
    assert np.abs(maps["gradcam", "logprob"] * 32 * 32 - cam).max() > 1e-2 * cam.max()


@pytest.mark.parametrize("command", [["predict"], ["explain", "occlusion"]])
def test_cli_refuses_a_spatial_output(run, tmp_path, command):
    """An output (N, 1, H, W) is pixel scores, not class scores: exit 2, one line."""
    out = ["--out", tmp_path] if command[0] == "explain" else []
    r = run(*command, model_path("idiom_spatial_output"), IMAGE, *out)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and "mask" in errors[0] and "class scores" in errors[0]
    assert not any(tmp_path.iterdir())


def test_cam_weights_are_the_linear_head(idiom, model):
    """CAM reads the head after the pooling, whatever form it takes: Gemm, MatMul, or the
    (N, K, 1, 1) 1x1 convolution of Caffe2-era exports."""
    x = x_for(3)
    t = int(np.argmax(model(x[None])[0]))
    weights = explain(model, x, "cam", target=t).extras["weights"]
    np.testing.assert_allclose(weights, head_weights(model_path(idiom.name), idiom)[:, t],
                               rtol=1e-3 if idiom.fp16 else 1e-6)
