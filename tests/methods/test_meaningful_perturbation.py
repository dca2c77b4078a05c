"""Meaningful perturbation: the operators exactly, both gradient modes against each other, and
the masks they find on a model whose score depends on one known region only."""

from __future__ import annotations

import types

import numpy as np
import pytest
from helpers import model_path

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.methods import get_method
from blackbox_xai.methods import meaningful_perturbation as mp
from blackbox_xai.model import softmax
from blackbox_xai.registry import Context

# The synthetic model: 3 x 32 x 32 inputs of random +-1 pixels; logit 0 = A * (mean energy of
# the input over the square R) - B, three other logits 0. Deleting R (blurring or greying out
# the +-1 pattern) removes its energy and the class-0 probability falls from 0.9996 to ~0.05;
# nothing outside R matters. R is a 2 x 2 block of cells of the 8 x 8 mask used below.
SIZE, A, B = 32, 12.0, 3.0
R = (slice(8, 16), slice(16, 24))
REGION = np.zeros((SIZE, SIZE), bool)
REGION[R] = True
X0 = np.random.default_rng(0).choice([-1.0, 1.0], size=(3, SIZE, SIZE)).astype(np.float32)
FAST = {"mask_size": 8, "iterations": 100, "jitter": 1}


def logits(x: np.ndarray) -> np.ndarray:
    energy = (np.asarray(x, np.float64)[:, :, R[0], R[1]] ** 2).mean(axis=(1, 2, 3))
    z = np.zeros((len(x), 4), np.float32)
    z[:, 0] = A * energy - B
    return z


def exact_input_gradient(x, seed, progress=None, kind="logit"):
    """What ``Model.input_gradient`` returns for ``logits``: d sum(seed * s) / dx with s = z,
    or s = softmax(z) for ``kind="prob"`` (chain rule: the logit seed is p (seed - seed.p))."""
    g = np.zeros_like(x)
    g[:, :, R[0], R[1]] = A * 2 * x[:, :, R[0], R[1]] / (3 * REGION.sum())
    z = logits(x).astype(np.float64)
    scores = z
    if kind == "prob":
        scores = np.exp(z - z.max(1, keepdims=True))
        scores /= scores.sum(1, keepdims=True)
        seed = scores * (seed - (seed * scores).sum(1, keepdims=True))
    return scores.astype(np.float32), (seed[:, 0][:, None, None, None] * g).astype(np.float32)


@pytest.fixture
def exact_gradients():
    """A stand-in for ``ctx.model``: the method asks it for input gradients (injected, exact)."""
    return types.SimpleNamespace(input_gradient=exact_input_gradient)


def run(query, x, *, model=None, seed=0, target=0, **options):
    """Call the method directly (``explain`` only passes a real Model as ctx.model)."""
    spec = get_method("meaningful-perturbation")
    opts = spec.validate(options)
    ctx = Context(rng=np.random.default_rng(seed), scores=query(x[None])[0], model=model)
    return spec.fn(query, x, target, ctx=ctx, **opts)


def top_iou(amap: np.ndarray, region: np.ndarray = REGION) -> float:
    """IoU of the |R| highest-valued pixels with R (threshold-free)."""
    top = amap >= np.sort(amap.ravel())[-region.sum()]
    return float((top & region).sum() / (top | region).sum())


def ideal_iou() -> float:
    """top_iou of the best any mask can do: the 2 x 2 cells of R deleted exactly, upsampled."""
    m = np.ones((8, 8))
    m[2:4, 4:6] = 0.0
    return top_iou(1 - mp.Upsampler(SIZE, SIZE, 8)(m))


def smoothed(values, width: int = 10) -> np.ndarray:
    return np.convolve(np.asarray(values), np.ones(width) / width, mode="valid")


# ---- operators ----------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,s", [(32, 32, 8), (37, 29, 7), (224, 224, 28)])
def test_upsampling_adjoint_is_exact(h, w, s):
    up = mp.Upsampler(h, w, s)
    rng = np.random.default_rng(s)
    m, g = rng.random((s, s)), rng.standard_normal((h, w))
    assert abs((up(m) * g).sum() - (m * up.adjoint(g)).sum()) < 1e-10 * np.abs(g).sum()
    # a convex combination of cells: constants are kept, [0, 1] masks stay in [0, 1]
    np.testing.assert_allclose(up.uh.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(up(np.full((s, s), 0.3)), 0.3, atol=1e-12)
    assert up(m).min() >= m.min() - 1e-12 and up(m).max() <= m.max() + 1e-12


@pytest.mark.parametrize("n", [1, 2, 16])
def test_upsampling_by_matrix_products_equals_the_sum_over_cells(n):
    """M(v) = sum_ij U_h[v_y, i] m[i, j] U_w[v_x, j], summed cell by cell in float64 (the
    einsum the operator used before it ran on one BLAS thread): 1e-12 for one float64 mask,
    1e-6 for a float32 batch; the adjoint likewise."""
    up = mp.Upsampler(37, 29, 7)
    rng = np.random.default_rng(n)
    m, g = rng.random((n, 7, 7)), rng.standard_normal((37, 29))
    want = np.einsum("hi,nij,wj->nhw", up.uh, m, up.uw)
    got = up(m[0])[None] if n == 1 else up(m)
    assert got.dtype == (np.float64 if n == 1 else np.float32)
    np.testing.assert_allclose(got, want, atol=1e-12 if n == 1 else 1e-6)
    np.testing.assert_allclose(up.adjoint(g), np.einsum("hi,hw,wj->ij", up.uh, g, up.uw),
                               atol=1e-12)


def test_upsampling_is_the_papers_smoothing_at_224():
    """28 x 28 -> 224: nearest x8 (cell 14 = pixels 112..119), then a Gaussian of sigma 5 px;
    one cell's response at a pixel is the product of the two 1-D kernel sums over the cell
    (about 0.577^2 = 0.33 at its centre: the paper's masks cannot have sharp single cells)."""
    m = np.zeros((28, 28))
    m[14, 14] = 1.0
    big = mp.Upsampler(224, 224, 28)(m)
    g = np.exp(-0.5 * ((115 - np.arange(224)) / 5.0) ** 2)
    expected = (g[112:120].sum() / g.sum()) ** 2
    assert big[115, 115] == pytest.approx(expected, rel=1e-12)
    assert 0.32 < expected < 0.34
    peak = np.unravel_index(big.argmax(), big.shape)
    assert peak in {(115, 115), (116, 116), (115, 116), (116, 115)}


def test_total_variation_value_and_gradient():
    m = np.random.default_rng(3).random((6, 6))
    value, grad = mp.total_variation(m, 3.0)
    expected = (np.abs(np.diff(m, axis=0)) ** 3).sum() + (np.abs(np.diff(m, axis=1)) ** 3).sum()
    assert value == pytest.approx(expected, rel=1e-12)
    eps, numeric = 1e-6, np.zeros_like(m)
    for idx in np.ndindex(m.shape):
        d = np.zeros_like(m)
        d[idx] = eps
        up, down = mp.total_variation(m + d, 3.0)[0], mp.total_variation(m - d, 3.0)[0]
        numeric[idx] = (up - down) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_perturbation_operator_and_its_derivative():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 20, 24)).astype(np.float32)
    masks = rng.random((4, 20, 24))
    # constant: exactly M x0 + (1 - M) mean, shifted by the jitter crop
    lv = mp.perturbation_levels(x, "constant", rng, 2)
    phi = mp.apply_perturbation(lv, masks, 2, 2)
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(phi, masks[:, None] * x + (1 - masks[:, None]) * mean, atol=1e-5)
    one_mask = mp.OneMaskPerturbation(lv)
    for mask, want in zip(masks, phi):
        one, slope = one_mask(mask, 2, 2)
        np.testing.assert_allclose(one, want, atol=1e-5)
        np.testing.assert_allclose(-slope, np.broadcast_to(x - mean, x.shape), atol=1e-5)
    shifted = mp.apply_perturbation(lv, np.ones((1, 20, 24)), 0, 1)
    np.testing.assert_allclose(shifted[0][:, 2:, 1:], x[:, :-2, :-1], atol=1e-6)
    # blur: M = 1 is the input, M = 0 the sigma0 blur; dPhi/dM matches central differences
    lv = mp.perturbation_levels(x, "blur", rng, 0)
    ends = mp.apply_perturbation(lv, np.stack([np.ones((20, 24)), np.zeros((20, 24))]), 0, 0)
    np.testing.assert_allclose(ends[0], x, atol=1e-6)
    np.testing.assert_allclose(ends[1], lv[-1], atol=1e-6)
    masks = np.clip(masks, 0.02, 0.98)
    t = (1 - masks) * mp.BLUR_LEVELS
    off_kink = np.abs(t - np.round(t)) > 0.01  # Phi is piecewise linear in M
    dphi = np.stack([-mp.BLUR_LEVELS * mp.OneMaskPerturbation(lv)(mask, 0, 0)[1]
                     for mask in masks])
    e = 1e-3
    numeric = (mp.apply_perturbation(lv, masks + e, 0, 0).astype(np.float64)
               - mp.apply_perturbation(lv, masks - e, 0, 0)) / (2 * e)
    np.testing.assert_allclose((numeric * off_kink[:, None]), dphi * off_kink[:, None], atol=2e-3)


def ramp_sum(levels: np.ndarray, masks: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The perturbation operator as its docstring writes it, in float64, every ramp summed over
    the whole batch (the computation apply_perturbation made before it worked in blocks)."""
    _, h, w = masks.shape
    lv = levels[:, :, dy:dy + h, dx:dx + w].astype(np.float64)
    n_seg = len(lv) - 1
    t = (1.0 - masks) * n_seg
    phi = np.broadcast_to(lv[0], (len(masks), *lv.shape[1:])).copy()
    for j in range(1, n_seg + 1):
        r = t - (j - 1)
        lo = -np.inf if j == 1 else 0.0
        hi = np.inf if j == n_seg else 1.0
        r = np.clip(r, lo, hi) if n_seg > 1 else r
        phi += r[:, None] * (lv[j] - lv[j - 1])
    return phi


@pytest.mark.parametrize("perturbation", ["blur", "constant", "noise"])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
@pytest.mark.parametrize("lo,hi", [(-0.3, 1.3), (0.0, 0.2), (0.9, 1.0)])
def test_blocked_perturbation_equals_the_ramp_sum(perturbation, n, lo, hi):
    """apply_perturbation composes BLOCK masks at a time into one buffer: the same inputs as
    the sum of every ramp over the whole batch (to 1e-5; masks outside [0, 1] extrapolate),
    a partial last block included, blocks where ramps are all 1 (mostly deleted, M <= 0.2) or
    all 0 (mostly kept, M >= 0.9) too. OneMaskPerturbation, one mask at a time, gives the
    same inputs (masks outside [0, 1] too) and dPhi/dM = -L D_{k+1} at every pixel."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 20, 24)).astype(np.float32)
    lv = mp.perturbation_levels(x, perturbation, rng, 3)
    masks = rng.uniform(lo, hi, (n, 20, 24))
    phi = mp.apply_perturbation(lv, masks, 1, 2)
    assert phi.dtype == np.float32 and phi.flags["C_CONTIGUOUS"]
    want_phi = ramp_sum(lv, masks, 1, 2)
    np.testing.assert_allclose(phi, want_phi, atol=1e-5)
    n_seg = len(lv) - 1
    k = np.clip(np.floor((1 - masks) * n_seg), 0, n_seg - 1).astype(int)
    steps = np.diff(lv[:, :, 1:21, 2:26].astype(np.float64), axis=0)  # (L, C, H, W)
    want = -n_seg * np.stack([steps[k[i], :, np.arange(20)[:, None], np.arange(24)]
                              .transpose(2, 0, 1) for i in range(n)])
    one_mask = mp.OneMaskPerturbation(lv)
    for i, mask in enumerate(masks):
        one, slope = one_mask(mask, 1, 2)
        assert one.dtype == slope.dtype == np.float32
        np.testing.assert_allclose(one, want_phi[i], atol=1e-5)
        np.testing.assert_allclose(-n_seg * slope, want[i], atol=1e-5)


def test_upsampled_mean_is_the_mean_of_the_upsampled_mask():
    """The L1 term's area from the column sums of U_h and U_w, not a full-size product."""
    m = np.random.default_rng(2).uniform(0, 1, (6, 6))
    for h, w in ((20, 24), (224, 224)):
        up = mp.Upsampler(h, w, 6)
        assert up.mean(m) == pytest.approx(float(up(m).mean()), abs=1e-12)


# ---- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("perturbation", ["blur", "constant"])
def test_backward_gradient_is_the_exact_derivative_and_fd_agrees(exact_gradients, perturbation):
    """Chain rule (softmax seed, dPhi/dM, upsampling adjoint) against coordinate-wise central
    differences of f_c(m); the antithetic random-direction estimate with many directions
    points the same way (cosine > 0.9)."""
    ctx = Context(rng=np.random.default_rng(0), scores=logits(X0[None])[0], model=exact_gradients)
    lv = mp.perturbation_levels(X0, perturbation, ctx.rng, 1)
    game = mp.MaskGame(logits, ctx, 0, lv, mp.Upsampler(SIZE, SIZE, 8), False)
    m = np.random.default_rng(1).uniform(0.2, 0.8, (8, 8))
    f, exact = game.backward_gradient(m, 0, 1)
    assert f == pytest.approx(float(softmax(logits(mp.apply_perturbation(
        lv, game.up(m[None]), 0, 1)))[0, 0]), abs=1e-6)
    eye = np.eye(64).reshape(64, 8, 8)
    e = 1e-4
    scores = game.score(np.concatenate([m + e * eye, m - e * eye]), 0, 1)
    coordinate = ((scores[:64] - scores[64:]) / (2 * e)).reshape(8, 8)
    # blur's Phi is piecewise linear in M: a step of e moves the few pixels near a kink onto the
    # next segment's slope, a small error the constant perturbation does not have
    tol = {"constant": 1e-3, "blur": 5e-3}[perturbation]
    np.testing.assert_allclose(exact, coordinate, atol=tol * np.abs(coordinate).max())
    u = np.random.default_rng(2).standard_normal((2000, 8, 8))
    f_fd, estimate = game.fd_gradient(m, u, 0.01, 0, 1)
    assert f_fd == pytest.approx(f, abs=1e-6)
    cosine = (estimate * exact).sum() / np.linalg.norm(estimate) / np.linalg.norm(exact)
    assert cosine > 0.9


def test_backward_mode_needs_a_model():
    with pytest.raises(BlackboxError, match="grad='fd'"):
        explain(logits, X0, "meaningful-perturbation", grad="backward", **FAST)


# ---- the games on the synthetic model -----------------------------------------------------------
@pytest.mark.parametrize("grad", ["backward", "fd"])
@pytest.mark.parametrize("perturbation", ["blur", "constant"])
def test_deletion_mask_covers_the_region(exact_gradients, grad, perturbation):
    """The |R| most-deleted pixels overlap R with IoU >= 0.75: the best possible mask (R's cells
    deleted exactly) scores 0.88 after the Gaussian upsampling rounds its corners, the same
    block one cell off 0.31, half of it 0.52, and |R| random pixels ~0.03 (all seeds 0..7
    reach 0.88). The probability falls from 0.9996 to < 0.25, and the objective falls: from
    5.0 with everything deleted (first 10 steps: 3.1 on average) to 0.5, and, smoothed, never
    climbs back more than 0.05 above its running minimum (after convergence it only jitters;
    0.02 at most over 8 seeds)."""
    a = run(logits, X0, model=exact_gradients, grad=grad, perturbation=perturbation, **FAST)
    assert ideal_iou() > 0.85
    assert top_iou(a.map) >= 0.75
    assert a.extras["initial_score"] > 0.999 and a.extras["final_score"] < 0.25
    obj = a.extras["objective"]
    assert len(obj) == FAST["iterations"]
    assert np.mean(obj[-10:]) < np.mean(obj[:10]) - 1.5
    sm = smoothed(obj)
    assert (sm - np.minimum.accumulate(sm)).max() < 0.05
    assert a.map.shape == (SIZE, SIZE) and 0 <= a.map.min() and a.map.max() <= 1
    assert a.extras["mask_lowres"].shape == (8, 8)
    assert a.extras["mode"] == "deletion" and a.extras["grad"] == grad


@pytest.mark.parametrize("grad", ["backward", "fd"])
def test_preservation_mask_keeps_the_region(exact_gradients, grad):
    """The |R| most-kept pixels overlap R (IoU >= 0.75, see the deletion test), the probability
    stays > 0.85 while the rest of the image is perturbed."""
    a = run(logits, X0, model=exact_gradients, grad=grad, mode="preservation",
            **{**FAST, "iterations": 150})
    assert top_iou(a.map) >= 0.75  # 0.78..0.88 over 8 seeds
    assert a.extras["final_score"] > 0.85
    assert a.map[~REGION].mean() < 0.1  # the rest is perturbed: L1 only pays to keep R
    obj = a.extras["objective"]
    assert np.mean(obj[-10:]) < np.mean(obj[:10]) - 1.5


def test_fd_mode_through_explain_counts_queries_and_reproduces():
    opts = {"grad": "fd", "mask_size": 8, "iterations": 6, "fd_directions": 4, "jitter": 2}
    e1 = explain(logits, X0, "meaningful-perturbation", target=0, seed=3, **opts)
    e2 = explain(logits, X0, "meaningful-perturbation", target=0, seed=3, **opts)
    e3 = explain(logits, X0, "meaningful-perturbation", target=0, seed=4, **opts)
    assert e1.n_queries == 1 + 6 * (2 * 4 + 1) + 1  # x, then one call per step, then the final
    np.testing.assert_array_equal(e1.map, e2.map)
    assert e1.extras["objective"] == e2.extras["objective"]
    assert not np.array_equal(e1.map, e3.map)


def test_one_query_call_per_step():
    calls = []

    def recording(x):
        calls.append(len(x))
        return logits(x)

    run(recording, X0, grad="fd", mask_size=8, iterations=5, fd_directions=7)
    assert calls == [1] + [15] * 5 + [1]


def test_probabilities_are_not_softmaxed_twice():
    """A query that already returns probabilities is used as is (a softmax of probabilities
    would squash them towards uniform)."""
    def probs(x):
        return softmax(logits(x))

    a = run(probs, X0, grad="fd", iterations=3, mask_size=8)
    b = run(logits, X0, grad="fd", iterations=3, mask_size=8)
    assert a.extras["initial_score"] == pytest.approx(float(softmax(logits(X0[None]))[0, 0]))
    assert a.extras["score_kind"] == "probability"
    np.testing.assert_allclose(a.map, b.map, atol=1e-4)


@pytest.mark.parametrize("bad", [{"mode": "both"}, {"perturbation": "gray"}, {"grad": "exact"},
                                 {"mask_size": 0}, {"mask_size": 33}, {"iterations": 0},
                                 {"jitter": 32}, {"lr": 0.0}, {"l1": -1.0}, {"tv_beta": 0.5}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(BlackboxError):
        explain(logits, X0, "meaningful-perturbation", **{"grad": "fd", **bad})


# ---- ONNX models --------------------------------------------------------------------------------


def test_softmax_model_scores_are_used_as_probabilities():
    x = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    model = load_model(model_path("tiny_cnn_softmax"), score="prob")
    e = explain(model, x, "meaningful-perturbation", grad="fd", mask_size=8, iterations=2)
    assert e.extras["score_kind"] == "probability"
    assert e.extras["initial_score"] == pytest.approx(e.score)
    # score="logit" on a softmax output explains the logits before it: MP applies the softmax
    logit = explain(load_model(model_path("tiny_cnn_softmax")), x, "meaningful-perturbation",
                    grad="fd", mask_size=8, iterations=2)
    assert logit.extras["score_kind"] == "softmax of the query's scores"
    assert logit.extras["initial_score"] == pytest.approx(e.score, rel=1e-5)


def test_backward_mode_on_onnx_model_matches_finite_differences():
    """The real backward graph against coordinate finite differences of the mask game."""
    model = load_model(model_path("tiny_cnn"))
    x = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    scores = model(x[None])[0]
    target = int(scores.argmax())
    ctx = Context(rng=np.random.default_rng(0), scores=scores, model=model)
    lv = mp.perturbation_levels(x, "constant", ctx.rng, 0)
    game = mp.MaskGame(model, ctx, target, lv, mp.Upsampler(32, 32, 8), False)
    m = np.random.default_rng(2).uniform(0.2, 0.8, (8, 8))
    _, exact = game.backward_gradient(m, 0, 0)
    eye = np.eye(64).reshape(64, 8, 8)
    f = game.score(np.concatenate([m + 1e-2 * eye, m - 1e-2 * eye]), 0, 0)
    coordinate = ((f[:64] - f[64:]) / 2e-2).reshape(8, 8)
    cosine = (exact * coordinate).sum() / np.linalg.norm(exact) / np.linalg.norm(coordinate)
    assert cosine > 0.99
    e = explain(model, x, "meaningful-perturbation", grad="backward", mask_size=8, iterations=5)
    assert e.n_queries == 1 + 5 + 1  # one forward+backward per step (softmax in the graph)


def test_backward_mode_with_probability_scores_needs_one_pass_per_step():
    """score="prob": the backward graph ends in the softmax, the seed is one-hot, no forward
    query is needed for the seed, and the gradient is the same as through the logits."""
    x = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    m = np.random.default_rng(2).uniform(0.2, 0.8, (8, 8))
    grads = []
    for score in ("logit", "prob"):
        model = load_model(model_path("tiny_cnn"), score=score)
        scores = model(x[None])[0]
        ctx = Context(rng=np.random.default_rng(0), scores=scores, model=model)
        lv = mp.perturbation_levels(x, "blur", ctx.rng, 0)
        game = mp.MaskGame(model, ctx, 2, lv, mp.Upsampler(32, 32, 8),
                           mp.scores_are_probabilities(ctx))
        grads.append(game.backward_gradient(m, 0, 0))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-5)
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-3,
                               atol=1e-4 * np.abs(grads[0][1]).max())
    model = load_model(model_path("tiny_cnn"), score="prob")
    e = explain(model, x, "meaningful-perturbation", grad="backward", mask_size=8, iterations=5)
    assert e.n_queries == 1 + 5 + 1
