"""Pointing game (Zhang et al. 2016, arXiv:1608.00507) and energy-based pointing (Wang et al. 2020).

Boxes are ``(x0, y0, x1, y1)`` in the map's pixels (the model's input, after resize and crop),
``x1``/``y1`` exclusive: pixel ``(row, col)`` is inside when ``x0 <= col < x1`` and
``y0 <= row < y1``. An image may have several boxes (a hit on any counts). A
:class:`~blackbox_xai.targets.Detection` (box in the input's pixels) stands for its own box:
the map of a detection is scored against the box it explains.

Box files, keyed by image file name:

* JSON (``examples/boxes.json``): ``{"cat.jpg": {"label": 282, "box": [x0, y0, x1, y1]}, ...}``;
  also ``{"boxes": [[...], ...]}`` per image or a bare ``[x0, y0, x1, y1]``.
* CSV: ``image,x0,y0,x1,y1[,label]``, one row per box, an optional header row.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..targets import Detection

Box = tuple[float, float, float, float]
TOLERANCE = 15


@dataclass(frozen=True)
class Annotation:
    """An image's ground truth: one or more boxes and, optionally, the class label."""

    boxes: tuple[Box, ...]
    label: int | None = None

    @classmethod
    def of_detection(cls, detection: Detection) -> Annotation:
        """A detection's own box and class as the ground truth of its map."""
        return cls((detection.box,), detection.label)


def _as_boxes(box: Box | Sequence[Box] | Detection) -> list[Box]:
    if isinstance(box, Detection):
        return [box.box]
    try:
        arr = np.asarray(box, np.float64)
    except (TypeError, ValueError):
        raise BlackboxError(f"box {box!r}: give (x0, y0, x1, y1) or a list of them") from None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0:
        raise BlackboxError(f"box {box!r}: give (x0, y0, x1, y1) or a list of them")
    if not np.isfinite(arr).all():
        raise BlackboxError(f"box {box!r}: coordinates must be finite")
    if np.any(arr[:, 2] <= arr[:, 0]) or np.any(arr[:, 3] <= arr[:, 1]):
        raise BlackboxError(f"box {box!r}: need x0 < x1 and y0 < y1")
    return [tuple(float(v) for v in b) for b in arr]


def box_mask(shape: tuple[int, int], box: Box | Sequence[Box] | Detection
             ) -> npt.NDArray[np.bool_]:
    """Boolean (H, W) mask of the pixels inside any of the boxes."""
    h, w = shape
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in _as_boxes(box):
        mask |= (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
    return mask


def finite_map(saliency_map: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The map as float64 (H, W); a one-line error when it is not 2-D, empty or not finite."""
    try:
        m = np.asarray(saliency_map, np.float64)
    except (TypeError, ValueError):
        raise BlackboxError("saliency_map is not a numeric array: need (H, W) numbers") from None
    if m.ndim != 2 or m.size == 0:
        raise BlackboxError(f"saliency_map has shape {m.shape}: need (H, W)")
    bad = int((~np.isfinite(m)).sum())
    if bad:
        raise BlackboxError(f"saliency_map has {bad} NaN or infinite values: a map must be finite")
    return m


def max_location(saliency_map: npt.ArrayLike) -> tuple[int, int]:
    """(row, col) of the map's maximum (the first one in raster order on ties)."""
    m = finite_map(saliency_map)
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(r), int(c)


def pointing_hit(saliency_map: npt.ArrayLike, box: Box | Sequence[Box] | Detection,
                 tolerance: float = TOLERANCE) -> bool:
    """Pointing game: a hit when some pixel within ``tolerance`` pixels (Euclidean) of the map's
    maximum lies in a box, i.e. the maximum is at most ``tolerance`` from the box."""
    r, c = max_location(saliency_map)
    for x0, y0, x1, y1 in _as_boxes(box):
        # distance from pixel (r, c) to the nearest pixel inside [x0, x1) x [y0, y1)
        dx = max(np.ceil(x0) - c, 0.0, c - (np.ceil(x1) - 1))
        dy = max(np.ceil(y0) - r, 0.0, r - (np.ceil(y1) - 1))
        if dx * dx + dy * dy <= tolerance * tolerance:
            return True
    return False


def energy_pointing(saliency_map: npt.ArrayLike, box: Box | Sequence[Box] | Detection) -> float:
    """Energy-based pointing (Score-CAM): the share of the map's positive mass inside the boxes.

    NaN when the map has no positive value.
    """
    m = np.clip(finite_map(saliency_map), 0, None)
    total = float(m.sum())
    if total <= 0:
        return float("nan")
    return float(m[box_mask(m.shape, box)].sum() / total)


# ---- box files --------------------------------------------------------------------------------
def _read_boxes(raw: object, where: str) -> tuple[Box, ...]:
    """One box ``[x0, y0, x1, y1]`` or a list of them from a box file; errors name ``where``."""
    boxes = raw if isinstance(raw, list) and raw and isinstance(raw[0], (list, tuple)) else [raw]
    for k, b in enumerate(boxes):
        at = where if len(boxes) == 1 else f"{where} box {k}"
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise BlackboxError(f"{at}: {b!r} is not [x0, y0, x1, y1]")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b):
            raise BlackboxError(f"{at}: {b!r}: coordinates must be numbers")
        if not all(np.isfinite(b)):
            raise BlackboxError(f"{at}: {b!r}: coordinates must be finite")
        if b[2] <= b[0] or b[3] <= b[1]:
            raise BlackboxError(f"{at}: {b!r}: need x0 < x1 and y0 < y1")
    return tuple(tuple(float(v) for v in b) for b in boxes)


def _label(v: object, where: str) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BlackboxError(f"{where}: label {v!r} is not a class index") from None


def _from_json(data: object, path: Path) -> dict[str, Annotation]:
    if not isinstance(data, dict):
        raise BlackboxError(f"{path}: expected an object keyed by image file name")
    out = {}
    for name, entry in data.items():
        where = f"{path} [{name!r}]"
        try:
            if isinstance(entry, dict):
                raw = entry.get("boxes", entry.get("box"))
                if raw is None:
                    raise BlackboxError(f"{where}: no 'box' or 'boxes'")
                out[name] = Annotation(_read_boxes(raw, where), _label(entry.get("label"), where))
            else:
                out[name] = Annotation(_read_boxes(entry, where))
        except BlackboxError as e:
            raise BlackboxError(str(e) if str(e).startswith(str(path)) else f"{where}: {e}") from None
    return out


def _from_csv(text: str, path: Path) -> dict[str, Annotation]:
    boxes: dict[str, list[Box]] = {}
    labels: dict[str, int | None] = {}
    for i, row in enumerate(csv.reader(text.splitlines()), 1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        try:
            coords = [float(v) for v in row[1:5]]
        except ValueError:
            if i == 1:
                continue  # header
            raise BlackboxError(f"{path}:{i}: expected image,x0,y0,x1,y1[,label], got {row}") from None
        if len(coords) != 4:
            raise BlackboxError(f"{path}:{i}: expected image,x0,y0,x1,y1[,label], got {row}")
        boxes.setdefault(row[0], []).extend(_read_boxes(coords, f"{path}:{i}"))
        lab = _label(row[5] if len(row) > 5 else None, f"{path}:{i}")
        if lab is not None:
            labels[row[0]] = lab
    return {k: Annotation(tuple(v), labels.get(k)) for k, v in boxes.items()}


def load_boxes(path: str | os.PathLike) -> dict[str, Annotation]:
    """Read a JSON or CSV box file (see the module docstring) -> {image file name: Annotation}."""
    p = Path(path)
    if not p.is_file():
        raise BlackboxError(f"box file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8-sig")  # a BOM (Notepad) is fine
    except UnicodeDecodeError as e:
        raise BlackboxError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                            f"{e.start})") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BlackboxError(f"{p} is not valid JSON: {e}") from None
        return _from_json(data, p)
    return _from_csv(text, p)


def annotation_for(boxes: dict[str, Annotation], image: str | os.PathLike) -> Annotation | None:
    """The annotation of an image: by file name, else by path as given, else by stem."""
    p = Path(image)
    for key in (p.name, str(image)):
        if key in boxes:
            return boxes[key]
    stems = {Path(k).stem: v for k, v in boxes.items()}
    return stems.get(p.stem)
