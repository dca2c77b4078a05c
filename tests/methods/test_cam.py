"""CAM family: exact formulas against numpy.

On the tiny CNN (Conv-BN-ReLU-GAP-Gemm) the activation is recomputed in numpy and the head
gradient is the constant dy_c/dA_kij = W_ck / (h w). On tiny_nonlinear (Conv-ReLU 'act1' -
Conv-ReLU - GAP - Gemm) the head after 'act1' is not linear: dy/dA varies over space and with
the input; it is computed here by a numpy forward of the head and backpropagation written out
(checked against central finite differences), and every CAM is checked against METHODS.md's
formula (or definition, for Score-CAM, Ablation-CAM, Eigen-CAM) evaluated on those numbers."""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, SHIPPED, TEST_MODELS, model_path
from onnx import helper, numpy_helper

from blackbox_xai import METHODS, explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.graph.inspect import NotAFeatureMapError
from blackbox_xai.methods import get_method
from blackbox_xai.methods.cam import CamInput, Weights, gradcampp_weights, register_cam
from blackbox_xai.preprocess import Preprocessing
from blackbox_xai.registry import OptionError, Range

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


def gradcampp_channel_weights(act: np.ndarray, g1: np.ndarray, g2: np.ndarray, g3: np.ndarray
                              ) -> np.ndarray:
    """METHODS.md, channel by channel: a_kij = g2 / (2 g2 + sum_ab A_kab g3_kab) (0 where
    g2 = 0), w_k = sum_ij a_kij ReLU(g1_kij); g1, g2, g3 the (averaged) gradient, its square
    and its cube."""
    w = np.zeros(len(act))
    for k, (a_k, d1, d2, d3) in enumerate(zip(act, g1, g2, g3)):
        s = float(np.sum(a_k * d3))
        alpha = np.where(d2 != 0, d2 / np.where(d2 != 0, 2 * d2 + s, 1), 0)
        w[k] = np.sum(alpha * relu(d1))
    return w


def gradcampp_map(act: np.ndarray, g1: np.ndarray, g2: np.ndarray, g3: np.ndarray) -> np.ndarray:
    """M = ReLU(sum_k w_k A_k) with the Grad-CAM++ weights above."""
    return relu(np.einsum("k,kij->ij", gradcampp_channel_weights(act, g1, g2, g3), act))


def test_gradcam_equals_closed_form(tiny, x_act_grad):
    x, act, g = x_act_grad
    exp = explain(tiny, x, "gradcam", target=TARGET)
    expected = relu(np.tensordot(g.mean(axis=(1, 2)), act, axes=1))
    assert exp.extras["layer"] == "features" and exp.extras["layout"] == "NCHW"
    np.testing.assert_allclose(exp.extras["cam"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(exp.map, expected, rtol=1e-4, atol=1e-6)  # 32 -> 32: identity
    assert exp.n_queries == 1  # one forward+backward pass, the top-1 seeded in the graph


def test_cam_and_gradcam_are_proportional_for_gap_linear_head(tiny, x_act_grad, params):
    x = x_act_grad[0]
    c = explain(tiny, x, "cam", target=TARGET)
    gc = explain(tiny, x, "gradcam", target=TARGET)
    np.testing.assert_allclose(c.extras["weights"], params["fc.w"][TARGET], rtol=1e-6)
    np.testing.assert_allclose(gc.extras["cam"], relu(c.extras["cam"]) / (32 * 32), rtol=1e-4, atol=1e-7)


def test_gradcampp_xgradcam_layercam_formulas(tiny, x_act_grad):
    x, act, g = x_act_grad
    np.testing.assert_allclose(explain(tiny, x, "gradcampp", target=TARGET).extras["cam"],
                               gradcampp_map(act, g, g**2, g**3), rtol=1e-4, atol=1e-7)
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
    np.testing.assert_allclose(sub.extras["cam"], gradcampp_map(a, g, g**2, g**3), rtol=1e-4, atol=1e-7)
    region = explain(tiny, x, "smooth-gradcampp", target=TARGET, n_samples=0, neurons="8,4,20,16")
    inside = np.zeros((32, 32), bool)
    inside[4:16, 8:20] = True
    assert np.all(region.extras["cam"][~inside] == 0)
    a = act * inside
    np.testing.assert_allclose(region.extras["cam"], gradcampp_map(a, g, g**2, g**3), rtol=1e-4, atol=1e-7)
    whole = explain(tiny, x, "smooth-gradcampp", target=TARGET, n_samples=0, neurons="0,0,32,32")
    np.testing.assert_array_equal(whole.map, base.map)


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
    # batched forms refuse before any pass; the others after the target's forward pass
    assert tiny.n_queries - before == (0 if get_method(method).batch_fn is not None else 1)


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


# ---- a non-linear head: tiny_nonlinear, CAM layer 'act1' ----------------------------------------
NL_LAYER, NL_TARGET = "act1", 2


@pytest.fixture(scope="module")
def nonlinear():
    return load_model(model_path("tiny_nonlinear"))


@pytest.fixture(scope="module")
def nl_params():
    return {i.name: numpy_helper.to_array(i).astype(np.float64)
            for i in onnx.load(model_path("tiny_nonlinear")).graph.initializer}


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv 3x3, pad 1, stride 1 (cross-correlation, as ONNX): (C, H, W) -> (K, H, W)."""
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1))), (3, 3),
                                                       axis=(1, 2))
    return np.einsum("chwij,kcij->khw", windows, w) + b[:, None, None]


def conv3x3_adjoint(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """d/dA of sum(g * conv3x3(A, w, b)): dA_cij = sum_kab w_kcab g_k(i+1-a)(j+1-b), g zero
    outside; written as index arithmetic, independent of :func:`conv3x3`."""
    _, h, wd = g.shape
    out = np.zeros((w.shape[1], h, wd))
    gp = np.pad(g, ((0, 0), (1, 1), (1, 1)))
    for a in range(3):
        for b in range(3):
            # g_k(i+1-a)(j+1-b) = gp_k(i+2-a)(j+2-b)
            shifted = gp[:, 2 - a:2 - a + h, 2 - b:2 - b + wd]
            out += np.einsum("kc,kij->cij", w[:, :, a, b], shifted)
    return out


def nl_act1(x: np.ndarray, p: dict) -> np.ndarray:
    return relu(conv3x3(x.astype(np.float64), p["conv1.w"], p["conv1.b"]))


def nl_head(a: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Logits (K,) of the head on act1 ``a`` (k, h, w), and the pre-ReLU conv2 output."""
    z2 = conv3x3(a, p["conv2.w"], p["conv2.b"])
    return p["fc.w"] @ relu(z2).mean(axis=(1, 2)) + p["fc.b"], z2


def nl_head_gradient(a: np.ndarray, p: dict, target: int) -> np.ndarray:
    """dy_target/dA by backpropagation: Gemm -> mean -> ReLU mask -> conv2 adjoint."""
    _, z2 = nl_head(a, p)
    dz2 = (z2 > 0) * p["fc.w"][target][:, None, None] / (z2.shape[1] * z2.shape[2])
    return conv3x3_adjoint(dz2, p["conv2.w"])


def kink_margin(a: np.ndarray, p: dict) -> float:
    """How far conv2's output is from the ReLU's kink: float32 rounding must not flip a mask."""
    return float(np.abs(nl_head(a, p)[1]).min())


@pytest.fixture(scope="module")
def nl_case(nl_params):
    x = np.random.default_rng(2).standard_normal((3, 32, 32)).astype(np.float32)
    a = nl_act1(x, nl_params)
    assert kink_margin(a, nl_params) > 1e-5
    return x, a, nl_head_gradient(a, nl_params, NL_TARGET)


def test_nonlinear_model_and_numpy_agree_and_the_gradient_varies(nonlinear, nl_params, nl_case):
    x, a, g = nl_case
    y, _ = nl_head(a, nl_params)
    np.testing.assert_allclose(nonlinear(x[None])[0], y, rtol=1e-5, atol=1e-5)
    # the backpropagation written above against central differences of the numpy head
    rng, eps = np.random.default_rng(0), 1e-6
    for c, i, j in zip(rng.integers(0, 6, 25), rng.integers(0, 32, 25), rng.integers(0, 32, 25)):
        up, down = a.copy(), a.copy()
        up[c, i, j] += eps
        down[c, i, j] -= eps
        fd = (nl_head(up, nl_params)[0] - nl_head(down, nl_params)[0])[NL_TARGET] / (2 * eps)
        assert fd == pytest.approx(g[c, i, j], abs=1e-8)
    # unlike tiny_cnn, dy/dA is not constant over space within a channel
    assert np.all(g.std(axis=(1, 2)) > 0.2 * np.abs(g).mean(axis=(1, 2)))


def well_posed_channels(act: np.ndarray, g3: np.ndarray) -> np.ndarray:
    """Channels where Grad-CAM++'s denominator 2 g^2 + S_k, S_k = sum_ab A_kab g^3, cannot
    cross zero (S_k >= 0). Where S_k < 0 and g changes sign over the map, some pixel has
    2 g^2 close to -S_k: a_kij there is huge and float32 rounding decides w_k, in the code and
    in any reimplementation alike, so only these channels are compared to float64 numbers."""
    return (act * g3).sum(axis=(1, 2)) >= 0


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    """float32 (ONNX Runtime) against float64 (numpy)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_nonlinear_head_gradcam_family_equals_numpy(nonlinear, nl_case):
    x, a, g = nl_case
    assert 0.2 < np.mean(g < 0) < 0.8  # gradients of both signs: the ReLU(g) terms matter

    def run(method):
        exp = explain(nonlinear, x, method, target=NL_TARGET, layer=NL_LAYER)
        passes = 1 if get_method(method).batch_fn is not None else 2  # a forward pass first
        assert exp.n_queries == passes and exp.extras["layer"] == NL_LAYER
        np.testing.assert_allclose(exp.map, exp.extras["cam"], rtol=1e-5, atol=1e-8)  # 32 -> 32
        return exp

    close(run("gradcam").extras["cam"], relu(np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a)))
    x_weights = np.array([np.sum(a[k] / a[k].sum() * g[k]) for k in range(len(a))])
    close(run("xgradcam").extras["cam"], relu(np.einsum("k,kij->ij", x_weights, a)))
    close(run("layercam").extras["cam"], relu(np.sum(relu(g) * a, axis=0)))
    good = well_posed_channels(a, g**3)
    assert 2 <= good.sum() < len(a)
    close(run("gradcampp").extras["weights"][good],
          gradcampp_channel_weights(a, g, g**2, g**3)[good])
    # the map on the well-posed channels: smooth-gradcampp without noise is Grad-CAM++
    # (bit for bit, next test), and its filters zero the other channels' activations
    exp = explain(nonlinear, x, "smooth-gradcampp", target=NL_TARGET, layer=NL_LAYER, n_samples=0,
                  filters=",".join(map(str, np.flatnonzero(good))))
    close(exp.extras["cam"], gradcampp_map(a * good[:, None, None], g, g**2, g**3))


def test_nonlinear_head_smooth_gradcampp(nonlinear, nl_params, nl_case):
    x, a, g = nl_case
    plain = explain(nonlinear, x, "gradcampp", target=NL_TARGET, layer=NL_LAYER)
    zero = explain(nonlinear, x, "smooth-gradcampp", target=NL_TARGET, layer=NL_LAYER, n_samples=0)
    np.testing.assert_array_equal(zero.map, plain.map)
    n, sigma, seed = 3, 0.3, 7
    # the noise: x + N(0, sigma^2), the first draw of the seeded generator
    noise = np.random.default_rng(seed).standard_normal((n, *x.shape), dtype=np.float32)
    noisy = x[None] + sigma * noise
    acts = [nl_act1(xn, nl_params) for xn in noisy]
    assert min(kink_margin(an, nl_params) for an in acts) > 1e-5
    gs = np.stack([nl_head_gradient(an, nl_params, NL_TARGET) for an in acts])
    g1, g2, g3 = gs.mean(0), (gs**2).mean(0), (gs**3).mean(0)
    # subsets: the channels where the closed form is well posed (see well_posed_channels), on
    # the whole map, within a box, at two points
    box = np.zeros((32, 32), bool)
    box[4:16, 8:20] = True
    points = np.zeros((32, 32), bool)
    points[4, 3] = points[21, 20] = True
    cases = []
    everywhere = np.ones((32, 32), bool)
    for neurons, region in [(None, everywhere), ("8,4,20,16", box), ("3,4;20,21", points)]:
        good = well_posed_channels(a * region, g3)
        assert good.sum() >= 2
        cases.append(({"filters": ",".join(map(str, np.flatnonzero(good))), "neurons": neurons},
                      good[:, None, None] & region))
    for options, keep in cases:
        exp = explain(nonlinear, x, "smooth-gradcampp", target=NL_TARGET, layer=NL_LAYER,
                      n_samples=n, sigma=sigma, seed=seed, **options)
        assert exp.n_queries == 1 + n + 1
        expected = gradcampp_map(a * keep, g1, g2, g3)
        assert expected.max() > 0
        close(exp.extras["cam"], expected)
        if options["neurons"] is None:  # the noise matters here (on tiny_cnn it cannot)
            clean = gradcampp_map(a * keep, g, g**2, g**3)
            assert np.abs(expected - clean).max() > 0.05 * expected.max()


def test_nonlinear_head_gradient_free_cams_equal_their_definitions(nonlinear, nl_params, nl_case):
    x, a, _ = nl_case
    k = len(a)
    # Ablation-CAM: w_k = (y - y_k) / y, y_k the head's score with channel k of A zeroed
    y = nl_head(a, nl_params)[0][NL_TARGET]
    y_k = np.array([nl_head(a * (np.arange(k) != c)[:, None, None], nl_params)[0][NL_TARGET]
                    for c in range(k)])
    w = (y - y_k) / y
    exp = explain(nonlinear, x, "ablationcam", target=NL_TARGET, layer=NL_LAYER)
    assert exp.n_queries == 1 + 1 + k
    np.testing.assert_allclose(exp.extras["weights"], w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
    expected = relu(np.einsum("k,kij->ij", w, a))
    close(exp.extras["cam"], expected)
    # Score-CAM: s_k = softmax(f(x * H_k))_c, H_k = A_k min-max normalised (the layer has the
    # input's size, so upsampling is the identity)
    h = (a - a.min(axis=(1, 2), keepdims=True)) / np.ptp(a, axis=(1, 2), keepdims=True)
    logits = np.stack([nl_head(nl_act1(x * hk, nl_params), nl_params)[0] for hk in h])
    s = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))[:, NL_TARGET]
    exp = explain(nonlinear, x, "scorecam", target=NL_TARGET, layer=NL_LAYER)
    assert exp.n_queries == 1 + 1 + k
    np.testing.assert_allclose(exp.extras["weights"], s, rtol=1e-4)
    expected = relu(np.einsum("k,kij->ij", s, a))
    close(exp.extras["cam"], expected)
    # Eigen-CAM: A (hw x k) centred, projected on its first right singular vector, signed to
    # correlate with sum_k A_k
    flat = a.reshape(k, -1).T
    centred = flat - flat.mean(axis=0)
    proj = centred @ np.linalg.svd(centred)[2][0]
    total = flat.sum(axis=1)
    proj *= np.sign(np.dot(proj, total - total.mean()))
    expected = relu(proj).reshape(32, 32)
    exp = explain(nonlinear, x, "eigencam", layer=NL_LAYER)
    np.testing.assert_allclose(exp.extras["cam"], expected, rtol=1e-3, atol=1e-5 * expected.max())


def test_nonlinear_cam_reads_the_gap_linear_head_of_the_last_layer(nonlinear, nl_params, nl_case):
    x, a, _ = nl_case
    exp = explain(nonlinear, x, "cam", target=NL_TARGET)
    assert exp.extras["layer"] == "act2"
    a2 = relu(nl_head(a, nl_params)[1])
    close(exp.extras["cam"], np.einsum("k,kij->ij", nl_params["fc.w"][NL_TARGET], a2))
    with pytest.raises(BlackboxError, match="global average pooling"):
        explain(nonlinear, x, "cam", target=NL_TARGET, layer=NL_LAYER)


# ---- smooth-gradcampp subsets: bad values are one-line errors ------------------------------------
@pytest.mark.parametrize("option, value, valid", [
    ("filters", "a,b", "give channel indices separated by commas"),
    ("filters", "", "give channel indices separated by commas"),
    ("filters", "1,8", "channel 8 is out of range: the layer has 8 channels, 0..7"),
    ("filters", "-1", "channel -1 is out of range: the layer has 8 channels, 0..7"),
    ("neurons", "x,y", "0 <= x < 32, 0 <= y < 32"),
    ("neurons", "1,2,3", "0 <= x < 32, 0 <= y < 32"),
    ("neurons", "32,3", "0 <= x < 32, 0 <= y < 32"),
    ("neurons", "3,-1", "0 <= x < 32, 0 <= y < 32"),
    ("neurons", "nan,3", "0 <= x < 32, 0 <= y < 32"),
    ("neurons", "5,5,40,40", "0 <= x0 <= x1 <= 32, 0 <= y0 <= y1 <= 32"),
    ("neurons", "20,5,10,8", "0 <= x0 <= x1 <= 32, 0 <= y0 <= y1 <= 32"),
    ("neurons", "40,40,50,50", "0 <= x0 <= x1 <= 32, 0 <= y0 <= y1 <= 32"),
    ("neurons", ";", "0 <= x < 32, 0 <= y < 32"),
])
def test_smooth_gradcampp_rejects_a_bad_subset(tiny, x_act_grad, option, value, valid):
    before = tiny.n_queries
    with pytest.raises(BlackboxError) as e:
        explain(tiny, x_act_grad[0], "smooth-gradcampp", target=TARGET, n_samples=1,
                **{option: value})
    message = str(e.value)
    assert message.startswith(f"--{option} {value!r}: ") and valid in message
    assert "\n" not in message
    # the input size is known before any pass; the channel count after the one batch
    assert tiny.n_queries - before == (1 + 2 if "out of range" in valid else 1)


def test_cli_smooth_gradcampp_bad_filters_is_one_line_exit_2(run, tmp_path):
    r = run("explain", "smooth-gradcampp", model_path("tiny_cnn"), EXAMPLES / "cat.jpg",
            "--filters", "a,b", "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if "--filters" in line]
    assert len(errors) == 1 and "'a,b'" in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- registration: what each CAM method declares ----------------------------------------------
GRADIENT_CAMS = ("gradcam", "gradcampp", "smooth-gradcampp", "xgradcam", "layercam")
GRADIENT_FREE_CAMS = ("cam", "scorecam", "ablationcam", "eigencam")


@pytest.mark.parametrize("name", GRADIENT_CAMS + GRADIENT_FREE_CAMS)
def test_cam_registrations(name):
    spec = METHODS[name]
    assert spec.family == "cam" and spec.requires_graph
    assert spec.needs_gradient == (name in GRADIENT_CAMS)
    assert spec.options[0].name == "layer" and spec.options[0].default is None
    assert all(o.help for o in spec.options)
    assert spec.fast == ({"n_samples": 2} if name == "smooth-gradcampp" else {})


@pytest.mark.parametrize("options", [{"n_samples": -1}, {"sigma": -0.1}, {"sigma": float("nan")}])
def test_smooth_gradcampp_option_ranges(tiny, x_act_grad, options):
    before = tiny.n_queries
    with pytest.raises(OptionError):
        explain(tiny, x_act_grad[0], "smooth-gradcampp", **options)
    assert tiny.n_queries == before


def test_a_new_cam_method_is_one_weight_function(tiny, x_act_grad):
    """register_cam: options (with range and help) from the weight function, layer added, the
    weights applied to A, ReLU, upsampling and the common extras done once for every method."""
    x, act, _ = x_act_grad
    try:
        @register_cam("test-mean-cam", reference="a test")
        def mean_cam(c: CamInput, *, scale: Annotated[float, Range(0, lo_open=True)] = 1.0
                     ) -> Weights:
            """Mean-CAM: w_k = scale * mean_ij A_kij.

            Args:
                scale: multiplies the weights.
            """
            return Weights(scale * c.act.mean(axis=(1, 2)), c.act)

        spec = METHODS["test-mean-cam"]
        assert [o.name for o in spec.options] == ["layer", "scale"]
        assert spec.options[1].help == "multiplies the weights." and not spec.needs_gradient
        exp = explain(tiny, x, "test-mean-cam", target=TARGET, scale=2.0)
        expected = relu(np.einsum("k,kij->ij", 2 * act.mean(axis=(1, 2)), act))
        assert (exp.extras["layer"], exp.extras["layout"]) == ("features", "NCHW")
        np.testing.assert_allclose(exp.extras["weights"], 2 * act.mean(axis=(1, 2)), rtol=1e-5)
        np.testing.assert_allclose(exp.extras["cam"], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(exp.map, expected, rtol=1e-4, atol=1e-6)
        assert exp.n_queries == 2
        with pytest.raises(OptionError, match="--scale"):
            explain(tiny, x, "test-mean-cam", scale=0.0)
    finally:
        METHODS.pop("test-mean-cam", None)


# ---- heads CAM reads: no linear layer (SqueezeNet), flatten chains, whole-window AveragePool ----
def _head_model(tmp_path, head: str) -> tuple[str, dict]:
    """x (N, 3, 6, 6) -> 1x1 Conv (3 -> 4) -> Relu 'act' -> HEAD, built with onnx.helper:

    * ``squeezenet``: GlobalAveragePool -> Flatten -> Softmax (the pooled channels are the
      logits, no linear layer);
    * ``caffe2``: GlobalAveragePool -> Softmax(axis 1) on (N, 4, 1, 1) (no Flatten either);
    * ``torch1``: GlobalAveragePool -> Reshape to [Shape(pooled)[0], -1] (Shape -> Gather ->
      Unsqueeze -> Concat: PyTorch 1.x's flatten chain) -> Gemm(transB) to 3 classes;
    * ``reshape_matmul``: GlobalAveragePool -> Reshape(0, -1) -> MatMul -> Add;
    * ``avgpool``: AveragePool over the whole 6 x 6 (tf2onnx) -> Squeeze -> MatMul -> Add.
    """
    rng = np.random.default_rng(11)
    p = {"cw": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
         "cb": rng.standard_normal(4).astype(np.float32) * 0.5,
         "fw": rng.standard_normal((3, 4)).astype(np.float32),
         "fb": rng.standard_normal(3).astype(np.float32)}
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["conv"]),
             helper.make_node("Relu", ["conv"], ["act"])]
    gap = helper.make_node("GlobalAveragePool", ["act"], ["pooled"])
    out, classes = "scores", 3
    if head == "squeezenet":
        nodes += [gap, helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
                  helper.make_node("Softmax", ["flat"], ["scores"], axis=1)]
        classes = 4
    elif head == "caffe2":
        nodes += [gap, helper.make_node("Softmax", ["pooled"], ["scores"], axis=1)]
        classes = 4
    elif head == "torch1":
        inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                  numpy_helper.from_array(np.array([0], np.int64), "axis0"),
                  numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
        nodes += [gap, helper.make_node("Shape", ["pooled"], ["shape"]),
                  helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                  helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
                  helper.make_node("Concat", ["n1", "minus1"], ["target_shape"], axis=0),
                  helper.make_node("Reshape", ["pooled", "target_shape"], ["flat"]),
                  helper.make_node("Gemm", ["flat", "fw", "fb"], ["scores"], transB=1)]
    elif head == "reshape_matmul":
        inits += [numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"),
                  numpy_helper.from_array(p["fw"].T.copy(), "fwT")]
        nodes += [gap, helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "fwT"], ["mm"]),
                  helper.make_node("Add", ["mm", "fb"], ["scores"])]
    elif head == "avgpool":
        inits += [numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
                  numpy_helper.from_array(p["fw"].T.copy(), "fwT")]
        nodes += [helper.make_node("AveragePool", ["act"], ["pooled"], kernel_shape=[6, 6]),
                  helper.make_node("Squeeze", ["pooled", "hw"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "fwT"], ["mm"]),
                  helper.make_node("Add", ["mm", "fb"], ["scores"])]
    out_shape = ["N", classes, 1, 1] if head == "caffe2" else ["N", classes]
    graph = helper.make_graph(
        nodes, head, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.checker.check_model(m, full_check=True)
    path = tmp_path / f"{head}.onnx"
    onnx.save(m, path)
    return str(path), {k: v.astype(np.float64) for k, v in p.items()}


@pytest.mark.parametrize("head", ["squeezenet", "caffe2", "torch1", "reshape_matmul", "avgpool"])
def test_cam_reads_heads_without_a_linear_layer_and_flatten_chains(tmp_path, head):
    """CAM_c = sum_k W_ck A_k with A = ReLU(conv1x1(x)) computed here; W is the identity where
    the pooled channels are the logits (CAM_c = A_c), else the linear layer's weight. Grad-CAM
    agrees: on these heads g_kij = W_ck / (h w), so Grad-CAM = ReLU(CAM) / (h w)."""
    path, p = _head_model(tmp_path, head)
    model = load_model(path, device="cpu")
    x = np.random.default_rng(12).standard_normal((3, 6, 6)).astype(np.float32)
    act = relu(np.einsum("kc,chw->khw", p["cw"][:, :, 0, 0], x) + p["cb"][:, None, None])
    w = np.eye(4) if head in ("squeezenet", "caffe2") else p["fw"]
    for target in range(len(w)):
        exp = explain(model, x, "cam", target=target)
        assert exp.extras["layer"] == "act" and exp.n_queries == 1  # exposed forward pass only
        np.testing.assert_allclose(exp.extras["weights"], w[target], rtol=1e-6)
        expected = np.einsum("k,kij->ij", w[target], act)
        np.testing.assert_allclose(exp.extras["cam"], expected, rtol=1e-5, atol=1e-6)
        if head in ("squeezenet", "caffe2"):
            np.testing.assert_allclose(exp.extras["cam"], act[target], rtol=1e-5, atol=1e-6)
        grad = explain(model, x, "gradcam", target=target).extras["cam"]
        np.testing.assert_allclose(grad, relu(expected) / 36, rtol=1e-4, atol=1e-7)


def test_cam_refuses_a_pooled_head_that_is_not_linear(tmp_path):
    """GAP -> Reshape -> Gemm -> Relu -> Gemm: the pooled vector reaches the logits through a
    non-linearity, so there are no CAM weights (a one-line refusal before the layer's pass)."""
    path, _ = _head_model(tmp_path, "torch1")
    m = onnx.load(path)
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    gemm.output[0] = "hidden"
    rng = np.random.default_rng(13)
    m.graph.initializer.append(numpy_helper.from_array(
        rng.standard_normal((3, 3)).astype(np.float32), "fw2"))
    m.graph.node.extend([helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
                         helper.make_node("Gemm", ["hidden_relu", "fw2"], ["scores"])])
    onnx.save(m, path)
    model = load_model(path, device="cpu")
    with pytest.raises(BlackboxError) as e:
        explain(model, np.ones((3, 6, 6), np.float32), "cam")
    assert str(e.value) == (
        "CAM needs layer -> global average pooling -> linear; after 'act' (NCHW) the graph has "
        "GlobalAveragePool -> Reshape -> Gemm -> Relu. Use gradcam instead (on a pooling + linear "
        "head it is CAM's map, ReLU'd and scaled)")
    assert model.n_queries == 1


def test_cam_on_a_class_token_layer_says_why_not():
    """A ViT's token layer: the classifier reads the class token, there is no GAP to weight."""
    model = load_model(TEST_MODELS / "transformers" / "deit_tiny.onnx", device="cpu")
    with pytest.raises(BlackboxError) as e:
        explain(model, np.ones((3, 32, 32), np.float32), "cam")
    message = str(e.value)
    assert "'/blocks/blocks.1/norm1/LayerNormalization_output_0' is a transformer token layer " \
           "(tokens 2+4x4)" in message
    assert "reads the class token" in message and "same map" not in message
    assert message.endswith("use gradcam, attention-rollout or gradient-rollout")
    assert "\n" not in message and model.n_queries == 1


@pytest.mark.parametrize("stem, default, grid", [
    ("vit_tiny", "/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0", "1+4x4"),
    ("deit_tiny", "/blocks/blocks.1/norm1/LayerNormalization_output_0", "2+4x4")])
def test_cli_layers_shows_the_token_grid(run, stem, default, grid):
    """`bbx layers`: token layers with their grid (extra tokens + h x w), the patch Conv NCHW."""
    r = run("layers", TEST_MODELS / "transformers" / f"{stem}.onnx")
    assert r.exit_code == 0, r.output
    rows = {line[2:].split()[0]: line for line in r.output.splitlines()[1:]}
    assert f" tokens {grid} " in rows[default] and rows[default].startswith("* ")
    assert " tokens 0+4x4 " in next(line for name, line in rows.items() if "Transpose" in name)
    assert " NCHW " in next(line for name, line in rows.items() if "Conv" in name)
