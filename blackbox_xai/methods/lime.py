"""Superpixel LIME (Ribeiro et al. 2016), lime_image's algorithm with numpy + scikit-learn."""

from __future__ import annotations

import warnings
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
    fit Ridge(alpha) with intercept of f_c on z with weights w. The map paints each segment with
    its coefficient. Queries: num_samples. extras: attributions (coefficients), intercept, r2
    (the weighted R^2 of the fit), segments.

    Args:
        segments: quickshift, slic, felzenszwalb, grid, or a label array (H, W).
        num_samples: perturbed inputs scored (the query budget).
        kernel_width: width of the exponential kernel on the cosine distance.
        fill: what hidden segments show: mean (segment colour), zero, blur, or a number.
        alpha: ridge regularisation strength.
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import pairwise_distances

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
    distances = pairwise_distances(data, data[:1], metric="cosine").ravel()
    weights = lime_kernel(distances, kernel_width)
    ridge = Ridge(alpha=alpha, fit_intercept=True)
    # alpha=0 (or few samples) can make the system ill-conditioned: scipy warns on stderr; the
    # least-squares solution is still finite, and the warning goes into extras instead.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ridge.fit(data, y, sample_weight=weights)
    fit_warnings = sorted({str(w.message) for w in caught})
    r2 = float(ridge.score(data, y, sample_weight=weights))
    coef = ridge.coef_.astype(np.float64)
    extras = {"attributions": coef.astype(np.float32), "intercept": float(ridge.intercept_),
              "r2": r2, "segments": labels.astype(np.int32),
              "local_prediction": float(ridge.intercept_ + coef.sum())}
    if fit_warnings:
        extras["fit_warnings"] = fit_warnings
    return Attribution(coef[labels].astype(np.float32), extras)
