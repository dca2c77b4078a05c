"""Bilinear resampling as explicit matrices (half-pixel centres, like cv2.resize / torch
``align_corners=False`` without antialiasing), so that an upsample and its adjoint are exact."""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np
import numpy.typing as npt


@lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int, edge: str = "clamp") -> npt.NDArray[np.float64]:
    """(n_out, n_in) matrix R with ``R @ v`` the bilinear resampling of the 1-D signal ``v``.

    Source positions ``(u + 0.5) n_in / n_out - 0.5``; outside the samples they are clamped
    (``edge="clamp"``: cv2 / torch) or mirrored about the edge samples (``edge="reflect"``:
    ``skimage.transform.resize(order=1, mode="reflect")``, the RISE reference). Rows sum to 1.
    Cached: do not modify the result.
    """
    r = np.zeros((n_out, n_in))
    if n_in == 1:
        r[:, 0] = 1.0
        return r
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if edge == "reflect":
        src = np.abs(src)
        src = np.where(src > n_in - 1, 2 * (n_in - 1) - src, src)
    elif edge == "clamp":
        src = np.clip(src, 0, n_in - 1)
    else:
        raise ValueError(f"edge={edge!r}: use 'clamp' or 'reflect'")
    lo = np.clip(np.floor(src).astype(int), 0, n_in - 2)
    frac = src - lo
    rows = np.arange(n_out)
    np.add.at(r, (rows, lo), 1 - frac)
    np.add.at(r, (rows, lo + 1), frac)
    return r


def upsample(maps: npt.NDArray[np.floating], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bilinear resize of (..., h, w) maps to (..., H, W)."""
    h, w = maps.shape[-2:]
    rows = bilinear_matrix(h, size[0]).astype(np.float32)
    cols = bilinear_matrix(w, size[1]).astype(np.float32)
    return np.einsum("Hh,...hw,Ww->...HW", rows, maps.astype(np.float32), cols, optimize=True)


@cache
def _blas():  # -> threadpoolctl.ThreadpoolController
    """threadpoolctl's handle on the loaded BLAS, found once (finding it takes 20-100 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which NumPy's BLAS runs on one thread; :func:`blackbox_xai.explain` runs
    every method in it. Mask and upsampling products run between ONNX Runtime calls, and a BLAS
    pool woken there spins on the cores ONNX Runtime's threads need: D-RISE's masks took
    76-744 ms per batch of 32 that way on 2 cores (4-10 ms on one thread), and RISE's 1000
    masks ran ONNX Runtime at 0.78x its speed (11.3 s against 8.8 s for the whole method)."""
    return _blas().limit(limits=1, user_api="blas")
