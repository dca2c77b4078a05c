"""Superpixel LIME (Ribeiro et al. 2016), lime_image's algorithm in numpy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..perturb import SegmentMasks, chunk_size_for, chunked, make_baseline, scores_for_masks
from ..registry import Attribution, Context, Range, register
from ..segmentation import Segments, segment


def fill_image(x: npt.NDArray[np.float32], labels: npt.NDArray[np.integer],
               fill: str | float) -> npt.NDArray[np.float32]:
    """What hidden segments show (C, H, W): ``"mean"`` (each segment's mean colour, per
    channel, as lime_image's ``hide_color=None``), or a baseline: ``"zero"``, ``"blur"``, a number."""
    if fill != "mean":
        return make_baseline(x, fill, option="fill")
    flat = labels.ravel()
    d = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=d)
    means = np.stack([np.bincount(flat, weights=c.ravel(), minlength=d) / counts
                      for c in x.astype(np.float64)])  # (C, d)
    return means[:, labels].astype(np.float32)


def lime_kernel(distances: npt.NDArray[np.float64], kernel_width: float) -> npt.NDArray[np.float64]:
    """lime's default kernel: ``sqrt(exp(-d^2 / width^2))``, i.e. ``exp(-d^2 / (2 width^2))``."""
    return np.sqrt(np.exp(-(distances ** 2) / kernel_width ** 2))


def weighted_ridge(z: npt.NDArray[np.float64], y: npt.NDArray[np.float64],
                   w: npt.NDArray[np.float64], alpha: float) -> tuple[npt.NDArray[np.float64], float, float, int]:
    """argmin over (b, c) of sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2, the intercept b not
    penalised (scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=w)``): z and y centred on
    their weighted means, then least squares on [sqrt(w) z_c; sqrt(alpha) I] c = [sqrt(w) y_c; 0],
    the minimum-norm c when the system is rank-deficient (alpha = 0, few samples).

    Returns (c, b, weighted R^2, rank). R^2 = 1 - sum w r^2 / sum w (y - y_w)^2; for a constant
    y, 1 when the fit is exact and 0 otherwise (scikit-learn's convention).
    """
    d = z.shape[1]
    z_mean, y_mean = w @ z / w.sum(), w @ y / w.sum()
    root = np.sqrt(w)
    system = np.vstack([root[:, None] * (z - z_mean), np.sqrt(alpha) * np.eye(d)])
    rhs = np.concatenate([root * (y - y_mean), np.zeros(d)])
    coef, _, rank, _ = np.linalg.lstsq(system, rhs, rcond=None)
    intercept = float(y_mean - z_mean @ coef)
    residual = w @ (y - intercept - z @ coef) ** 2
    total = w @ (y - y_mean) ** 2
    r2 = 1.0 - residual / total if total > 0 else float(residual == 0)
    return coef, intercept, float(r2), int(rank)


@register("lime", family="black-box", stochastic=True,
          reference="Ribeiro et al. 2016, arXiv:1602.04938", fast={"num_samples": 200})
def lime(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
         segments: Segments = "quickshift", num_samples: Annotated[int, Range(2)] = 1000,
         kernel_width: Annotated[float, Range(0, lo_open=True)] = 0.25,
         fill: str | float = "mean", alpha: Annotated[float, Range(0)] = 1.0) -> Attribution:
    """Superpixel LIME: weighted ridge regression of the score on which segments are shown.

    Segments: quickshift by default, its parameters scaled to the input size
    (:func:`~blackbox_xai.segmentation.scaled_defaults`); fewer than 4 superpixels raise (use
    segments="grid"). Draw z in {0,1}^d (the first sample all ones: x itself, not queried
    again); hidden segments show the fill (segment mean colour, zero, blur or a number). Weights
    w = sqrt(exp(-D(z, 1)^2 / kernel_width^2)) with D the cosine distance (lime_image's kernel);
    fit a ridge regression (:func:`weighted_ridge`: lime_image's scikit-learn ``Ridge(alpha)``
    with intercept, solved in numpy) of f_c on z with weights w. The map paints each segment
    with its coefficient. Queries: num_samples. extras: attributions (coefficients), intercept,
    r2 (the weighted R^2 of the fit), segments; fit_warnings when the regression is
    rank-deficient (its minimum-norm coefficients are reported).

    Args:
        segments: quickshift, slic, felzenszwalb, grid, or a label array (H, W).
        num_samples: perturbed inputs scored (the query budget).
        kernel_width: width of the exponential kernel on the cosine distance.
        fill: what hidden segments show: mean (segment colour), zero, blur, or a number.
        alpha: ridge regularisation strength.
    """
    labels = segment(x, segments)
    d = int(labels.max()) + 1
    fill_img = fill_image(x, labels, fill)
    z = ctx.rng.integers(0, 2, size=(int(num_samples), d), dtype=np.int8).astype(bool)
    z[0] = True
    chunk = chunk_size_for(query)
    ctx.set_total(len(z) - 1)

    def mask_chunks() -> Iterator[SegmentMasks]:
        for sl in chunked(len(z) - 1, chunk):
            yield SegmentMasks(z[1 + sl.start:1 + sl.stop], labels)

    y = np.empty(len(z))
    y[0] = ctx.scores[target]
    y[1:] = scores_for_masks(query, x, fill_img, mask_chunks(), target)
    data = z.astype(np.float64)
    shown = data.sum(axis=1)
    # cosine distance to the all-ones z of x itself: 1 - |z|_1 / sqrt(|z|_1 d) (1 for z = 0)
    distances = 1.0 - np.sqrt(shown / d)
    coef, intercept, r2, rank = weighted_ridge(data, y, lime_kernel(distances, kernel_width),
                                               float(alpha))
    extras = {"attributions": coef.astype(np.float32), "intercept": intercept,
              "r2": r2, "segments": labels.astype(np.int32),
              "local_prediction": float(intercept + coef.sum())}
    if rank < d:
        warning = (f"the weighted regression has rank {rank} for {d} segments (alpha=0 or too "
                   "few samples): minimum-norm coefficients")
        extras["fit_warnings"] = [warning]
    return Attribution(coef[labels].astype(np.float32), extras)
