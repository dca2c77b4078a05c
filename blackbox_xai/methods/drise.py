"""D-RISE: detector randomized input sampling for explanation (Petsiuk et al. CVPR 2021)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..perturb import chunk_size_for, chunked, scores_for_masks
from ..registry import Attribution, Context, Range, register
from ..resample import bilinear_matrix
from ..targets import DetectionScore


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
    Masks are RISE's (:func:`~blackbox_xai.methods.rise.rise_masks`), computed in float32 on
    one BLAS thread (a multithreaded BLAS woken between ONNX Runtime runs fights its thread
    pool: 10-100x slower mask products on 2 cores).
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
    make = masks_float32(s, h, w)
    for sl in chunked(n, chunk_size_for(query)):
        masks = make(grids[sl], dy[sl], dx[sl])
        weights[sl] = scores_for_masks(query, x, zero, [masks], target)
        saliency += weights[sl] @ masks.reshape(len(masks), -1)
    return Attribution((saliency / n).reshape(h, w).astype(np.float32),
                       {"n_masks": n, "p": float(p), "grid": s,
                        "weights": weights.astype(np.float32)})


def masks_float32(s: int, height: int, width: int
                  ) -> Callable[[npt.NDArray, npt.NDArray, npt.NDArray], npt.NDArray[np.float32]]:
    """:func:`~blackbox_xai.methods.rise.rise_masks` for s x s grids, in float32 with the
    bilinear matrices made once: (grids (n, s, s), dy, dx) -> masks (n, height, width),
    Ry[dy + i] @ G @ Rx[dx + j]^T (equal to RISE's float64 masks within float32 rounding;
    D-RISE has no in-graph path that must match them bit for bit, and float32 batched
    products cost several times less on a big input)."""
    ry = bilinear_matrix(s, (s + 1) * -(-height // s), edge="reflect").astype(np.float32)
    rx_t = bilinear_matrix(s, (s + 1) * -(-width // s), edge="reflect").T.astype(np.float32)

    def make(grids: npt.NDArray, dy: npt.NDArray, dx: npt.NDArray) -> npt.NDArray[np.float32]:
        rows = ry[np.asarray(dy)[:, None] + np.arange(height)]  # (n, H, s)
        cols_t = rx_t[:, np.asarray(dx)[:, None] + np.arange(width)].transpose(1, 0, 2)  # (n, s, W)
        return (rows @ grids.astype(np.float32)) @ cols_t

    return make
