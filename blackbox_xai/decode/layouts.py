"""Detector head layouts: raw outputs -> proposals (boxes, class scores, objectness).

Three layouts, chosen from the output shapes (and names) or by name (``--decoder``):

* ``yolov8``: one output (N, 4 + K, A) (Ultralytics YOLOv8 / YOLO11 exports): per anchor
  (cx, cy, w, h) in input pixels, then K class scores (already sigmoids); no objectness.
* ``yolov5``: one output (N, A, 5 + K) (YOLOv5 / YOLOv7 exports): (cx, cy, w, h) in input
  pixels, objectness, then K class probabilities; confidence = objectness x class probability.
* ``boxes``: boxes (N, A, 4) xyxy (normalised to [0, 1] or in input pixels) and scores
  (N, A, K) per class, or scores (N, A) with labels (N, A) (SSD, RetinaNet, torchvision-style
  exports, NMS inside the graph or not). With labels, the class vector of a proposal is the
  one-hot of its label and its score plays the role of the objectness.

Those are each layout's defaults; a decoder may read its boxes in another format
(:data:`BOX_FORMATS`: xyxy, xywh = corner + size, cxcywh = centre + size), normalised to
[0, 1] of the input's width and height or in its pixels (``--box-format``,
``--normalized-boxes``/``--pixel-boxes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from ..errors import ModelInputError

DecoderKind = Literal["yolov8", "yolov5", "boxes"]
DECODERS: tuple[str, ...] = ("yolov8", "yolov5", "boxes")
BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
BOX_FORMATS: tuple[str, ...] = ("xyxy", "xywh", "cxcywh")


@dataclass(frozen=True)
class OutputInfo:
    """What the choice of a decoder may read of one output: name, shape, integer dtype."""

    name: str
    shape: tuple[int, ...]
    integer: bool = False


@dataclass
class Proposals:
    """Decoded proposals of N inputs, before NMS.

    Attributes:
        boxes: (N, A, 4) xyxy in input pixels.
        classes: (N, A, K) class scores (the class vector P of D-RISE).
        objectness: (N, A), or None when the model has none (then taken as 1).
    """

    boxes: npt.NDArray[np.float64]
    classes: npt.NDArray[np.float64]
    objectness: npt.NDArray[np.float64] | None = None

    @property
    def confidence(self) -> npt.NDArray[np.float64]:
        """(N, A, K): class score x objectness, the score thresholded and reported."""
        obj = 1.0 if self.objectness is None else self.objectness[..., None]
        return self.classes * obj


def cxcywh_to_xyxy(b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """(cx, cy, w, h) -> (x0, y0, x1, y1) on the last axis."""
    b = np.asarray(b, np.float64)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


def to_xyxy(b: npt.NDArray[np.floating], box_format: str) -> npt.NDArray[np.float64]:
    """Boxes (..., 4) in ``box_format`` -> (x0, y0, x1, y1): xywh is (x0, y0, w, h), cxcywh
    (cx, cy, w, h)."""
    b = np.asarray(b, np.float64)
    if box_format == "cxcywh":
        return cxcywh_to_xyxy(b)
    if box_format == "xywh":
        return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)
    return b


@dataclass(frozen=True)
class Decoder:
    """A layout bound to the outputs it reads (indices into the model's outputs).

    Attributes:
        kind: the layout.
        outputs: for ``yolov8``/``yolov5`` (head,); for ``boxes`` (boxes, scores) or
            (boxes, scores, labels).
        normalized: box coordinates are fractions of the input's width and height (x by W,
            y by H), not pixels.
        box_format: the boxes' format (:data:`BOX_FORMATS`); None: the layout's own
            (cxcywh for the YOLO heads, xyxy for ``boxes``).
    """

    kind: DecoderKind
    outputs: tuple[int, ...]
    normalized: bool = False
    box_format: BoxFormat | None = None

    @property
    def format(self) -> str:
        """The boxes' format in effect."""
        return self.box_format or ("xyxy" if self.kind == "boxes" else "cxcywh")

    def describe(self) -> dict:
        return {"kind": self.kind, "outputs": list(self.outputs), "normalized": self.normalized,
                "box_format": self.format}

    def _boxes(self, b: npt.NDArray, input_hw: tuple[int, int]) -> npt.NDArray[np.float64]:
        """(..., 4) raw boxes -> xyxy in input pixels."""
        xyxy = to_xyxy(b, self.format)
        if self.normalized:
            h, w = input_hw
            xyxy = xyxy * np.array([w, h, w, h], np.float64)
        return xyxy

    def __call__(self, raw: Sequence[npt.NDArray], input_hw: tuple[int, int]) -> Proposals:
        """Proposals of the raw outputs (each with the batch axis first)."""
        if self.kind == "yolov8":
            head = np.asarray(raw[self.outputs[0]], np.float64)
            return Proposals(self._boxes(head[:, :4].transpose(0, 2, 1), input_hw),
                             head[:, 4:].transpose(0, 2, 1))
        if self.kind == "yolov5":
            head = np.asarray(raw[self.outputs[0]], np.float64)
            return Proposals(self._boxes(head[..., :4], input_hw), head[..., 5:], head[..., 4])
        boxes = self._boxes(np.asarray(raw[self.outputs[0]], np.float64), input_hw)
        scores = np.asarray(raw[self.outputs[1]], np.float64)
        if len(self.outputs) == 2:
            return Proposals(boxes, scores)
        labels = np.asarray(raw[self.outputs[2]]).astype(np.int64)
        k = int(labels.max(initial=0)) + 1
        return Proposals(boxes, (labels[..., None] == np.arange(k)).astype(np.float64), scores)

    def score_entries(self, shapes: Sequence[tuple[int, ...]], anchor: int, label: int
                      ) -> tuple[int, tuple[int, ...]]:
        """(output, flat indices) of the raw entries whose product is proposal ``anchor``'s
        confidence for class ``label`` (flat indices into one input's output, batch axis
        dropped): YOLOv8 the class score at row 4 + k of (4 + K, A); YOLOv5 objectness and
        class probability, entries 4 and 5 + k of (A, 5 + K); boxes the score (A, K) or (A,)."""
        if self.kind == "yolov8":
            a = shapes[self.outputs[0]][2]
            return self.outputs[0], ((4 + label) * a + anchor,)
        if self.kind == "yolov5":
            _, _, width = shapes[self.outputs[0]]
            return self.outputs[0], (anchor * width + 4, anchor * width + 5 + label)
        scores = shapes[self.outputs[1]]
        if len(scores) == 2:
            return self.outputs[1], (anchor,)
        return self.outputs[1], (anchor * scores[2] + label,)


def choose_decoder(outputs: Sequence[OutputInfo], kind: str | None = None,
                   sample: Sequence[npt.NDArray] | None = None, *, box_format: str | None = None,
                   normalized: bool | None = None) -> Decoder:
    """The decoder for a model's outputs: ``kind`` when given, else from the shapes and names;
    ``box_format`` and ``normalized`` when given, else the layout's (``normalized`` for
    ``boxes``: from the sample, see below; the YOLO heads are in pixels).

    Rules: a box tensor (N, A, 4) (or one named ``box*``) with a score tensor (N, A, K) or
    (N, A) means ``boxes`` (labels: the (N, A) integer output or the one named ``label*`` /
    ``class*``); otherwise the only rank-3 output (N, a, b) is ``yolov8`` when a < b (channels
    first, a = 4 + K) and ``yolov5`` when a > b (b = 5 + K), unless only the other layout has
    room for a box and a class. ``sample`` (the raw outputs of
    one input) decides whether ``boxes`` coordinates are normalised (all within [0, 1.5]).
    """
    if kind is not None and kind not in DECODERS:
        raise ModelInputError(f"--decoder {kind!r}: use one of {', '.join(DECODERS)}")
    if box_format is not None and box_format not in BOX_FORMATS:
        raise ModelInputError(f"--box-format {box_format!r}: use one of {', '.join(BOX_FORMATS)}")
    fmt = cast("BoxFormat | None", box_format)
    rank3 = [i for i, o in enumerate(outputs) if len(o.shape) == 3]
    listed = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
    boxes = [i for i in rank3 if outputs[i].shape[2] == 4 or outputs[i].name.lower().startswith("box")]
    if kind == "boxes" or (kind is None and len(boxes) == 1 and len(outputs) > 1):
        if len(boxes) != 1:
            raise ModelInputError(f"decoder boxes needs one box output (N, A, 4); outputs: {listed}")
        b = boxes[0]
        a = outputs[b].shape[1]
        rest = [i for i, o in enumerate(outputs) if i != b and len(o.shape) >= 2 and o.shape[1] == a]
        named = [i for i in rest if outputs[i].name.lower().startswith(("label", "class"))]
        labels = named or [i for i in rest if outputs[i].integer and len(outputs[i].shape) == 2]
        scores = [i for i in rest if i not in labels[:1]]
        if not scores:
            raise ModelInputError(f"decoder boxes found no score output (N, {a}[, K]) beside "
                                  f"{outputs[b].name!r}; outputs: {listed}")
        s = scores[0]
        if len(outputs[s].shape) == 2 and not labels:
            raise ModelInputError(f"decoder boxes: scores {outputs[s].name!r} {list(outputs[s].shape)} "
                                  f"have no class axis and no labels output; outputs: {listed}")
        if normalized is None:
            normalized = sample is not None and float(np.abs(sample[b]).max(initial=0)) <= 1.5
        chosen = (b, s, labels[0]) if len(outputs[s].shape) == 2 else (b, s)
        return Decoder("boxes", chosen, normalized, fmt)
    if len(rank3) != 1:
        raise ModelInputError(f"no detector head found in the outputs ({listed}): expected one "
                              "(N, 4 + K, A) or (N, A, 5 + K) tensor, or boxes (N, A, 4) with scores")
    i = rank3[0]
    _, a, b = outputs[i].shape
    width = {"yolov8": (a, 5), "yolov5": (b, 6)}  # values per proposal, and the least it needs
    fits = [k for k in (("yolov8", "yolov5") if a < b else ("yolov5", "yolov8"))
            if width[k][0] >= width[k][1]]
    chosen = kind or (fits[0] if fits else "yolov8")
    if chosen not in fits:
        raise ModelInputError(f"output {outputs[i].name!r} {list(outputs[i].shape)} is too narrow "
                              f"for decoder {chosen} ({width[chosen][0]} < {width[chosen][1]} "
                              "values per proposal)")
    return Decoder(chosen, (i,), bool(normalized), fmt)
