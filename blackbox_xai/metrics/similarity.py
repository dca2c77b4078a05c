"""Similarity between two attribution maps: Spearman rank correlation, top-k% IoU, SSIM.

All three take two maps of the same shape (H, W) and ignore their scale: Spearman and the top-k
region only look at the ranking, SSIM compares min-max normalised maps (``data_range=1``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError

Map = npt.NDArray[np.floating]


def _pair(a: Map, b: Map) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    a = np.nan_to_num(np.asarray(a, np.float64))
    b = np.nan_to_num(np.asarray(b, np.float64))
    if a.shape != b.shape:
        raise BlackboxError(f"maps of shapes {a.shape} and {b.shape}: compare maps of the same shape")
    if a.size < 2:
        raise BlackboxError(f"maps of shape {a.shape}: need at least 2 pixels")
    return a, b


def average_ranks(values: Map) -> npt.NDArray[np.float64]:
    """Ranks 1..n of the flattened values, tied values sharing their mean rank (the "average"
    method of ``scipy.stats.rankdata``)."""
    _, inverse, counts = np.unique(np.ravel(values), return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def spearman(a: Map, b: Map) -> float:
    """Spearman rank correlation of the flattened maps, in [-1, 1]: the Pearson correlation of
    their :func:`average_ranks` (``scipy.stats.spearmanr``'s value, without importing
    ``scipy.stats``, which costs 2 s of CPU in every process that compares maps).

    A constant map has no ranking: two constant maps give 1.0, one constant map gives 0.0
    (instead of scipy's NaN), so that "identical" and "unrelated" stay numbers.
    """
    a, b = _pair(a, b)
    if np.array_equal(a, b):
        return 1.0  # exactly, not 0.9999999999999999
    const_a, const_b = np.ptp(a) == 0, np.ptp(b) == 0
    if const_a or const_b:
        return 1.0 if const_a and const_b else 0.0
    return float(np.clip(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1], -1.0, 1.0))


def top_k_mask(m: Map, k: float = 0.1) -> npt.NDArray[np.bool_]:
    """The ``k`` fraction (0 < k <= 1) of pixels with the highest values (ties: first in order)."""
    if not 0 < k <= 1:
        raise BlackboxError(f"k={k!r}: use a fraction in (0, 1], e.g. 0.1 for the top 10%")
    flat = np.nan_to_num(np.asarray(m, np.float64)).ravel()
    n = max(1, round(k * flat.size))
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:n]] = True
    return keep.reshape(np.shape(m))


def top_k_iou(a: Map, b: Map, k: float = 0.1) -> float:
    """Intersection over union of the two maps' top-``k`` regions (default: top 10% of pixels)."""
    a, b = _pair(a, b)
    ma, mb = top_k_mask(a, k), top_k_mask(b, k)
    return float((ma & mb).sum() / (ma | mb).sum())


def minmax(m: Map) -> npt.NDArray[np.float64]:
    """Scale a map to [0, 1] (a constant map becomes all zeros)."""
    m = np.nan_to_num(np.asarray(m, np.float64))
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def ssim(a: Map, b: Map) -> float:
    """Structural similarity of the min-max normalised maps (scikit-image, ``data_range=1``)."""
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b)
    if a.ndim != 2:
        raise BlackboxError(f"maps of shape {a.shape}: SSIM needs 2-D maps (H, W)")
    side = min(a.shape)
    if side < 3:
        raise BlackboxError(f"maps of shape {a.shape}: SSIM needs at least 3 x 3 pixels")
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(minmax(a), minmax(b), data_range=1.0, win_size=win))


def similarity(a: Map, b: Map, k: float = 0.1) -> dict[str, float]:
    """All three measures: ``{"spearman", "top_k_iou", "ssim"}``."""
    return {"spearman": spearman(a, b), "top_k_iou": top_k_iou(a, b, k), "ssim": ssim(a, b)}
