"""A backward graph checked against the model it differentiates, once, at the user's input.

Two checks: along the gradient's steepest direction (:func:`check_steepest`, below: the input
gradient, or a layer's gradient through the layer's head), and, where every path from the input
to the score crosses a layer, by the layer's own change under a scaled input
(:func:`check_layer_gradient`: the CAM family's, with no second session).

The input gradient g = d f / dx of f = sum_k seed_k * score_k is checked along its own steepest
direction v = g / |g|: the central difference (f(x + e v) - f(x - e v)) / 2e must equal the
directional derivative g . v = |g|. A wrong gradient g' is caught whatever its error: the
difference then estimates g . g' / |g'|, which equals |g'| only when g' lies on the sphere with
diameter [0, g]. Along the steepest direction the derivative is as large as it gets, so kinks
(ReLU, max pooling) and float32 rounding are small against it: on eleven real float32 models
the error was at most 2.7% at e = 1e-4 |x| (0.01-0.8 at 1e-2 |x|, where kinks dominate).

Steps e = 1e-4, 1e-5 and 1e-3 of |x| are tried in turn (none smaller than one f did not
resolve); the check passes at the first that agrees within :data:`TOLERANCE`. A step counts
only when it moves f by :data:`RESOLUTION` of max(|f|, 1) and f is linear over it (the forward
and backward differences f(x + e v) - f(x) and f(x) - f(x - e v) keep the ratio the gradient
predicts, within :data:`TOLERANCE`): a saturated probability (gradient ~1e-7, curvature large)
or a kink inside the step says nothing either way. With no such step the check
is inconclusive (logged, never refused). Graphs with fp16 or bf16 tensors are not checked:
their forward cannot resolve a small step. A quantized graph's scores are a staircase: its
input gradient is checked on its frozen surrogate (:mod:`blackbox_xai.graph.surrogate`, the
function the straight-through gradient is of), its layer gradients not at all.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto

from .errors import InternalError

log = logging.getLogger(__name__)

STEPS = (1e-4, 1e-5, 1e-3)  # fractions of |x|
TOLERANCE = 0.1  # relative error of the central difference against |g|
#: |f(x + e v) - f(x - e v)| must reach this fraction of max(|f|, 1): ~800 float32 roundings
#: of f, or of the O(1) values a small score is computed from (a sigmoid's 1 - p)
RESOLUTION = 1e-4
#: the end of every refusal: whose fault it is, and what still works
_REPORT = ("a gradient rule is wrong for this graph (please report it); the black-box methods "
           "(occlusion, rise, lime, shapley) need no gradient")
_LOW_PRECISION = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
_QUANTIZATION = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class GradientCheck:
    """What the check measured: the rate of change the gradient predicts (|g| along the
    steepest direction), the central difference at ``step`` (a fraction of |x|) and their
    relative error; ``skipped`` says why nothing was measured."""

    directional_derivative: float
    finite_difference: float | None = None
    relative_error: float | None = None
    step: float | None = None
    skipped: str | None = None


def is_quantized(proto: onnx.ModelProto) -> bool:
    """Whether the graph quantizes: its gradient is then the straight-through surrogate's, not
    the derivative of its rounded scores (which is 0 almost everywhere)."""
    return any(n.op_type in _QUANTIZATION for n in proto.graph.node)


def why_unchecked(proto: onnx.ModelProto, *, surrogate: bool = False) -> str | None:
    """Why a graph's gradient cannot be checked by finite differences, or None. ``surrogate``:
    a quantized graph will be checked on its frozen surrogate (input gradients), so its
    quantization is no reason; low precision always is."""
    g = proto.graph
    low = any(t.data_type in _LOW_PRECISION for t in g.initializer) or any(
        a.name == "to" and a.i in _LOW_PRECISION for n in g.node if n.op_type == "Cast"
        for a in n.attribute)
    if low:
        return "an fp16 / bf16 graph (its forward cannot resolve a small step)"
    if is_quantized(proto) and not surrogate:
        return "a quantized graph (straight-through gradients)"
    return None


def check_steepest(f: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
                   x: npt.NDArray[np.float32], grad: npt.NDArray[np.float32],
                   what: str = "input gradient") -> GradientCheck:
    """Check ``grad`` = d f / dx at one point ``x`` (an input (C, H, W), or a layer's value
    with ``f`` its head) along g's steepest direction; ``f`` maps a batch of points to the
    explained scalar of each (n,). Raises :class:`InternalError` when every step disagrees by
    more than :data:`TOLERANCE` (a gradient rule is wrong for this graph)."""
    norm = _norm_or_refuse(grad)
    if norm == 0.0:
        return GradientCheck(0.0, skipped="the gradient is 0")
    v = (grad.astype(np.float64) / norm).astype(np.float32)
    size = float(np.linalg.norm(x.astype(np.float64)))
    f0 = float(f(x[None])[0])

    def trial(step: float) -> _Trial:
        e = step * size
        up, down = (float(s) for s in f(np.stack([x + e * v, x - e * v])))
        return _Trial(step, 2 * e, f0, up - f0, f0 - down, e * norm, e * norm)

    return _judge(what, norm, trial)


def check_layer_gradient(run: Callable[[npt.NDArray[np.float32]],
                                       tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]],
                         x: npt.NDArray[np.float32], grad: npt.NDArray[np.float32]
                         ) -> GradientCheck:
    """Check ``grad`` = d f / dA of a layer A that every path from the input to f crosses, at
    one input ``x`` (C, H, W); ``run`` maps a batch (n, C, H, W) to f (n,) and A (n, ...).

    The input is scaled, x (1 +- e), and A's change is measured rather than linearised, so
    f(x (1 + e)) - f(x (1 - e)) must equal g . (A(x (1 + e)) - A(x (1 - e))) up to the head's
    own curvature, whatever the layers before the cut do (only the layers after it, which g
    crosses, are judged). Same steps, guards and tolerance as :func:`check_steepest`.
    """
    norm = _norm_or_refuse(grad)
    if norm == 0.0:
        return GradientCheck(0.0, skipped="the gradient is 0")
    g = grad.astype(np.float64)
    scores, acts = run(x[None])
    f0, a0 = float(scores[0]), acts[0].astype(np.float64)

    def trial(step: float) -> _Trial:
        (up, down), (a_up, a_down) = run(np.stack([x * (1 + step), x * (1 - step)]))
        ahead, behind = (float((g * d).sum()) for d in (a_up - a0, a0 - a_down))
        return _Trial(step, 2 * step, f0, float(up) - f0, f0 - float(down), ahead, behind)

    return _judge("layer gradient", norm, trial)


@dataclass(frozen=True)
class _Trial:
    """One step: the changes of f measured ahead and behind x, and those the gradient predicts
    (``width``: the step's length, to report rates)."""

    step: float
    width: float
    f0: float
    ahead: float
    behind: float
    predicted_ahead: float
    predicted_behind: float


def _judge(what: str, norm: float, trial: Callable[[float], _Trial]) -> GradientCheck:
    """Try the :data:`STEPS` (none smaller than one f could not resolve); pass at the first
    conclusive trial within :data:`TOLERANCE`, refuse when every conclusive one is outside it,
    inconclusive without one (see the module docstring)."""
    tried: list[GradientCheck] = []
    unresolved = 0.0
    for step in STEPS:
        if step <= unresolved:
            continue
        t = trial(step)
        measured, predicted = t.ahead + t.behind, t.predicted_ahead + t.predicted_behind
        if abs(measured) < RESOLUTION * max(abs(t.f0), 1.0):
            unresolved = max(unresolved, step)  # below float32's resolution of f
            continue
        ratio_gap = abs(t.ahead * t.predicted_behind - t.behind * t.predicted_ahead)
        ratio_size = abs(t.ahead * t.predicted_behind) + abs(t.behind * t.predicted_ahead)
        if ratio_gap > TOLERANCE * ratio_size:
            continue  # f is not linear over the step
        error = abs(measured - predicted) / abs(predicted) if predicted else np.inf
        result = GradientCheck(predicted / t.width, measured / t.width, error, t.step)
        if error <= TOLERANCE:
            log.info("%s checked: predicted rate %.4g, central difference %.4g at %g |x|",
                     what, result.directional_derivative, result.finite_difference, t.step)
            return result
        tried.append(result)
    if not tried:
        why = "no step was both above float32's resolution of the score and linear"
        log.info("%s not checked: %s", what, why)
        return GradientCheck(norm, skipped=why)
    best = min(tried, key=lambda r: typing.cast(float, r.relative_error))
    raise InternalError(
        f"the backward graph's {what} disagrees with the model: over a step of the input the "
        f"score changes at {best.finite_difference:.4g} per unit, the gradient says "
        f"{best.directional_derivative:.4g} (off by {best.relative_error:.0%} at the best of "
        f"{len(tried)} steps): {_REPORT}")


def _norm_or_refuse(grad: npt.NDArray[np.float32]) -> float:
    """|grad|, refusing a gradient that is not finite."""
    norm = float(np.linalg.norm(grad.astype(np.float64)))
    if not np.isfinite(norm):
        raise InternalError(f"the backward graph's gradient is not finite ({norm}): {_REPORT}")
    return norm
