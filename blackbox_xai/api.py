"""``explain()``: the one place that resolves the target, seeds, times and counts a method run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .decode import Decoder
from .errors import BlackboxError, GraphUnavailableError, InternalError
from .explanation import Explanation
from .graph.vjp_rules import UnsupportedOpError
from .methods import alternatives, get_method
from .model import Model
from .progress import progress_bar
from .registry import Context, MethodSpec
from .resample import one_blas_thread
from .targets import Detection, DetectionRawScore, DetectionScore, Detector, Region, RegionScore

QueryFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
log = logging.getLogger(__name__)


class CountingQuery:
    """Wrap a query function; count the inputs it is asked about and tick the progress bar."""

    def __init__(self, fn: QueryFn, progress=None) -> None:
        self.fn, self.progress, self.n = fn, progress, 0

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        raw = self.fn(np.asarray(x, dtype=np.float32))
        self.n += len(x)
        if self.progress is not None:
            self.progress.update(len(x))
        if raw is None:
            raise BlackboxError(f"the model returned None for {len(x)} inputs: expected scores (N, K)")
        try:
            scores = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            kind = getattr(np.asarray(raw), "dtype", type(raw).__name__)
            raise BlackboxError(f"the model returned scores that are not numbers ({kind}) for "
                                f"{len(x)} inputs: expected float scores (N, K)") from None
        if scores.ndim == 0 or scores.size == 0 or scores.shape[0] != len(x):
            raise BlackboxError(f"the model returned scores of shape {scores.shape} for {len(x)} "
                                "inputs: expected (N, K) with K >= 1")
        bad = ~np.isfinite(scores).all(axis=tuple(range(1, scores.ndim)))
        if bad.any():
            raise BlackboxError(f"the model returned NaN or infinite scores for {int(bad.sum())} "
                                f"of {len(x)} inputs: its explanation would be meaningless")
        return scores.reshape(len(x), -1)


def as_single_input(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise BlackboxError(f"x is not a numeric array ({np.asarray(x).dtype}): pass the "
                            "preprocessed input, (C, H, W) float32") from None
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or 0 in x.shape:
        raise BlackboxError(f"x has shape {x.shape}: explain() takes one input, (C, H, W) or "
                            "(1, C, H, W), with C, H, W >= 1")
    if not np.isfinite(x).all():
        raise BlackboxError(f"the input has {int((~np.isfinite(x)).sum())} NaN or infinite values "
                            "(check the preprocessing: mean, std, scale)")
    return x


def resolve_target(scores: npt.NDArray[np.float32], target: int | None) -> int:
    k = scores.shape[-1]
    if target is None:
        return int(np.argmax(scores))
    if not (isinstance(target, (int, np.integer)) and 0 <= target < k):
        raise BlackboxError(f"target={target!r} is out of range: the model has {k} classes (0..{k - 1})")
    return int(target)


#: Methods that need class scores of their own (a probability of the class), not a score.
_CLASS_SCORE_METHODS = frozenset({"meaningful-perturbation"})


def _explains_detections(spec: MethodSpec) -> bool:
    return not (spec.requires_graph or spec.needs_gradient or spec.name in _CLASS_SCORE_METHODS)


def explain(model: Model | QueryFn, x: npt.ArrayLike, method: str, *,
            target: int | Detection | Region | None = None, seed: int | None = 0, progress: bool = False,
            labels: Sequence[str] | None = None, inputs: dict[str, Any] | None = None,
            decoder: str | Decoder | None = None, **options: Any) -> Explanation:
    """Explain ``model``'s score for ``target`` on one input ``x``: a class index (default:
    top-1), a :class:`~blackbox_xai.targets.Detection` of a detector or a
    :class:`~blackbox_xai.targets.Region` of a segmentation net.

    A detection is explained through its D-RISE similarity score (see
    :mod:`blackbox_xai.targets`): the method sees a query function (N, C, H, W) -> (N, 1) and
    target 0; gradient, CAM and class-probability methods see the one-class model
    :meth:`Model.detection_view` whose score is the raw head entry at the matched proposal
    (:class:`~blackbox_xai.targets.DetectionRawScore`). The manifest's ``extras["detection"]``
    records the box, class, decoder and score function.
    A region is explained through s = sum of class k's logits over it: black-box methods see
    the query function :class:`~blackbox_xai.targets.RegionScore`; gradient, CAM and
    class-probability methods see the one-class model :meth:`Model.region_view` (s is linear
    in the logits). ``extras["region"]`` records the class, pixel count and the mask's source.

    Args:
        model: a :class:`Model` or any function (N, C, H, W) -> (N, K); for a detection, a
            ``Model`` loaded with ``task="detect"`` or a function returning the raw head
            output(s); for a region, a ``Model`` loaded with ``task="segment"`` or a function
            returning logits (N, K, H, W).
        x: one preprocessed input, (C, H, W) or (1, C, H, W), NCHW float32.
        method: a registered method name (``blackbox_xai.METHODS``).
        target: a class index, a :class:`Detection` (box in the input's pixels) or a
            :class:`Region` (mask in the output map's pixels).
        decoder: a detection's output layout (``blackbox_xai.decode.DECODERS``; default: chosen
            from the output shapes).
        seed: seeds the method's ``np.random.Generator``; same seed, same map.
        progress: show a progress bar on stderr.
        inputs: recorded in the manifest: the image and its preprocessing (``Prepared.inputs``).
        **options: the method's options (see ``blackbox-xai methods``).
    """
    if seed is not None and not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**63):
        raise BlackboxError(f"--seed {seed!r}: use an integer >= 0")
    spec = get_method(method)
    opts = spec.validate(options)
    x = as_single_input(x)
    if spec.batch_fn is not None and isinstance(model, Model) \
            and not isinstance(target, (Detection, Region)):
        # one pass: the batched form finds the top-1 in the graph, no forward pass first
        return explain_batch(model, [x], method, targets=[target], seeds=[seed], labels=labels,
                             inputs=[inputs], **options)[0]
    return explain_unbatched(model, x, method, target=target, seed=seed, progress=progress,
                             labels=labels, inputs=inputs, decoder=decoder, **opts)


def explain_unbatched(model: Model | QueryFn, x: npt.NDArray[np.float32], method: str, *,
                      target: int | Detection | Region | None, seed: int | None,
                      progress: bool = False, labels: Sequence[str] | None = None,
                      inputs: dict[str, Any] | None = None, decoder: str | Decoder | None = None,
                      **options: Any) -> Explanation:
    """:func:`explain` without the batched form: a forward pass for the scores and the top-1,
    then the method's own function (the reference its batched form is tested against)."""
    spec = get_method(method)
    opts = spec.validate(options)
    x = as_single_input(x)
    real_model = model if isinstance(model, Model) else None
    described = real_model
    scorer: DetectionScore | DetectionRawScore | RegionScore | None = None
    query_fn: QueryFn = model
    if isinstance(target, Region):
        scorer = query_fn = RegionScore(model, target, x)
        if not _explains_detections(spec):  # needs a model of its own: the linear region view
            if real_model is None:
                raise BlackboxError(f"method {method!r} explains a region through the model's "
                                    "graph: pass a Model from load_model(path, task='segment')")
            query_fn = real_model = real_model.region_view(scorer.weights)
    elif isinstance(target, Detection):
        if _explains_detections(spec):
            scorer = query_fn = DetectionScore(Detector(model, decoder), target)
        else:  # gradient, CAM: the raw head entry at the matched anchor, as a one-class model
            scorer = DetectionRawScore(Detector(model, decoder), target, x)
            query_fn = real_model = scorer.view(x if spec.family == "cam" else None)
    if spec.requires_graph and real_model is None:
        raise BlackboxError(f"method {method!r} rewrites the ONNX graph: pass a Model from load_model()")
    t0 = time.perf_counter()
    with progress_bar(progress, desc=method) as bar:
        query = CountingQuery(query_fn, bar)
        scores0 = query(x[None])[0]
        tgt = resolve_target(scores0, None if scorer is not None else target)
        ctx = Context(rng=np.random.default_rng(seed), scores=scores0,
                      model=None if query_fn is scorer else real_model, progress=bar)
        before = real_model.n_queries if real_model is not None else 0
        try:
            with one_blas_thread():
                attribution = spec.fn(query, x, tgt, ctx=ctx, **opts)
        except (UnsupportedOpError, GraphUnavailableError) as e:
            still = alternatives(without_graph=isinstance(e, GraphUnavailableError))
            raise type(e)(f"{e}; these methods still work: {still}") from None
    seconds = time.perf_counter() - t0
    # A Model counts every pass, including those of rewritten graphs; a plain function only
    # sees what goes through `query`.
    n_queries = 1 + (real_model.n_queries - before if real_model is not None else query.n - 1)
    amap = np.asarray(attribution.map, dtype=np.float32)
    if amap.shape != x.shape[1:]:
        raise RuntimeError(f"{method} returned a map of shape {amap.shape}, expected {x.shape[1:]}")
    if not np.isfinite(amap).all():
        raise InternalError(f"{method} returned a map with {int((~np.isfinite(amap)).sum())} NaN "
                            "or infinite values (a bug in blackbox-xai: please report it)")
    _warn_if_zero(amap, spec)
    extras, label = attribution.extras, labels[tgt] if labels is not None else None
    if scorer is not None:
        kind = "region" if isinstance(scorer, RegionScore) else "detection"
        extras = {**extras, kind: scorer.describe()}
        k = scorer.target.label
        label = labels[k] if labels is not None and k < len(labels) else None
    return Explanation(
        map=amap, method=method, target=tgt if scorer is None else scorer.target.label,
        score=float(scores0[tgt]), n_queries=n_queries, seconds=seconds, seed=seed, options=opts,
        extras=extras, label=label,
        model=described.describe() if described is not None else None, inputs=inputs,
    )


def explain_batch(model: Model, xs: Sequence[npt.ArrayLike], method: str, *,
                  targets: Sequence[int | None], seeds: Sequence[int | None],
                  labels: Sequence[str] | None = None,
                  inputs: Sequence[dict[str, Any] | None] | None = None,
                  **options: Any) -> list[Explanation]:
    """Explain several inputs with ``method``, each for its class ``targets[i]`` (None: top-1)
    with its seed ``seeds[i]``: :func:`explain` of each, batched across the inputs where the
    method has a batched form (``MethodSpec.batch_fn``: the single-pass CAM and gradient
    methods) and the inputs share a shape.

    Batched: the method's passes run on all inputs at once, and their own scores give the
    top-1 targets (no forward pass first: a gradient method's top-1 seed is made in the
    backward graph). Each explanation has the target, score and map :func:`explain` gives
    (equal up to the rounding of batched kernels), the passes per input (one where
    :func:`explain` counts two: its forward pass and the method's) and an equal share of the
    batch's time. Otherwise :func:`explain` runs per input.
    """
    spec = get_method(method)
    info = list(inputs) if inputs is not None else [None] * len(xs)
    if not (len(xs) == len(targets) == len(seeds) == len(info)):
        raise BlackboxError(f"explain_batch: {len(xs)} inputs, {len(targets)} targets, "
                            f"{len(seeds)} seeds and {len(info)} inputs records: give one each")
    arrays = [as_single_input(x) for x in xs]
    if spec.batch_fn is None or not isinstance(model, Model) or not arrays \
            or len({a.shape for a in arrays}) > 1:
        return [explain(model, x, method, target=t, seed=s, labels=labels, inputs=i, **options)
                for x, t, s, i in zip(arrays, targets, seeds, info)]
    for s in seeds:
        if s is not None and not (isinstance(s, (int, np.integer)) and 0 <= s < 2**63):
            raise BlackboxError(f"--seed {s!r}: use an integer >= 0")
    k = np.zeros(model.num_classes, np.float32)
    wanted = [None if t is None else resolve_target(k, t) for t in targets]  # checked first
    opts = spec.validate(options)
    xb = np.stack(arrays)
    ctx = Context(rng=np.random.default_rng(0), scores=np.zeros((0,), np.float32), model=model)
    t0, before = time.perf_counter(), model.n_queries
    try:
        with one_blas_thread():
            scores, tgts, attributions = spec.batch_fn(xb, wanted, ctx=ctx, **opts)
    except (UnsupportedOpError, GraphUnavailableError) as e:
        still = alternatives(without_graph=isinstance(e, GraphUnavailableError))
        raise type(e)(f"{e}; these methods still work: {still}") from None
    seconds = (time.perf_counter() - t0) / len(xb)
    n_queries = (model.n_queries - before) // len(xb)
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        raise BlackboxError(f"the model returned NaN or infinite scores for {int(bad.sum())} "
                            f"of {len(xb)} inputs: its explanation would be meaningless")
    described = model.describe()
    out = []
    for x, a, tgt, s0, seed, record in zip(xb, attributions, tgts, scores, seeds, info):
        amap = np.asarray(a.map, dtype=np.float32)
        if amap.shape != x.shape[1:]:
            raise RuntimeError(f"{method} returned a map of shape {amap.shape}, expected "
                               f"{x.shape[1:]}")
        if not np.isfinite(amap).all():
            raise InternalError(f"{method} returned a map with {int((~np.isfinite(amap)).sum())} "
                                "NaN or infinite values (a bug in blackbox-xai: please report it)")
        _warn_if_zero(amap, spec)
        out.append(Explanation(
            map=amap, method=method, target=tgt, score=float(s0[tgt]), n_queries=n_queries,
            seconds=seconds, seed=seed, options=opts, extras=a.extras,
            label=labels[tgt] if labels is not None else None, model=described, inputs=record))
    return out


def _warn_if_zero(amap: npt.NDArray[np.float32], spec: MethodSpec) -> None:
    """Say so when a map is 0 everywhere: the method's true answer, but it shows nothing."""
    if not amap.any():
        log.warning("%s: the map is 0 everywhere (nothing passed the method's ReLU or clipping), "
                    "so it shows no evidence for this target; try another method%s", spec.name,
                    " or --layer" if spec.family == "cam" else "")
