"""Meaningful perturbation (Fong & Vedaldi 2017, https://arxiv.org/abs/1704.03296).

Learn the smallest smooth mask whose perturbation destroys (deletion game) or the smallest one
whose complement can be perturbed while keeping (preservation game) the target's score.

Design (all in one place, so the defaults mean the same thing at any input size):

- The mask ``m`` lives on a ``mask_size x mask_size`` grid with values in [0, 1] (1 keeps the
  pixel), clipped after every Adam step as in the paper. It is upsampled by a fixed linear
  operator ``M = U_h m U_w^T``: nearest upsampling followed by a Gaussian blur of
  ``sigma_m = 5/8`` of a cell (the paper's 28 x 28 mask, upsampled x8 and blurred with
  ``sigma = 5`` px at 224), rows normalised so that ``M`` stays in [0, 1]. Its adjoint
  ``U_h^T G U_w`` carries gradients back to the grid exactly.
- ``Phi(x0; M) = M x0 + (1 - M) r``. ``blur``: the paper's variable blur
  ``g_{sigma0 (1 - M)} * x0`` with ``sigma0 = 10 px`` at 224 (scaled with ``min(H, W) / 224``),
  as linear interpolation between ``BLUR_LEVELS + 1`` precomputed blurs (sigma 0, sigma0/4, ...,
  sigma0); ``constant``: the per-channel mean; ``noise``: per-channel mean + std * N(0, 1), drawn
  once from ``ctx.rng``.
- The L1 term is per pixel of the *upsampled* mask at the paper's 224 x 224 reference area:
  ``l1 * 224^2 * mean_v(1 - M(v))`` (deletion) or ``l1 * 224^2 * mean_v M(v)`` (preservation).
  At 224 x 224 this is exactly the paper's ``lambda1 ||1 - m||_1``; at other sizes the price of
  deleting a given *fraction* of the image is unchanged (deleting everything costs 5.02 with
  the default, so the optimum deletes a small region that removes most of the probability).
- The TV term is over the low-resolution grid, where the mask's degrees of freedom are:
  ``tv * sum_u |m(u+e_y) - m(u)|^beta + |m(u+e_x) - m(u)|^beta`` (on the Gaussian-upsampled mask
  it would be 40x (one 8 x 8-cell square) to 300x (cell-sized speckle) smaller and have no
  effect at ``tv=1e-2``).
- The score is the softmax probability of the target, as in the paper: the query's output is
  taken as logits and softmaxed here, unless it already is a probability (a ``Model`` loaded
  with ``score="prob"`` or whose graph ends in a softmax; for a plain function, outputs that are
  non-negative and sum to 1). A single-output model is used as is.
- Jitter: every step shifts the image by a random integer ``tau in [0, jitter]^2`` pixels
  (reflect padding) from ``ctx.rng``; one sample of ``tau`` per step (a stochastic estimate of
  ``E_tau``, as in the paper).
- Initialisation: ``m = 0`` for deletion (all perturbed), ``m = 1`` for preservation (all kept),
  like the paper's start from a mask that already suppresses the score (see ``INIT``).
- The result is the average of the iterates over the second half of the iterations (Polyak
  averaging): it removes the random walk that noisy steps (finite differences, jitter) leave in
  the last iterate, and scored a lower objective than the last iterate on the example photos in
  both gradient modes.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..model import softmax
from ..perturb import blur
from ..registry import Attribution, Context, Range, register

REF_SIZE = 224
REF_AREA = REF_SIZE * REF_SIZE
BLUR_SIGMA = 10.0  # sigma0 of the blur perturbation at 224 px
MASK_SIGMA = 5.0 / 8.0  # sigma_m of the mask upsampling, in mask cells
BLUR_LEVELS = 4  # the variable blur interpolates between this many + 1 precomputed blurs
# Start from the mask that trivially wins the game (everything deleted / everything kept) and let
# the L1 price shrink it: from the opposite end a confident model's softmax is saturated, its
# gradient vanishes, and the L1 gradient alone drives the mask to the trivial losing solution.
INIT = {"deletion": 0.0, "preservation": 1.0}

Mode = Literal["deletion", "preservation"]
Perturbation = Literal["blur", "constant", "noise"]
Grad = Literal["backward", "fd"]


# ---- the mask upsampling operator ---------------------------------------------------------------
def upsampling_matrix(n_out: int, n_in: int, sigma: float = MASK_SIGMA) -> npt.NDArray[np.float64]:
    """Gaussian upsampling of ``n_in`` cells to ``n_out`` pixels as a matrix (n_out, n_in).

    Nearest upsampling (pixel ``v`` lies in cell ``floor(v n_in / n_out)``) followed by a
    Gaussian blur of ``sigma`` cells (``sigma * n_out / n_in`` pixels); rows are normalised to
    sum to 1 (a truncated, renormalised kernel at the borders), so a mask in [0, 1] stays there.
    """
    v = np.arange(n_out)
    cell = np.minimum(v * n_in // n_out, n_in - 1)
    sigma_px = sigma * n_out / n_in
    d = v[:, None] - v[None, :]
    g = np.exp(-0.5 * (d / sigma_px) ** 2) if sigma_px > 0 else (d == 0).astype(np.float64)
    nearest = np.zeros((n_out, n_in))
    nearest[v, cell] = 1.0
    u = g @ nearest
    return u / u.sum(axis=1, keepdims=True)


class Upsampler:
    """``M = U_h m U_w^T`` for masks (s, s) or (N, s, s) -> (H, W) or (N, H, W), and its adjoint.

    Matrix products, to be run on one BLAS thread (:func:`blackbox_xai.explain` limits it):
    waking a multithreaded BLAS between ONNX Runtime runs makes the two thread pools fight over
    the cores (on 2 cores a finite-difference step took 1.4x to 3x as long as its queries),
    and on one thread BLAS is 5-10x faster than ``einsum``'s own loops here. One mask is
    upsampled in float64 (the exact adjoint pair), batches in float32 (plenty for building
    perturbed inputs, and 2x faster).
    """

    def __init__(self, height: int, width: int, size: int) -> None:
        self.uh = upsampling_matrix(height, size)
        self.uw = upsampling_matrix(width, size)
        self._uh32, self._uw32 = self.uh.astype(np.float32), self.uw.astype(np.float32)
        self._colsum_h, self._colsum_w = self.uh.sum(axis=0), self.uw.sum(axis=0)

    def __call__(self, m: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        uh, uw = self.uh, self.uw
        if m.ndim == 3 and len(m) > 1:
            uh, uw, m = self._uh32, self._uw32, m.astype(np.float32)
        return uh @ (m @ uw.T)

    def mean(self, m: npt.NDArray[np.float64]) -> float:
        """``mean_v M(v) = (1^T U_h) m (U_w^T 1) / (H W)``: O(s^2), no full-size product."""
        return float(self._colsum_h @ m @ self._colsum_w) / (len(self.uh) * len(self.uw))

    def adjoint(self, g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``U_h^T G U_w``: the gradient with respect to ``m`` of ``<G, M(m)>``."""
        return (self.uh.T @ g) @ self.uw


# ---- regularisers -------------------------------------------------------------------------------
def total_variation(m: npt.NDArray[np.float64], beta: float
                    ) -> tuple[float, npt.NDArray[np.float64]]:
    """``sum |m(u+e_y) - m(u)|^beta + |m(u+e_x) - m(u)|^beta`` over the grid and its gradient."""
    grad = np.zeros_like(m)
    value = 0.0
    for axis in (0, 1):
        d = np.diff(m, axis=axis)
        a = np.abs(d)
        value += float((a ** beta).sum())
        dd = beta * a ** (beta - 1) * np.sign(d)  # d value / d (difference)
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        grad[tuple(hi)] += dd
        grad[tuple(lo)] -= dd
    return value, grad


# ---- the perturbation operator ------------------------------------------------------------------
def perturbation_levels(x: npt.NDArray[np.float32], perturbation: str, rng: np.random.Generator,
                        jitter: int) -> npt.NDArray[np.float32]:
    """Reference images (L+1, C, H+j, W+j), padded for jitter: level 0 is ``x``, the last the
    fully perturbed image; ``Phi`` interpolates linearly between neighbouring levels."""
    _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (jitter, 0), (jitter, 0)), mode="reflect") if jitter else x
    if perturbation == "blur":
        sigma0 = BLUR_SIGMA * min(h, w) / REF_SIZE
        levels = [xp] + [blur(xp, s) for s in sigma0 * np.arange(1, BLUR_LEVELS + 1) / BLUR_LEVELS]
    elif perturbation == "constant":
        levels = [xp, np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), xp.shape)]
    elif perturbation == "noise":
        mean = x.mean(axis=(1, 2), keepdims=True)
        std = x.std(axis=(1, 2), keepdims=True)
        levels = [xp, mean + std * rng.standard_normal(xp.shape)]
    else:
        raise BlackboxError(f"perturbation={perturbation!r}: use 'blur', 'constant' or 'noise'")
    return np.stack(levels).astype(np.float32)


#: Masks composed at a time by :func:`apply_perturbation`: its passes then run over a few
#: images that stay in the CPU's cache instead of the whole batch (about 1.5-2x faster).
BLOCK = 4


def apply_perturbation(levels: npt.NDArray[np.float32], masks: npt.NDArray[np.float64],
                       dy: int, dx: int) -> npt.NDArray[np.float32]:
    """``Phi(x0(. - tau); M)`` for masks (N, H, W) -> inputs (N, C, H, W).

    With ``t = (1 - M) L`` and ``D_j = B_j - B_{j-1}``: ``Phi = B_0 + sum_j r_j(t) D_j``, the
    ramps ``r_j(t) = clip(t - (j - 1), 0, 1)`` making ``Phi`` the linear interpolation between
    neighbouring levels (``M x0 + (1 - M) r`` when L = 1). The first ramp is not clipped below
    nor the last above, so masks outside [0, 1] (finite differences at the bounds) extrapolate
    the end segments linearly. In float32, :data:`BLOCK` masks at a time, into one output and
    one scratch block; a ramp that is 1 on a whole block adds ``D_j`` without the product, one
    that is 0 is skipped (the same numbers, up to the sign of an exact zero).
    """
    n, (_, h, w) = len(masks), masks.shape
    lv = levels[:, :, dy:dy + h, dx:dx + w]
    n_seg = len(lv) - 1
    diffs = lv[1:] - lv[:-1]
    t = ((1.0 - masks) * n_seg).astype(np.float32)
    phi = np.empty((n, *lv.shape[1:]), np.float32)
    scratch = np.empty((min(n, BLOCK), *lv.shape[1:]), np.float32)
    ramp = np.empty((min(n, BLOCK), h, w), np.float32)
    for start in range(0, n, BLOCK):
        out, tb = phi[start:start + BLOCK], t[start:start + BLOCK]
        r, sc = ramp[:len(out)], scratch[:len(out)]
        out[:] = lv[0]
        lo, hi = float(tb.min()), float(tb.max())
        for j in range(1, n_seg + 1):
            if n_seg > 1 and j < n_seg and lo >= j:  # r_j = 1 on the whole block: add D_j
                out += diffs[j - 1]
                continue
            if n_seg > 1 and j > 1 and hi <= j - 1:  # r_j = 0 on the whole block
                continue
            np.subtract(tb, j - 1, out=r)
            if n_seg > 1:
                if j == 1:
                    np.minimum(r, 1.0, out=r)
                elif j == n_seg:
                    np.maximum(r, 0.0, out=r)
                else:
                    np.clip(r, 0.0, 1.0, out=r)
            np.multiply(r[:, None], diffs[j - 1][None], out=sc)
            out += sc
    return phi


class OneMaskPerturbation:
    """``Phi(x0(. - tau); M)`` (C, H, W) for one mask (H, W), and its slope ``D_{k+1}``:
    ``dPhi/dM = -L D_{k+1}``, ``k = clip(floor t, 0, L - 1)``, ``t = (1 - M) L``.

    ``Phi = B_k + (t - k) D_{k+1}``: :func:`apply_perturbation`'s ramp sum, whose ramps below
    ``k + 1`` are 1 and above it 0 (``t - k`` outside [0, 1] extrapolates the end segments the
    same way). Each pixel's level and step are picked by one masked copy per level, from the
    steps ``D_j`` computed once per explanation. In meaningful perturbation's backward loop
    (EfficientNet-Lite0, 224 px, blur) our time per iteration went from 3.4-3.8 ms with the
    ramp sum and its derivative to 2.2-2.5 ms, against about 30 ms in ONNX Runtime. Gathering
    level and step with ``np.take`` from a per-pixel table was twice as fast in a loop of its
    own but slower here (2.9-3.3 ms): its 6 MB table leaves the cache at every model pass.
    """

    def __init__(self, levels: npt.NDArray[np.float32]) -> None:
        self.levels, self.n_seg = levels, len(levels) - 1
        self.steps = np.ascontiguousarray(levels[1:] - levels[:-1])

    def __call__(self, mask: npt.NDArray[np.float64], dy: int, dx: int
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        (h, w), n_seg = mask.shape, self.n_seg
        lv = self.levels[:, :, dy:dy + h, dx:dx + w]
        steps = self.steps[:, :, dy:dy + h, dx:dx + w]
        t = ((1.0 - mask) * n_seg).astype(np.float32)
        k = np.clip(np.floor(t), 0, n_seg - 1)
        phi, slope = lv[0].copy(), steps[0].copy()
        for j in range(1, n_seg):
            at = k == j
            np.copyto(phi, lv[j], where=at)
            np.copyto(slope, steps[j], where=at)
        t -= k
        phi += t * slope
        return phi, slope


# ---- scores -------------------------------------------------------------------------------------
def scores_are_probabilities(ctx: Context) -> bool:
    """Whether the query already returns probabilities (then no softmax is applied here)."""
    model = ctx.model
    if model is not None and hasattr(model, "returns_probabilities"):
        return model.returns_probabilities
    s = np.asarray(ctx.scores, np.float64)
    return bool(s.size > 1 and s.min() >= 0 and abs(s.sum() - 1.0) < 1e-4)


def target_probability(scores: npt.NDArray[np.float32], target: int, is_prob: bool
                       ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``f_c`` (N,) and ``d f_c / d scores`` (N, K), the seed of a backward pass."""
    scores = np.asarray(scores, np.float64)
    n, k = scores.shape
    onehot = np.zeros((n, k))
    onehot[:, target] = 1.0
    if is_prob or k == 1:
        return scores[:, target], onehot
    p = softmax(scores).astype(np.float64)
    pc = p[:, target]
    return pc, pc[:, None] * (onehot - p)


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, on one array."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, params: npt.NDArray[np.float64], grad: npt.NDArray[np.float64]
             ) -> npt.NDArray[np.float64]:
        if self.m is None:
            self.m, self.v = np.zeros_like(grad), np.zeros_like(grad)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        mhat = self.m / (1 - self.b1 ** self.t)
        vhat = self.v / (1 - self.b2 ** self.t)
        return params - self.lr * mhat / (np.sqrt(vhat) + self.eps)


class MaskGame:
    """``f_c(Phi(x0(. - tau); U m))`` as a function of low-resolution masks, and its gradient.

    ``(dy, dx)`` is the crop of the jitter-padded reference images: ``(jitter, jitter)`` is the
    unshifted input.
    """

    def __init__(self, query, ctx: Context, target: int,
                 levels: npt.NDArray[np.float32], up: Upsampler, is_prob: bool) -> None:
        self.query, self.ctx, self.target = query, ctx, target
        self.levels, self.up, self.is_prob = levels, up, is_prob
        self.one_mask = OneMaskPerturbation(levels)
        self.k = len(ctx.scores)

    def score(self, masks: npt.NDArray[np.float64], dy: int, dx: int) -> npt.NDArray[np.float64]:
        """``f_c`` (N,) for low-resolution masks (N, s, s): one query call."""
        phi = apply_perturbation(self.levels, self.up(masks), dy, dx)
        return target_probability(self.query(phi), self.target, self.is_prob)[0]

    def fd_gradient(self, m: npt.NDArray[np.float64], u: npt.NDArray[np.float64], eps: float,
                    dy: int, dx: int) -> tuple[float, npt.NDArray[np.float64]]:
        """``f_c(m)`` and ``mean_k (f(m + eps u_k) - f(m - eps u_k)) / (2 eps) u_k``: one query
        call of ``2 len(u) + 1`` inputs (an unbiased estimate of the gradient of the Gaussian-
        smoothed ``f_c`` for standard normal ``u``)."""
        n = len(u)
        big, step = self.up(m).astype(np.float32), eps * self.up(u)  # U is linear: n + 1 products
        masks = np.concatenate([big[None], big + step, big - step])
        phi = apply_perturbation(self.levels, masks, dy, dx)
        f = target_probability(self.query(phi), self.target, self.is_prob)[0]
        diff = (f[1:n + 1] - f[n + 1:]) / (2 * eps)
        return float(f[0]), (diff[:, None, None] * u).sum(axis=0) / n

    def backward_gradient(self, m: npt.NDArray[np.float64], dy: int, dx: int
                          ) -> tuple[float, npt.NDArray[np.float64]]:
        """``f_c(m)`` and its exact gradient: ``U^T [sum_ch (d f_c / dx) (dPhi / dM)]``.

        ``d f_c / dx`` comes from one pass of the model's backward graph with the softmax in the
        graph (a one-hot seed on the class probabilities); ``dPhi/dM = -L D_{k+1}``
        (:class:`OneMaskPerturbation`).
        """
        phi, slope = self.one_mask(self.up(m), dy, dx)
        seed = np.zeros((1, self.k), np.float32)
        seed[0, self.target] = 1.0
        scores, g = self.ctx.model.input_gradient(phi[None], seed, progress=self.ctx.progress,
                                                  kind="prob" if self.k > 1 else "logit")
        f = np.asarray(scores, np.float64).reshape(1, -1)[:, self.target]
        df_dM = np.einsum("chw,chw->hw", np.asarray(g[0], np.float32), slope)
        return float(f[0]), self.up.adjoint(-self.one_mask.n_seg * df_dM.astype(np.float64))


@register("meaningful-perturbation", family="black-box",
          reference="Fong & Vedaldi 2017, arXiv:1704.03296", stochastic=True,
          fast={"iterations": 60})
def meaningful_perturbation(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
                            mode: Mode = "deletion", perturbation: Perturbation = "blur",
                            mask_size: Annotated[int, Range(1)] = 28,
                            iterations: Annotated[int, Range(1)] = 300,
                            lr: Annotated[float, Range(0, lo_open=True)] = 0.1,
                            l1: Annotated[float, Range(0)] = 1e-4,
                            tv: Annotated[float, Range(0)] = 1e-2,
                            tv_beta: Annotated[float, Range(1)] = 3.0,
                            jitter: Annotated[int, Range(0)] = 4, grad: Grad = "backward",
                            fd_directions: Annotated[int, Range(1)] = 16,
                            fd_eps: Annotated[float, Range(0, lo_open=True)] = 0.05) -> Attribution:
    """Optimise a smooth mask whose blur deletes (or whose complement's blur preserves) the score.

    Deletion: ``min_m l1 ||1 - M||_1 + tv TV_beta(m) + E_tau f_c(Phi(x0(. - tau); M))``;
    preservation: ``min_m l1 ||M||_1 + tv TV_beta(m) - f_c(Phi(x0(. - tau); M))``, with
    ``Phi = M x0 + (1 - M) r``, ``M`` the Gaussian-upsampled ``mask_size``-square mask ``m`` in
    [0, 1] and ``f_c`` the target's softmax probability (the objective uses softmax probability
    as in the paper). Adam for ``iterations`` steps, clipping ``m`` to [0, 1] after each.
    ``grad="backward"``: ``d f_c / dx`` from the model's backward graph (a Model is needed), one
    forward+backward pass per step (the softmax is part of the differentiated graph); ``grad="fd"``: antithetic Gaussian finite differences over
    ``fd_directions`` directions in mask space, ``2 fd_directions + 1`` inputs in one query per
    step, for any query function. The mask returned is the average of the second half of the
    iterates; the map is ``1 - M`` (deletion: what must go) or ``M`` (preservation: what must
    stay). L1 is per pixel at the 224 x 224 reference area, TV over the low-resolution grid
    (see the module docstring).

    Args:
        mode: deletion (find what must go) or preservation (find what must stay).
        perturbation: what replaces the masked-out input: blur, constant or noise.
        mask_size: side of the low-resolution mask optimised (at most the input side).
        iterations: optimiser steps.
        lr: Adam learning rate.
        l1: weight of the mask-area term.
        tv: weight of the total-variation term.
        tv_beta: exponent of the total variation.
        jitter: largest random shift of the input per step, in pixels.
        grad: backward (the model's backward graph) or fd (finite differences, any query).
        fd_directions: random directions per finite-difference step.
        fd_eps: finite-difference step size in mask space.
    """
    _, h, w = x.shape
    if mask_size > min(h, w):
        raise BlackboxError(f"--mask-size {mask_size}: use 1..{min(h, w)} for a {h}x{w} input")
    if jitter >= min(h, w):
        raise BlackboxError(f"--jitter {jitter}: use 0..{min(h, w) - 1} pixels")
    if grad == "backward" and ctx.model is None:
        raise BlackboxError("meaningful-perturbation with grad='backward' needs the model's "
                            "backward graph: pass a Model from load_model(), or use grad='fd' "
                            "(finite differences, any query function)")
    s, k_dir, eps = int(mask_size), int(fd_directions), float(fd_eps)
    deletion = mode == "deletion"
    sign = 1.0 if deletion else -1.0  # the objective has +f_c (deletion) or -f_c (preservation)
    is_prob = scores_are_probabilities(ctx)
    up = Upsampler(h, w, s)
    levels = perturbation_levels(x, perturbation, ctx.rng, int(jitter))
    # L1 over the upsampled mask, per pixel at the reference area: l1 * REF_AREA * mean(1 - M).
    l1_weight = float(l1) * REF_AREA
    l1_grad = up.adjoint(np.full((h, w), (-1.0 if deletion else 1.0) * l1_weight / (h * w)))

    def regulariser(m: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        """The L1 and TV terms and their gradient (exact, no queries)."""
        kept = up.mean(m)
        area = 1.0 - kept if deletion else kept
        tv_value, tv_grad = total_variation(m, tv_beta)
        return l1_weight * area + tv * tv_value, l1_grad + tv * tv_grad

    game = MaskGame(query, ctx, target, levels, up, is_prob)
    per_step = 2 * k_dir + 1 if grad == "fd" else (1 if is_prob else 2)
    ctx.set_total(iterations * per_step + 1)
    m = np.full((s, s), INIT[mode])
    adam = Adam(float(lr))
    history: list[float] = []  # the objective at each iterate (its jittered sample)
    avg, n_avg = np.zeros_like(m), 0

    for it in range(int(iterations)):
        dy, dx = (int(v) for v in ctx.rng.integers(0, jitter + 1, 2)) if jitter else (0, 0)
        if grad == "fd":
            u = ctx.rng.standard_normal((k_dir, s, s))
            f_m, df_dm = game.fd_gradient(m, u, eps, dy, dx)
        else:
            f_m, df_dm = game.backward_gradient(m, dy, dx)
        reg, reg_grad = regulariser(m)
        history.append(reg + sign * f_m)
        m = np.clip(adam.step(m, reg_grad + sign * df_dm), 0.0, 1.0)
        if it >= iterations // 2:
            avg += m
            n_avg += 1
    m = avg / n_avg  # Polyak averaging over the second half

    final = float(game.score(m[None], int(jitter), int(jitter))[0])  # unshifted
    M = up(m)
    initial, _ = target_probability(np.asarray(ctx.scores)[None], target, is_prob)
    amap = np.clip((1.0 - M) if deletion else M, 0.0, 1.0)  # M is in [0, 1] up to rounding
    return Attribution(amap.astype(np.float32), {
        "objective": history,
        "initial_score": float(initial[0]),
        "final_score": final,
        "final_objective": regulariser(m)[0] + sign * final,
        "score_kind": "probability" if is_prob else "softmax of the query's scores",
        "mask_lowres": m.astype(np.float32),
        "mode": mode, "grad": grad, "perturbation": perturbation,
    })
