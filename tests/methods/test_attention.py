"""Attention rollout and gradient rollout on the tiny ViT / DeiT exports (issue 12).

The attention probabilities are read here independently of the library's finder: every Softmax
output of the file, exposed with blackbox_xai.graph.expose and run in ONNX Runtime directly.
Rollout is recomputed in numpy, block by block and entry by entry where it matters; gradient
rollout from those activations and gradients obtained by central finite differences on a copy
of the model whose attention probabilities are graph inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, TEST_MODELS, model_path
from onnx import helper

from blackbox_xai import METHODS, explain, load_model
from blackbox_xai.graph.expose import expose
from blackbox_xai.graph.inspect import NoAttentionError
from blackbox_xai.registry import OptionError
from blackbox_xai.resample import upsample

TARGET = 3
#: file stem -> extra tokens (class; DeiT: class and distillation); every grid is 4 x 4, 2 heads
EXTRA = {"vit_tiny": 1, "vit_tiny_opset14": 1, "vit_tiny_dynamo": 1, "deit_tiny": 2}


def path(stem: str) -> str:
    return str(TEST_MODELS / "transformers" / f"{stem}.onnx")


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def softmax_outputs(proto: onnx.ModelProto) -> list[str]:
    return [n.output[0] for n in proto.graph.node if n.op_type == "Softmax"]


def attention_of(stem: str, x: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """The Softmax outputs of the file and their values (heads, T, T) at ``x`` (3, H, W)."""
    proto = onnx.load(path(stem))
    names = softmax_outputs(proto)
    values = session(expose(proto, names)).run(names, {"x": x[None]})
    return names, [v.reshape(2, *v.shape[-2:]).astype(np.float64) for v in values]


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(EXTRA))
def vit(request):
    return request.param, load_model(path(request.param), device="cpu")


def rollout_numpy(attentions: list[np.ndarray], fusion: str = "mean",
                  discard: float = 0.0) -> np.ndarray:
    """Abnar & Zuidema's rollout of (heads, T, T) tensors, written out with loops."""
    t = attentions[0].shape[-1]
    r = np.eye(t)
    for a in attentions:
        fused = {"mean": a.mean(axis=0), "max": a.max(axis=0), "min": a.min(axis=0)}[fusion]
        n_low = int(discard * t * t)
        if n_low:
            order = np.argsort(fused, axis=None, kind="stable")[:n_low]
            for flat in order:
                if flat != 0:  # the class token's attention to itself is kept
                    fused[flat // t, flat % t] = 0.0
        m = np.empty((t, t))
        for i in range(t):
            row = 0.5 * fused[i] + 0.5 * (np.arange(t) == i)
            m[i] = row / row.sum()
        r = m @ r
    return r


def patch_row(r: np.ndarray, extra: int) -> np.ndarray:
    """The class token's row (token 0) over patch (i, j) = token extra + 4 i + j."""
    return np.array([[r[0, extra + 4 * i + j] for j in range(4)] for i in range(4)])


# ---- attention rollout ------------------------------------------------------------------------
def test_the_attention_found_is_every_softmax_of_the_file(vit, x):
    stem, model = vit
    exp = explain(model, x, "attention-rollout")
    assert exp.extras["attention"] == attention_of(stem, x)[0]
    assert len(exp.extras["attention"]) == 2 and exp.extras["extra_tokens"] == EXTRA[stem]


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.0), ("min", 0.0),
                                             ("mean", 0.5), ("max", 0.9)])
def test_rollout_equals_numpy_from_the_exposed_attention(vit, x, fusion, discard):
    stem, model = vit
    attentions = attention_of(stem, x)[1]
    assert all(np.allclose(a.sum(axis=-1), 1, atol=1e-5) for a in attentions)
    expected = patch_row(rollout_numpy(attentions, fusion, discard), EXTRA[stem])
    before = model.n_queries
    exp = explain(model, x, "attention-rollout", head_fusion=fusion, discard_ratio=discard)
    assert model.n_queries - before == 1 and exp.n_queries == 1  # scores and attention: one pass
    np.testing.assert_allclose(exp.extras["rollout"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(exp.map, upsample(expected, (32, 32)), rtol=1e-5, atol=1e-7)
    assert exp.map.shape == (32, 32) and exp.map.dtype == np.float32


def test_rollout_of_one_block_by_hand():
    """One block, T = 3 (a class token and two patches): (A + I) / 2 has rows summing to 1."""
    a = np.array([[[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]]])
    r = rollout_numpy([a])
    np.testing.assert_allclose(r[0], [0.6, 0.25, 0.15])


def test_rollout_is_class_agnostic_and_deterministic(x):
    model = load_model(path("deit_tiny"), device="cpu", batch_size=1)
    maps = [explain(model, x, "attention-rollout", target=t, seed=s).map
            for t, s in ((0, 0), (7, 3), (0, 0))]
    other = load_model(path("deit_tiny"), device="cpu", batch_size=7)
    maps.append(explain(other, x, "attention-rollout", target=0, seed=0).map)
    for m in maps[1:]:
        np.testing.assert_array_equal(m, maps[0])


def test_the_three_vit_exports_give_the_same_rollout(x):
    """The same torch model through the legacy exporter at opsets 14 and 17 and dynamo at 18."""
    maps = [explain(load_model(path(s), device="cpu"), x, method, target=TARGET).map
            for method in ("attention-rollout", "gradient-rollout")
            for s in ("vit_tiny", "vit_tiny_opset14", "vit_tiny_dynamo")]
    for m in (maps[1], maps[2]):
        np.testing.assert_allclose(m, maps[0], rtol=1e-4, atol=1e-6)
    for m in (maps[4], maps[5]):
        np.testing.assert_allclose(m, maps[3], rtol=1e-4, atol=1e-6)


# ---- gradient rollout -------------------------------------------------------------------------
def attention_input(stem: str, name: str) -> onnx.ModelProto:
    """The file with the Softmax making ``name`` removed and ``name`` made a graph input: the
    scores as a function of x and of that block's attention probabilities (the later blocks'
    attention still computed, so a change reaches the scores through them too)."""
    proto = onnx.load(path(stem))
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    kept = [n for n in proto.graph.node if name not in n.output]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    dims = [d.dim_value or d.dim_param for d in typed[name].type.tensor_type.shape.dim]
    proto.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                           ["N", *dims[1:]]))
    return proto


def fd_gradients(stem: str, x: np.ndarray, eps: float = 1e-3) -> tuple[list, list]:
    """Attention probabilities and d logit_TARGET / d A_b by central differences, every entry."""
    names, _ = attention_of(stem, x)
    raw = session(expose(onnx.load(path(stem)), names)).run(names, {"x": x[None]})
    grads = []
    for name, a in zip(names, raw):
        n = a.size
        steps = np.eye(n, dtype=np.float32).reshape(n, *a.shape[1:]) * eps
        feeds = {"x": np.repeat(x[None], 2 * n, axis=0), name: np.concatenate([a + steps, a - steps])}
        y = session(attention_input(stem, name)).run(["logits"], feeds)[0][:, TARGET]
        grads.append(((y[:n].astype(np.float64) - y[n:]) / (2 * eps)).reshape(a.shape))
    return [a.astype(np.float64) for a in raw], grads


@pytest.mark.parametrize("stem", ["vit_tiny", "deit_tiny"])
def test_gradient_rollout_equals_numpy_from_finite_differences(stem, x):
    model = load_model(path(stem), device="cpu")
    attentions, grads = fd_gradients(stem, x)
    _, acts, exact = model.gradients(x[None], np.eye(10, dtype=np.float32)[[TARGET]],
                                     attention_of(stem, x)[0])
    for a, g, a2, g2 in zip(attentions, grads, acts, exact):
        np.testing.assert_allclose(a2, a, rtol=0, atol=1e-6)
        np.testing.assert_allclose(g2, g, rtol=0, atol=5e-4 * np.abs(g).max())
    r = np.eye(attentions[0].shape[-1])
    for a, g in zip(attentions, grads):
        a, g = a.reshape(2, *a.shape[-2:]), g.reshape(2, *g.shape[-2:])
        a_bar = sum(np.maximum(g[h] * a[h], 0) for h in range(2)) / 2
        r = r + a_bar @ r
    expected = patch_row(r, EXTRA[stem])
    exp = explain(model, x, "gradient-rollout", target=TARGET)
    assert exp.n_queries == 1  # one pass of the backward graph: its batched form
    np.testing.assert_allclose(exp.extras["rollout"], expected, rtol=0,
                               atol=2e-3 * np.abs(expected).max())
    assert exp.extras["rollout"].std() > 1e-3  # not a constant map


def test_gradient_rollout_depends_on_the_target(x):
    model = load_model(path("vit_tiny"), device="cpu")
    a = explain(model, x, "gradient-rollout", target=1).extras["rollout"]
    b = explain(model, x, "gradient-rollout", target=2).extras["rollout"]
    assert not np.allclose(a, b, rtol=1e-2)
    np.testing.assert_array_equal(explain(model, x, "gradient-rollout", target=1).map,
                                  explain(model, x, "gradient-rollout", target=1).map)


# ---- refusals, options, registration, CLI -------------------------------------------------------
@pytest.mark.parametrize("method", ["attention-rollout", "gradient-rollout"])
@pytest.mark.parametrize("model, reason", [
    (model_path("tiny_cnn"), "no recognisable attention"),
    (path("swin_tiny"), "attend over 16 tokens, not over one global sequence of a class token"),
])
def test_models_without_class_token_attention_are_refused(method, model, reason, x):
    m = load_model(model, device="cpu")
    with pytest.raises(NoAttentionError) as e:
        explain(m, x, method)
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert "gradcam" in str(e.value)


@pytest.mark.parametrize("options", [{"discard_ratio": 1.0}, {"discard_ratio": -0.1},
                                     {"discard_ratio": float("nan")}, {"head_fusion": "median"}])
def test_bad_options_are_refused_before_any_pass(options, x):
    model = load_model(path("vit_tiny"), device="cpu")
    with pytest.raises(OptionError):
        explain(model, x, "attention-rollout", **options)
    assert model.n_queries == 0


def test_registrations():
    rollout, grad = METHODS["attention-rollout"], METHODS["gradient-rollout"]
    assert rollout.family == grad.family == "attention"
    assert rollout.requires_graph and grad.requires_graph
    assert grad.needs_gradient and not rollout.needs_gradient
    assert [(o.name, o.default) for o in rollout.options] == [("head_fusion", "mean"),
                                                              ("discard_ratio", 0.0)]
    assert all(o.help for o in rollout.options) and grad.options == ()


@pytest.mark.parametrize("method", ["attention-rollout", "gradient-rollout"])
def test_cli_explain_on_the_vit(run, tmp_path, method):
    r = run("explain", method, path("vit_tiny"), EXAMPLES / "cat.jpg", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    saved = np.load(tmp_path / f"cat_{method}.npy")
    assert saved.shape == (32, 32) and np.isfinite(saved).all() and saved.max() > 0


def test_cli_refusal_on_a_cnn_is_one_line(run, tmp_path):
    r = run("explain", "attention-rollout", model_path("tiny_cnn"), EXAMPLES / "cat.jpg",
            "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert next(ln for ln in r.output.splitlines() if "attention" in ln).startswith("error")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("method", ["gradient-rollout", "attention-rollout"])
@pytest.mark.parametrize("stem", ["vit_tiny", "deit_tiny", "vit_tiny_dynamo"])
def test_batched_rollouts_equal_the_unbatched_path(stem, method):
    """Three inputs in one batch (targets given and top-1 found from the pass's own scores)
    against the unbatched path (a forward pass for the target, then the method's pass)."""
    from blackbox_xai.api import explain_batch, explain_unbatched

    model = load_model(path(stem), device="cpu")
    xs = np.random.default_rng(9).standard_normal((3, *model.example_chw())).astype(np.float32)
    targets = [None, 2, None]
    batch = explain_batch(model, list(xs), method, targets=targets, seeds=[0] * 3)
    for x, t, b in zip(xs, targets, batch):
        one = explain_unbatched(model, x, method, target=t, seed=0)
        assert (b.target, b.n_queries, one.n_queries) == (one.target, 1, 2)
        np.testing.assert_allclose(b.map, one.map, rtol=1e-5, atol=1e-6 * np.abs(one.map).max())
