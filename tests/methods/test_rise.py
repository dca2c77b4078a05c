"""RISE: the reference upsampling, the expected-value identity, localisation, chunking, seeds."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers import EXAMPLES, SHIPPED, Recorder
from skimage.transform import resize

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.methods.rise import rise_masks
from blackbox_xai.perturb import DEFAULT_CHUNK
from blackbox_xai.preprocess import Preprocessing
from blackbox_xai.resample import bilinear_matrix


@pytest.mark.parametrize("s,size", [(7, 224), (7, 32), (4, 32), (8, 30), (3, 10), (1, 9)])
def test_masks_match_the_reference_resize_and_crop(s, size):
    """The RISE code: resize(grid, (s+1)*cell, order=1, mode='reflect', anti_aliasing=False)[crop]."""
    rng = np.random.default_rng(s)
    cell = -(-size // s)
    grids = (rng.random((4, s, s)) < 0.5).astype(np.float64)
    dy, dx = rng.integers(0, cell, 4), rng.integers(0, cell, 4)
    got = rise_masks(grids, dy, dx, size, size)
    ref = np.stack([resize(g, ((s + 1) * cell,) * 2, order=1, mode="reflect", anti_aliasing=False)
                    [y:y + size, x:x + size] for g, y, x in zip(grids, dy, dx)])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(bilinear_matrix(5, 17, edge="reflect").sum(axis=1), 1.0)


def expected_saliency(a: np.ndarray, s: int, p: float) -> np.ndarray:
    """E[sum_u a(u) M(u) M(v)] / p for f(x0 * M) = sum_u a(u) M(u), a = sum_c w * x0.

    Given the shift, M(u) = sum_k R(u, k) G_k with E[G_k G_l] = p^2 + p (1-p) [k = l] and rows
    of R summing to one, so E[M(u) M(v)] = p^2 + p (1-p) (R R^T)(u, v). R is separable and the
    two shifts are independent and uniform: average Ry Ry^T and Rx Rx^T over the shifts.
    Result: p sum(a) + (1-p) Ky A Kx.
    """
    h, w = a.shape

    def k(size):
        cell = -(-size // s)
        r = bilinear_matrix(s, (s + 1) * cell, edge="reflect")
        return np.mean([r[d:d + size] @ r[d:d + size].T for d in range(cell)], axis=0)

    return p * a.sum() + (1 - p) * k(h) @ a @ k(w)


@pytest.mark.parametrize("p", [0.5, 0.2])
@pytest.mark.parametrize("control_variate", [False, True])
def test_expected_value_identity_on_a_linear_model(p, control_variate):
    """The map against its closed-form expectation, in units of its own per-pixel standard error.

    Plain: the mean of N i.i.d. terms X_i = f(x0 M_i) M_i / p, E = expected_saliency. With the
    control variate, S = sum_i (f_i - mean f) M_i / (N p) has E[S] = (1 - 1/N) (E[f M] / p -
    E[f]) and E[f] = p sum(a) (E[M(u)] = p exactly), so the constant p sum(a) of
    expected_saliency goes: E[S] = (1 - 1/N) (1 - p) Ky A Kx. Its per-pixel standard error is
    that of the influence terms (f_i - mean f)(M_i - mean M) / p (the delta method).

    z is ~N(0, 1) per pixel but strongly correlated across pixels (every term shares f_i), so
    mean(z^2) varies a lot from seed to seed: over 20 seeds it averaged 1.00 (range 0.3-2.9,
    max |z| <= 3.3). Wrong expectations fail by far: without the shift average mean(z^2) is
    6-15, dividing by p^2 instead of p gives > 1000; with the control variate, keeping the
    constant p sum(a) in the expectation gives mean(z^2) > 1000.
    """
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    w = (rng.standard_normal((3, 32, 32)) / 32).astype(np.float32)
    rec = Recorder(lambda z: (z * w).sum(axis=(1, 2, 3))[:, None])
    n = 3000
    exp = explain(rec, x, "rise", target=0, seed=1, n_masks=n, grid=4, p=p,
                  control_variate=control_variate)
    assert exp.n_queries == n + 1
    assert {k: v for k, v in exp.extras.items() if k != "split_half_r"} == {
        "n_masks": n, "p": p, "grid": 4, "control_variate": control_variate}
    seen = rec.seen[1:].astype(np.float64)
    masks = seen[:, 0] / x[0]  # x0 * M with a zero baseline: M recovered exactly
    scores = rec.fn(rec.seen[1:]).astype(np.float32)[:, 0].astype(np.float64)
    a = (w * x).sum(axis=0).astype(np.float64)
    if control_variate:
        terms = (scores - scores.mean())[:, None, None] * masks / p
        influence = (scores - scores.mean())[:, None, None] * (masks - masks.mean(axis=0)) / p
        expected = (1 - 1 / n) * (expected_saliency(a, 4, p) - p * a.sum())
    else:
        terms = influence = scores[:, None, None] * masks / p
        expected = expected_saliency(a, 4, p)
    np.testing.assert_allclose(exp.map, terms.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert abs(masks.mean() - p) < 0.02 and masks.min() >= -1e-6 and masks.max() <= 1 + 1e-6
    z = (exp.map - expected) / (influence.std(axis=0, ddof=1) / np.sqrt(n))
    assert 0.2 < np.mean(z ** 2) < 4.0 and np.abs(z).max() < 5.0
    centred = exp.map - exp.map.mean(), expected - expected.mean()
    assert np.corrcoef(centred[0].ravel(), centred[1].ravel())[0, 1] > 0.9


@pytest.mark.parametrize("control_variate", [False, True])
def test_split_half_r_is_the_correlation_of_the_two_half_maps(control_variate):
    """Recomputed from the masks the model saw: each half centred on its own mean score."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, (3, 24, 24)).astype(np.float32)
    w = (rng.standard_normal((3, 24, 24)) / 24).astype(np.float32)
    rec = Recorder(lambda z: 5.0 + (z * w).sum(axis=(1, 2, 3))[:, None])
    n = 301  # odd, and chunks of 64 straddle the half boundary
    exp = explain(rec, x, "rise", target=0, seed=2, n_masks=n, grid=3,
                  control_variate=control_variate)
    masks = rec.seen[1:, 0].astype(np.float64) / x[0]
    scores = rec.fn(rec.seen[1:])[:, 0].astype(np.float32).astype(np.float64)
    halves = []
    for part in (slice(0, n // 2), slice(n // 2, n)):
        f = scores[part] - (scores[part].mean() if control_variate else 0.0)
        halves.append((f[:, None, None] * masks[part]).mean(axis=0).ravel() / 0.5)
    r = np.corrcoef(*halves)[0, 1]
    assert exp.extras["split_half_r"] == pytest.approx(r, abs=1e-6)
    assert (r > 0.5) if control_variate else (r < 0.5)  # the mean score 5 swamps the plain halves
    assert explain(rec, x, "rise", n_masks=3).extras["split_half_r"] is None


def test_control_variate_removes_the_mask_coverage_noise_on_the_shipped_model():
    """EfficientNet-Lite0 logits on the cat, 64 masks (seed 0). The plain estimator's map is
    the masks' coverage, sum_i M_i / (N p), times the mean logit, plus a little signal: it
    correlates 0.998 with the map of a constant score (which is that coverage; 0.996 to 0.999
    over seeds 0-9). The control variate's map does not (-0.02; -0.31 to 0.41 over seeds 0-9).
    At 250 masks two seeds' maps correlate 0.63 to 0.67 (0.80 at 500) with the control
    variate, -0.20 to 0.12 without (the split-half agreement that predicts this:
    test_split_half_r_predicts_the_seed_to_seed_agreement). The plain map comes from the same
    scores (the same masks: checked by hashing every batch): no extra query."""
    model = load_model(SHIPPED)
    x = Preprocessing.for_model(SHIPPED, (224, 224)).prepare(EXAMPLES / "cat.jpg").tensor
    log: list = []

    def recorded(z):
        log.append((hashlib.sha256(z.tobytes()).digest(), model(z)))
        return log[-1][1]

    def replayed(z):
        digest, scores = log.pop(0)
        assert digest == hashlib.sha256(z.tobytes()).digest()
        return scores

    def constant(z):
        return np.ones((len(z), 1000), np.float32)

    options = {"target": 282, "seed": 0, "n_masks": 64}
    cv = explain(recorded, x, "rise", **options)
    plain = explain(replayed, x, "rise", **options, control_variate=False)
    coverage = explain(constant, x, "rise", **options, control_variate=False)
    r = lambda a, b: np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1]
    assert r(plain, coverage) > 0.98 and abs(r(cv, coverage)) < 0.5 and not log


def test_split_half_r_predicts_the_seed_to_seed_agreement():
    """Spearman-Brown: two independent maps of N masks correlate like 2 r / (1 + r), r the
    correlation of the two N/2-mask halves of one map. A score with a large mean (5), a region
    and a pseudo-random term, 8 seeds: the 4 seed pairs correlate 0.909 on average, the
    prediction from the 8 maps' mean split-half r (0.825) is 0.904."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0.5, 1.5, (3, 24, 24)).astype(np.float32)
    w = np.zeros((3, 24, 24), np.float32)
    w[:, 4:12, 10:20] = 0.02
    v = rng.standard_normal((3, 24, 24)).astype(np.float32)

    def query(z):
        return 5.0 + (z * w).sum(axis=(1, 2, 3))[:, None] \
            + 2 * np.sin(100 * (z * v).sum(axis=(1, 2, 3)))[:, None]

    maps = [explain(query, x, "rise", target=0, seed=s, n_masks=200, grid=4) for s in range(8)]
    pairs = np.mean([np.corrcoef(maps[i].map.ravel(), maps[i + 1].map.ravel())[0, 1]
                     for i in range(0, 8, 2)])
    half = np.mean([m.extras["split_half_r"] for m in maps])
    assert abs(2 * half / (1 + half) - pairs) < 0.03 < pairs - half


def test_map_peaks_in_the_region_the_score_depends_on():
    region = (slice(8, 16), slice(20, 28))

    def query(z):
        return z[:, 0, region[0], region[1]].mean(axis=(1, 2))[:, None]

    x = np.ones((3, 32, 32), np.float32)
    exp = explain(query, x, "rise", target=0, seed=0, n_masks=1000, grid=7)
    iy, ix = np.unravel_index(np.argmax(exp.map), exp.map.shape)
    assert 8 <= iy < 16 and 20 <= ix < 28
    inside = np.zeros((32, 32), bool)
    inside[region] = True
    assert exp.map[inside].mean() > exp.map[~inside].mean() + 0.05


def test_masks_come_in_chunks(x32):
    sizes = []

    def query(z):
        sizes.append(len(z))
        return z.reshape(len(z), -1)[:, :2]

    exp = explain(query, x32, "rise", n_masks=150, grid=5)
    assert exp.n_queries == 151
    assert sizes[1:] == [DEFAULT_CHUNK, DEFAULT_CHUNK, 150 - 2 * DEFAULT_CHUNK]


def test_bad_options_are_rejected(linear_query, x32):
    for opts, name in [({"p": 0.0}, "--p 0.0: must be > 0 and <= 1"), ({"p": 1.5}, "--p 1.5"),
                       ({"n_masks": 0}, "--n-masks 0"), ({"grid": 0}, "--grid 0: must be >= 1")]:
        with pytest.raises(BlackboxError, match=name):
            explain(linear_query, x32, "rise", **opts)
