"""Vision transformers exported from PyTorch (tools/make_transformer_models.py, issue 12).

The committed models are torchvision's ViT (legacy exporter at opsets 14 and 17, dynamo at 18),
timm's DeiT (class and distillation tokens) and torchvision's Swin at toy sizes. Checked here:
every op on their gradient paths has a rule (each rule is checked against finite differences
in test_vjp_rules.py); whole-model input gradients against central finite differences of the
model's own ONNX Runtime outputs; Grad-CAM on a token layer against its closed form from the
activation and a finite-difference gradient; the token grids, the default layer, and the
refusal of attention-shaped tensors; the CLI.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, TEST_MODELS

from blackbox_xai import explain, load_model
from blackbox_xai.graph.autodiff import _inferred, _path
from blackbox_xai.graph.inspect import (
    NotAFeatureMapError,
    TokenGrid,
    candidate_layers,
    default_layer,
    feature_map,
)
from blackbox_xai.graph.normalize import normalize
from blackbox_xai.graph.split import split
from blackbox_xai.graph.vjp_rules import RULES, GraphInfo
from blackbox_xai.methods.cam import channels_back, channels_first
from blackbox_xai.model import one_hot

MODELS = ["vit_tiny_opset14", "vit_tiny", "vit_tiny_dynamo", "deit_tiny", "swin_tiny"]
TARGET = 3
# the default CAM layer: the first LayerNorm of the last block (pytorch-grad-cam's
# blocks[-1].norm1); Swin: the final norm, transposed to NCHW before the average pooling
DEFAULTS = {
    "vit_tiny_opset14": ("/encoder/layers/encoder_layer_1/ln_1/Add_1_output_0", TokenGrid(1, 4, 4)),
    "vit_tiny": ("/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0",
                 TokenGrid(1, 4, 4)),
    "vit_tiny_dynamo": ("layer_norm_2", TokenGrid(1, 4, 4)),
    "deit_tiny": ("/blocks/blocks.1/norm1/LayerNormalization_output_0", TokenGrid(2, 4, 4)),
    "swin_tiny": ("/permute/Transpose_output_0", None),
}
VIT_ATTENTION = [  # nn.MultiheadAttention's (T, N, 3, C) in-projection, the attention weights
    "/encoder/layers/encoder_layer_1/self_attention/Reshape_2_output_0",
    "/encoder/layers/encoder_layer_1/self_attention/Softmax_output_0",
]


def path(stem: str) -> str:
    return str(TEST_MODELS / "transformers" / f"{stem}.onnx")


def x_for(seed: int = 0, n: int | None = None) -> np.ndarray:
    shape = (3, 32, 32) if n is None else (n, 3, 32, 32)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=MODELS)
def stem(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def vit():
    return load_model(path("vit_tiny"), device="cpu")


def test_the_exports_carry_the_transformer_op_patterns():
    """The files really are what the tests claim: attention Softmaxes, the decomposed
    LayerNorm at opset 14, the operator at 17-18, Swin's roll and relative position Gather."""
    ops = {s: {n.op_type for n in onnx.load(path(s)).graph.node} for s in MODELS}
    opsets = {s: onnx.load(path(s)).opset_import[0].version for s in MODELS}
    assert all("Softmax" in o and "Erf" in o and "MatMul" in o for o in ops.values())
    assert "LayerNormalization" not in ops["vit_tiny_opset14"] and opsets["vit_tiny_opset14"] == 14
    assert all("LayerNormalization" in ops[s] for s in MODELS[1:])
    assert opsets["vit_tiny_dynamo"] == 18
    assert {"Slice", "Concat", "Gather", "Pad"} <= ops["swin_tiny"]
    for s in MODELS:
        assert (TEST_MODELS / "transformers" / f"{s}.onnx").stat().st_size < 1_000_000


def test_every_op_on_the_gradient_path_has_a_rule(stem):
    m = normalize(onnx.load(path(stem))).model
    info = GraphInfo(_inferred(m))
    _, nodes = _path(list(m.graph.node), ["x"], "logits", info)
    assert {n.op_type for n in nodes} - set(RULES) == set()
    assert len(nodes) > 50  # the whole network lies on the path


def test_input_gradient_matches_finite_differences(stem):
    """d logit_t / dx along random directions v: the backward graph's g . v against
    (f(x + eps v) - f(x - eps v)) / (2 eps) of the forward model, at two batch sizes (rows
    are independent). float32 forward: eps = 1e-2 keeps rounding (~1e-7 |f| / eps) and
    truncation (eps^2 f''' / 6) near 1e-5 relative; a wrong rule is off by O(1)."""
    model = load_model(path(stem), device="cpu")
    x = x_for(1, n=2)
    _, g = model.input_gradient(x, one_hot(2, model.num_classes, TARGET))
    _, g1 = model.input_gradient(x[:1], one_hot(1, model.num_classes, TARGET))
    np.testing.assert_allclose(g1[0], g[0], rtol=1e-5, atol=1e-6 * np.abs(g).max())
    eps = 1e-2
    for k in range(3):
        v = np.random.default_rng(10 + k).standard_normal(x.shape).astype(np.float32)
        up = model(x + eps * v)[:, TARGET].astype(np.float64)
        down = model(x - eps * v)[:, TARGET].astype(np.float64)
        fd = (up - down) / (2 * eps)
        an = (g.astype(np.float64) * v).reshape(2, -1).sum(axis=1)
        scale = np.abs(g.astype(np.float64) * v).reshape(2, -1).sum(axis=1)
        assert np.all(np.abs(fd - an) <= 2e-3 * scale), (fd, an)


def test_token_grids_and_the_default_layer(stem):
    m = normalize(onnx.load(path(stem))).model
    name, grid = DEFAULTS[stem]
    assert default_layer(m) == name
    layer = feature_map(m)
    assert layer.grid == grid and layer.layout == ("tokens" if grid else "NCHW")
    tokens = [c for c in candidate_layers(m) if c.layout == "tokens"]
    assert bool(tokens) == (grid is not None)
    for c in tokens:  # (N, extra + h*w, C), the patch tokens alone before the Concat
        assert len(c.shape) == 3 and isinstance(c.shape[2], int)
        assert c.shape[1] == c.grid.tokens or not isinstance(c.shape[1], int)
        assert c.grid == TokenGrid(grid.extra if c.op != "Transpose" else 0, 4, 4)


@pytest.mark.parametrize("name", VIT_ATTENTION)
def test_attention_shaped_tensors_are_refused_with_the_candidates(vit, name):
    with pytest.raises(NotAFeatureMapError, match="attention tensor") as err:
        feature_map(vit.proto, name)
    assert DEFAULTS["vit_tiny"][0] in str(err.value)  # the candidates are listed
    with pytest.raises(NotAFeatureMapError):
        explain(vit, x_for(), "gradcam", target=TARGET, layer=name)


def test_no_candidate_is_laid_out_like_attention():
    for s in MODELS:
        for c in candidate_layers(normalize(onnx.load(path(s))).model):
            assert not isinstance(c.shape[0], int), c  # the batch axis (dynamic) comes first
            assert not (c.shape[-1] == c.shape[-2] and c.shape[-1] in (16, 17, 18)), c


def test_tokens_round_trip_to_the_grid_and_back():
    """A[n, c, i, j] = T[n, e + i w + j, c]; writing back keeps the extra tokens."""
    layer = feature_map(normalize(onnx.load(path("deit_tiny"))).model)
    t = np.random.default_rng(0).standard_normal((2, 18, 32)).astype(np.float32)
    a = channels_first(t, layer)
    assert a.shape == (2, 32, 4, 4)
    assert a[1, 5, 2, 3] == t[1, 2 + 2 * 4 + 3, 5]
    np.testing.assert_array_equal(channels_back(a, layer, t[:, :2]), t)


def head_and_features(model, layer: str):
    """ONNX Runtime sessions of the scores graph cut at ``layer`` and the tensors crossing."""
    features, head = split(model.scores_graph()[0], layer)
    return session(features), session(head), [i.name for i in head.graph.input]


def test_gradcam_on_the_token_layer_equals_the_closed_form(vit):
    """Grad-CAM from numpy: A (C, h, w) = the layer's patch tokens (class token dropped),
    g = d y_t / dA by central differences of the head (the model cut at the layer, the residual
    stream that crosses the cut held fixed), alpha_c = mean_ij g_cij,
    M = ReLU(sum_c alpha_c A_c); the head is non-linear (attention, GELU, LayerNorm)."""
    layer = DEFAULTS["vit_tiny"][0]
    x = x_for(2)
    features, head, names = head_and_features(vit, layer)
    values = dict(zip(names, features.run(names, {"x": x[None]})))
    t = values[layer].astype(np.float64)  # (1, 17, 32)
    eps = 1e-2
    size = t[0, 1:].size  # only the patch tokens enter A
    steps = np.zeros((2 * size, *t.shape[1:]))
    steps[np.arange(size), 1 + np.arange(size) // 32, np.arange(size) % 32] = eps
    steps[size:] = -steps[:size]
    feeds = {k: np.repeat(v, 2 * size, axis=0) for k, v in values.items()}
    feeds[layer] = (t + steps).astype(np.float32)
    y = head.run(None, feeds)[0][:, TARGET].astype(np.float64)
    g = ((y[:size] - y[size:]) / (2 * eps)).reshape(16, 32)
    a = t[0, 1:].reshape(4, 4, 32).transpose(2, 0, 1)
    g = g.reshape(4, 4, 32).transpose(2, 0, 1)
    expected = np.maximum(np.einsum("c,cij->ij", g.mean(axis=(1, 2)), a), 0)
    exp = explain(vit, x, "gradcam", target=TARGET)
    assert (exp.extras["layer"], exp.extras["layout"]) == (layer, "tokens")
    assert expected.max() > 0 and not np.allclose(expected, expected.T)  # h, w not symmetric
    np.testing.assert_allclose(exp.extras["cam"], expected, rtol=0, atol=2e-3 * expected.max())


def test_cli_explains_and_lists_token_layers(run, tmp_path):
    image = EXAMPLES / "cat.jpg"
    r = run("explain", "gradcam", path("vit_tiny"), image, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "cat_gradcam.json").read_text())
    assert (manifest["extras"]["layer"], manifest["extras"]["layout"]) == \
        (DEFAULTS["vit_tiny"][0], "tokens")
    assert np.load(tmp_path / "cat_gradcam.npy").shape == (32, 32)
    r = run("layers", path("vit_tiny"))
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if " tokens " in line]
    assert len(rows) > 10
    assert next(line for line in rows if line.startswith("*")).split()[1] == DEFAULTS["vit_tiny"][0]
