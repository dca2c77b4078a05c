"""Gradient maps from the exported backward graph: ``g = d f_c / d x``, batched in one session."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..model import one_hot
from ..perturb import Baseline, chunk_size_for, chunked, make_baseline
from ..registry import Attribution, Context, Range, register


def _grad(ctx: Context, xs: npt.NDArray[np.float32], target: int
          ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scores (N, K) and d f_target / dx (N, C, H, W) for a batch of inputs."""
    ctx.set_total(len(xs))
    return ctx.model.input_gradient(xs, one_hot(len(xs), ctx.model.num_classes, target),
                          progress=ctx.progress)


@register("saliency", family="gradient", reference="Simonyan et al. 2014, arXiv:1312.6034",
          requires_graph=True, needs_gradient=True)
def saliency(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context) -> Attribution:
    """Vanilla gradient: M = max over channels of |d f_c / d x|. One forward+backward pass."""
    _, g = _grad(ctx, x[None], target)
    return Attribution(np.abs(g[0]).max(axis=0), {"gradient": g[0]})


@register("gradient-x-input", family="gradient", reference="Shrikumar et al. 2016, "
          "arXiv:1605.01713", requires_graph=True, needs_gradient=True)
def gradient_x_input(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context) -> Attribution:
    """Gradient x input: M = sum over channels of (d f_c / d x) * x. One pass."""
    _, g = _grad(ctx, x[None], target)
    return Attribution((g[0] * x).sum(axis=0), {"attributions": g[0] * x})


Rule = Literal["gauss-legendre", "midpoint", "trapezoid"]


def quadrature(rule: Rule, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Nodes and weights of an ``n``-point rule for the integral over [0, 1].

    ``gauss-legendre``: the roots t_k of the Legendre polynomial P_n mapped by (t + 1) / 2, and
    half their weights; exact for polynomials of degree 2n - 1, error O(1/n^(2r)) for an
    integrand with r smooth derivatives. ``midpoint``: (k + 1/2) / n, weights 1/n, error
    (1 / (24 n^2)) (g'(1) - g'(0)) + O(1/n^4). ``trapezoid``: k / (n - 1), weights 1/(n - 1)
    halved at both ends (n >= 2), error -(1 / (12 (n-1)^2)) (g'(1) - g'(0)) + O(1/n^4).
    """
    if rule == "gauss-legendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return (t + 1) / 2, w / 2
    if rule == "midpoint":
        return (np.arange(n) + 0.5) / n, np.full(n, 1 / n)
    if n < 2:
        raise BlackboxError(f"--steps {n}: the trapezoid rule needs at least 2 points")
    w = np.full(n, 1 / (n - 1))
    w[[0, -1]] /= 2
    return np.linspace(0, 1, n), w


def path_integral(ctx: Context, x: npt.NDArray[np.float32], base: npt.NDArray[np.float32],
                  target: int, alphas: npt.NDArray[np.float64],
                  weights: npt.NDArray[np.float64], chunk: int
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """sum_k w_k d f_c/dx (x' + alpha_k (x - x')) (C, H, W) and the scores (n, K) at the nodes.

    The path points are made and differentiated ``chunk`` at a time and their gradients summed
    in float64, so memory stays at one chunk whatever the number of steps.
    """
    diff = x - base
    total = np.zeros(x.shape)
    scores = []
    ctx.set_total(len(alphas))
    for sl in chunked(len(alphas), chunk):
        a = alphas[sl].astype(np.float32)[:, None, None, None]
        s, g = ctx.model.input_gradient(base[None] + a * diff[None],
                                        one_hot(len(a), ctx.model.num_classes, target),
                                        progress=ctx.progress)
        total += np.tensordot(weights[sl], g, axes=1)
        scores.append(s)
    return total, np.concatenate(scores)


@register("integrated-gradients", family="gradient", reference="Sundararajan et al. 2017, "
          "arXiv:1703.01365", requires_graph=True, needs_gradient=True,
          fast={"steps": 16, "max_steps": 64})
def integrated_gradients(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
                         steps: Annotated[int, Range(1)] = 50, baseline: Baseline = "zero",
                         rule: Rule = "gauss-legendre",
                         tolerance: Annotated[float, Range(0)] = 0.01,
                         max_steps: Annotated[int, Range(1)] = 400) -> Attribution:
    """IG = (x - x') * int_0^1 d f_c/dx (x' + a (x - x')) da, Gauss-Legendre to a tolerance.

    The integral is a quadrature sum_k w_k g(alpha_k) over ``steps`` nodes (see
    :func:`quadrature`; Gauss-Legendre, as captum's default, converges far faster than the
    midpoint rule of the paper on smooth paths). Completeness (Sundararajan et al., Prop. 1):
    the attributions sum to f_c(x) - f_c(x'); the quadrature error leaves a gap
    sum(IG) - (f_c(x) - f_c(x')), reported in ``extras["completeness_gap"]``. With a
    ``tolerance``, the step count is doubled (a fresh rule each time, no node reused) until
    |gap| <= tolerance * |f_c(x) - f_c(x')| or the next count would pass ``max_steps``.
    Queries: the steps of every round plus one for the baseline (the trapezoid rule's first
    node is the baseline). extras: attributions (C, H, W), completeness_gap,
    score_difference, steps (of the last round), tolerance_met (None without a tolerance).

    Args:
        steps: quadrature nodes on the straight path from the baseline to the input (the first
            round's count).
        baseline: the reference input x': zero, mean, blur, or a number.
        rule: quadrature rule: gauss-legendre, midpoint (the paper's Riemann sum) or trapezoid.
        tolerance: relative completeness gap to reach by doubling the steps; 0: no refinement,
            exactly ``steps`` steps.
        max_steps: no refinement round goes past this many steps.
    """
    base = make_baseline(x, baseline)
    chunk = chunk_size_for(query)
    n = int(steps)
    alphas, weights = quadrature(rule, n)
    if alphas[0] != 0:  # the baseline's score closes the gap: a node of weight 0 at alpha 0
        alphas, weights = np.append(alphas, 0.0), np.append(weights, 0.0)
    integral, scores = path_integral(ctx, x, base, target, alphas, weights, chunk)
    delta = float(ctx.scores[target] - scores[np.argmin(alphas), target])
    while True:
        attr = (x - base) * integral
        gap = float(attr.sum()) - delta
        met = abs(gap) <= tolerance * abs(delta)
        if tolerance == 0 or met or 2 * n > max_steps:
            break
        n *= 2
        integral, _ = path_integral(ctx, x, base, target, *quadrature(rule, n), chunk)
    return Attribution(attr.sum(axis=0).astype(np.float32), {
        "attributions": attr.astype(np.float32), "completeness_gap": gap,
        "score_difference": delta, "steps": n, "tolerance_met": met if tolerance else None})


@register("smoothgrad", family="gradient", reference="Smilkov et al. 2017, arXiv:1706.03825",
          stochastic=True, requires_graph=True, needs_gradient=True, fast={"n_samples": 8})
def smoothgrad(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
               n_samples: Annotated[int, Range(1)] = 25, sigma: Annotated[float, Range(0)] = 0.15
               ) -> Attribution:
    """SmoothGrad: mean over noisy copies x + N(0, (sigma (max x - min x))^2) of the saliency map.

    Averages the absolute gradients (max over channels), as the paper does for ImageNet
    visualisations. ``n_samples`` passes in one batch.

    Args:
        n_samples: noisy copies averaged.
        sigma: noise standard deviation, as a fraction of the input's value range.
    """
    noise = ctx.rng.standard_normal((n_samples, *x.shape), dtype=np.float32)
    noisy = x[None] + noise * np.float32(sigma * float(x.max() - x.min()))
    _, g = _grad(ctx, noisy, target)
    return Attribution(np.abs(g).max(axis=1).mean(axis=0), {"n_samples": n_samples})
