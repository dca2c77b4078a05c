"""The backward graph's gradients (to the input, and to a layer every path crosses) are checked
against finite differences of the model, once per graph, at the user's input: a wrong gradient
stops with one line, never a map."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT, model_path
from onnx import helper

from blackbox_xai import explain, load_model
from blackbox_xai.errors import InternalError
from blackbox_xai.gradient_check import check_layer_gradient, check_steepest, why_unchecked
from blackbox_xai.graph import autodiff, vjp_rules
from blackbox_xai.graph.inspect import separates
from blackbox_xai.preprocess import Preprocessing

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 8, 8)).astype(np.float32)
W = RNG.standard_normal((3, 8, 8)).astype(np.float32)


def quadratic(batch: np.ndarray) -> np.ndarray:
    """f(x) = w . x + |x|^2 / 2: gradient w + x, and curved, as a network is."""
    b = batch.astype(np.float64)
    return (b * W).sum(axis=(1, 2, 3)) + 0.5 * (b * b).sum(axis=(1, 2, 3))


def test_the_true_gradient_passes():
    result = check_steepest(quadratic, X, W + X)
    assert result.skipped is None and result.step == 1e-4
    assert result.relative_error < 1e-3
    assert result.directional_derivative == pytest.approx(np.linalg.norm(W + X), rel=1e-6)


@pytest.mark.parametrize("wrong", ["twice", "half", "sideways", "sign"])
def test_a_wrong_gradient_is_refused(wrong):
    g = (W + X).astype(np.float64)
    side = RNG.standard_normal(g.shape)
    side -= (side * g).sum() / (g * g).sum() * g  # orthogonal to g
    side *= 0.6 * np.linalg.norm(g) / np.linalg.norm(side)
    bad = {"twice": 2 * g, "half": g / 2, "sideways": g + side, "sign": -g}[wrong]
    with pytest.raises(InternalError, match="disagrees with the model.*gradient rule is wrong"):
        check_steepest(quadratic, X, bad.astype(np.float32))


def test_a_saturated_score_is_inconclusive_not_refused():
    """A probability near 1: gradient ~1e-9, and over any step float32 resolves, f is curved;
    no step is conclusive, so even a wrong gradient passes unjudged (logged)."""
    def saturated(batch):
        z = 20 + 5 * (batch.astype(np.float64) * W).sum(axis=(1, 2, 3)) / np.linalg.norm(W)
        return (1 / (1 + np.exp(-z))).astype(np.float32)

    result = check_steepest(saturated, X, 3 * W)
    assert result.skipped is not None and "linear" in result.skipped


def test_zero_and_non_finite_gradients():
    assert check_steepest(quadratic, X, np.zeros_like(X)).skipped == "the gradient is 0"
    with pytest.raises(InternalError, match="not finite"):
        check_steepest(quadratic, X, np.full_like(X, np.inf))


def test_fp16_graphs_are_not_checked():
    models = ROOT / "models"
    assert why_unchecked(load_model(models / "efficientnet_lite0.onnx").graph()) is None
    fp16 = load_model(models / "efficientnet_lite0_fp16.onnx").graph()
    assert "fp16" in why_unchecked(fp16) and "fp16" in why_unchecked(fp16, surrogate=True)
    int8 = load_model(models / "efficientnet_lite0_int8.onnx").graph()
    assert "quantized" in why_unchecked(int8) and why_unchecked(int8, surrogate=True) is None


def int8_and_cat():
    model = load_model(ROOT / "models" / "efficientnet_lite0_int8.onnx", device="cpu")
    pre = Preprocessing.for_model(ROOT / "models" / "efficientnet_lite0.onnx", (224, 224))
    return model, pre.prepare(ROOT / "examples" / "cat.jpg").tensor


def test_an_int8_input_gradient_is_checked_on_its_frozen_surrogate():
    """Each Q/DQ pair frozen at the input (y = m x + c) leaves the INT8 EfficientNet affine:
    its finite differences equal the straight-through gradient to float rounding. (The small
    QDQ CNN of test_qoperator.py, with MaxPool and Sigmoid, passes the same check in its
    tests; with optimised sessions its fused integer kernels put it 99% off.)"""
    model, x = int8_and_cat()
    explain(model, x, "saliency", target=282)
    (check,) = model.gradient_checks.values()
    assert check.skipped is None and check.relative_error < 1e-4
    assert check.directional_derivative == pytest.approx(6.978, rel=1e-3)


def test_the_unclipped_straight_through_rule_is_caught(wrong_rule):
    """The rule this project had until the tenth session (dy / s everywhere, no clip) gave the
    INT8 model an input gradient of norm 1.4e12: the check stops it."""
    def unclipped(e, node, gys, need):
        dt = e.gdtype(node.input[0])
        return [e.op("Div", gys[0], vjp_rules._along_axis(e, node.input[1], node.input[0],
                                                         vjp_rules._qdq_axis(node), dt))]

    wrong_rule("QuantizeLinear", unclipped)
    model, x = int8_and_cat()
    with pytest.raises(InternalError, match="input gradient disagrees"):
        explain(model, x, "saliency", target=282)


def test_a_real_graph_passes_and_the_check_costs_no_counted_query(x32):
    model = load_model(model_path("tiny_cnn"), device="cpu")
    e = explain(model, x32, "saliency", target=1)
    assert e.n_queries == 1
    (check,) = model.gradient_checks.values()
    assert check.skipped is None and check.relative_error < 0.05


U = RNG.standard_normal(16)
M = RNG.standard_normal((16, X.size)).astype(np.float32) / 8


def features_and_linear_head(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A = tanh(M x) (16 features, curved in x), f = u . A: the head is linear, so a change of
    A predicts the change of f exactly, however A moved."""
    a = np.tanh(batch.reshape(len(batch), -1).astype(np.float64) @ M.T)
    return a @ U, a


@pytest.mark.parametrize("factor, passes", [(1.0, True), (2.0, False), (-1.0, False)])
def test_a_layer_gradient_is_judged_by_the_change_of_its_layer(factor, passes):
    if passes:
        result = check_layer_gradient(features_and_linear_head, X, factor * U)
        assert result.skipped is None and result.relative_error < 1e-6
    else:
        with pytest.raises(InternalError, match="layer gradient disagrees"):
            check_layer_gradient(features_and_linear_head, X, factor * U)


def test_only_a_layer_every_path_crosses_is_checked():
    """x -> a -> b -> out with a skip x -> s -> out: b is not crossed by every path; a shape
    read of x after the cut is a path too."""
    chain = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    skip = [helper.make_node("Neg", ["x"], ["s"]), helper.make_node("Add", ["b", "s"], ["out"])]
    shape = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Reshape", ["b", "sh"], ["out"])]
    plain = [helper.make_node("Identity", ["b"], ["out"])]

    def graph(nodes):
        return helper.make_graph(nodes, "g", [], [])

    assert separates(graph(chain + plain), "b", "x", "out")
    assert separates(graph(chain + plain), "a", "x", "out")
    assert not separates(graph(chain + skip), "b", "x", "out")
    assert not separates(graph(chain + shape), "b", "x", "out")


def test_gradcam_checks_its_layer_gradient(x32):
    model = load_model(model_path("tiny_cnn"), device="cpu")
    e = explain(model, x32, "gradcam", target=1)
    assert e.n_queries == 1
    (check,) = model.gradient_checks.values()
    assert check.skipped is None and check.relative_error < 0.01  # GAP + Gemm: a linear head


def test_a_wrong_rule_after_the_layer_stops_every_cam_method(wrong_rule, x32):
    """Global average pooling's rule doubled: every CAM method that reads gradients stops."""
    wrong_rule("GlobalAveragePool", doubled("GlobalAveragePool"))
    model = load_model(model_path("tiny_cnn"), device="cpu")
    for method in ("gradcam", "gradcampp", "xgradcam", "layercam", "smooth-gradcampp"):
        model.gradient_checks.clear()
        with pytest.raises(InternalError, match="layer gradient disagrees"):
            explain(model, x32, method, target=1)
    assert explain(model, x32, "scorecam", target=1).map.any()  # no gradient read: runs


@pytest.fixture
def wrong_rule(monkeypatch, tmp_path):
    """``wrong_rule(op, rule)`` replaces an op's rule for this test; no backward graph cached
    before (disk or memory) is reused, so every graph from then on is built with it."""
    def replace(op: str, rule) -> None:
        monkeypatch.setenv("BLACKBOX_XAI_CACHE", str(tmp_path / f"cache-{op}"))
        monkeypatch.setattr(autodiff, "_memory_cache", type(autodiff._memory_cache)())
        monkeypatch.setitem(vjp_rules.RULES, op, rule)

    return replace


def doubled(op: str):
    """``op``'s rule with every gradient it returns doubled."""
    rule = vjp_rules.RULES[op]
    return lambda e, node, gys, need: [g and e.op("Add", g, g) for g in rule(e, node, gys, need)]


@pytest.fixture
def relu_without_its_mask(wrong_rule):
    """A wrong rule: ReLU passes the gradient of every unit."""
    wrong_rule("Relu", lambda e, node, gys, need: [gys[0]])


@pytest.mark.usefixtures("relu_without_its_mask")
def test_a_wrong_rule_stops_every_input_gradient_method(x32):
    model = load_model(model_path("tiny_cnn"), device="cpu")
    for method in ("saliency", "integrated-gradients", "smoothgrad"):
        model.gradient_checks.clear()
        with pytest.raises(InternalError, match="gradient rule is wrong"):
            explain(model, x32, method, target=1)


@pytest.mark.usefixtures("relu_without_its_mask")
def test_the_cli_says_it_in_one_line_and_writes_nothing(run, tmp_path):
    image = ROOT / "examples" / "cat.jpg"
    out = tmp_path / "out"
    result = run("explain", "saliency", model_path("tiny_cnn"), image, "--out", out)
    assert result.exit_code == 3
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert len(errors) == 1 and "gradient rule is wrong" in errors[0]
    assert not out.exists()


def test_a_layer_a_skip_connection_goes_around_is_checked_through_its_head():
    """A ViT's default CAM layer (the last block's norm1 input) is bypassed by the residual
    stream: checked on the cut's head along the gradient's steepest direction."""
    model = load_model(ROOT / "tests" / "models" / "transformers" / "vit_tiny.onnx", device="cpu")
    x = np.random.default_rng(2).standard_normal(model.example_chw()).astype(np.float32)
    explain(model, x, "gradcam", target=1)
    (check,) = model.gradient_checks.values()
    assert check.skipped is None and check.relative_error < 0.01


def test_a_wrong_rule_in_a_transformer_head_stops_gradcam(wrong_rule):
    wrong_rule("MatMul", doubled("MatMul"))
    model = load_model(ROOT / "tests" / "models" / "transformers" / "vit_tiny.onnx", device="cpu")
    x = np.random.default_rng(2).standard_normal(model.example_chw()).astype(np.float32)
    with pytest.raises(InternalError, match="layer gradient disagrees"):
        explain(model, x, "gradcam", target=1)


def test_a_head_that_reads_shape_arithmetic_is_checked_one_activation_at_a_time():
    """PP-OCR's classifier cut at 'Clip@17': the head also reads a tensor without a batch axis
    from before the cut (Score-CAM refuses such a layer); the check runs it one row at a time."""
    model = load_model(ROOT / "tests" / "third_party" / "ppocr_mobile_v2_cls.onnx", device="cpu")
    assert model.cut("Clip@17", batched=False).unbatched is not None
    x = np.random.default_rng(2).uniform(-1, 1, model.example_chw()).astype(np.float32)
    explain(model, x, "gradcam", target=0, layer="Clip@17")
    (check,) = model.gradient_checks.values()
    assert check.skipped is None and check.relative_error < 0.05


def test_gradient_rollout_checks_its_first_block_and_stops_on_a_wrong_rule(wrong_rule):
    """Several attention tensors: the first block's gradient is checked through the cut's head
    (every later block inside it); a doubled MatMul rule stops the method."""
    path = ROOT / "tests" / "models" / "transformers" / "vit_tiny.onnx"
    x = np.random.default_rng(2).standard_normal((3, 32, 32)).astype(np.float32)
    model = load_model(path, device="cpu")
    explain(model, x, "gradient-rollout", target=1)
    (check,) = model.gradient_checks.values()
    assert check.skipped is None and check.relative_error < 0.01
    wrong_rule("MatMul", doubled("MatMul"))
    with pytest.raises(InternalError, match="layer gradient disagrees"):
        explain(load_model(path, device="cpu"), x, "gradient-rollout", target=1)
