"""Gradient maps on the linear ONNX model (exact answers) and the tiny CNN."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import model_path

from blackbox_xai import explain, load_model


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
    coarse = explain(tiny, x32, "integrated-gradients", target=1, steps=4)
    fine = explain(tiny, x32, "integrated-gradients", target=1, steps=128)
    assert abs(fine.extras["completeness_gap"]) < 0.02 * abs(fine.extras["score_difference"])
    assert abs(fine.extras["completeness_gap"]) <= abs(coarse.extras["completeness_gap"]) + 1e-6


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
