"""RISE: randomized input sampling for explanation (Petsiuk et al. 2018)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..perturb import GridMasks, chunk_size_for, chunked, scores_for_masks
from ..registry import Attribution, Context, Range, register
from ..resample import bilinear_matrix


def rise_masks(grids: npt.NDArray[np.floating], dy: npt.NDArray[np.integer],
               dx: npt.NDArray[np.integer], height: int, width: int) -> npt.NDArray[np.float32]:
    """Upsample binary grids (n, s, s) bilinearly to ``(s+1) * ceil(size/s)`` and crop
    (height, width) at the shifts (dy, dx): masks (n, height, width), vectorised.

    Bilinear resizing is separable, ``Ry G Rx^T``; cropping only selects rows of ``Ry``/``Rx``.
    """
    s = grids.shape[1]
    ry = bilinear_matrix(s, (s + 1) * -(-height // s), edge="reflect")
    rx = bilinear_matrix(s, (s + 1) * -(-width // s), edge="reflect")
    rows = ry[np.asarray(dy)[:, None] + np.arange(height)]  # (n, H, s)
    cols = rx[np.asarray(dx)[:, None] + np.arange(width)]  # (n, W, s)
    return (rows @ grids @ cols.transpose(0, 2, 1)).astype(np.float32)


@register("rise", family="black-box", stochastic=True,
          reference="Petsiuk et al. 2018, arXiv:1806.07421", fast={"n_masks": 500})
def rise(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
         n_masks: Annotated[int, Range(1)] = 4000, grid: Annotated[int, Range(1)] = 7,
         p: Annotated[float, Range(0, 1, lo_open=True)] = 0.5, control_variate: bool = True
         ) -> Attribution:
    """Score the input under random smooth masks; saliency = sum_i (f_c(x * M_i) - mean f) M_i / (N p).

    Each mask: an s x s grid of cells on with probability p, upsampled bilinearly to
    (s+1) * ceil(H/s) and cropped at a random shift. Masks are made chunk by chunk (the small
    grids and shifts are drawn up front, so the map does not depend on the batch size).

    The paper's estimator is S = sum_i f_i M_i / (N p), f_i = f_c(x * M_i). Every pixel's
    expected mask value is exactly p (each row of the bilinear resize sums to one), so
    E[f M(u)] / p = Cov(f, M(u)) / p + E[f]: the paper's map is the covariance map plus the
    constant E[f], and that constant carries almost all of the estimator's variance when the
    mean score is large against its spread (logits). The control variate (default) subtracts
    the sample mean score, at no query cost: S = sum_i (f_i - mean_j f_j) M_i / (N p), with
    E[S] = (1 - 1/N) (E[f M] / p - E[f]): the same map up to an additive constant and the
    factor 1 - 1/N (the sample mean includes f_i itself), so every comparison between pixels
    is kept and only the noise of the constant goes.

    ``extras["split_half_r"]``: the Pearson correlation of the maps made from the first and the
    second half of the masks (each centred on its own mean score), a check that the budget was
    enough: near 1, the map is stable; by Spearman-Brown, two full runs with different seeds
    correlate about 2 r / (1 + r). None when a half has fewer than 2 masks or a constant map.
    Queries: n_masks. extras: n_masks, p, grid, control_variate, split_half_r.

    Args:
        n_masks: random masks scored (the query budget).
        grid: cells per side of the coarse random grid.
        p: probability that a cell is kept.
        control_variate: subtract the mean score from every mask's score (the map changes by a
            constant only, with far less noise); off: the paper's sum_i f_i M_i / (N p).
    """
    _, h, w = x.shape
    n, s = int(n_masks), int(grid)
    grids = (ctx.rng.random((n, s, s)) < p).astype(np.float64)
    dy = ctx.rng.integers(0, -(-h // s), n)
    dx = ctx.rng.integers(0, -(-w // s), n)
    chunk = chunk_size_for(query)
    ctx.set_total(n)
    zero = np.zeros_like(x)
    halves = (slice(0, n // 2), slice(n // 2, n))
    weighted = np.zeros((2, h * w))  # per half: sum_i f_i M_i (float64 accumulation)
    coverage = np.zeros((2, h * w))  # per half: sum_i M_i
    scores = np.empty(n)

    for sl in chunked(n, chunk):
        masks = rise_masks(grids[sl], dy[sl], dx[sl], h, w)
        scores[sl] = scores_for_masks(query, x, zero, [GridMasks(grids[sl], dy[sl], dx[sl], masks)],
                                      target)
        masks = masks.reshape(len(masks), -1)
        for k, half in enumerate(halves):
            lo, hi = max(half.start, sl.start), min(half.stop, sl.stop)
            if lo < hi:
                part = slice(lo - sl.start, hi - sl.start)
                weighted[k] += scores[lo:hi] @ masks[part]
                coverage[k] += masks[part].sum(axis=0)

    def estimate(total: npt.NDArray[np.float64], cover: npt.NDArray[np.float64],
                 f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        centre = f.mean() if control_variate and len(f) else 0.0
        return (total - centre * cover) / (max(len(f), 1) * p)

    saliency = estimate(weighted.sum(axis=0), coverage.sum(axis=0), scores)
    split = [estimate(weighted[k], coverage[k], scores[half]) for k, half in enumerate(halves)]
    r = None
    if n // 2 >= 2 and min(split[0].std(), split[1].std()) > 0:
        r = float(np.corrcoef(split[0], split[1])[0, 1])
    return Attribution(saliency.reshape(h, w).astype(np.float32),
                       {"n_masks": n, "p": float(p), "grid": s,
                        "control_variate": bool(control_variate), "split_half_r": r})
