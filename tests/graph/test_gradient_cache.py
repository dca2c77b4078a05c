"""Backward graphs are cached on disk under $BLACKBOX_XAI_CACHE and reused."""

from __future__ import annotations

import numpy as np
from helpers import model_path

from blackbox_xai import explain, load_model
from blackbox_xai.graph import autodiff


def test_backward_graph_is_written_once_and_reused(tmp_path, monkeypatch, x32):
    monkeypatch.setenv("BLACKBOX_XAI_CACHE", str(tmp_path))
    autodiff._memory_cache.clear()
    first = explain(load_model(model_path("tiny_cnn")), x32, "gradcam", target=1).map
    files = list(tmp_path.glob("backward-*.onnx"))
    assert len(files) == 1
    autodiff._memory_cache.clear()
    calls = []
    monkeypatch.setattr(autodiff, "backward", lambda *a, **k: calls.append(a))
    second = explain(load_model(model_path("tiny_cnn")), x32, "gradcam", target=1).map
    assert calls == []  # read from disk, not rebuilt
    np.testing.assert_array_equal(first, second)
