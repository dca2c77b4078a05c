"""Targets other than a class index: one detection of an object detector, one class over a
region of a segmentation net's output.

A target is a score function over the model's raw outputs. A :class:`Detection` is scored by
the D-RISE similarity (Petsiuk et al., "Black-box explanation of object detectors via saliency
maps", CVPR 2021, arXiv:2012.03058) between it and the best matching decoded proposal:

    s(d_t, x) = max_a IoU(L_t, L_a) * cos(P_t, P_a) * O_a

with L the boxes, P_t the one-hot vector of the target's class, P_a a proposal's class scores
and O_a its objectness (1 for models without one). :class:`DetectionScore` turns a detector
into a query function (N, C, H, W) -> (N, 1) of that similarity, so the black-box methods
explain a detection unchanged, with target 0. Gradient and CAM methods explain it through a
fixed entry of the raw (pre-NMS) head output at the proposal that produced it
(:class:`DetectionRawScore`, :meth:`~blackbox_xai.model.Model.detection_view`).

A :class:`Region` of class k over the pixels R of a segmentation output z (N, K, H, W) is
scored by the sum of the class's logits over the region (pytorch-grad-cam's
SemanticSegmentationTarget):

    s(x) = sum_{(i, j) in R} z_k(x)_ij

:class:`RegionScore` is its query function (N, C, H, W) -> (N, 1); the score is linear in z, so
gradient and CAM methods explain it through :meth:`~blackbox_xai.model.Model.region_view`.
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
    from :data:`~blackbox_xai.decode.DECODERS` or a :class:`~blackbox_xai.decode.Decoder`);
    ``box_format`` (:data:`~blackbox_xai.decode.BOX_FORMATS`) and ``normalized`` override the
    layout's box coordinates when the decoder is chosen here.
    """

    def __init__(self, model, decoder: str | Decoder | None = None, *,
                 box_format: str | None = None, normalized: bool | None = None) -> None:
        self.raw, self.names, self.integer = raw_outputs_of(model)
        self.model = model
        self.decoder = decoder if isinstance(decoder, Decoder) else None
        self.kind = None if isinstance(decoder, Decoder) else decoder
        self.box_format, self.normalized = box_format, normalized

    @property
    def batch_size(self) -> int | None:
        size = getattr(self.model, "batch_size", None)
        return size if isinstance(size, int) else None

    def proposals(self, x: npt.NDArray[np.float32]) -> Proposals:
        """Decoded proposals of the inputs (N, C, H, W), before NMS."""
        return self.decode(self.raw(x), x.shape)

    def decode(self, raw: npt.NDArray | Sequence[npt.NDArray], shape: tuple[int, ...]
               ) -> Proposals:
        """The proposals of raw outputs of inputs of ``shape`` (N, C, H, W), before NMS."""
        outs = [np.asarray(r) for r in ([raw] if isinstance(raw, np.ndarray) else raw)]
        if self.decoder is None:
            self.decoder = choose_decoder(
                [OutputInfo(self.names[i] if self.names else f"output{i}", o.shape,
                            bool(self.integer[i]) if self.integer else o.dtype.kind in "iu")
                 for i, o in enumerate(outs)], self.kind, [o[:1] for o in outs],
                box_format=self.box_format, normalized=self.normalized)
        return self.decoder(outs, tuple(shape[2:]))

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


#: What a detection view's score is, per layout (:class:`DetectionRawScore`).
RAW_SCORES = {
    "yolov8": "class k's score at the matched anchor a (row 4 + k of the (N, 4 + K, A) head)",
    "yolov5": "objectness x class k's probability at the matched anchor a (entries 4 and 5 + k "
              "of row a of the (N, A, 5 + K) head)",
    "boxes": "the score of the matched proposal a (for class k where the scores have a class "
             "axis)",
}


class DetectionRawScore:
    """A detection's score for gradient and CAM methods: a fixed entry (or product of two) of
    the raw, pre-NMS head output, at the proposal ("anchor") a that produced the detection, as
    pytorch-grad-cam's YOLO and Faster R-CNN recipes pick their score:

        a = argmax_a IoU(L_t, L_a) * c_ak(x),   s(x') = c_ak(x') read from the raw output

    with c_ak the decoded confidence of class k (class score x objectness) on the explained
    input x. YOLOv8: the class score; YOLOv5: objectness x class probability (the confidence
    the detection reports; the exports apply the sigmoids inside the graph, so no logit is
    left to read, and the product keeps the objectness evidence D-RISE also weighs); boxes +
    scores: the proposal's score. :meth:`~blackbox_xai.model.Model.detection_view` turns it
    into a one-class model. A graph with NMS inside has no fixed proposal a: refused.
    """

    def __init__(self, detector: Detector, target: Detection, x: npt.NDArray[np.float32]) -> None:
        model = detector.model
        if not isinstance(model, Model):
            raise BlackboxError("gradient and CAM methods explain a detection through the "
                                "model's graph: pass a Model from load_model(path, task='detect')")
        if any(n.op_type == "NonMaxSuppression" for n in model.proto.graph.node):
            raise BlackboxError(f"{model.path.name} runs NMS inside its graph, so its outputs "
                                "have no fixed proposal to differentiate: explain the detection "
                                "with a black-box method (drise, occlusion, rise, ...)")
        self.detector, self.target = detector, target
        raw = model.raw_outputs(x[None])
        props = detector.decode(raw, x[None].shape)  # one forward pass for both
        k = target.label
        conf = props.confidence[0]
        if k >= conf.shape[-1]:
            raise BlackboxError(f"Detection label {k}: the detector has {conf.shape[-1]} classes")
        match = box_iou(np.asarray(target.box), props.boxes[0]) * conf[:, k]
        self.anchor = int(np.argmax(match))
        if match[self.anchor] <= 0:
            raise BlackboxError(f"no proposal of class {k} overlaps the box "
                                f"{_box(target.box)}: nothing to differentiate")
        dec = detector.decoder
        out, self.entries = dec.score_entries([r.shape for r in raw], self.anchor, k)
        self.output = model.output_names[out]
        self.match = float(match[self.anchor])
        self.proposal = tuple(float(v) for v in props.boxes[0, self.anchor])

    def view(self, x: npt.NDArray[np.float32] | None = None) -> Model:
        """The one-class model whose class 0 is this score; given the explained input ``x``,
        its default CAM layer is :meth:`cam_layer`'s."""
        view = self.detector.model.detection_view(self.output, self.entries)
        if x is not None:
            view.fact(("layer", None), lambda: self.cam_layer(view, x))
        return view

    def cam_layer(self, view: Model, x: npt.NDArray[np.float32], tries: int = 6):
        """The default CAM layer of a detection: the last candidate feature map (graph order)
        that branches (read by two or more nodes, a SiLU's Sigmoid and Shape aside: a neck output feeding
        a head's box and class branches, as pytorch-grad-cam's YOLOv8 recipe picks ``model.model[-2]``) and whose
        gradient of the score at ``x`` is nonzero (the anchor's own scale: a YOLO head
        concatenates every scale's branches into one output, and the graph's last map, the
        box branch's DFL conv in an Ultralytics export, gets no gradient from a class score).
        At most ``tries`` layers probed from the last (one backward pass each), else the
        usual default."""
        from .graph.inspect import candidate_layers, consumers, feature_map
        from .graph.vjp_rules import UnsupportedOpError

        g = view.proto.graph
        readers = {t: [i for i in idx if g.node[i].op_type not in ("Sigmoid", "Shape")]
                   for t, idx in consumers(g).items()}  # SiLU's x * sigmoid(x); shape reads
        branching = [c for c in candidate_layers(view.proto) if len(readers.get(c.name, ())) > 1]
        for layer in reversed(branching[-tries:]):
            try:
                _, _, grad = view.layer_gradient(x[None], 0, layer.name)
            except UnsupportedOpError:
                continue
            if np.any(grad != 0):
                return layer
        return feature_map(view.proto)

    def describe(self) -> dict:
        """The manifest's record: the detection, the decoder, the anchor and its raw entries."""
        dec = self.detector.decoder
        return {**self.target.describe(), "decoder": dec.describe(), "anchor": self.anchor,
                "anchor_box": list(self.proposal), "iou_x_confidence": self.match,
                "raw_output": self.output, "raw_entries": list(self.entries),
                "score_function": RAW_SCORES[dec.kind]}


def _box(box: Box) -> str:
    return ",".join(f"{v:.1f}" for v in box)


@dataclass(frozen=True, eq=False)
class Region:
    """Class ``label`` over a region of a segmentation output (N, K, H, W): ``mask`` (H, W) bool
    in the output's pixels, or None for the pixels predicted as ``label`` (argmax over K; for a
    one-channel sigmoid map, logit > 0, i.e. probability > 0.5). ``source`` says where the mask
    came from (recorded in the manifest)."""

    label: int
    mask: npt.NDArray[np.bool_] | None = None
    source: str = "mask"

    def __post_init__(self) -> None:
        if not (isinstance(self.label, (int, np.integer)) and self.label >= 0):
            raise BlackboxError(f"Region label {self.label!r}: give a class index >= 0")
        object.__setattr__(self, "label", int(self.label))
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 2 or not mask.any():
                raise BlackboxError(f"Region mask of shape {mask.shape} with {int(mask.sum())} "
                                    "pixels in: give an (H, W) mask of the output with pixels in")
            object.__setattr__(self, "mask", mask.astype(bool))

    @classmethod
    def from_image(cls, label: int, footprint: Sequence[float], map_hw: tuple[int, int], *,
                   box: Sequence[float] | None = None,
                   image_mask: npt.NDArray | None = None, source: str = "mask") -> Region:
        """A region from a ``box`` (x0, y0, x1, y1) or an ``image_mask`` (nonzero = in), both in
        the photo's pixels: an output pixel (i, j) is in when its centre, at
        x = fx0 + (j + 0.5) (fx1 - fx0) / W, y = fy0 + (i + 0.5) (fy1 - fy0) / H in the photo
        (``footprint``: the input tensor's footprint, ``Prepared.box``), is in the box, or falls
        on a nonzero pixel of the mask (outside the photo: out)."""
        fx0, fy0, fx1, fy1 = footprint
        h, w = map_hw
        ys = fy0 + (np.arange(h) + 0.5) * (fy1 - fy0) / h
        xs = fx0 + (np.arange(w) + 0.5) * (fx1 - fx0) / w
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            mask = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None]
        elif image_mask is not None:
            iy, ix = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
            inside = ((iy >= 0) & (iy < image_mask.shape[0]))[:, None] & \
                ((ix >= 0) & (ix < image_mask.shape[1]))[None]
            values = image_mask[np.clip(iy, 0, image_mask.shape[0] - 1)[:, None],
                                np.clip(ix, 0, image_mask.shape[1] - 1)[None]]
            mask = inside & (values != 0)
        else:
            raise BlackboxError("Region.from_image: give a box or an image mask")
        if not mask.any():
            raise BlackboxError(f"the {source} covers no pixel of the model's {h}x{w} output map")
        return cls(label, mask, source)


LogitsFn = Callable[[npt.NDArray[np.float32]], npt.NDArray]


def logits_of(model) -> LogitsFn:
    """The function x -> logits (N, K, H, W) of a segmentation net: a
    :class:`~blackbox_xai.model.Model` loaded with ``task="segment"`` or a plain function."""
    if isinstance(model, Model):
        if model.task != "segment":
            raise BlackboxError(f"{model.path.name} is loaded with task={model.task!r}: load it "
                                "with load_model(path, task='segment') to explain a Region")
        return model.logits
    return model


class RegionScore:
    """A query function (N, C, H, W) -> (N, 1): the sum of class k's logits over a
    :class:`Region`, s = sum_ij M_ij z_k,ij, with the region's mask M resolved on the
    explained input ``x`` (C, H, W) when the target has none (see :class:`Region`). ``model``:
    see :func:`logits_of`."""

    def __init__(self, model, target: Region, x: npt.NDArray[np.float32]) -> None:
        self.model, self.logits, self.target = model, logits_of(model), target
        z = self._map(x[None])[0]
        k = target.label
        if k >= z.shape[0]:
            raise BlackboxError(f"--class {k}: the segmentation output has {z.shape[0]} classes "
                                f"(0..{z.shape[0] - 1})")
        if target.mask is None:
            self.mask = z[0] > 0 if z.shape[0] == 1 else z.argmax(axis=0) == k
            self.source = "predicted (logit > 0)" if z.shape[0] == 1 else "predicted (argmax)"
            if not self.mask.any():
                raise BlackboxError(f"no pixel of the output is predicted as class {k}: give the "
                                    "region (--region x0,y0,x1,y1 or --mask FILE)")
        else:
            self.mask, self.source = target.mask, target.source
        if self.mask.shape != z.shape[1:]:
            raise BlackboxError(f"Region mask of shape {self.mask.shape}: the output map is "
                                f"{z.shape[1]}x{z.shape[2]}")
        #: w (K, H, W): the region's mask on its class, s = sum w * z
        self.weights = np.zeros(z.shape, np.float32)
        self.weights[k] = self.mask

    @property
    def batch_size(self) -> int | None:
        size = getattr(self.model, "batch_size", None)
        return size if isinstance(size, int) else None

    def _map(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        z = np.asarray(self.logits(x), dtype=np.float32)
        if z.ndim != 4:
            raise BlackboxError(f"the segmentation output has shape {z.shape}: expected "
                                "(N, K, H, W)")
        return z

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        z = self._map(x)[:, self.target.label]
        return z.reshape(len(z), -1)[:, self.mask.ravel()].sum(axis=1, dtype=np.float64
                                                                 ).astype(np.float32)[:, None]

    def describe(self) -> dict:
        """The manifest's record of the target: class, pixel count, where the mask came from."""
        return {"label": self.target.label, "pixels": int(self.mask.sum()),
                "map_hw": list(self.mask.shape), "source": self.source,
                "score_function": "sum of class k's logits over the region"}


def score_query(model, target: Detection | Region, x: npt.NDArray[np.float32],
                decoder: str | Decoder | None = None) -> DetectionScore | RegionScore:
    """The one-score query function (N, C, H, W) -> (N, 1) of a detection (its D-RISE matched
    score, :class:`DetectionScore`) or a region (its summed logits, :class:`RegionScore`, the
    mask resolved on ``x`` (C, H, W)); what the metrics track for such targets (class 0)."""
    if isinstance(target, Detection):
        return DetectionScore(Detector(model, decoder), target)
    return RegionScore(model, target, x)
