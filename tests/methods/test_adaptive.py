"""adaptive-occlusion: the map against its closed form on a linear model, the refinement, the
query budget, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Recorder
from scipy.ndimage import gaussian_filter

from blackbox_xai import explain
from blackbox_xai.errors import BlackboxError
from blackbox_xai.methods.occlusion import window_starts


def windows(size: int, side: int) -> list[tuple[int, int]]:
    starts = window_starts(size, side, max(side // 2, 1))
    return [(y, x) for y in starts for x in starts]


def indicator(corners: list[tuple[int, int]], side: int, size: int) -> np.ndarray:
    """(n, size, size): 1 inside each window."""
    out = np.zeros((len(corners), size, size))
    for i, (y, x) in enumerate(corners):
        out[i, y:y + side, x:x + side] = 1
    return out


def z(m: np.ndarray) -> np.ndarray:
    return (m - m.mean()) / m.std()


def expected_map(x: np.ndarray, w: np.ndarray, b: float, budget: int) -> tuple[np.ndarray, int]:
    """The documented map of f(z) = sum(w * z) + b on a square input, from indicator arrays.

    With a = sum_c w x: a window's deletion drop is the sum of a inside it; keeping it on a zero
    baseline scores that sum + b; on the blurred baseline xb (Gaussian, sigma 5, edges
    repeated) it scores sum(w xb) + b + the sum of sum_c w (x - xb) inside it."""
    a = (w * x).sum(axis=0).astype(np.float64)
    xb = gaussian_filter(x.astype(np.float64), sigma=(0, 5, 5), mode="nearest")
    a_blur, b_blur = (w * (x - xb)).sum(axis=0), b + float((w * xb).sum())
    size = a.shape[0]
    sides = {"48": round(size / (14 / 3)), "32": round(size / 7), "16": round(size / 14),
             "keep": round(size / 3.5)}

    def per_pixel(values, ind):
        return (values[:, None, None] * ind).sum(0) / np.maximum(ind.sum(0), 1)

    dels, inds = [], {}
    for key in ("48", "32", "16", "keep"):
        corners = windows(size, sides[key])
        inds[key] = (corners, indicator(corners, sides[key], size))
    for key in ("48", "32"):
        ind = inds[key][1]
        dels.append(z(per_pixel((ind * a).sum(axis=(1, 2)), ind)))
    keep_ind = inds["keep"][1]
    preservation = (z(per_pixel((keep_ind * a).sum(axis=(1, 2)) + b, keep_ind))
                    + z(per_pixel((keep_ind * a_blur).sum(axis=(1, 2)) + b_blur, keep_ind))) / 2
    n_fixed = len(inds["48"][0]) + len(inds["32"][0]) + 2 * len(inds["keep"][0])
    corners, ind = inds["16"]
    half = sides["16"] // 2
    rank = dels[0] + dels[1]
    order = np.argsort([-rank[y + half, x + half] for y, x in corners], kind="stable")
    chosen = ind[order[:budget - n_fixed]]
    covered = chosen.sum(0) > 0
    fine = np.zeros_like(a)
    fine[covered] = per_pixel((chosen * a).sum(axis=(1, 2)), chosen)[covered]
    zf = np.where(covered, (fine - fine[covered].mean()) / fine[covered].std(), 0)
    zf[~covered] = zf[covered].min()
    return (dels[0] + dels[1] + zf) / 3 + preservation, n_fixed


@pytest.fixture
def linear():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, (3, 32, 32)).astype(np.float32)
    w = (rng.standard_normal((3, 32, 32)) / 32).astype(np.float32)
    return x, w, Recorder(lambda q: 2.0 + (q * w).sum(axis=(1, 2, 3))[:, None])


def test_map_matches_the_closed_form_on_a_linear_model(linear):
    x, w, rec = linear
    exp = explain(rec, x, "adaptive-occlusion", target=0, budget=450)
    want, n_fixed = expected_map(x, w, 2.0, 450)
    assert n_fixed == 100 + 225 + 2 * 49  # windows of 7, 5 and 9 px at 32 x 32
    np.testing.assert_allclose(exp.map, want, atol=2e-4)
    assert exp.n_queries == 451 == len(rec.seen)
    assert exp.extras["refined_windows"] == 450 - n_fixed
    assert exp.extras["windows"] == {"deletion": [(7, 7), (5, 5), (2, 2)], "preservation": (9, 9)}


def test_refinement_goes_where_the_score_lives():
    """Only a 6 x 6 patch matters: every refined window overlaps it, and the map peaks in it."""
    patch = (slice(20, 26), slice(4, 10))
    rec = Recorder(lambda q: q[:, 0, patch[0], patch[1]].sum(axis=(1, 2))[:, None])
    x = np.ones((3, 32, 32), np.float32)
    exp = explain(rec, x, "adaptive-occlusion", target=0, budget=423 + 30)
    refined = rec.seen[1 + 423:, 0]  # the last 30 queries: 2 x 2 windows zeroed
    assert len(refined) == 30
    for z_ in refined:
        ys, xs = np.nonzero(z_ == 0)
        assert ys.min() >= 20 - 2 and ys.max() < 26 + 2 and xs.min() >= 4 - 2 and xs.max() < 10 + 2
    iy, ix = np.unravel_index(np.argmax(exp.map), exp.map.shape)
    assert 20 <= iy < 26 and 4 <= ix < 10


def test_budget_is_respected_and_checked(linear):
    x, _, rec = linear
    assert explain(rec, x, "adaptive-occlusion", budget=423).n_queries == 424  # no refinement
    big = explain(rec, x, "adaptive-occlusion", budget=5000)
    assert big.n_queries == 1 + 423 + 31 * 31  # every 2 x 2 window, no more
    with pytest.raises(BlackboxError, match="budget=422: the coarse passes need 423 queries"):
        explain(rec, x, "adaptive-occlusion", budget=422)


def test_no_randomness(linear):
    x, _, rec = linear
    maps = [explain(rec, x, "adaptive-occlusion", seed=s, budget=440).map for s in (0, 0, 7)]
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])
