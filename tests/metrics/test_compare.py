"""compare_models and the map similarity measures: identical deployments, a perturbed copy, INT8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, model_path
from onnx import numpy_helper

from blackbox_xai import load_model
from blackbox_xai.compare import compare_models
from blackbox_xai.errors import BlackboxError
from blackbox_xai.metrics import similarity, spearman, ssim, top_k_iou
from blackbox_xai.preprocess import Preprocessing

OCCLUSION = {"window": 8, "stride": 4}


def perturbed_copy(path, noise: float, name: str = "fc.w", seed: int = 0) -> str:
    """tiny_cnn with Gaussian noise of ``noise`` x std added to one layer's weights."""
    proto = onnx.load(model_path("tiny_cnn"))
    for init in proto.graph.initializer:
        if init.name == name:
            w = numpy_helper.to_array(init)
            w = w + np.random.default_rng(seed).normal(0, noise * w.std(), w.shape).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(proto, str(path))
    return str(path)


@pytest.fixture(scope="module")
def tiny():
    return load_model(model_path("tiny_cnn"), device="cpu")


@pytest.fixture(scope="module")
def photos(tiny):
    pre = Preprocessing.for_model(tiny.path, (32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    return [pre.prepare(EXAMPLES / f"{n}.jpg").tensor for n in ("cat", "coffee", "rocket")]


def test_spearman_equals_scipys_with_ties():
    """Our rank correlation (no scipy.stats import) against scipy's, on maps with many ties."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, (12, 12)), rng.integers(0, 7, (12, 12)) + 0.5 * rng.integers(0, 5, (12, 12))
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert spearman([[1, 2, 2, 3]], [[1, 3, 2, 4]]) == pytest.approx(0.9486832980505138)


def test_similarity_measures():
    rng = np.random.default_rng(0)
    a = rng.random((20, 20))
    assert similarity(a, a) == {"spearman": 1.0, "top_k_iou": 1.0, "ssim": pytest.approx(1.0)}
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, 3 * a + 1) == pytest.approx(1.0)  # scale-free
    assert abs(spearman(a, rng.random((20, 20)))) < 0.2
    b = np.zeros((10, 10))
    b[:1] = 1  # top 10% = first row
    c = np.zeros((10, 10))
    c[:, :1] = 1  # top 10% = first column: overlap 1 pixel of 19
    assert top_k_iou(b, c, 0.1) == pytest.approx(1 / 19)
    assert spearman(np.ones((4, 4)), np.ones((4, 4))) == 1.0
    assert spearman(np.ones((4, 4)), a[:4, :4]) == 0.0
    assert ssim(a, 1 - a) < 0
    with pytest.raises(BlackboxError, match="same shape"):
        spearman(a, a[:10])
    with pytest.raises(BlackboxError, match="fraction"):
        top_k_iou(a, a, 0)


def test_a_model_against_itself_is_identical(tiny, photos):
    r = compare_models(tiny, tiny, photos, "occlusion", names=["cat", "coffee", "rocket"], **OCCLUSION)
    assert r.ok and r.n_flips == 0 and r.n_drifted == 0 and r.agreement == 1.0
    for row in r.rows:
        assert row.spearman == 1.0 and row.top_k_iou == 1.0 and row.ssim == pytest.approx(1.0)
        assert row.max_logit_delta == 0.0 and row.max_prob_delta == 0.0
    assert r.options == {"window": 8, "stride": 4, "baseline": "zero"}
    assert r.summary() == {"images": 3, "top1_agreement": 1.0, "flips": 0, "drifted": 0, "ok": True,
                           "min_spearman": 1.0, "mean_spearman": 1.0, "max_logit_delta": 0.0,
                           "max_prob_delta": 0.0}


def test_one_perturbed_layer_drifts_without_flipping(tiny, photos, tmp_path):
    """Noise on the classifier's weights: the same top-1 everywhere, but different reasons."""
    b = load_model(perturbed_copy(tmp_path / "p.onnx", 1.0), device="cpu")
    r = compare_models(tiny, b, photos, "occlusion", **OCCLUSION)
    assert r.n_flips == 0
    assert r.n_drifted >= 1 and not r.ok
    assert min(row.spearman for row in r.rows) < 0.6
    assert [row.drifted for row in r.rows] == [row.spearman < 0.8 for row in r.rows]
    s = r.summary()
    assert s["drifted"] == r.n_drifted and s["max_logit_delta"] > 0.5
    # the same copy with a tiny perturbation passes
    small = load_model(perturbed_copy(tmp_path / "s.onnx", 1e-4), device="cpu")
    assert compare_models(tiny, small, photos, "occlusion", **OCCLUSION).ok


def test_compare_rejects_bad_settings(tiny, photos):
    with pytest.raises(BlackboxError, match="threshold"):
        compare_models(tiny, tiny, photos, "occlusion", threshold=1.5)
    with pytest.raises(BlackboxError, match="names"):
        compare_models(tiny, tiny, photos, "occlusion", names=["one"])
    linear = load_model(model_path("linear"), device="cpu")
    with pytest.raises(BlackboxError, match="classes"):
        compare_models(tiny, linear, photos[:1], "occlusion", **OCCLUSION)
