"""``explain()``: the one place that resolves the target, seeds, times and counts a method run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import BlackboxError, GraphUnavailableError, InternalError
from .explanation import Explanation
from .graph.vjp_rules import UnsupportedOpError
from .methods import alternatives, get_method
from .model import Model
from .progress import progress_bar
from .registry import Context

QueryFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


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


def explain(model: Model | QueryFn, x: npt.ArrayLike, method: str, *, target: int | None = None,
            seed: int | None = 0, progress: bool = False, labels: Sequence[str] | None = None,
            inputs: dict[str, Any] | None = None, **options: Any) -> Explanation:
    """Explain ``model``'s score for class ``target`` (default: top-1) on one input ``x``.

    Args:
        model: a :class:`Model` or any function (N, C, H, W) -> (N, K).
        x: one preprocessed input, (C, H, W) or (1, C, H, W), NCHW float32.
        method: a registered method name (``blackbox_xai.METHODS``).
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
    real_model = model if isinstance(model, Model) else None
    if spec.requires_graph and real_model is None:
        raise BlackboxError(f"method {method!r} rewrites the ONNX graph: pass a Model from load_model()")
    t0 = time.perf_counter()
    with progress_bar(progress, desc=method) as bar:
        query = CountingQuery(model, bar)
        scores0 = query(x[None])[0]
        tgt = resolve_target(scores0, target)
        ctx = Context(rng=np.random.default_rng(seed), scores=scores0, model=real_model,
                      progress=bar)
        before = real_model.n_queries if real_model is not None else 0
        try:
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
    return Explanation(
        map=amap, method=method, target=tgt, score=float(scores0[tgt]),
        n_queries=n_queries, seconds=seconds, seed=seed, options=opts,
        extras=attribution.extras, label=labels[tgt] if labels is not None else None,
        model=real_model.describe() if real_model is not None else None, inputs=inputs,
    )
