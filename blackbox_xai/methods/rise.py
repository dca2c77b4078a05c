"""RISE: randomized input sampling for explanation (Petsiuk et al. 2018)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..perturb import chunk_size_for, chunked, scores_for_masks
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
         p: Annotated[float, Range(0, 1, lo_open=True)] = 0.5) -> Attribution:
    """Score the input under random smooth masks; saliency = sum_i f_c(x * M_i) M_i / (N p).

    Each mask: an s x s grid of cells on with probability p, upsampled bilinearly to
    (s+1) * ceil(H/s) and cropped at a random shift. Masks are made chunk by chunk (the small
    grids and shifts are drawn up front, so the map does not depend on the batch size).
    Queries: n_masks. extras: n_masks, p, grid.

    Args:
        n_masks: random masks scored (the query budget).
        grid: cells per side of the coarse random grid.
        p: probability that a cell is kept.
    """
    _, h, w = x.shape
    n, s = int(n_masks), int(grid)
    grids = (ctx.rng.random((n, s, s)) < p).astype(np.float64)
    dy = ctx.rng.integers(0, -(-h // s), n)
    dx = ctx.rng.integers(0, -(-w // s), n)
    chunk = chunk_size_for(query)
    ctx.set_total(n)
    zero = np.zeros_like(x)
    saliency = np.zeros(h * w)

    for sl in chunked(n, chunk):
        masks = rise_masks(grids[sl], dy[sl], dx[sl], h, w)
        scores = scores_for_masks(query, x, zero, [masks], target).astype(np.float64)
        saliency += scores @ masks.reshape(len(masks), -1)  # float64 accumulation
    saliency /= n * p
    return Attribution(saliency.reshape(h, w).astype(np.float32),
                       {"n_masks": n, "p": float(p), "grid": s})
