"""Explain images with several methods and score every map: :func:`evaluate`.

Per image and method: deletion and insertion AUC with their curves (:func:`.deletion_insertion`),
the pointing game and energy pointing where the image has boxes (:mod:`.pointing`), the
completeness gap (:func:`.completeness_gap`), and the explanation's queries and seconds. The
summary holds each method's means over the images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..api import as_single_input, explain
from ..decode import Decoder
from ..errors import BlackboxError
from ..explanation import Explanation
from ..methods import get_method
from ..model import Model, softmax
from ..perturb import QueryFn
from ..targets import Detection
from .completeness import completeness_gap
from .deletion import CurveResult, deletion_insertion
from .pointing import TOLERANCE, Annotation, annotation_for, energy_pointing, pointing_hit

log = logging.getLogger(__name__)

Target = Literal["top1", "label"]
Boxes = Mapping[str, Annotation] | Sequence[Annotation | None]


@dataclass(frozen=True)
class EvaluationRow:
    """One image explained by one method, and how faithful the map is."""

    image: str
    method: str
    target: int
    label: str                     # the target's class name ("" when the model has none)
    prob: float                    # the target's probability on the intact input
    deletion_auc: float            # lower is better
    insertion_auc: float           # higher is better
    pointing_hit: bool | None      # None: the image has no box
    energy_pointing: float | None  # share of the map's positive mass in the boxes
    completeness_gap: float | None  # None: the method has no completeness axiom
    n_queries: int                 # model evaluations of the explanation
    eval_queries: int              # model evaluations of the two curves
    seconds: float                 # wall time of the explanation
    top1: int                      # the model's top class and its probability
    top1_prob: float
    curves: CurveResult = field(repr=False)
    explanation: Explanation = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The row as ``metrics.csv`` has it (no curves, no map)."""
        return {"image": self.image, "method": self.method, "target": self.target,
                "label": self.label, "prob": self.prob, "deletion_auc": self.deletion_auc,
                "insertion_auc": self.insertion_auc, "pointing_hit": self.pointing_hit,
                "energy_pointing": self.energy_pointing, "completeness_gap": self.completeness_gap,
                "queries": self.n_queries, "eval_queries": self.eval_queries,
                "seconds": self.seconds}


@dataclass(frozen=True)
class MethodSummary:
    """A method's means over the images (``None`` where no image has the value)."""

    method: str
    images: int
    deletion_auc: float | None
    insertion_auc: float | None
    pointing_accuracy: float | None  # share of hits among the images with boxes
    energy_pointing: float | None
    completeness_gap: float | None
    queries: int
    seconds: float | None


@dataclass(frozen=True)
class EvaluationResult:
    """Rows image by image, each image's methods in the order given, and the settings."""

    methods: list[str]
    rows: list[EvaluationRow]
    seed: int | None
    target: Target
    tolerance: float

    def summary(self) -> list[MethodSummary]:
        """One :class:`MethodSummary` per method, in the order given."""
        return [_summarize(m, [r for r in self.rows if r.method == m]) for m in self.methods]

    def as_dict(self) -> dict[str, Any]:
        """Settings, summary, and the rows with their curves (``metrics.json``)."""
        return {"seed": self.seed, "target": self.target, "tolerance": self.tolerance,
                "summary": [asdict(s) for s in self.summary()],
                "rows": [dict(r.as_dict(), curves=r.curves.as_dict()) for r in self.rows]}


def _mean(values: Sequence[float | bool | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and not np.isnan(float(v))]
    return float(np.mean(finite)) if finite else None


def _summarize(method: str, rows: Sequence[EvaluationRow]) -> MethodSummary:
    return MethodSummary(
        method, len(rows), _mean([r.deletion_auc for r in rows]),
        _mean([r.insertion_auc for r in rows]), _mean([r.pointing_hit for r in rows]),
        _mean([r.energy_pointing for r in rows]), _mean([r.completeness_gap for r in rows]),
        round(_mean([r.n_queries for r in rows]) or 0), _mean([r.seconds for r in rows]))


def match_annotations(boxes: Boxes | None, keys: Sequence[str | os.PathLike],
                      target: Target = "top1") -> list[Annotation | None]:
    """Each input's annotation, checked for ``target="label"``.

    Args:
        boxes: ``{file name: Annotation}`` (:func:`.load_boxes`), matched to ``keys`` by
            :func:`.annotation_for` (an input with no match is logged), or one annotation (or
            ``None``) per input.
        keys: each input's image path, or its name.
        target: ``"label"`` needs a label for every input.
    """
    if boxes is None:
        found: list[Annotation | None] = [None] * len(keys)
    elif isinstance(boxes, Mapping):
        found = [annotation_for(boxes, k) for k in keys]
        for k, a in zip(keys, found):
            if a is None:
                log.warning("%s: no box given for it; no pointing game", Path(k).name)
    else:
        found = list(boxes)
        if len(found) != len(keys):
            raise BlackboxError(f"{len(found)} annotations for {len(keys)} inputs")
    if target not in ("top1", "label"):
        raise BlackboxError(f"target={target!r}: use 'top1' or 'label'")
    if target == "label":
        missing = [k for k, a in zip(keys, found) if a is None or a.label is None]
        if missing:
            raise BlackboxError(f"target 'label': no label for {Path(missing[0]).name} in the "
                                "boxes given")
    return found


def _as_tensors(model: Model | QueryFn, inputs: Sequence[Any]
                ) -> tuple[list[npt.NDArray[np.float32]], Sequence[str] | None]:
    """(C, H, W) tensors of ``inputs`` (image paths prepared with the model's own recipe) and
    the recipe's class names (``None`` without paths)."""
    paths = [isinstance(x, (str, os.PathLike)) for x in inputs]
    if not any(paths):
        return [as_single_input(x) for x in inputs], None
    if not isinstance(model, Model):
        raise BlackboxError("image paths need a Model (its preprocessing): pass (C, H, W) "
                            "tensors with a plain function")
    from ..preprocess import Preprocessing

    pre = Preprocessing.for_model(model.path, model.input.chw[1:], channels=model.input.channels,
                                  num_classes=model.num_classes)
    return [pre.prepare(x, model.input.channels).tensor if is_path else as_single_input(x)
            for x, is_path in zip(inputs, paths)], pre.labels


def evaluate(model: Model | QueryFn, inputs: Sequence[str | os.PathLike | npt.ArrayLike],
             methods: Sequence[str], *, names: Sequence[str] | None = None,
             boxes: Boxes | None = None, target: Target = "top1", seed: int | None = 0,
             options: Mapping[str, Mapping[str, Any]] | None = None,
             pixels_per_step: int | None = None, tolerance: float = TOLERANCE,
             labels: Sequence[str] | None = None, progress: bool = False,
             detections: Sequence[Detection] | None = None,
             decoder: str | Decoder | None = None) -> EvaluationResult:
    """Explain every input with every method and score each map's faithfulness.

    Args:
        model: a :class:`~blackbox_xai.model.Model`, or any function (N, C, H, W) -> (N, K)
            when ``inputs`` are tensors.
        inputs: image paths (prepared with the model's sidecar / metadata recipe) or
            preprocessed (C, H, W) tensors.
        methods: registered method names.
        names: a name per input (default: the file name of a path, ``"0"``, ``"1"``... of a
            tensor).
        boxes: ``{file name: Annotation}`` (:func:`.load_boxes`; matched by path, else by name)
            or one :class:`.Annotation` or ``None`` per input: the pointing game's boxes, in
            model-input pixels.
        target: explain the model's top class (``"top1"``) or the annotation's ``"label"``.
        seed: every explanation's seed.
        options: ``{method: {option: value}}``; a method not named runs at its defaults.
        pixels_per_step: the deletion / insertion step (default ``round(H * W / 28)``).
        tolerance: the pointing game's tolerance in pixels.
        labels: class names (default: the recipe's, for image paths).
        progress: progress bars on stderr.
        detections: a detector's :class:`~blackbox_xai.targets.Detection` per input to explain
            instead of a class (``model`` loaded with ``task="detect"``): the curves track its
            matched score, the pointing game uses its own box when ``boxes`` gives none.
        decoder: the detector's output layout (default: chosen from the output shapes).
    """
    methods = list(dict.fromkeys(methods))
    options = dict(options or {})
    for m in options:
        if m not in methods:
            raise BlackboxError(f"options for {m!r}, which is not one of the methods "
                                f"({', '.join(methods)})")
    for m in methods:
        get_method(m).validate(dict(options.get(m, {})))  # every error before any query
    if names is None:
        names = [Path(x).name if isinstance(x, (str, os.PathLike)) else str(i)
                 for i, x in enumerate(inputs)]
    if len(names) != len(inputs):
        raise BlackboxError(f"{len(names)} names for {len(inputs)} inputs")
    keys = [x if isinstance(x, (str, os.PathLike)) else n for x, n in zip(inputs, names)]
    annotations = match_annotations(boxes, keys, target)
    tensors, recipe_labels = _as_tensors(model, inputs)
    labels = recipe_labels if labels is None else labels
    if detections is not None and len(detections) != len(inputs):
        raise BlackboxError(f"{len(detections)} detections for {len(inputs)} inputs")
    rows = []
    for i, (name, x, ann) in enumerate(zip(names, tensors, annotations)):
        rows += evaluate_one(model, x, methods, name=name, annotation=ann, target=target,
                             seed=seed, options=options, pixels_per_step=pixels_per_step,
                             tolerance=tolerance, labels=labels, progress=progress,
                             detection=detections[i] if detections is not None else None,
                             decoder=decoder)
    return EvaluationResult(methods, rows, seed, target, tolerance)


def evaluate_one(model: Model | QueryFn, x: npt.NDArray[np.float32], methods: Sequence[str], *,
                 name: str, annotation: Annotation | None = None, target: Target = "top1",
                 seed: int | None = 0, options: Mapping[str, Mapping[str, Any]] | None = None,
                 pixels_per_step: int | None = None, tolerance: float = TOLERANCE,
                 labels: Sequence[str] | None = None, progress: bool = False,
                 detection: Detection | None = None, decoder: str | Decoder | None = None
                 ) -> list[EvaluationRow]:
    """One (C, H, W) input's rows, one per method (see :func:`evaluate`, which checks the
    arguments: ``target="label"`` needs an annotation with a label)."""
    options = options or {}
    ann = annotation
    if detection is not None:
        return [_detection_row(model, x, m, detection, name=name, annotation=ann, seed=seed,
                               options=options.get(m, {}), pixels_per_step=pixels_per_step,
                               tolerance=tolerance, labels=labels, progress=progress,
                               decoder=decoder) for m in methods]
    scores = model(x[None])[0]
    probs = model.probabilities(scores) if isinstance(model, Model) else softmax(scores)
    top1 = int(np.argmax(scores))
    rows = []
    goal = ann.label if target == "label" and ann is not None else top1
    for m in methods:
        exp = explain(model, x, m, target=goal, seed=seed, progress=progress, labels=labels,
                      **options.get(m, {}))
        curves = deletion_insertion(model, x, exp.map, exp.target, pixels_per_step=pixels_per_step)
        hit = energy = None
        if ann is not None:
            hit = pointing_hit(exp.map, ann.boxes, tolerance)
            energy = energy_pointing(exp.map, ann.boxes)
        rows.append(EvaluationRow(
            name, m, exp.target, exp.label or "", float(curves.deletion_curve[0]),
            curves.deletion_auc, curves.insertion_auc, hit, energy, completeness_gap(exp),
            exp.n_queries, curves.n_queries, exp.seconds, top1, float(probs[top1]), curves, exp))
    return rows


def _detection_row(model: Model | QueryFn, x: npt.NDArray[np.float32], method: str,
                   detection: Detection, *, name: str, annotation: Annotation | None,
                   seed: int | None, options: Mapping[str, Any], pixels_per_step: int | None,
                   tolerance: float, labels: Sequence[str] | None, progress: bool,
                   decoder: str | Decoder | None) -> EvaluationRow:
    """One detection explained by ``method``: the curves follow its matched score (D-RISE
    similarity, no softmax), the boxes are the annotation's, else the detection's own; the
    ``prob`` and ``top1`` columns hold the detection's class and confidence."""
    exp = explain(model, x, method, target=detection, seed=seed, progress=progress,
                  labels=labels, decoder=decoder, **options)
    curves = deletion_insertion(model, x, exp.map, detection, pixels_per_step=pixels_per_step,
                                decoder=decoder)
    boxes = annotation.boxes if annotation is not None else detection
    confidence = float(detection.score) if detection.score is not None else float("nan")
    return EvaluationRow(
        name, method, exp.target, exp.label or "", confidence, curves.deletion_auc,
        curves.insertion_auc, pointing_hit(exp.map, boxes, tolerance),
        energy_pointing(exp.map, boxes), completeness_gap(exp), exp.n_queries, curves.n_queries,
        exp.seconds, detection.label, confidence, curves, exp)
