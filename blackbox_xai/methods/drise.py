"""D-RISE: detector randomized input sampling for explanation (Petsiuk et al. CVPR 2021)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..perturb import chunk_size_for, chunked, scores_for_masks
from ..registry import Attribution, Context, Range, register
from ..targets import DetectionScore
from .rise import rise_masks


@register("drise", family="detection", stochastic=True,
          reference="Petsiuk et al. 2021, CVPR, arXiv:2012.03058", fast={"n_masks": 500})
def drise(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
          n_masks: Annotated[int, Range(1)] = 4000, grid: Annotated[int, Range(1)] = 16,
          p: Annotated[float, Range(0, 1, lo_open=True)] = 0.5) -> Attribution:
    """Detection saliency: S = sum_i w_i M_i / N, w_i = max_a IoU(L_t, L_a) cos(P_t, P_a) O_a.

    RISE's masks M_i (an s x s grid of cells on with probability p, upsampled bilinearly and
    cropped at a random shift); each masked image x * M_i is decoded into proposals
    (box L_a, class scores P_a, objectness O_a where the model has one), and the mask's weight
    w_i is its best proposal's similarity to the target detection d_t = (L_t, P_t one-hot).
    Only for a detection target (``target=Detection(...)``, CLI ``--detection I`` or
    ``--box ... --class k``). Masks are drawn up front as small grids, made chunk by chunk.
    Queries: n_masks. extras: n_masks, p, grid, weights (the w_i).

    Args:
        n_masks: random masks scored (the query budget).
        grid: cells per side of the coarse random grid (the paper uses 16 for COCO detectors).
        p: probability that a cell is kept.
    """
    if not isinstance(getattr(query, "fn", query), DetectionScore):
        raise BlackboxError("drise explains a detection: give target=Detection(...) on a "
                            "detector (CLI: --detection I or --box x0,y0,x1,y1 --class k)")
    _, h, w = x.shape
    n, s = int(n_masks), int(grid)
    grids = (ctx.rng.random((n, s, s)) < p).astype(np.float64)
    dy = ctx.rng.integers(0, -(-h // s), n)
    dx = ctx.rng.integers(0, -(-w // s), n)
    ctx.set_total(n)
    zero = np.zeros_like(x)
    weights = np.empty(n)
    saliency = np.zeros(h * w)
    for sl in chunked(n, chunk_size_for(query)):
        masks = rise_masks(grids[sl], dy[sl], dx[sl], h, w)
        weights[sl] = scores_for_masks(query, x, zero, [masks], target)
        saliency += weights[sl] @ masks.reshape(len(masks), -1)
    return Attribution((saliency / n).reshape(h, w).astype(np.float32),
                       {"n_masks": n, "p": float(p), "grid": s,
                        "weights": weights.astype(np.float32)})
