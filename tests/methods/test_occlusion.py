"""Occlusion against its closed form on the linear model."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import model_path

from blackbox_xai import explain, load_model
from blackbox_xai.methods.occlusion import window_starts


def occlusion_closed_form(w_c: np.ndarray, x: np.ndarray, window: int, stride: int,
                          baseline: np.ndarray) -> np.ndarray:
    """For f = w . x: the drop of a window is sum over it of w_c * (x - baseline); mean per pixel."""
    _, h, wd = x.shape
    contrib = (w_c.reshape(x.shape) * (x - baseline)).sum(axis=0)
    total, count = np.zeros((h, wd)), np.zeros((h, wd))
    for y in window_starts(h, window, stride):
        for x_ in window_starts(wd, window, stride):
            total[y:y + window, x_:x_ + window] += contrib[y:y + window, x_:x_ + window].sum()
            count[y:y + window, x_:x_ + window] += 1
    return total / count


def test_window_starts_cover_every_pixel():
    assert window_starts(32, 16, 8) == [0, 8, 16]
    assert window_starts(30, 16, 8) == [0, 8, 14]
    assert window_starts(224, 16, 8)[-1] == 208 and len(window_starts(224, 16, 8)) == 27


@pytest.mark.parametrize("window,stride", [(16, 8), (8, 8), (5, 3), (32, 1)])
def test_occlusion_equals_closed_form_on_linear_onnx_model(linear_weights, x32, window, stride):
    w, _ = linear_weights
    model = load_model(model_path("linear"))
    exp = explain(model, x32, "occlusion", target=3, window=window, stride=stride)
    expected = occlusion_closed_form(w[:, 3], x32, window, stride, np.zeros_like(x32))
    np.testing.assert_allclose(exp.map, expected, rtol=1e-5, atol=1e-5)
    n_windows = len(window_starts(32, window, stride)) ** 2
    assert exp.n_queries == n_windows + 1


def test_occlusion_mean_baseline_and_numeric_baseline(linear_query, linear_weights, x32):
    w, _ = linear_weights
    mean = np.broadcast_to(x32.mean(axis=(1, 2), keepdims=True), x32.shape)
    got = explain(linear_query, x32, "occlusion", target=0, baseline="mean").map
    np.testing.assert_allclose(got, occlusion_closed_form(w[:, 0], x32, 16, 8, mean), atol=1e-4)
    got = explain(linear_query, x32, "occlusion", target=0, baseline=0.5).map
    np.testing.assert_allclose(got, occlusion_closed_form(w[:, 0], x32, 16, 8, np.full_like(x32, 0.5)),
                               atol=1e-4)


def test_occlusion_rejects_bad_window(linear_query, x32):
    from blackbox_xai.errors import BlackboxError

    with pytest.raises(BlackboxError, match="window"):
        explain(linear_query, x32, "occlusion", window=64)
