"""Adaptive occlusion: coarse-to-fine deletion windows plus preservation windows, on a budget.

Our own design, in the spirit of OpenVINO XAI's AISE (adaptive input sampling with a dual
preservation / deletion objective), with box windows instead of Gaussian kernels and one
batched refinement round instead of sequential DIRECT optimisation.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..perturb import BoxMasks, blur, chunk_size_for, chunked, scores_for_masks
from ..registry import Attribution, Context, Range, register
from .occlusion import window_starts

#: window = (round(H / c), round(W / c)): 48 / 32 / 16 px deletion, 64 px preservation at 224
COARSE, MEDIUM, FINE, KEEP = 14 / 3, 7.0, 14.0, 3.5

Boxes = npt.NDArray[np.int64]  # rows y0, y1, x0, x1


def window_size(h: int, w: int, c: float) -> tuple[int, int]:
    """The window of scale ``c``: (round(H / c), round(W / c)), at least 1 x 1."""
    return max(1, round(h / c)), max(1, round(w / c))


def grid_boxes(h: int, w: int, c: float) -> Boxes:
    """Every window of scale ``c`` at a stride of half its side (the last one flush with the
    edge): about (2c - 1)^2 windows whatever the input's size and aspect ratio."""
    sh, sw = window_size(h, w, c)
    ys, xs = window_starts(h, sh, max(sh // 2, 1)), window_starts(w, sw, max(sw // 2, 1))
    corners = np.array([(y, x) for y in ys for x in xs], np.int64)
    return np.stack([corners[:, 0], corners[:, 0] + sh, corners[:, 1], corners[:, 1] + sw], 1)


def window_mean(values: npt.NDArray[np.floating], boxes: Boxes, h: int, w: int
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per pixel: the mean of ``values`` over the windows covering it, and whether any does."""
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for v, (y0, y1, x0, x1) in zip(values, boxes):
        total[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    covered = count > 0
    return np.where(covered, total / np.maximum(count, 1), 0.0), covered


def standardize(m: npt.NDArray[np.float64], where: npt.NDArray[np.bool_] | None = None
                ) -> npt.NDArray[np.float64]:
    """(m - mean) / std over ``where`` (default everywhere); outside it, the minimum inside; a
    constant map gives zeros."""
    inside = np.ones(m.shape, bool) if where is None else where
    sd = m[inside].std()
    z = np.where(inside, (m - m[inside].mean()) / sd if sd > 0 else 0.0, 0.0)
    return np.where(inside, z, z[inside].min())


@register("adaptive-occlusion", family="black-box",
          reference="ours; cf. AISE (OpenVINO XAI) and Zeiler & Fergus 2014, arXiv:1311.2901",
          fast={"budget": 440})
def adaptive_occlusion(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
                       budget: Annotated[int, Range(1)] = 498) -> Attribution:
    """Occlusion at 2 scales, refined where it scores, plus preservation: mean z(D) + mean z(P).

    Windows of round(H / c) x round(W / c) pixels at a stride of half their sides (a last one
    flush with the edge):

    1. deletion, c = 14/3 and 7 (48 and 32 px at 224): d_w = f_c(x) - f_c(x with w zeroed);
       D_c(u) = mean of d_w over the windows covering u (as ``occlusion``).
    2. preservation, c = 3.5 (64 px), on two references b, zero and ``blur`` (Gaussian,
       sigma 5): p_w = f_c(b + (x - b) 1_w), only w kept; P_b(u) likewise.
    3. refinement (the adaptive step): the remaining queries go to windows with c = 14
       (16 px) whose centres rank highest on z(D_48) + z(D_32); D_16 is standardised over the
       pixels they cover and set to its minimum elsewhere.

    Map: (z(D_48) + z(D_32) + z(D_16)) / 3 + (z(P_zero) + z(P_blur)) / 2, z = (m - mean) / std:
    deletion and preservation evidence (what removing a region costs, what it alone keeps) in
    equal parts, in the spirit of AISE's dual objective (AISE: Gaussian kernels, zero
    reference, sequential DIRECT search per kernel width; here box windows and one batched
    refinement round). No randomness: the seed does not matter. Queries: ``budget`` (322 for
    the coarse and preservation passes at 224 x 224, 176 refinement windows at the default;
    fewer when every refinement window fits). Scales, weights and the blurred reference (close
    to the insertion metric's canvas) were chosen on the three example photos against RISE-4000
    (tools/bench/bench_adaptive.py); they are not derived.

    Args:
        budget: model evaluations in all (the coarse and preservation passes must fit).
    """
    _, h, w = x.shape
    coarse = [grid_boxes(h, w, c) for c in (COARSE, MEDIUM)]
    keep = grid_boxes(h, w, KEEP)
    fixed = sum(map(len, coarse)) + 2 * len(keep)
    if budget < fixed:
        raise BlackboxError(f"budget={budget}: the coarse passes need {fixed} queries at "
                            f"{h} x {w}")
    fine_all = grid_boxes(h, w, FINE)
    n_fine = min(budget - fixed, len(fine_all))
    ctx.set_total(fixed + n_fine)
    chunk = chunk_size_for(query)
    zero = np.zeros_like(x)
    score0 = float(ctx.scores[target])

    def drops(boxes: Boxes) -> npt.NDArray[np.float64]:
        chunks = (BoxMasks(boxes[sl], h, w) for sl in chunked(len(boxes), chunk))
        return score0 - scores_for_masks(query, x, zero, chunks, target).astype(np.float64)

    def kept(boxes: Boxes, base: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        chunks = (1.0 - BoxMasks(boxes[sl], h, w).masks() for sl in chunked(len(boxes), chunk))
        return scores_for_masks(query, x, base, chunks, target).astype(np.float64)

    deletion = [standardize(window_mean(drops(b), b, h, w)[0]) for b in coarse]
    preservation = np.mean([standardize(window_mean(kept(keep, base), keep, h, w)[0])
                            for base in (zero, blur(x))], axis=0)
    coverage = 0.0
    if n_fine:
        rank = deletion[0] + deletion[1]
        centres = rank[(fine_all[:, 0] + fine_all[:, 1]) // 2, (fine_all[:, 2] + fine_all[:, 3]) // 2]
        chosen = fine_all[np.argsort(-centres, kind="stable")[:n_fine]]
        fine, covered = window_mean(drops(chosen), chosen, h, w)
        deletion.append(standardize(fine, covered))
        coverage = float(covered.mean())
    saliency = np.mean(deletion, axis=0) + preservation
    return Attribution(saliency.astype(np.float32),
                       {"budget": int(budget), "n_queries": fixed + n_fine,
                        "windows": {"deletion": [window_size(h, w, c) for c in (COARSE, MEDIUM, FINE)],
                                    "preservation": window_size(h, w, KEEP)},
                        "refined_windows": int(n_fine), "refined_area": coverage})
