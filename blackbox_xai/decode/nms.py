"""Box overlap and non-maximum suppression (pure numpy)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Intersection over union of xyxy boxes, broadcast: a (..., 4), b (..., 4) -> (...).

    IoU = |a & b| / (|a| + |b| - |a & b|); boxes with no area give 0 (never NaN).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, iou: float,
        labels: npt.ArrayLike | None = None) -> npt.NDArray[np.int64]:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Repeatedly keep the best remaining box and drop every remaining box whose IoU with it is
    above ``iou``. With ``labels``, boxes of different classes never suppress each other
    (per-class NMS, as Ultralytics and torchvision's ``batched_nms`` do); ties keep the lower index.
    """
    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)
    same = (np.ones((len(boxes), len(boxes)), bool) if labels is None
            else np.asarray(labels)[:, None] == np.asarray(labels)[None, :])
    order = np.argsort(-scores, kind="stable")
    overlap = box_iou(boxes[:, None], boxes[None, :]) > iou
    keep: list[int] = []
    alive = np.ones(len(boxes), bool)
    for i in order:
        if alive[i]:
            keep.append(int(i))
            alive &= ~(overlap[i] & same[i])
    return np.asarray(keep, np.int64)
