"""Sampled Shapley values over segments (Castro et al. 2009; Strumbelj & Kononenko 2010)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..perturb import (
    Baseline,
    chunk_size_for,
    chunked,
    make_baseline,
    masks_from_keep,
    scores_for_masks,
)
from ..registry import Attribution, Context, Range, register
from ..segmentation import Segments, segment


def draw_permutations(rng: np.random.Generator, n: int, d: int, antithetic: bool
                      ) -> npt.NDArray[np.int64]:
    """``n`` permutations of ``range(d)`` (n, d); antithetic: rows 2k+1 reverse rows 2k.

    All drawn up front, so the result never depends on how queries are chunked.
    """
    m = (n + 1) // 2 if antithetic else n
    base = rng.permuted(np.tile(np.arange(d), (m, 1)), axis=1)
    if not antithetic:
        return base
    perms = np.empty((2 * m, d), np.int64)
    perms[0::2], perms[1::2] = base, base[:, ::-1]
    return perms[:n]


def ranks(perms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``rank[p, j]``: the position of segment ``j`` in permutation ``p``."""
    rank = np.empty_like(perms)
    np.put_along_axis(rank, perms, np.arange(perms.shape[1])[None, :], axis=1)
    return rank


def prefix_keep(rank: npt.NDArray[np.int64], rows: slice) -> npt.NDArray[np.bool_]:
    """Rows ``rows`` of the keep-matrix of all proper non-empty prefixes, (n * (d-1), d) in all.

    Row ``p * (d-1) + k - 1`` keeps the first ``k`` segments of permutation ``p`` (those of
    rank < k). Built a chunk at a time: the whole matrix grows as n d^2.
    """
    d = rank.shape[1]
    r = np.arange(rows.start, rows.stop)
    return rank[r // (d - 1)] < (r % (d - 1) + 1)[:, None]


def standard_errors(phi: npt.NDArray[np.float64], antithetic: bool) -> npt.NDArray[np.float64]:
    """Standard error (d,) of the mean of the per-permutation contributions ``phi`` (n, d).

    Plain sampling: the permutations are i.i.d., ``SE = s / sqrt(n)``. Antithetic: the pair
    means are the i.i.d. units; with ``m`` full pairs and (n odd) one unpaired permutation the
    estimate is ``(2 sum pair_means + phi_last) / n`` and its variance
    ``(4 m Var(pair) + Var(single)) / n^2``, with Var(single) from all ``n`` rows. NaN where
    fewer than two units.
    """
    n, d = phi.shape
    if not antithetic:
        return phi.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(d, np.nan)
    m = n // 2
    if m < 2:
        return np.full(d, np.nan)
    pair = 0.5 * (phi[0:2 * m:2] + phi[1:2 * m:2])
    var = 4 * m * pair.var(axis=0, ddof=1)
    if n % 2:
        var = var + phi.var(axis=0, ddof=1)
    return np.sqrt(var) / n


@register("shapley", family="black-box", stochastic=True,
          reference="Castro et al. 2009, doi:10.1016/j.cor.2008.04.004; "
                    "Strumbelj & Kononenko 2010, JMLR 11", fast={"n_permutations": 4})
def shapley(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
            segments: Segments = "grid", grid: Annotated[int, Range(1)] = 7,
            n_permutations: Annotated[int, Range(1)] = 25, antithetic: bool = True,
            baseline: Baseline = "zero") -> Attribution:
    """Permutation-sampled Shapley values of segments (grid or superpixels), revealed from a baseline.

    For a random permutation pi of the d segments, start from the baseline and reveal the
    segments in the order pi; segment i's contribution is the score gain when it is revealed.
    phi_i = mean over permutations. Each permutation's contributions sum exactly to
    f_c(x) - f_c(baseline) (efficiency). Antithetic pairs (pi, reversed pi) cancel all
    pairwise-interaction noise. Queries: n_permutations * (d - 1) + 2 (the prefixes, the shared
    baseline, and x itself, which every permutation ends with and which is scored only once). The map paints each segment with its value.
    extras: attributions (d,), std_errors (d,), segments, n_permutations, efficiency_gap.

    Args:
        segments: grid, quickshift, slic, felzenszwalb, or a label array (H, W).
        grid: cells per side with segments=grid.
        n_permutations: permutations sampled (the query budget).
        antithetic: pair each permutation with its reverse.
        baseline: what hidden segments show: zero, mean, blur, or a number.
    """
    labels = segment(x, segments, grid=grid)
    d = int(labels.max()) + 1
    base = make_baseline(x, baseline)
    perms = draw_permutations(ctx.rng, int(n_permutations), d, bool(antithetic))
    rank = ranks(perms)
    n_rows = 1 + len(perms) * (d - 1)  # row 0: the baseline (shared), then every prefix
    chunk = chunk_size_for(query)
    ctx.set_total(n_rows)

    def mask_chunks() -> Iterator[npt.NDArray[np.float32]]:
        for sl in chunked(n_rows, chunk):
            keep = prefix_keep(rank, slice(max(sl.start - 1, 0), sl.stop - 1))
            if sl.start == 0:
                keep = np.concatenate([np.zeros((1, d), bool), keep])
            yield masks_from_keep(keep, labels)

    scores = scores_for_masks(query, x, base, mask_chunks(), target).astype(np.float64)
    f_base, f_x = scores[0], float(ctx.scores[target])
    n = len(perms)
    path = np.empty((n, d + 1))  # the score along each permutation's path baseline -> x
    path[:, 0], path[:, d] = f_base, f_x
    path[:, 1:d] = scores[1:].reshape(n, d - 1)
    gains = np.diff(path, axis=1)  # gains[p, k]: contribution of segment perms[p, k]
    phi = np.empty((n, d))
    np.put_along_axis(phi, perms, gains, axis=1)
    attributions = phi.mean(axis=0)
    gap = float(attributions.sum() - (f_x - f_base))
    extras = {"attributions": attributions.astype(np.float32),
              "std_errors": standard_errors(phi, bool(antithetic)).astype(np.float32),
              "segments": labels.astype(np.int32), "n_permutations": n,
              "baseline_score": float(f_base), "efficiency_gap": gap}
    return Attribution(attributions[labels].astype(np.float32), extras)
