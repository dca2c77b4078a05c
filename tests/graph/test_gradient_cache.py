"""Backward graphs are cached on disk (the folder $BLACKBOX_XAI_CACHE names) and reused."""

from __future__ import annotations

import shutil
from pathlib import Path

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


def _gradcam(x32, target=1, **kwargs):
    return explain(load_model(model_path("tiny_cnn"), **kwargs), x32, "gradcam", target=target).map


def test_unreadable_cache_entries_are_rebuilt(tmp_path, monkeypatch, x32):
    monkeypatch.setenv("BLACKBOX_XAI_CACHE", str(tmp_path))
    autodiff._memory_cache.clear()
    reference = _gradcam(x32)
    (entry,) = tmp_path.glob("backward-*.onnx")
    good = entry.read_bytes()
    for damaged in (good[: len(good) // 2], b"", b"not a protobuf \xff\xfe"):
        entry.write_bytes(damaged)
        autodiff._memory_cache.clear()
        np.testing.assert_array_equal(_gradcam(x32), reference)
        assert entry.read_bytes() == good  # rewritten whole


def test_an_unusable_cache_folder_means_no_cache(tmp_path, monkeypatch, x32, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("BLACKBOX_XAI_CACHE", "off")
    autodiff._memory_cache.clear()
    reference = _gradcam(x32)
    monkeypatch.setenv("BLACKBOX_XAI_CACHE", str(blocker / "cache"))
    autodiff._memory_cache.clear()
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(_gradcam(x32), reference)
    assert "running without a cache" in caplog.text


def test_the_key_is_the_graph_differentiated_not_the_file(tmp_path, monkeypatch, x32):
    """The same fixed-batch file, loaded with and without a dynamic batch, differentiates two
    different graphs: each gets its own entry (one graph run on the other's batch would fail)."""
    monkeypatch.setenv("BLACKBOX_XAI_CACHE", str(tmp_path))
    autodiff._memory_cache.clear()
    dynamic = explain(load_model(model_path("tiny_cnn_batch1")), x32, "gradcam", target=1).map
    fixed = explain(load_model(model_path("tiny_cnn_batch1"), dynamic_batch=False), x32,
                    "gradcam", target=1).map
    assert len(list(tmp_path.glob("backward-*.onnx"))) == 2
    np.testing.assert_allclose(dynamic, fixed, rtol=1e-5, atol=1e-6)


def test_the_engine_version_follows_the_rules_source(tmp_path):
    """A change to any rule changes every cache key: the cached graphs are rebuilt."""
    folder = Path(autodiff.__file__).parent
    for name in ("autodiff.py", "vjp_rules.py", "inspect.py", "io.py"):
        shutil.copy(folder / name, tmp_path / name)
    assert autodiff.engine_version(tmp_path) == autodiff.ENGINE_VERSION
    with open(tmp_path / "vjp_rules.py", "a") as f:
        f.write("\n# a rule changed\n")
    assert autodiff.engine_version(tmp_path) != autodiff.ENGINE_VERSION
