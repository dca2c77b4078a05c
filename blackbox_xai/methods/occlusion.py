"""Occlusion (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..perturb import Baseline, BoxMasks, chunk_size_for, chunked, make_baseline, scores_for_masks
from ..registry import Attribution, Context, Range, register


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride`` pixels, plus one flush with the far edge.

    captum stops at the last full stride and leaves a far border uncovered when
    ``(size - window) % stride != 0``; we add a final window so every pixel gets a value.
    """
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


@register("occlusion", family="black-box", reference="Zeiler & Fergus 2014, arXiv:1311.2901",
          fast={"window": 32, "stride": 16})
def occlusion(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
              window: Annotated[int, Range(1)] = 16, stride: Annotated[int, Range(1)] = 8,
              baseline: Baseline = "zero") -> Attribution:
    """Slide a window over the input, replace it by the baseline, map f_c(x) - f_c(x_occluded).

    A pixel's value is the mean score drop over the windows that cover it; queries: one per
    window plus one.

    Args:
        window: side of the square occluder, in input pixels.
        stride: step between window positions (a last window is added flush with the edge).
        baseline: what replaces the window: zero, mean, blur, or a number.
    """
    _, h, w = x.shape
    if not (0 < window <= min(h, w)) or stride <= 0:
        raise BlackboxError(f"window={window}, stride={stride}: need 0 < window <= {min(h, w)} and stride > 0")
    ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
    boxes = [(y, x_) for y in ys for x_ in xs]
    base = make_baseline(x, baseline)
    score0 = ctx.scores[target]
    ctx.set_total(len(boxes))
    chunk = chunk_size_for(query)

    corners = np.array(boxes, np.int64).reshape(-1, 2)
    hidden = np.concatenate([corners[:, :1], corners[:, :1] + window,
                             corners[:, 1:], corners[:, 1:] + window], axis=1)  # y0 y1 x0 x1

    def mask_chunks() -> Iterator[BoxMasks]:
        for sl in chunked(len(boxes), chunk):
            yield BoxMasks(hidden[sl], h, w)

    drops = score0 - scores_for_masks(query, x, base, mask_chunks(), target)
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    for drop, (y, x_) in zip(drops, boxes):
        total[y:y + window, x_:x_ + window] += drop
        count[y:y + window, x_:x_ + window] += 1
    return Attribution((total / count).astype(np.float32),
                       {"n_windows": len(boxes), "score": float(score0)})
