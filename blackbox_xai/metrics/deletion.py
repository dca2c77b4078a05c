"""Deletion and insertion curves (Petsiuk et al. 2018, RISE, arXiv:1806.07421).

Order the pixels by the map, most important first. *Deletion* sets them to 0 (in model-input
space), ``pixels_per_step`` at a time, starting from ``x``; *insertion* copies them from ``x``
onto a blurred copy of ``x``. The curve is the softmax probability of the target class after
each step (for a detection target: its matched score; for a region: its summed logits); its
area (trapezoid rule over the fraction of pixels changed, on [0, 1]) is the score. Lower deletion AUC and higher insertion AUC mean a more faithful map.

RISE protocol: 224 * 8 = 1792 pixels per step at 224 x 224 (28 steps, 29 points per curve),
scaled with the area here (``round(H * W / 28)``); the blur is RISE's own kernel (an 11 x 11
window, sigma 5, zero padding). Every input is scored through the query function in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.ndimage import convolve, gaussian_filter

from ..decode import Decoder
from ..errors import BlackboxError
from ..model import softmax
from ..perturb import QueryFn, chunk_size_for, chunked, scores_for_masks
from ..targets import Detection, Region, score_query

RISE_STEPS = 28  # 224 * 224 / 1792
Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CurveResult:
    """Both curves (score after each step), the fraction of pixels changed at each point, the AUCs."""

    deletion_auc: float
    insertion_auc: float
    deletion_curve: Array
    insertion_curve: Array
    fractions: Array
    pixels_per_step: int = 0
    n_queries: int = 0
    extras: dict = field(default_factory=dict)

    def as_dict(self, curves: bool = True) -> dict:
        d = {"deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc,
             "pixels_per_step": self.pixels_per_step, "n_queries": self.n_queries}
        if curves:
            d.update(fractions=self.fractions.tolist(), deletion_curve=self.deletion_curve.tolist(),
                     insertion_curve=self.insertion_curve.tolist())
        return d


def auc(curve: npt.ArrayLike, fractions: npt.ArrayLike | None = None) -> float:
    """Area under ``curve`` by the trapezoid rule over ``fractions`` (default: evenly spaced on [0, 1])."""
    y = np.asarray(curve, np.float64)
    if y.ndim != 1 or len(y) < 2:
        raise BlackboxError(f"curve of shape {y.shape}: need a 1-D curve of at least 2 points")
    t = np.linspace(0.0, 1.0, len(y)) if fractions is None else np.asarray(fractions, np.float64)
    if t.shape != y.shape or np.any(np.diff(t) < 0) or t[0] != 0 or t[-1] != 1:
        raise BlackboxError("fractions must rise from 0 to 1, one per curve point")
    return float(np.trapezoid(y, t))


def rise_kernel(size: int = 11, sigma: float = 5.0) -> npt.NDArray[np.float64]:
    """RISE's ``gkern``: a centred dirac in a ``size`` x ``size`` window, Gaussian-smoothed (sums to 1)."""
    k = np.zeros((size, size))
    k[size // 2, size // 2] = 1.0
    return gaussian_filter(k, sigma)


def rise_blur(x: Array, size: int = 11, sigma: float = 5.0) -> Array:
    """The insertion canvas: each channel convolved with :func:`rise_kernel`, zero padding."""
    k = rise_kernel(size, sigma)
    return np.stack([convolve(c.astype(np.float64), k, mode="constant", cval=0.0) for c in x]
                    ).astype(np.float32)


def default_pixels_per_step(h: int, w: int) -> int:
    """1792 at 224 x 224 (RISE), scaled with the area: ``round(H * W / 28)``."""
    return max(1, round(h * w / RISE_STEPS))


def _auto_softmax(query: QueryFn) -> bool:
    """Softmax the scores unless the query is a Model that already returns probabilities."""
    return not getattr(getattr(query, "fn", query), "returns_probabilities", False)


def deletion_insertion(query: QueryFn, x: npt.ArrayLike, saliency_map: npt.ArrayLike,
                       target: int | Detection | Region, *, pixels_per_step: int | None = None,
                       apply_softmax: bool | None = None, substrate: npt.ArrayLike | None = None,
                       chunk: int | None = None, decoder: str | Decoder | None = None
                       ) -> CurveResult:
    """Deletion and insertion curves and AUCs of ``saliency_map`` for ``target``.

    Args:
        query: a :class:`~blackbox_xai.model.Model` or any function (N, C, H, W) -> (N, K);
            for a Detection, a detector (``task="detect"`` or a function returning the raw
            head outputs); for a Region, a segmentation net (``task="segment"``).
        x: one preprocessed input, (C, H, W) or (1, C, H, W).
        saliency_map: (H, W); higher = more important. Ties keep raster order.
        target: the class whose probability is tracked; or a
            :class:`~blackbox_xai.targets.Detection`: the curve is its matched score, the
            D-RISE similarity max_a IoU x cos x objectness of the perturbed input's proposals
            (:class:`~blackbox_xai.targets.DetectionScore`; ``decoder`` as in ``explain``); or
            a :class:`~blackbox_xai.targets.Region`: its summed class logits. Those scores are
            tracked as they are (no softmax).
        pixels_per_step: pixels changed per step (default ``round(H * W / 28)``: 1792 at 224).
        apply_softmax: softmax the scores first; ``None`` (default) does unless the query is a
            Model whose scores already are probabilities (``score="prob"`` or a softmax output).
        substrate: the insertion canvas (default: :func:`rise_blur` of ``x``).
        chunk: inputs per query call (default: the model's batch size).

    Queries: ``2 * (n_steps + 1)`` with ``n_steps = ceil(H * W / pixels_per_step)``.
    """
    from ..api import as_single_input

    x = as_single_input(x)
    if isinstance(target, (Detection, Region)):
        if apply_softmax:
            raise BlackboxError("apply_softmax=True: a detection's or a region's score is "
                                "tracked as it is, it is not one of several class scores")
        query, target, apply_softmax = score_query(query, target, x, decoder), 0, False
    _, h, w = x.shape
    from .pointing import finite_map

    m = finite_map(saliency_map)
    if m.shape != (h, w):
        raise BlackboxError(f"saliency_map has shape {m.shape}; the input is {h} x {w}")
    n_pix = h * w
    step = default_pixels_per_step(h, w) if pixels_per_step is None else int(pixels_per_step)
    if step <= 0:
        raise BlackboxError(f"pixels_per_step={pixels_per_step!r}: use a positive integer")
    n_steps = -(-n_pix // step)
    counts = np.minimum(np.arange(n_steps + 1) * step, n_pix)
    order = np.argsort(-m.ravel(), kind="stable")
    rank = np.empty(n_pix, np.int64)
    rank[order] = np.arange(n_pix)
    rank = rank.reshape(h, w)
    canvas = rise_blur(x) if substrate is None else np.asarray(substrate, np.float32)
    if canvas.shape != x.shape:
        raise BlackboxError(f"substrate has shape {canvas.shape}; x is {x.shape}")
    size = chunk or chunk_size_for(query)
    softmax_on = _auto_softmax(query) if apply_softmax is None else bool(apply_softmax)

    def masks(changed_is_kept: bool) -> Iterator[Array]:
        for sl in chunked(len(counts), size):
            changed = rank[None] < counts[sl, None, None]
            yield (changed if changed_is_kept else ~changed).astype(np.float32)

    def curve(baseline: Array, changed_is_kept: bool) -> Array:
        scores = scores_for_masks(query, x, baseline, masks(changed_is_kept))
        scores = scores.reshape(len(counts), -1)
        if not 0 <= target < scores.shape[1]:
            raise BlackboxError(f"target={target} is out of range: the model has {scores.shape[1]} classes")
        probs = softmax(scores) if softmax_on else scores
        return probs[:, target].astype(np.float32)

    deletion = curve(np.zeros_like(x), changed_is_kept=False)  # deleted pixels show 0
    insertion = curve(canvas, changed_is_kept=True)  # inserted pixels show x
    fractions = (counts / n_pix).astype(np.float32)
    return CurveResult(auc(deletion, fractions), auc(insertion, fractions), deletion, insertion,
                       fractions, step, 2 * len(counts))
