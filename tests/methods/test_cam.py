"""CAM family: exact formulas on the tiny CNN (Conv-BN-ReLU-GAP-Gemm), whose activation we
recompute in numpy and whose head gradient is analytic: dy_c/dA_kij = W_ck / (h w)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, SHIPPED, model_path
from onnx import helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.graph.inspect import NotAFeatureMapError
from blackbox_xai.methods.cam import gradcampp_weights
from blackbox_xai.preprocess import Preprocessing

TARGET = 2


@pytest.fixture(scope="module")
def tiny():
    return load_model(model_path("tiny_cnn"))


@pytest.fixture(scope="module")
def params():
    return {i.name: numpy_helper.to_array(i).astype(np.float64)
            for i in onnx.load(model_path("tiny_cnn")).graph.initializer}


def features_numpy(x: np.ndarray, p: dict) -> np.ndarray:
    """Conv 3x3 pad 1 -> BatchNorm -> ReLU, in float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # C,H,W,3,3
    conv = np.einsum("chwij,kcij->khw", windows, p["conv.w"]) + p["conv.b"][:, None, None]
    bn = (conv - p["bn.mean"][:, None, None]) / np.sqrt(p["bn.var"][:, None, None] + 1e-5)
    return np.maximum(bn * p["bn.scale"][:, None, None] + p["bn.shift"][:, None, None], 0)


@pytest.fixture(scope="module")
def x_act_grad(params):
    x = np.random.default_rng(3).standard_normal((3, 32, 32)).astype(np.float32)
    act = features_numpy(x, params)
    grad = np.broadcast_to((params["fc.w"][TARGET] / (32 * 32))[:, None, None], act.shape)
    return x, act, grad


def relu(a):
    return np.maximum(a, 0)


def test_gradcam_equals_closed_form(tiny, x_act_grad):
    x, act, g = x_act_grad
    exp = explain(tiny, x, "gradcam", target=TARGET)
    expected = relu(np.tensordot(g.mean(axis=(1, 2)), act, axes=1))
    assert exp.extras["layer"] == "features" and exp.extras["layout"] == "NCHW"
    np.testing.assert_allclose(exp.extras["cam"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(exp.map, expected, rtol=1e-4, atol=1e-6)  # 32 -> 32: identity
    assert exp.n_queries == 2  # target resolution + one forward+backward


def test_cam_and_gradcam_are_proportional_for_gap_linear_head(tiny, x_act_grad, params):
    x = x_act_grad[0]
    c = explain(tiny, x, "cam", target=TARGET)
    gc = explain(tiny, x, "gradcam", target=TARGET)
    np.testing.assert_allclose(c.extras["weights"], params["fc.w"][TARGET], rtol=1e-6)
    np.testing.assert_allclose(gc.extras["cam"], relu(c.extras["cam"]) / (32 * 32), rtol=1e-4, atol=1e-7)


def test_gradcampp_xgradcam_layercam_formulas(tiny, x_act_grad):
    x, act, g = x_act_grad
    alpha = g**2 / (2 * g**2 + (act * g**3).sum(axis=(1, 2), keepdims=True))
    w_pp = (alpha * relu(g)).sum(axis=(1, 2))
    np.testing.assert_allclose(explain(tiny, x, "gradcampp", target=TARGET).extras["cam"],
                               relu(np.tensordot(w_pp, act, axes=1)), rtol=1e-4, atol=1e-7)
    w_x = (act / act.sum(axis=(1, 2), keepdims=True) * g).sum(axis=(1, 2))
    np.testing.assert_allclose(explain(tiny, x, "xgradcam", target=TARGET).extras["cam"],
                               relu(np.tensordot(w_x, act, axes=1)), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(explain(tiny, x, "layercam", target=TARGET).extras["cam"],
                               relu((relu(g) * act).sum(axis=0)), rtol=1e-4, atol=1e-7)


def test_gradcampp_weights_zero_where_gradient_is_zero():
    act = np.ones((2, 2, 2), np.float32)
    g = np.zeros((2, 2, 2), np.float32)
    g[0] = 1.0
    w = gradcampp_weights(act, g, g**2, g**3)
    assert w[1] == 0 and w[0] == pytest.approx(4 * 1 / (2 + 4))


def test_smooth_gradcampp_subsets(tiny, x_act_grad):
    x, act, g = x_act_grad
    base = explain(tiny, x, "gradcampp", target=TARGET)
    smooth0 = explain(tiny, x, "smooth-gradcampp", target=TARGET, n_samples=0)
    np.testing.assert_allclose(smooth0.map, base.map, rtol=1e-6, atol=1e-8)
    # the head is linear in A, so the gradient does not depend on the noise: same map for any n
    smooth = explain(tiny, x, "smooth-gradcampp", target=TARGET, n_samples=3, seed=1)
    np.testing.assert_allclose(smooth.map, base.map, rtol=1e-4, atol=1e-7)
    assert smooth.n_queries == 1 + 4
    sub = explain(tiny, x, "smooth-gradcampp", target=TARGET, n_samples=0, filters="1,4")
    keep = np.zeros((8, 1, 1))
    keep[[1, 4]] = 1
    a = act * keep
    w = gradcampp_weights(a, g, g**2, g**3)
    np.testing.assert_allclose(sub.extras["cam"], relu(np.tensordot(w, a, axes=1)), rtol=1e-4, atol=1e-7)
    region = explain(tiny, x, "smooth-gradcampp", target=TARGET, n_samples=0, neurons="8,4,20,16")
    inside = np.zeros((32, 32), bool)
    inside[4:16, 8:20] = True
    assert np.all(region.extras["cam"][~inside] == 0)
    a = act * inside
    w = gradcampp_weights(a, g, g**2, g**3)
    np.testing.assert_allclose(region.extras["cam"], relu(np.tensordot(w, a, axes=1)), rtol=1e-4, atol=1e-7)


def test_scorecam_spends_k_batched_queries(x_act_grad):
    model = load_model(model_path("tiny_cnn"), batch_size=3)
    x, act, _ = x_act_grad
    exp = explain(model, x, "scorecam", target=TARGET)
    assert exp.n_queries == 1 + 1 + 8  # target, the exposed forward, K = 8 masked inputs
    lo = act.min(axis=(1, 2), keepdims=True)
    h = (act - lo) / (act.max(axis=(1, 2), keepdims=True) - lo)
    logits = model(x[None] * h[:, None].astype(np.float32))
    p = np.exp(logits - logits.max(1, keepdims=True))
    s = (p / p.sum(1, keepdims=True))[:, TARGET]
    np.testing.assert_allclose(exp.extras["weights"], s, rtol=1e-4)


def test_ablationcam_closed_form(tiny, x_act_grad, params):
    x, act, _ = x_act_grad
    exp = explain(tiny, x, "ablationcam", target=TARGET)
    y = float(tiny(x[None])[0, TARGET])
    w = params["fc.w"][TARGET] * act.mean(axis=(1, 2)) / y  # y - y_k = W_ck mean(A_k)
    np.testing.assert_allclose(exp.extras["weights"], w, rtol=1e-4, atol=1e-6)


def test_eigencam_is_first_principal_component(tiny, x_act_grad):
    x, act, _ = x_act_grad
    a = act.reshape(8, -1).T
    c = a - a.mean(axis=0)
    v = np.linalg.eigh(c.T @ c)[1][:, -1]
    proj = c @ v
    proj *= np.sign(np.dot(proj, a.sum(1) - a.sum(1).mean()))
    np.testing.assert_allclose(explain(tiny, x, "eigencam").extras["cam"],
                               relu(proj).reshape(32, 32), rtol=1e-3, atol=1e-5)


def test_cam_rejects_head_that_is_not_gap_linear(tiny, x_act_grad):
    from blackbox_xai.errors import BlackboxError

    with pytest.raises(BlackboxError, match="global average pooling"):
        explain(tiny, x_act_grad[0], "cam", layer="conv")



# ---- NHWC feature maps (tf2onnx / keras2onnx heads) -------------------------------------------
@pytest.fixture(scope="module")
def tiny_nhwc_head(tmp_path_factory):
    """tiny_cnn with a tf2onnx-style head: features -> Transpose(0, 2, 3, 1) 'features_nhwc' ->
    ReduceMean(axes 1, 2) -> MatMul(fc.w^T) -> Add(fc.b). Same logits as tiny_cnn; its default
    CAM layer is the NHWC transpose of tiny_cnn's 'features'."""
    m = onnx.load(model_path("tiny_cnn"))
    fc = next(i for i in m.graph.initializer if i.name == "fc.w")
    fc_t = numpy_helper.from_array(numpy_helper.to_array(fc).T.copy(), "fc.wT")
    nodes = [n for n in m.graph.node if n.op_type not in ("GlobalAveragePool", "Flatten", "Gemm")]
    nodes += [helper.make_node("Transpose", ["features"], ["features_nhwc"], perm=[0, 2, 3, 1]),
              helper.make_node("ReduceMean", ["features_nhwc"], ["pooled"], axes=[1, 2], keepdims=0),
              helper.make_node("MatMul", ["pooled", "fc.wT"], ["mm"]),
              helper.make_node("Add", ["mm", "fc.b"], ["logits"])]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.append(fc_t)
    onnx.checker.check_model(m, full_check=True)
    path = tmp_path_factory.mktemp("nhwc") / "tiny_nhwc_head.onnx"
    onnx.save(m, path)
    return load_model(path)


def test_gradcam_on_an_nhwc_layer_equals_the_closed_form(tiny_nhwc_head, x_act_grad):
    x, act, g = x_act_grad
    exp = explain(tiny_nhwc_head, x, "gradcam", target=TARGET)
    assert (exp.extras["layer"], exp.extras["layout"]) == ("features_nhwc", "NHWC")
    np.testing.assert_allclose(exp.extras["weights"], g.mean(axis=(1, 2)), rtol=1e-4)
    np.testing.assert_allclose(exp.extras["cam"], relu(np.tensordot(g.mean(axis=(1, 2)), act, axes=1)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method, options", [
    ("gradcam", {}), ("gradcampp", {}), ("xgradcam", {}), ("layercam", {}), ("cam", {}),
    ("smooth-gradcampp", {"n_samples": 2, "filters": "1,4,6"}), ("scorecam", {}),
    ("ablationcam", {}), ("eigencam", {})])
def test_every_cam_on_the_nhwc_layer_equals_the_nchw_one(tiny, tiny_nhwc_head, x_act_grad,
                                                         method, options):
    """The same activations and head, one model reading them in NHWC: identical CAMs, so no
    axis is misread (a (C, h, w) reading of (h, w, C) would give a 32 x 8 map of stripes)."""
    x = x_act_grad[0]
    nhwc = explain(tiny_nhwc_head, x, method, target=TARGET, seed=4, **options)
    nchw = explain(tiny, x, method, target=TARGET, seed=4, layer="features", **options)
    assert nhwc.extras["layout"] == "NHWC" and nchw.extras["layout"] == "NCHW"
    assert nhwc.extras["cam"].shape == (32, 32)
    np.testing.assert_allclose(nhwc.extras["cam"], nchw.extras["cam"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(nhwc.map, nchw.map, rtol=1e-4, atol=1e-6)
    assert np.abs(nchw.map).max() > 0


@pytest.mark.parametrize("method", ["gradcam", "smooth-gradcampp", "cam", "scorecam",
                                    "ablationcam", "eigencam"])
@pytest.mark.parametrize("layer, reason", [("logits", "is 2-D (Nx5)"),
                                           ("pooled", "(Nx8x1x1, NCHW) has no spatial extent")])
def test_a_layer_that_is_not_a_feature_map_is_refused(tiny, x_act_grad, method, layer, reason):
    before = tiny.n_queries
    with pytest.raises(NotAFeatureMapError) as e:
        explain(tiny, x_act_grad[0], method, target=TARGET, layer=layer)
    message = str(e.value)
    assert reason in message and "\n" not in message
    assert message.endswith("CAM layers: features (NCHW Nx8x32x32), bn (NCHW Nx8x32x32), "
                            "conv (NCHW Nx8x32x32)")
    assert tiny.n_queries - before == 1  # only the target's forward pass: no map computed


def test_cli_refuses_a_layer_that_is_not_a_feature_map(run, tmp_path):
    r = run("explain", "gradcam", model_path("tiny_cnn"), EXAMPLES / "cat.jpg", "--layer", "logits",
            "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if "logits" in line]
    assert len(errors) == 1 and "not a 4-D feature map" in errors[0] and "features (NCHW" in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("photo", ["cat.jpg", "coffee.jpg"])
def test_gradcam_on_shipped_model_points_at_the_object(photo):
    model = load_model(SHIPPED)
    x = Preprocessing.for_model(SHIPPED, (224, 224)).prepare(EXAMPLES / photo).tensor
    info = json.loads((EXAMPLES / "boxes.json").read_text())[photo]
    exp = explain(model, x, "gradcam")
    assert exp.target in ((281, 282, 285) if photo == "cat.jpg" else (967,))
    x0, y0, x1, y1 = info.get("face_box", info["box"])
    y, x_ = np.unravel_index(np.argmax(exp.map), exp.map.shape)
    assert x0 <= x_ < x1 and y0 <= y < y1
