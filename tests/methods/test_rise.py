"""RISE: the reference upsampling, the expected-value identity, localisation, chunking, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Recorder
from skimage.transform import resize

from blackbox_xai import explain
from blackbox_xai.errors import BlackboxError
from blackbox_xai.methods.rise import rise_masks
from blackbox_xai.perturb import DEFAULT_CHUNK
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
def test_expected_value_identity_on_a_linear_model(p):
    """The map is the mean of N i.i.d. terms X_i = f(x0 M_i) M_i / p: compare it with the
    closed-form expectation in units of its own per-pixel standard error.

    z is ~N(0, 1) per pixel but strongly correlated across pixels (every term shares f_i), so
    mean(z^2) varies a lot from seed to seed: over 20 seeds it averaged 1.00 (range 0.3-2.9,
    max |z| <= 3.3). Wrong expectations fail by far: without the shift average mean(z^2) is
    6-15, dividing by p^2 instead of p gives > 1000.
    """
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    w = (rng.standard_normal((3, 32, 32)) / 32).astype(np.float32)
    rec = Recorder(lambda z: (z * w).sum(axis=(1, 2, 3))[:, None])
    n = 3000
    exp = explain(rec, x, "rise", target=0, seed=1, n_masks=n, grid=4, p=p)
    assert exp.n_queries == n + 1 and exp.extras == {"n_masks": n, "p": p, "grid": 4}
    seen = rec.seen[1:].astype(np.float64)
    masks = seen[:, 0] / x[0]  # x0 * M with a zero baseline: M recovered exactly
    scores = rec.fn(rec.seen[1:]).astype(np.float32)[:, 0].astype(np.float64)
    terms = scores[:, None, None] * masks / p
    np.testing.assert_allclose(exp.map, terms.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert abs(masks.mean() - p) < 0.02 and masks.min() >= -1e-6 and masks.max() <= 1 + 1e-6
    expected = expected_saliency((w * x).sum(axis=0).astype(np.float64), 4, p)
    z = (exp.map - expected) / (terms.std(axis=0, ddof=1) / np.sqrt(n))
    assert 0.2 < np.mean(z ** 2) < 4.0 and np.abs(z).max() < 5.0
    centred = exp.map - exp.map.mean(), expected - expected.mean()
    assert np.corrcoef(centred[0].ravel(), centred[1].ravel())[0, 1] > 0.9


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
