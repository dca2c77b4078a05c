"""Gradient maps on the linear ONNX model (exact answers), separable models built here with a
closed-form IG (quartic, sigmoid), and the tiny CNN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import model_path
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.methods.gradients import quadrature


@pytest.fixture(scope="module")
def linear():
    return load_model(model_path("linear"))


def test_saliency_is_abs_weight_pattern(linear, linear_weights, x32):
    w = linear_weights[0][:, 4].reshape(3, 32, 32)
    exp = explain(linear, x32, "saliency", target=4)
    np.testing.assert_allclose(exp.map, np.abs(w).max(axis=0), rtol=1e-5, atol=1e-7)


def test_gradient_x_input_is_w_times_x(linear, linear_weights, x32):
    w = linear_weights[0][:, 4].reshape(3, 32, 32)
    exp = explain(linear, x32, "gradient-x-input", target=4)
    np.testing.assert_allclose(exp.map, (w * x32).sum(axis=0), rtol=1e-4, atol=1e-6)


def test_integrated_gradients_equals_gradient_x_input_and_is_complete(linear, x32):
    ig = explain(linear, x32, "integrated-gradients", target=4, steps=8)
    gxi = explain(linear, x32, "gradient-x-input", target=4)
    np.testing.assert_allclose(ig.map, gxi.map, rtol=1e-4, atol=1e-6)
    assert abs(ig.extras["completeness_gap"]) < 1e-3
    assert ig.n_queries == 1 + 8 + 1


def test_integrated_gradients_completeness_on_nonlinear_model(x32):
    tiny = load_model(model_path("tiny_cnn"))
    coarse = explain(tiny, x32, "integrated-gradients", target=1, steps=4, tolerance=0)
    fine = explain(tiny, x32, "integrated-gradients", target=1, steps=128, tolerance=0)
    assert abs(fine.extras["completeness_gap"]) < 0.02 * abs(fine.extras["score_difference"])
    assert abs(fine.extras["completeness_gap"]) <= abs(coarse.extras["completeness_gap"]) + 1e-6


SHAPE = (3, 16, 16)


def separable_model(path, kind: str, w: np.ndarray) -> str:
    """f_k(x) = sum_u W_ku phi(x_u) + b_k, phi(x) = x^4 ('quartic') or sigmoid(3 x) ('sigmoid'):
    d f_k / d x_u = W_ku phi'(x_u), so IG_u = W_cu (phi(x_u) - phi(x'_u)) exactly."""
    if kind == "quartic":
        nodes = [helper.make_node("Mul", ["x", "x"], ["x2"]),
                 helper.make_node("Mul", ["x2", "x2"], ["phi"])]
    else:
        nodes = [helper.make_node("Mul", ["x", "three"], ["x3"]),
                 helper.make_node("Sigmoid", ["x3"], ["phi"])]
    nodes += [helper.make_node("Flatten", ["phi"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "W", "b"], ["scores"], transB=1)]
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"),
             numpy_helper.from_array(np.linspace(-1, 1, len(w)).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three")]
    graph = helper.make_graph(
        nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(w)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out = path / f"{kind}.onnx"
    onnx.save(model, out)
    return str(out)


def phi(kind: str, x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) ** 4 if kind == "quartic" else 1 / (1 + np.exp(-3.0 * x))


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """(kind -> Model, W (2, 768), x (3, 16, 16)): class 0 has positive weights (scores of order
    one, far from float32 rounding), class 1 mixed signs."""
    rng = np.random.default_rng(5)
    w = np.stack([rng.uniform(0.5, 1.5, 768), rng.standard_normal(768)]) / 768 * 4
    path = tmp_path_factory.mktemp("separable")
    x = rng.uniform(0.2, 1.2, SHAPE).astype(np.float32)
    return {k: load_model(separable_model(path, k, w)) for k in ("quartic", "sigmoid")}, w, x


@pytest.mark.parametrize("kind", ["quartic", "sigmoid"])
@pytest.mark.parametrize("baseline", ["zero", 0.5])
@pytest.mark.parametrize("target", [0, 1])
def test_integrated_gradients_matches_the_closed_form(separable, kind, baseline, target):
    """Gauss-Legendre, default settings: IG_u = W_cu (phi(x_u) - phi(x'_u)) and completeness."""
    models, w, x = separable
    exp = explain(models[kind], x, "integrated-gradients", target=target, baseline=baseline)
    base = np.zeros(SHAPE) if baseline == "zero" else np.full(SHAPE, 0.5)
    expected = w[target].reshape(SHAPE) * (phi(kind, x) - phi(kind, base))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(exp.extras["attributions"], expected, atol=2e-5 * scale)
    np.testing.assert_allclose(exp.map, expected.sum(axis=0), atol=6e-5 * scale)
    size = np.abs(expected).sum()  # class 1 cancels: float32 scores are exact to ~1e-7 of it
    assert exp.extras["score_difference"] == pytest.approx(expected.sum(), abs=1e-5 * size)
    assert abs(exp.extras["completeness_gap"]) < 1e-5 * size
    assert exp.extras["steps"] == 50 and exp.extras["tolerance_met"] is True
    assert exp.n_queries == 1 + 50 + 1


@pytest.mark.parametrize("rule,steps,relative_gap", [
    ("midpoint", 1, -1 / 2), ("midpoint", 5, -1 / 50), ("midpoint", 12, -1 / 288),
    ("trapezoid", 2, 1.0), ("trapezoid", 5, 1 / 16), ("trapezoid", 13, 1 / 144),
    ("gauss-legendre", 1, -1 / 2), ("gauss-legendre", 2, 0.0), ("gauss-legendre", 7, 0.0)])
def test_each_rule_has_its_textbook_error_on_the_quartic(separable, rule, steps, relative_gap):
    """From a zero baseline the path integrand of sum(IG) is h(a) = 4 F a^3, F = f(x) - f(0), and
    every IG_u is the same fraction of W_u x_u^4. Euler-Maclaurin for a cubic, no higher term:
    midpoint sums F (1 - 1 / (2 n^2)), trapezoid F (1 + 1 / (n - 1)^2); Gauss-Legendre is exact
    from 2 nodes (degree 2n - 1 >= 3), and its 1 node is the midpoint."""
    models, w, x = separable
    exp = explain(models["quartic"], x, "integrated-gradients", target=0, rule=rule, steps=steps,
                  tolerance=0)
    f = (w[0].reshape(SHAPE) * phi("quartic", x))
    assert exp.extras["completeness_gap"] == pytest.approx(relative_gap * f.sum(), abs=2e-5 * f.sum())
    np.testing.assert_allclose(exp.extras["attributions"], (1 + relative_gap) * f,
                               atol=2e-5 * f.max())
    assert exp.extras["steps"] == steps and exp.extras["tolerance_met"] is None
    assert exp.n_queries == 1 + steps + (rule != "trapezoid")  # its first node is the baseline


@pytest.mark.parametrize("steps", [4, 6, 8])
def test_gauss_legendre_beats_the_midpoint_rule_at_equal_steps(separable, steps):
    """On the smooth sigmoid path Gauss-Legendre's error falls geometrically, the midpoint
    rule's as 1/n^2. Measured |gap| (score difference 1.42), Gauss-Legendre / midpoint: 4 steps
    1.7e-5 / 2.7e-3, 6 steps 1.2e-7 / 1.2e-3, 8 steps 2e-8 / 6.9e-4."""
    models, _, x = separable
    gaps = {rule: abs(explain(models["sigmoid"], x, "integrated-gradients", target=0, rule=rule,
                              steps=steps, tolerance=0).extras["completeness_gap"])
            for rule in ("gauss-legendre", "midpoint")}
    assert gaps["gauss-legendre"] < 0.01 * gaps["midpoint"]


@pytest.mark.parametrize("tolerance,max_steps,steps_used,met", [
    (1e-3, 400, 32, True), (0.02, 400, 8, True), (0.05, 400, 4, True), (1e-3, 16, 16, False),
    (1e-3, 31, 16, False), (1e-9, 4, 4, False)])
def test_tolerance_doubles_the_steps_until_the_gap_is_met(separable, tolerance, max_steps,
                                                         steps_used, met):
    """Midpoint on the quartic from 4 steps: relative gaps 1/(2 n^2) = 1/32, 1/128, 1/512, 1/2048
    at n = 4, 8, 16, 32; each round is a fresh rule, so the queries are the sum of the rounds."""
    models, _, x = separable
    exp = explain(models["quartic"], x, "integrated-gradients", target=0, rule="midpoint",
                  steps=4, tolerance=tolerance, max_steps=max_steps)
    assert exp.extras["steps"] == steps_used and exp.extras["tolerance_met"] is met
    rel = abs(exp.extras["completeness_gap"] / exp.extras["score_difference"])
    assert rel == pytest.approx(1 / (2 * steps_used ** 2), rel=1e-3)
    rounds = [4 * 2 ** k for k in range(steps_used.bit_length() - 2)]
    assert rounds[-1] == steps_used
    assert exp.n_queries == 1 + sum(rounds) + 1


def test_a_tolerance_left_unmet_is_said(separable, caplog):
    models, _, x = separable
    with caplog.at_level("WARNING", logger="blackbox_xai"):
        explain(models["quartic"], x, "integrated-gradients", target=0, rule="midpoint",
                steps=4, tolerance=1e-3, max_steps=16)
    assert "completeness gap 0.2% of the score difference after 16 steps, above --tolerance " \
           "0.001: --max-steps 16 stopped" in caplog.text


def test_quadrature_rules_integrate_what_they_should():
    """Independent of IG: the nodes and weights against exact integrals on [0, 1]."""
    for n in (1, 3, 20, 400):
        a, wt = quadrature("gauss-legendre", n)
        assert wt.sum() == pytest.approx(1.0, abs=1e-12) and ((a > 0) & (a < 1)).all()
        assert (wt * a ** (2 * n - 1)).sum() == pytest.approx(1 / (2 * n), rel=1e-9)
        assert (wt * np.cos(a)).sum() == pytest.approx(np.sin(1.0), abs=1e-6 if n > 1 else 0.04)
    a, wt = quadrature("trapezoid", 3)
    np.testing.assert_allclose([a, wt], [[0, 0.5, 1], [0.25, 0.5, 0.25]])
    a, wt = quadrature("midpoint", 4)
    np.testing.assert_allclose([a, wt], [[0.125, 0.375, 0.625, 0.875], [0.25] * 4])
    with pytest.raises(BlackboxError, match="--steps 1: the trapezoid rule needs at least 2"):
        quadrature("trapezoid", 1)


def test_integrated_gradients_bad_options_are_rejected(linear, x32):
    for opts, msg in [({"rule": "simpson"}, "--rule 'simpson'"), ({"tolerance": -0.1}, "--tolerance"),
                      ({"max_steps": 0}, "--max-steps 0"), ({"steps": 0}, "--steps 0")]:
        with pytest.raises(BlackboxError, match=msg):
            explain(linear, x32, "integrated-gradients", **opts)


def test_smoothgrad_on_linear_model_equals_saliency_and_is_seeded(linear, x32):
    sal = explain(linear, x32, "saliency", target=1)
    sg = explain(linear, x32, "smoothgrad", target=1, n_samples=5, seed=3)
    np.testing.assert_allclose(sg.map, sal.map, rtol=1e-5, atol=1e-7)
    tiny = load_model(model_path("tiny_cnn"))
    a = explain(tiny, x32, "smoothgrad", n_samples=4, seed=3).map
    b = explain(tiny, x32, "smoothgrad", n_samples=4, seed=3).map
    c = explain(tiny, x32, "smoothgrad", n_samples=4, seed=4).map
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_gradients_on_nhwc_and_fp16_models_match_nchw(x32):
    ref = explain(load_model(model_path("tiny_cnn")), x32, "saliency", target=0).map
    nhwc = explain(load_model(model_path("tiny_cnn_nhwc")), x32, "saliency", target=0).map
    np.testing.assert_allclose(nhwc, ref, rtol=1e-4, atol=1e-6)
    fp16 = explain(load_model(model_path("tiny_cnn_fp16")), x32, "saliency", target=0).map
    # fp16 activations flip a few ReLUs that sit near zero, changing the gradient there; the
    # rest must agree to fp16 precision (the backward pass itself runs in fp32).
    close = np.isclose(fp16, ref, rtol=2e-2, atol=1e-2 * np.abs(ref).max())
    assert close.mean() > 0.97


def test_prob_score_gradient_matches_finite_difference(x32):
    model = load_model(model_path("tiny_cnn"), score="prob")
    g = explain(model, x32, "gradient-x-input", target=3).extras["attributions"] / np.where(
        x32 == 0, 1, x32)
    v = np.random.default_rng(0).standard_normal(x32.shape).astype(np.float32)
    eps = 1e-2
    fd = (model((x32 + eps * v)[None])[0, 3] - model((x32 - eps * v)[None])[0, 3]) / (2 * eps)
    assert float((g * v).sum()) == pytest.approx(float(fd), rel=2e-2, abs=1e-5)
