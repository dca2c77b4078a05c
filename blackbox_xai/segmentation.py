"""Segment an input into players: a grid of cells or superpixels -> integer label map (H, W).

Every segmenter returns labels ``0 .. d-1`` (contiguous, in increasing order of the raw labels),
so a label map indexes a length-``d`` vector directly (``values[labels]`` paints a map).

Superpixels are computed in display space. Methods only see ``x`` in the model's normalised
space, ``(x / scale - mean) / std`` per channel; we undo that up to an affine map by min-max
scaling each channel to [0, 1] (:func:`display_image`). The result does not depend on the
unknown mean/std (any per-channel affine normalisation gives the same image) and equals the
photo itself when each channel spans the full [0, 255] range. That matches what ``lime_image``
feeds scikit-image: it passes the uint8 photo, which ``quickshift`` turns into floats in
[0, 1] (``img_as_float``) and then into CIELAB, so ``max_dist=200, ratio=0.2`` keep lime's
meaning. Quickshift runs as :mod:`blackbox_xai.quickshift`, scikit-image's algorithm vectorised
and threaded (the same labels, in half the time and without importing scipy). A uint8 (H, W, 3) photo can also be given directly and is then used as is.

The superpixel defaults are lime's (and ours) for a 224 x 224 input; smaller or larger inputs get
them scaled to their size (:func:`scaled_defaults`), so a 32-pixel input is cut into a similar
number of segments instead of one. A superpixel segmenter that finds fewer than ``min_segments``
segments raises rather than give a segment method a constant map; a constant image is one segment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import BlackboxError
from .quickshift import quickshift

SEGMENTERS = ("grid", "quickshift", "slic", "felzenszwalb")

#: A segmenter name or an integer label array (H, W) given by the caller.
Segments = str | npt.NDArray[np.integer]

#: Defaults per segmenter for a 224 x 224 input (:data:`REFERENCE_SIDE`), scaled to other sizes by
#: :func:`scaled_defaults`. quickshift: lime_image's. slic/felzenszwalb: chosen to give a few dozen
#: segments on a 224-pixel photo (30-60 on the examples); override with ``segment(..., **kwargs)``.
DEFAULTS: dict[str, dict[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": 50, "compactness": 10.0, "start_label": 0},
    "felzenszwalb": {"scale": 200.0, "sigma": 0.5, "min_size": 100},
}
REFERENCE_SIDE = 224

#: Fewer superpixels than this and a segment method refuses (its map would be near constant).
MIN_SEGMENTS = 4


def scaled_defaults(method: str, hw: tuple[int, ...]) -> dict[str, Any]:
    """:data:`DEFAULTS` for ``method`` scaled to an (H, W) input; unchanged at 224 x 224.

    With ``s = sqrt(H W) / 224`` (the input's side relative to 224 px): quickshift's
    ``kernel_size`` and ``max_dist`` are lengths and scale with ``s`` (``kernel_size`` at least 1,
    scikit-image's minimum); felzenszwalb's ``min_size`` is an area in pixels and scales with
    ``s**2`` (at least 1). slic's ``n_segments`` is a count and its ``compactness`` is relative
    to the grid step, so slic's are kept. On the example photos resized to 32 px this gives
    8-15 quickshift and 12-20 felzenszwalb segments (30-40 at 224 px), where the unscaled
    values give 1-4.
    """
    s = float(np.sqrt(hw[0] * hw[1])) / REFERENCE_SIDE
    opts = dict(DEFAULTS[method])
    if method == "quickshift":
        opts["kernel_size"] = max(1.0, opts["kernel_size"] * s)
        opts["max_dist"] = opts["max_dist"] * s
    elif method == "felzenszwalb":
        opts["min_size"] = max(1, round(opts["min_size"] * s * s))
    return opts


def relabel(labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Map any integer labels to contiguous ``0 .. d-1``, keeping their order."""
    labels = np.asarray(labels)
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64)


def grid_labels(height: int, width: int, grid: int) -> npt.NDArray[np.int64]:
    """``grid x grid`` near-equal cells (sizes differ by at most one pixel), row-major labels."""
    if not (isinstance(grid, (int, np.integer)) and grid > 0):
        raise BlackboxError(f"grid={grid!r}: use a positive integer")
    rows = (np.arange(height) * grid) // height
    cols = (np.arange(width) * grid) // width
    return relabel(rows[:, None] * grid + cols[None, :])


def display_image(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Model-space input (C, H, W) -> display image (H, W, C) in [0, 1], per-channel min-max.

    A uint8 (H, W, C) photo is returned as floats in [0, 1] (``/ 255``). A constant channel
    becomes 0.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3:
            raise BlackboxError(f"image has shape {x.shape}: a uint8 photo is (H, W) or (H, W, C)")
        return x.astype(np.float64) / 255.0
    if x.ndim != 3:
        raise BlackboxError(f"x has shape {x.shape}: segment() takes a model input (C, H, W) "
                            "or a uint8 photo (H, W, C)")
    x = x.astype(np.float64)
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    img = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)
    return np.ascontiguousarray(img.transpose(1, 2, 0))


def _rgb(img: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Colour segmenters want 3 channels: repeat a grey channel, drop alpha."""
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def segment(x_or_image: npt.ArrayLike, method: Segments = "grid", *, grid: int = 7,
            min_segments: int = MIN_SEGMENTS, **kwargs: Any) -> npt.NDArray[np.int64]:
    """Label map (H, W) with labels ``0 .. d-1`` for a model input or a photo.

    Args:
        x_or_image: a model input (C, H, W) in normalised model space (float), or a uint8
            photo (H, W, C).
        method: ``"grid"`` (``grid x grid`` cells), ``"quickshift"`` (lime_image's default at
            224 px: kernel_size=4, max_dist=200, ratio=0.2), ``"slic"``, ``"felzenszwalb"``, or
            an integer label array (H, W) which is checked and relabelled to ``0 .. d-1``.
        grid: cells per side for ``"grid"``.
        min_segments: a superpixel segmenter that finds fewer segments raises
            :class:`BlackboxError` suggesting ``--segments grid`` (a grid or a caller's label
            array is taken as given).
        **kwargs: passed to the segmenter (override :func:`scaled_defaults`): scikit-image's
            ``slic`` / ``felzenszwalb``, or :func:`~blackbox_xai.quickshift.quickshift` (scikit-
            image's algorithm and labels, vectorised and threaded).
    """
    arr = np.asarray(x_or_image)
    if arr.dtype == np.uint8:
        hw = arr.shape[:2]
    elif arr.ndim == 3:
        hw = arr.shape[1:]
    else:
        raise BlackboxError(f"x has shape {arr.shape}: segment() takes a model input (C, H, W) "
                            "or a uint8 photo (H, W, C)")
    if not isinstance(method, str):
        return check_labels(method, hw)
    if method == "grid":
        return grid_labels(hw[0], hw[1], grid)
    if method not in SEGMENTERS:
        raise BlackboxError(f"segments={method!r}: use one of {', '.join(SEGMENTERS)} or an "
                            "integer label array (H, W)")
    img = _rgb(display_image(arr))
    opts = {**scaled_defaults(method, hw), **kwargs}
    if np.ptp(img) == 0:  # a constant image is one region; segmenters would cut it at random
        labels = np.zeros(hw, np.int64)
    elif method == "quickshift":
        labels = quickshift(img, **opts)
    else:
        from skimage import segmentation as sk

        labels = (sk.slic if method == "slic" else sk.felzenszwalb)(img, **opts)
    labels = relabel(labels)
    d = int(labels.max()) + 1
    if d < min_segments:
        raise BlackboxError(f"{method} found {d} segment{'s' if d > 1 else ''} on the "
                            f"{hw[0]} x {hw[1]} input, fewer than the {min_segments} needed: "
                            "use --segments grid")
    return labels


def check_labels(labels: npt.ArrayLike, hw: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """Validate a caller's label array against the input size; relabel to ``0 .. d-1``."""
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise BlackboxError(f"segments has dtype {labels.dtype}: pass an integer label array (H, W)")
    if labels.shape != tuple(hw):
        raise BlackboxError(f"segments has shape {labels.shape}: it must match the input's "
                            f"(H, W) = {tuple(hw)}")
    return relabel(labels)
