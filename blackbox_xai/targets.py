"""Targets other than a class index: one detection of an object detector.

A target is a score function over the model's raw outputs. A :class:`Detection` is scored by
the D-RISE similarity (Petsiuk et al., "Black-box explanation of object detectors via saliency
maps", CVPR 2021, arXiv:2012.03058) between it and the best matching decoded proposal:

    s(d_t, x) = max_a IoU(L_t, L_a) * cos(P_t, P_a) * O_a

with L the boxes, P_t the one-hot vector of the target's class, P_a a proposal's class scores
and O_a its objectness (1 for models without one). :class:`DetectionScore` turns a detector
into a query function (N, C, H, W) -> (N, 1) of that similarity, so the black-box methods
explain a detection unchanged, with target 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .decode import Decoder, OutputInfo, Proposals, box_iou, choose_decoder, nms
from .errors import BlackboxError
from .model import Model

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected (or wanted) object: ``box`` (x0, y0, x1, y1) in the model input's pixels,
    class ``label`` and, when it came from the model, its ``score`` (confidence)."""

    box: Box
    label: int
    score: float | None = None

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            raise BlackboxError(f"Detection box {self.box!r}: give (x0, y0, x1, y1) with x1 > x0 "
                                "and y1 > y0")
        if not (isinstance(self.label, (int, np.integer)) and self.label >= 0):
            raise BlackboxError(f"Detection label {self.label!r}: give a class index >= 0")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "label", int(self.label))

    def to_image(self, footprint: Sequence[float], input_hw: tuple[int, int]) -> Box:
        """The box in the photo's pixels, given the input tensor's ``footprint`` in the photo
        (``Prepared.box``) and the input size (H, W): x_img = fx0 + x (fx1 - fx0) / W."""
        fx0, fy0, fx1, fy1 = footprint
        sx, sy = (fx1 - fx0) / input_hw[1], (fy1 - fy0) / input_hw[0]
        x0, y0, x1, y1 = self.box
        return (fx0 + x0 * sx, fy0 + y0 * sy, fx0 + x1 * sx, fy0 + y1 * sy)

    @classmethod
    def from_image(cls, box: Sequence[float], label: int, footprint: Sequence[float],
                   input_hw: tuple[int, int]) -> Detection:
        """A target from a box in the photo's pixels (the inverse of :meth:`to_image`)."""
        fx0, fy0, fx1, fy1 = footprint
        sx, sy = input_hw[1] / (fx1 - fx0), input_hw[0] / (fy1 - fy0)
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls(((x0 - fx0) * sx, (y0 - fy0) * sy, (x1 - fx0) * sx, (y1 - fy0) * sy), label)

    def describe(self) -> dict:
        return {"box": list(self.box), "label": self.label, "score": self.score}


def similarity(target: Detection, proposals: Proposals) -> npt.NDArray[np.float64]:
    """D-RISE similarity (N,): max over proposals of IoU x cos(one-hot, P_a) x O_a.

    cos(e_k, P_a) = P_ak / ||P_a|| (0 for an all-zero P_a or a class k the vector lacks).
    """
    iou = box_iou(np.asarray(target.box), proposals.boxes)  # (N, A)
    p = proposals.classes
    norm = np.linalg.norm(p, axis=-1)
    pk = p[..., target.label] if target.label < p.shape[-1] else np.zeros(norm.shape)
    cos = np.divide(pk, norm, out=np.zeros_like(norm), where=norm > 0)
    s = iou * cos * (1.0 if proposals.objectness is None else proposals.objectness)
    return s.max(axis=-1, initial=0.0)


RawFn = Callable[[npt.NDArray[np.float32]], "npt.NDArray | Sequence[npt.NDArray]"]


def raw_outputs_of(model) -> tuple[RawFn, list[str] | None, list[bool] | None]:
    """(function x -> list of raw outputs, output names, integer dtypes) of a detector: a
    :class:`~blackbox_xai.model.Model` loaded with ``task="detect"`` or a plain function."""
    if isinstance(model, Model):
        if model.task != "detect":
            raise BlackboxError(f"{model.path.name} is loaded as a classifier: load it with "
                                "load_model(path, task='detect') to explain a detection")
        return model.raw_outputs, model.output_names, model.output_integer
    return model, None, None


class Detector:
    """A detector's raw outputs decoded into proposals.

    The decoder is chosen from the first call's raw outputs unless given (``decoder``: a name
    from :data:`~blackbox_xai.decode.DECODERS` or a :class:`~blackbox_xai.decode.Decoder`).
    """

    def __init__(self, model, decoder: str | Decoder | None = None) -> None:
        self.raw, self.names, self.integer = raw_outputs_of(model)
        self.model = model
        self.decoder = decoder if isinstance(decoder, Decoder) else None
        self.kind = None if isinstance(decoder, Decoder) else decoder

    @property
    def batch_size(self) -> int | None:
        size = getattr(self.model, "batch_size", None)
        return size if isinstance(size, int) else None

    def proposals(self, x: npt.NDArray[np.float32]) -> Proposals:
        """Decoded proposals of the inputs (N, C, H, W), before NMS."""
        raw = self.raw(x)
        outs = [np.asarray(r) for r in ([raw] if isinstance(raw, np.ndarray) else raw)]
        if self.decoder is None:
            self.decoder = choose_decoder(
                [OutputInfo(self.names[i] if self.names else f"output{i}", o.shape,
                            bool(self.integer[i]) if self.integer else o.dtype.kind in "iu")
                 for i, o in enumerate(outs)], self.kind, [o[:1] for o in outs])
        return self.decoder(outs, x.shape[2:])

    def detect(self, x: npt.NDArray[np.float32], *, conf: float = 0.25, iou: float = 0.45
               ) -> list[list[Detection]]:
        """Detections of each input (N, C, H, W), best first: a proposal's label is its class
        of highest confidence (class score x objectness); those >= ``conf`` go through
        per-class NMS at ``iou``."""
        if not (0 <= conf <= 1 and 0 <= iou <= 1):
            raise BlackboxError(f"conf={conf}, iou={iou}: both must be within [0, 1]")
        props = self.proposals(x)
        confidence = props.confidence
        if confidence.shape[-1] == 0:
            return [[] for _ in range(len(x))]
        out = []
        for n in range(len(x)):
            labels = confidence[n].argmax(axis=-1)
            best = confidence[n, np.arange(len(labels)), labels]
            b = props.boxes[n]
            idx = np.flatnonzero((best >= conf) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
            keep = idx[nms(b[idx], best[idx], iou, labels[idx])]
            out.append([Detection(tuple(b[a]), int(labels[a]), float(best[a])) for a in keep])
        return out


class DetectionScore:
    """A query function (N, C, H, W) -> (N, 1): the D-RISE similarity of each input's decoded
    proposals to one :class:`Detection` (see :func:`similarity`)."""

    def __init__(self, detector: Detector, target: Detection) -> None:
        self.detector, self.target = detector, target

    @property
    def batch_size(self) -> int | None:
        return self.detector.batch_size

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return similarity(self.target, self.detector.proposals(x)).astype(np.float32)[:, None]

    def describe(self) -> dict:
        """The manifest's record of the target: the detection, the decoder, the score."""
        dec = self.detector.decoder
        return {**self.target.describe(), "decoder": dec.describe() if dec is not None else None,
                "score_function": "D-RISE similarity: max_a IoU x cos(one-hot, P_a) x objectness"}
