"""The CAM family on vision-transformer token layers (issue 12): A and g are the layer's patch
tokens read as (C, h, w), the class and distillation tokens dropped (pytorch-grad-cam's ViT
``reshape_transform``); the gradient-free CAMs are checked against their definitions computed
here from ONNX Runtime runs of the model and of its head (the model cut at the layer), with the
token reshaping written out independently of the library's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from helpers import TEST_MODELS

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.graph.split import split
from blackbox_xai.resample import upsample

TARGET = 3
# model -> (default token layer, extra tokens); the grids are 4 x 4
LAYERS = {
    "vit_tiny": ("/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0", 1),
    "deit_tiny": ("/blocks/blocks.1/norm1/LayerNormalization_output_0", 2),
}


@pytest.fixture(scope="module", params=sorted(LAYERS))
def case(request):
    stem = request.param
    model = load_model(str(TEST_MODELS / "transformers" / f"{stem}.onnx"), device="cpu")
    layer, extra = LAYERS[stem]
    x = np.random.default_rng(4).standard_normal((3, 32, 32)).astype(np.float32)
    features, head = split(model.scores_graph()[0], layer)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = [ort.InferenceSession(m.SerializeToString(), opts,
                                     providers=["CPUExecutionProvider"])
                for m in (features, head)]
    names = [i.name for i in head.graph.input]
    values = dict(zip(names, sessions[0].run(names, {"x": x[None]})))
    return model, x, layer, extra, sessions[1], values


def grid(tokens: np.ndarray, extra: int) -> np.ndarray:
    """(N, extra + 16, C) -> (N, C, 4, 4), patch (i, j) at token extra + 4 i + j."""
    n, _, c = tokens.shape
    out = np.zeros((n, c, 4, 4), tokens.dtype)
    for i in range(4):
        for j in range(4):
            out[:, :, i, j] = tokens[:, extra + 4 * i + j]
    return out


def close(got: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    np.testing.assert_allclose(got, expected, rtol=0, atol=rel * max(np.abs(expected).max(), 1e-6))


def test_gradient_cams_read_the_patch_tokens(case):
    """Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM from A and g = the layer's tokens and their
    gradient (model.layer_gradient), reshaped here."""
    model, x, layer, extra, _, _ = case
    _, act, g = model.layer_gradient(x[None], TARGET, layer)
    a, g = grid(act, extra)[0].astype(np.float64), grid(g, extra)[0].astype(np.float64)
    relu = lambda v: np.maximum(v, 0)
    exp = explain(model, x, "gradcam", target=TARGET)
    assert exp.extras["layer"] == layer and exp.extras["cam"].shape == (4, 4)
    close(exp.extras["cam"], relu(np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a)))
    total = a.sum(axis=(1, 2), keepdims=True)
    close(explain(model, x, "xgradcam", target=TARGET).extras["cam"],
          relu(np.einsum("k,kij->ij", (a / total * g).sum(axis=(1, 2)), a)))
    close(explain(model, x, "layercam", target=TARGET).extras["cam"],
          relu((relu(g) * a).sum(axis=0)))
    denom = 2 * g**2 + (a * g**3).sum(axis=(1, 2), keepdims=True)
    w = (np.where(g != 0, g**2 / denom, 0) * relu(g)).sum(axis=(1, 2))
    close(explain(model, x, "gradcampp", target=TARGET).extras["cam"],
          relu(np.einsum("k,kij->ij", w, a)), rel=1e-3)


def test_ablationcam_zeroes_one_channel_of_the_patch_tokens(case):
    """w_k = (y - y_k) / y, y_k = the head's score with channel k of the patch tokens zeroed,
    the class (and distillation) tokens and the residual stream crossing the cut unchanged."""
    model, x, layer, extra, head, values = case
    t = values[layer]
    k = t.shape[2]
    ablated = np.repeat(t, k, axis=0)
    ablated[np.arange(k), extra:, np.arange(k)] = 0
    feeds = {n: np.repeat(v, k, axis=0) for n, v in values.items()}
    feeds[layer] = ablated
    y_k = head.run(None, feeds)[0][:, TARGET].astype(np.float64)
    y = float(head.run(None, values)[0][0, TARGET])
    w = (y - y_k) / y
    exp = explain(model, x, "ablationcam", target=TARGET)
    assert exp.n_queries == 1 + 1 + k
    close(exp.extras["weights"], w, rel=1e-4)
    a = grid(t, extra)[0].astype(np.float64)
    close(exp.extras["cam"], np.maximum(np.einsum("k,kij->ij", w, a), 0))


def test_scorecam_and_eigencam_on_tokens(case):
    """Score-CAM: s_k = softmax(f(x * H_k))_t with H_k = upsample(min-max normalised A_k);
    Eigen-CAM: A (hw x k) centred, projected on its first right singular vector."""
    model, x, layer, extra, _, values = case
    a = grid(values[layer], extra)[0]
    lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    masks = upsample((a - lo) / (hi - lo), (32, 32))
    logits = model(x[None] * masks[:, None]).astype(np.float64)
    s = (np.exp(logits - logits.max(axis=1, keepdims=True)))
    s = (s / s.sum(axis=1, keepdims=True))[:, TARGET]
    exp = explain(model, x, "scorecam", target=TARGET)
    close(exp.extras["weights"], s, rel=1e-4)
    close(exp.extras["cam"], np.maximum(np.einsum("k,kij->ij", s, a.astype(np.float64)), 0))
    flat = a.reshape(len(a), -1).T.astype(np.float64)
    centred = flat - flat.mean(axis=0)
    proj = centred @ np.linalg.svd(centred)[2][0]
    total = flat.sum(axis=1)
    proj *= np.sign(np.dot(proj, total - total.mean()))
    close(explain(model, x, "eigencam").extras["cam"], np.maximum(proj, 0).reshape(4, 4),
          rel=1e-3)


def test_gradient_cams_on_swin_token_maps_equal_numpy():
    """Swin's stage-1 token map (N, H, W, C) is an NHWC layer: Grad-CAM, XGrad-CAM, Layer-CAM
    and Grad-CAM++ (its weights on the channels where they are well posed) there equal their
    formulas on the activation and gradient read from the graph (model.layer_gradient) and transposed here to (C, h, w). The default layer is the
    final norm laid out NCHW before the average pooling, where CAM (GAP + linear head) applies
    too. (The gradient-free CAMs' NHWC handling: test_cam.py's NHWC head; on tokens: above.)"""
    model = load_model(str(TEST_MODELS / "transformers" / "swin_tiny.onnx"), device="cpu")
    x = np.random.default_rng(5).standard_normal((3, 32, 32)).astype(np.float32)
    stage1 = "/features/features.1/features.1.1/Add_1_output_0"
    _, act, grad = model.layer_gradient(x[None], TARGET, stage1)
    a, g = (v[0].transpose(2, 0, 1).astype(np.float64) for v in (act, grad))
    relu = lambda v: np.maximum(v, 0)

    def cam(method: str, extra: str = "cam") -> np.ndarray:
        exp = explain(model, x, method, target=TARGET, layer=stage1)
        assert (exp.extras["layout"], exp.extras["cam"].shape) == ("NHWC", (8, 8))
        return exp.extras[extra]

    close(cam("gradcam"), relu(np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a)))
    total = a.sum(axis=(1, 2), keepdims=True)
    close(cam("xgradcam"), relu(np.einsum("k,kij->ij", (a / total * g).sum(axis=(1, 2)), a)))
    close(cam("layercam"), relu((relu(g) * a).sum(axis=0)))
    s_k = (a * g**3).sum(axis=(1, 2), keepdims=True)
    w = (np.where(g != 0, g**2 / (2 * g**2 + s_k), 0) * relu(g)).sum(axis=(1, 2))
    good = s_k.ravel() >= 0  # where 2 g^2 + S_k cannot cross 0 (test_cam.py: 10 of 16 here)
    close(cam("gradcampp", "weights")[good], w[good])
    default = explain(model, x, "cam", target=TARGET).extras["cam"]
    gradcam = explain(model, x, "gradcam", target=TARGET).extras["cam"]
    assert default.shape == (4, 4)
    positive = default > 1e-6 * np.abs(default).max()  # Grad-CAM = ReLU(CAM) / (h w) here
    close(gradcam[positive] * 16, default[positive], rel=1e-4)


def test_cam_refuses_a_class_token_head():
    model = load_model(str(TEST_MODELS / "transformers" / "vit_tiny.onnx"), device="cpu")
    x = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(BlackboxError, match="global average pooling"):
        explain(model, x, "cam", target=TARGET)
