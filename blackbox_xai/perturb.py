"""Perturbations: baselines, keep-masks, blending, and scoring a stream of masks in batches.

A *mask* is (H, W) float in [0, 1]; 1 keeps ``x0``, 0 shows the baseline:
``x = baseline + (x0 - baseline) * mask``. Masks arrive chunk by chunk from a generator, so
methods that need thousands (RISE) never hold them all. A chunk is either the masks themselves
(n, H, W) or their parameters (:class:`BoxMasks`, :class:`GridMasks`, :class:`SegmentMasks`):
a :class:`~blackbox_xai.model.Model` with ``perturb_in_graph`` applies those inside its graph
(:mod:`blackbox_xai.graph.perturbation`), so only the parameters cross to the device; any other
query gets the masks made here. Both paths give the same inputs to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from .errors import BlackboxError
from .graph.perturbation import (
    BASELINE,
    BOXES,
    COL_WEIGHTS,
    COLS,
    GRIDS,
    IMAGE,
    KEEP,
    LABELS,
    ROW_WEIGHTS,
    ROWS,
    SHIFTS,
)
from .model import Model
from .resample import bilinear_matrix

Baseline = str | float
QueryFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

DEFAULT_CHUNK = 64


def blur(x: npt.NDArray[np.float32], sigma: float = 5.0) -> npt.NDArray[np.float32]:
    """Gaussian blur of each channel of a (C, H, W) input."""
    from scipy.ndimage import gaussian_filter  # lazily: scipy.ndimage costs 0.3 s to import

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


def shown_segments(keep: npt.NDArray[np.bool_], labels: npt.NDArray[np.integer]
                   ) -> npt.NDArray[np.bool_]:
    """Keep-matrix (n, d) over segments + label map (H, W) -> boolean masks (n, H, W), in C
    order: ``keep[:, labels]`` would lay the result out pixel-major, which makes every
    blended batch non-contiguous (and the model copy it)."""
    return np.take(np.asarray(keep, bool), labels, axis=1)


def masks_from_keep(keep: npt.NDArray[np.bool_], labels: npt.NDArray[np.integer]
                    ) -> npt.NDArray[np.float32]:
    """Keep-matrix (n, d) over segments + label map (H, W) -> masks (n, H, W)."""
    return shown_segments(keep, labels).astype(np.float32)


@dataclass(frozen=True)
class BoxMasks:
    """Masks that each hide one box: ``boxes`` (n, 4) int rows ``y0, y1, x0, x1``, hidden
    where ``y0 <= i < y1`` and ``x0 <= j < x1`` (occlusion)."""

    boxes: npt.NDArray[np.integer]
    height: int
    width: int
    kind: ClassVar[str] = "boxes"

    def masks(self) -> npt.NDArray[np.float32]:
        b = np.asarray(self.boxes)[:, :, None]
        rows, cols = np.arange(self.height), np.arange(self.width)
        inside_y = (b[:, 0] <= rows) & (rows < b[:, 1])  # (n, H)
        inside_x = (b[:, 2] <= cols) & (cols < b[:, 3])  # (n, W)
        return (~(inside_y[:, :, None] & inside_x[:, None, :])).astype(np.float32)

    def feeds(self) -> dict[str, npt.NDArray]:
        return {BOXES: np.asarray(self.boxes, np.int64)}

    def shared(self) -> dict[str, npt.NDArray]:
        return {ROWS: np.arange(self.height, dtype=np.int64),
                COLS: np.arange(self.width, dtype=np.int64)}


def rise_weights(cells: int, height: int, width: int
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """RISE's bilinear upsampling matrices (rows (RH, s), columns (RW, s)): a grid of
    ``cells`` per side resized to ``(s + 1) * ceil(size / s)`` with mirrored edges."""
    s = int(cells)
    return (bilinear_matrix(s, (s + 1) * -(-height // s), edge="reflect"),
            bilinear_matrix(s, (s + 1) * -(-width // s), edge="reflect"))


@dataclass(frozen=True)
class GridMasks:
    """RISE masks: binary ``grids`` (n, s, s) upsampled by :func:`rise_weights` and cropped
    at the shifts ``dy``, ``dx`` (n,); ``host`` holds the same masks (n, H, W), which RISE
    computes anyway to accumulate its map (:func:`~blackbox_xai.methods.rise.rise_masks`)."""

    grids: npt.NDArray[np.floating]
    dy: npt.NDArray[np.integer]
    dx: npt.NDArray[np.integer]
    host: npt.NDArray[np.float32]
    kind: ClassVar[str] = "grids"

    def masks(self) -> npt.NDArray[np.float32]:
        return self.host

    def feeds(self) -> dict[str, npt.NDArray]:
        return {GRIDS: np.asarray(self.grids).astype(bool),
                SHIFTS: np.stack([self.dy, self.dx], axis=1).astype(np.int64)}

    def shared(self) -> dict[str, npt.NDArray]:
        h, w = self.host.shape[-2:]
        rows, cols = rise_weights(self.grids.shape[1], h, w)
        return {ROWS: np.arange(h, dtype=np.int64), COLS: np.arange(w, dtype=np.int64),
                ROW_WEIGHTS: rows, COL_WEIGHTS: cols}


@dataclass(frozen=True)
class SegmentMasks:
    """Masks that show the segments ``keep`` (n, d) marks, over the label map ``labels``
    (H, W) (LIME, Shapley)."""

    keep: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.integer]
    kind: ClassVar[str] = "segments"

    def masks(self) -> npt.NDArray[np.float32]:
        return masks_from_keep(self.keep, self.labels)

    def host_masks(self) -> npt.NDArray[np.bool_]:
        """The masks as booleans: blending with them gives the same inputs as :meth:`masks`
        (``x * True`` is ``x * 1.0``) at a quarter of the memory traffic."""
        return shown_segments(self.keep, self.labels)

    def feeds(self) -> dict[str, npt.NDArray]:
        return {KEEP: np.asarray(self.keep, bool)}

    def shared(self) -> dict[str, npt.NDArray]:
        return {LABELS: np.asarray(self.labels, np.int64)}


MaskParams = BoxMasks | GridMasks | SegmentMasks


def blend(x: npt.NDArray[np.float32], baseline: npt.NDArray[np.float32],
          masks: npt.NDArray[np.floating | np.bool_],
          out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """``baseline + (x - baseline) * mask`` for a batch of masks (n, H, W) -> (n, C, H, W).

    In float32, into ``out[:n]`` when given (a reused buffer, C-contiguous) or one new array,
    with in-place arithmetic: this runs once per query, so it must stay far below the model's
    cost. Hidden pixels (mask 0) equal the baseline exactly; kept pixels equal ``x`` to within
    one float32 rounding (exactly for a zero baseline). Boolean masks give the same numbers as
    0/1 float masks.
    """
    out = np.empty((len(masks), *x.shape), np.float32) if out is None else out[:len(masks)]
    if not np.any(baseline):
        return np.multiply(x[None], masks[:, None], out=out, dtype=np.float32)
    np.multiply((x - baseline)[None], masks[:, None], out=out, dtype=np.float32)
    out += baseline[None]
    return out


def keeps_no_input(query: QueryFn) -> bool:
    """Whether ``query`` is (or wraps, as ``query.fn``) a :class:`~blackbox_xai.model.Model`:
    it reads each batch during the call and keeps no reference, so one buffer can hold every
    batch. Any other function might store its inputs and gets a new array each time."""
    return isinstance(getattr(query, "fn", query), Model)


def scores_for_masks(query: QueryFn, x: npt.NDArray[np.float32],
                     baseline: npt.NDArray[np.float32],
                     mask_chunks: Iterable[npt.NDArray[np.float32] | MaskParams],
                     target: int | None = None) -> npt.NDArray[np.float32]:
    """Score every masked input; returns (n,) for ``target`` or (n, K) for all classes.

    Chunks of mask parameters go through the model's perturbation graph when ``query`` is (or
    wraps, as ``query.fn``) a model with ``perturb_in_graph``; everything else is blended here,
    into one reused buffer when the query is a model (:func:`keeps_no_input`).
    """
    model = getattr(query, "fn", query)
    in_graph = getattr(model, "perturb_in_graph", False)
    reuse = keeps_no_input(query)
    buffer: npt.NDArray[np.float32] | None = None
    out = []
    for chunk in mask_chunks:
        if in_graph and isinstance(chunk, MaskParams):
            s = model.perturbed_scores(chunk.kind, chunk.feeds(),
                                       {IMAGE: x, BASELINE: baseline, **chunk.shared()},
                                       progress=getattr(query, "progress", None))
            bad = ~np.isfinite(s).all(axis=1)
            if bad.any():
                raise BlackboxError(f"the model returned NaN or infinite scores for "
                                    f"{int(bad.sum())} of {len(s)} inputs: its explanation would "
                                    "be meaningless")
        else:
            masks = (chunk.host_masks() if isinstance(chunk, SegmentMasks) else chunk.masks()) \
                if isinstance(chunk, MaskParams) else chunk
            if reuse and (buffer is None or len(buffer) < len(masks)):
                buffer = np.empty((len(masks), *x.shape), np.float32)
            s = query(blend(x, baseline, masks, out=buffer))
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
