"""Deletion/insertion (RISE protocol): closed-form AUCs and the oracle-beats-random ordering."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import model_path

from blackbox_xai import load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.metrics import auc, deletion_insertion, rise_blur
from blackbox_xai.metrics.deletion import default_pixels_per_step, rise_kernel

H = W = 32
REGION = (slice(0, 8), slice(8, 16))  # 64 of 1024 pixels: the only pixels the model reads


def region_mean(batch: np.ndarray) -> np.ndarray:
    """Score = mean of the region over channels and pixels: (N, 1)."""
    return batch[:, :, REGION[0], REGION[1]].mean(axis=(1, 2, 3))[:, None]


def two_class_query(batch: np.ndarray) -> np.ndarray:
    """Logits (4 * region mean, 0): the softmax of class 0 depends on the region only."""
    s = 4 * region_mean(batch)
    return np.concatenate([s, np.zeros_like(s)], axis=1)


def oracle_map() -> np.ndarray:
    m = np.zeros((H, W), np.float32)
    m[REGION] = 1.0
    return m


def test_auc_of_known_curves():
    assert auc([0.0, 1.0]) == pytest.approx(0.5)
    assert auc(np.linspace(1, 0, 29)) == pytest.approx(0.5)  # linear ramp
    assert auc(np.full(11, 0.3)) == pytest.approx(0.3)
    # a step down at t = 0.25 sampled at t = 0, .25, .25, 1: exactly 0.25
    assert auc([1, 1, 0, 0], [0, 0.25, 0.25, 1]) == pytest.approx(0.25)
    # y = t^2 on 3 points: trapezoid gives 0.375 (not the integral 1/3)
    assert auc([0, 0.25, 1]) == pytest.approx(0.375)
    with pytest.raises(BlackboxError):
        auc([1.0])
    with pytest.raises(BlackboxError):
        auc([1, 0], [0, 0.5])


def test_closed_form_curves_for_an_oracle_map():
    """Score = fraction of the region present; oracle order deletes the region first:
    deletion curve max(0, 1 - t/a) -> AUC a/2; insertion onto zeros min(1, t/a) -> AUC 1 - a/2."""
    x = np.ones((3, H, W), np.float32)
    a = 64 / (H * W)
    r = deletion_insertion(region_mean, x, oracle_map(), 0, pixels_per_step=16,
                           apply_softmax=False, substrate=np.zeros_like(x))
    assert len(r.fractions) == 65 and r.fractions[0] == 0 and r.fractions[-1] == 1
    assert r.deletion_curve[:5] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert r.deletion_auc == pytest.approx(a / 2)
    assert r.insertion_auc == pytest.approx(1 - a / 2)
    assert r.n_queries == 2 * 65


def test_oracle_map_beats_random_maps():
    x = np.full((3, H, W), 1.0, np.float32)
    oracle = deletion_insertion(two_class_query, x, oracle_map(), 0)
    worst = deletion_insertion(two_class_query, x, -oracle_map(), 0)
    rng = np.random.default_rng(0)
    randoms = [deletion_insertion(two_class_query, x, rng.random((H, W)), 0) for _ in range(5)]
    for r in randoms:
        assert oracle.deletion_auc < r.deletion_auc < worst.deletion_auc
        assert oracle.insertion_auc > r.insertion_auc > worst.insertion_auc
    assert np.mean([r.deletion_auc for r in randoms]) - oracle.deletion_auc > 0.2
    # softmax of (4 m, 0): the curves are probabilities of class 0 in (0, 1)
    assert oracle.deletion_curve[0] == pytest.approx(1 / (1 + np.exp(-4)), rel=1e-5)


def test_rise_protocol_defaults():
    assert default_pixels_per_step(224, 224) == 1792
    assert default_pixels_per_step(32, 32) == 37
    k = rise_kernel()
    assert k.shape == (11, 11) and k.sum() == pytest.approx(1.0) and k.argmax() == 60
    x = np.ones((3, 64, 64), np.float32)
    b = rise_blur(x)
    assert b[:, 32, 32] == pytest.approx(1.0, abs=1e-6)  # interior of a constant image unchanged
    assert b[0, 0, 0] < 0.5  # zero padding darkens the corner, as in RISE
    r = deletion_insertion(two_class_query, np.ones((3, 224, 224), np.float32),
                           np.zeros((224, 224)), 0)
    assert r.pixels_per_step == 1792 and len(r.deletion_curve) == 29 and r.n_queries == 58


def test_chunking_does_not_change_the_curves(x32):
    m = np.random.default_rng(3).random((H, W))
    a = deletion_insertion(two_class_query, x32, m, 0, chunk=1)
    b = deletion_insertion(two_class_query, x32, m, 0, chunk=100)
    np.testing.assert_allclose(a.deletion_curve, b.deletion_curve, rtol=1e-6)
    np.testing.assert_allclose(a.insertion_curve, b.insertion_curve, rtol=1e-6)


def test_with_a_model_softmax_is_applied_once(x32):
    logit = load_model(model_path("tiny_cnn"), device="cpu", score="logit")
    prob = load_model(model_path("tiny_cnn"), device="cpu", score="prob")
    m = np.random.default_rng(4).random((H, W))
    a = deletion_insertion(logit, x32, m, 2)
    b = deletion_insertion(prob, x32, m, 2)
    np.testing.assert_allclose(a.deletion_curve, b.deletion_curve, rtol=1e-5)
    assert 0 < a.deletion_curve.min() and a.insertion_curve.max() < 1
    assert logit.n_queries == a.n_queries == 2 * 29


def test_bad_arguments(x32):
    with pytest.raises(BlackboxError, match="saliency_map"):
        deletion_insertion(two_class_query, x32, np.zeros((16, 16)), 0)
    with pytest.raises(BlackboxError, match="target"):
        deletion_insertion(two_class_query, x32, np.zeros((H, W)), 7)
    with pytest.raises(BlackboxError, match="pixels_per_step"):
        deletion_insertion(two_class_query, x32, np.zeros((H, W)), 0, pixels_per_step=0)


def test_completeness_gap_from_extras(linear_query, x32):
    """(Lives here for want of a completeness test file.) Shapley's efficiency gap on a linear
    model is ~0; a method without the axiom has none; IG-style extras are read as reported."""
    from blackbox_xai import all_methods, explain
    from blackbox_xai.metrics import completeness_gap

    if "shapley" not in all_methods():
        pytest.skip("shapley is not registered")
    exp = explain(linear_query, x32, "shapley", target=3, grid=4, n_permutations=2)
    assert completeness_gap(exp) < 1e-4
    attr = exp.extras["attributions"]
    assert float(attr.sum()) == pytest.approx(exp.score - exp.extras["baseline_score"], abs=1e-3)
    assert completeness_gap(explain(linear_query, x32, "occlusion", window=16, stride=16)) is None
    ig = exp.__class__(**{**exp.__dict__, "extras": {"completeness_gap": -0.25,
                                                      "score_difference": 2.0}})
    assert completeness_gap(ig) == 0.25 and completeness_gap(ig, relative=True) == 0.125
    recomputed = exp.__class__(**{**exp.__dict__, "extras": {
        "attributions": np.array([1.0, 2.0]), "baseline_score": exp.score - 3.5}})
    assert completeness_gap(recomputed) == pytest.approx(0.5)
