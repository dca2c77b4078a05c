"""Perturbations: baselines, keep-masks, blending, and scoring a stream of masks in batches.

A *mask* is (H, W) float in [0, 1]; 1 keeps ``x0``, 0 shows the baseline:
``x = baseline + (x0 - baseline) * mask``. Masks arrive chunk by chunk from a generator, so
methods that need thousands (RISE) never hold them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter

from .errors import BlackboxError

Baseline = str | float
QueryFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

DEFAULT_CHUNK = 64


def blur(x: npt.NDArray[np.float32], sigma: float = 5.0) -> npt.NDArray[np.float32]:
    """Gaussian blur of each channel of a (C, H, W) input."""
    return gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest").astype(np.float32)


def make_baseline(x: npt.NDArray[np.float32], baseline: Baseline, option: str = "baseline"
                  ) -> npt.NDArray[np.float32]:
    """The reference input: ``"zero"``, ``"mean"`` (per-channel mean), ``"blur"`` or a number;
    ``option`` names the user's option in the error message."""
    if isinstance(baseline, str):
        try:
            baseline = float(baseline)
        except ValueError:
            pass
    if isinstance(baseline, (int, float)):
        return np.full_like(x, float(baseline))
    if baseline == "zero":
        return np.zeros_like(x)
    if baseline == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.float32)
    if baseline == "blur":
        return blur(x)
    raise BlackboxError(f"{option}={baseline!r}: use 'zero', 'mean', 'blur' or a number")


def masks_from_keep(keep: npt.NDArray[np.bool_], labels: npt.NDArray[np.integer]
                    ) -> npt.NDArray[np.float32]:
    """Keep-matrix (n, d) over segments + label map (H, W) -> masks (n, H, W)."""
    return keep[:, labels].astype(np.float32)


def blend(x: npt.NDArray[np.float32], baseline: npt.NDArray[np.float32],
          masks: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``baseline + (x - baseline) * mask`` for a batch of masks (n, H, W) -> (n, C, H, W).

    One output allocation and in-place arithmetic: this runs once per query, so it must stay
    far below the model's cost. Hidden pixels (mask 0) equal the baseline exactly; kept pixels
    equal ``x`` to within one float32 rounding (exactly for a zero baseline).
    """
    if not np.any(baseline):
        return np.multiply(x[None], masks[:, None], dtype=np.float32)
    out = np.multiply((x - baseline)[None], masks[:, None], dtype=np.float32)
    out += baseline[None]
    return out


def scores_for_masks(query: QueryFn, x: npt.NDArray[np.float32],
                     baseline: npt.NDArray[np.float32],
                     mask_chunks: Iterable[npt.NDArray[np.float32]],
                     target: int | None = None) -> npt.NDArray[np.float32]:
    """Score every masked input; returns (n,) for ``target`` or (n, K) for all classes."""
    out = []
    for masks in mask_chunks:
        s = query(blend(x, baseline, masks))
        out.append(s[:, target] if target is not None else s)
    if not out:
        return np.zeros((0,), np.float32)
    return np.concatenate(out).astype(np.float32)


def chunked(n: int, chunk: int = DEFAULT_CHUNK) -> Iterable[slice]:
    """Slices covering range(n) in steps of ``chunk``."""
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def chunk_size_for(query: QueryFn) -> int:
    """Mask chunk size: the model's batch size when it has one, else DEFAULT_CHUNK."""
    model = getattr(query, "fn", query)
    size = getattr(model, "batch_size", None)
    return max(int(size), 8) if isinstance(size, int) else DEFAULT_CHUNK
