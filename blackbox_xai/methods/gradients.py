"""Gradient maps from the exported backward graph: ``g = d f_c / d x``, batched in one session."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..model import one_hot
from ..perturb import Baseline, make_baseline
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


@register("integrated-gradients", family="gradient", reference="Sundararajan et al. 2017, "
          "arXiv:1703.01365", requires_graph=True, needs_gradient=True, fast={"steps": 16})
def integrated_gradients(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
                         steps: Annotated[int, Range(1)] = 50, baseline: Baseline = "zero"
                         ) -> Attribution:
    """IG = (x - x') * mean_alpha d f_c/dx (x' + alpha (x - x')), midpoint rule over ``steps``.

    Completeness: the attributions sum to f_c(x) - f_c(x') up to the integration error, reported
    as ``extras["completeness_gap"]``. ``steps`` passes plus one for the baseline, in one batch.

    Args:
        steps: points on the straight path from the baseline to the input (midpoint rule).
        baseline: the reference input x': zero, mean, blur, or a number.
    """
    base = make_baseline(x, baseline)
    alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps
    path = base[None] + alphas[:, None, None, None] * (x - base)[None]
    scores, g = _grad(ctx, np.concatenate([path, base[None]]), target)
    attr = (x - base) * g[:steps].mean(axis=0)
    delta = float(ctx.scores[target] - scores[-1, target])
    return Attribution(attr.sum(axis=0), {
        "attributions": attr, "completeness_gap": float(attr.sum()) - delta,
        "score_difference": delta})


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
