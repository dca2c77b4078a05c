"""Bilinear resampling as explicit matrices (half-pixel centres, like cv2.resize / torch
``align_corners=False`` without antialiasing), so that an upsample and its adjoint are exact."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt


@lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int) -> npt.NDArray[np.float32]:
    """(n_out, n_in) matrix R with ``R @ v`` the bilinear resampling of the 1-D signal ``v``."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    r = np.zeros((n_out, n_in), np.float64)
    np.add.at(r, (np.arange(n_out), lo), 1 - frac)
    np.add.at(r, (np.arange(n_out), hi), frac)
    return r.astype(np.float32)


def upsample(maps: npt.NDArray[np.floating], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bilinear resize of (..., h, w) maps to (..., H, W)."""
    h, w = maps.shape[-2:]
    rows, cols = bilinear_matrix(h, size[0]), bilinear_matrix(w, size[1])
    return np.einsum("Hh,...hw,Ww->...HW", rows, maps.astype(np.float32), cols, optimize=True)
