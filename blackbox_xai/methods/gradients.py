"""Gradient maps from the exported backward graph: ``g = d f_c / d x``, batched in one session."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from ..errors import BlackboxError
from ..gradient_check import is_quantized
from ..model import one_hot
from ..perturb import Baseline, chunk_size_for, chunked, make_baseline
from ..registry import Attribution, Context, Range, register, register_batch
from ..runtime import batch_limit

log = logging.getLogger(__name__)


def _grad(ctx: Context, xs: npt.NDArray[np.float32], target: int
          ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scores (N, K) and d f_target / dx (N, C, H, W) for a batch of inputs."""
    ctx.set_total(len(xs))
    return ctx.model.input_gradient(xs, one_hot(len(xs), ctx.model.num_classes, target),
                          progress=ctx.progress)


@register("saliency", family="gradient", reference="Simonyan et al. 2014, arXiv:1312.6034",
          requires_graph=True, needs_gradient=True)
def saliency(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context) -> Attribution:
    """Vanilla gradient: M = max over channels of |d f_c / d x|. One forward+backward pass."""
    _, g = _grad(ctx, x[None], target)
    return Attribution(np.abs(g[0]).max(axis=0), {"gradient": g[0]})


@register("gradient-x-input", family="gradient", reference="Shrikumar et al. 2016, "
          "arXiv:1605.01713", requires_graph=True, needs_gradient=True)
def gradient_x_input(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context) -> Attribution:
    """Gradient x input: M = sum over channels of (d f_c / d x) * x. One pass."""
    _, g = _grad(ctx, x[None], target)
    return Attribution((g[0] * x).sum(axis=0), {"attributions": g[0] * x})


#: inputs of :func:`batch_gradients`' graph: the given seed rows, and 1 where a row's target
#: is its top-1 class instead (then its seed is one-hot(argmax scores), found in the graph)
SEED_GIVEN, USE_TOP1 = "seed_given", "use_top1"


def _top1_backward(proto: onnx.ModelProto, scores: str, k: int) -> onnx.ModelProto:
    """The backward graph ``proto`` (input ``seed``) with ``seed = seed_given + use_top1 *
    one_hot(argmax(scores))`` computed in the graph; the backward nodes come after every
    forward node, so the new nodes go before the first reader of ``seed``."""
    g = proto.graph
    seed = next(i for i in g.input if i.name == "seed")
    elem = seed.type.tensor_type.elem_type
    seed.name = SEED_GIVEN
    g.input.append(helper.make_tensor_value_info(USE_TOP1, elem, ["N", 1]))
    g.initializer.extend([numpy_helper.from_array(np.array([k], np.int64), "top1_depth"),
                          helper.make_tensor("top1_values", elem, [2], [0.0, 1.0])])
    nodes = [helper.make_node("ArgMax", [scores], ["top1_index"], axis=-1, keepdims=0),
             helper.make_node("OneHot", ["top1_index", "top1_depth", "top1_values"],
                              ["top1_one_hot"], axis=-1),
             helper.make_node("Mul", ["top1_one_hot", USE_TOP1], ["top1_seed"]),
             helper.make_node("Add", [SEED_GIVEN, "top1_seed"], ["seed"])]
    first = next(i for i, n in enumerate(g.node) if "seed" in n.input)
    for offset, n in enumerate(nodes):
        g.node.insert(first + offset, n)
    return proto


#: the most images of one call that go through a backward graph in one run (probed batch
#: sizes aside): dataset runs pass 16 a call
BACKWARD_ROWS_PER_RUN = 16


def backward_rows_per_run(model, n: int) -> int | None:
    """Rows per run of a batch of ``n`` images through a backward graph: all of them (up to
    :data:`BACKWARD_ROWS_PER_RUN` and the memory cap of :func:`~blackbox_xai.runtime.batch_limit`)
    when the batch size is probed, else None (the user's ``batch_size``).

    The probe times the forward graph, whose throughput on a CPU is nearly flat in the batch
    size, so it often settles at 1; a backward graph is not flat: Grad-CAM's on
    EfficientNet-Lite0 ran 107 images/s at 16 a run against 93 at 1 (2 cores).
    """
    if model.batch_size_option != "auto":
        return None
    item = int(np.prod(model.example_chw())) * 4
    return max(1, min(n, BACKWARD_ROWS_PER_RUN, batch_limit(model.provider, item)))


def batch_gradients(model, xs: npt.NDArray[np.float32], targets: list[int | None],
                    wrt: list[str]) -> tuple[npt.NDArray[np.float32], list[int],
                                             list[npt.NDArray[np.float32]],
                                             list[npt.NDArray[np.float32]]]:
    """Scores (N, K), each row's target (its top-1 where ``targets`` has None), and the
    forward values and ``d score_target / d t`` of the ``wrt`` tensors (as laid out in the
    graph; the model's input in NCHW), in one batch of backward-graph passes: the top-1 seeds
    are made in the graph from the pass's own scores, so no forward pass comes first.
    """
    out_name = model.scores_output()
    size = model.dynamic_size(xs)
    key = ("backward-top1", model.score, tuple(wrt))
    session = model.sized(
        key, size,
        lambda: _top1_backward(model.backward_graph(wrt, size=size), out_name, model.num_classes))
    n, given = len(xs), [t is not None for t in targets]
    seed = np.zeros((n, model.num_classes), np.float32)
    seed[np.flatnonzero(given), [t for t in targets if t is not None]] = 1
    use_top1 = (~np.array(given, bool)).astype(np.float32)[:, None]
    values = [w for w in wrt if w != model.input.name]
    outs = model.run_batched(session, {model.input.name: xs, SEED_GIVEN: seed,
                                       USE_TOP1: use_top1},
                             [out_name, *values, *(f"{w}_grad" for w in wrt)],
                             rows_per_run=backward_rows_per_run(model, n))
    scores = outs[0].reshape(n, -1)
    forward = {**dict(zip(values, outs[1:1 + len(values)])), model.input.name: xs}
    grads = outs[1 + len(values):]
    if model.input.layout == "NHWC":
        grads = [g.transpose(0, 3, 1, 2) if w == model.input.name else g
                 for w, g in zip(wrt, grads)]
    resolved = [int(t) if t is not None else int(np.argmax(s)) for t, s in zip(targets, scores)]
    seeds, key = np.zeros((n, model.num_classes), np.float32), (*key, size)
    seeds[np.arange(n), resolved] = 1  # each row's own target, top-1 resolved
    if model.input.name in wrt and n:
        model.check_input_gradient(key, xs, seeds, grads[wrt.index(model.input.name)])
    elif wrt and n:  # a layer, or the first of several (gradient rollout's blocks)
        def run_at(batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
            zeros = np.zeros((len(batch), model.num_classes), np.float32)
            return model.run_batched(session, {model.input.name: batch, USE_TOP1: zeros[:, :1],
                                               SEED_GIVEN: zeros}, [out_name, wrt[0]])

        model.check_layer_gradient(key, wrt[0], run_at, xs, seeds, grads[0])
    return scores, resolved, [forward[w] for w in wrt], grads


@register_batch("saliency")
def _saliency_batch(xs: npt.NDArray[np.float32], targets: list[int | None], *, ctx: Context
                    ) -> tuple[npt.NDArray[np.float32], list[int], list[Attribution]]:
    scores, resolved, _, (g,) = batch_gradients(ctx.model, xs, targets, [ctx.model.input.name])
    return scores, resolved, [Attribution(np.abs(gi).max(axis=0), {"gradient": gi}) for gi in g]


@register_batch("gradient-x-input")
def _gradient_x_input_batch(xs: npt.NDArray[np.float32], targets: list[int | None], *,
                            ctx: Context
                            ) -> tuple[npt.NDArray[np.float32], list[int], list[Attribution]]:
    scores, resolved, _, (g,) = batch_gradients(ctx.model, xs, targets, [ctx.model.input.name])
    return scores, resolved, [Attribution((gi * x).sum(axis=0), {"attributions": gi * x})
                              for gi, x in zip(g, xs)]


Rule = Literal["gauss-legendre", "midpoint", "trapezoid"]


def quadrature(rule: Rule, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Nodes and weights of an ``n``-point rule for the integral over [0, 1].

    ``gauss-legendre``: the roots t_k of the Legendre polynomial P_n mapped by (t + 1) / 2, and
    half their weights; exact for polynomials of degree 2n - 1, error O(1/n^(2r)) for an
    integrand with r smooth derivatives. ``midpoint``: (k + 1/2) / n, weights 1/n, error
    (1 / (24 n^2)) (g'(1) - g'(0)) + O(1/n^4). ``trapezoid``: k / (n - 1), weights 1/(n - 1)
    halved at both ends (n >= 2), error -(1 / (12 (n-1)^2)) (g'(1) - g'(0)) + O(1/n^4).
    """
    if rule == "gauss-legendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return (t + 1) / 2, w / 2
    if rule == "midpoint":
        return (np.arange(n) + 0.5) / n, np.full(n, 1 / n)
    if n < 2:
        raise BlackboxError(f"--steps {n}: the trapezoid rule needs at least 2 points")
    w = np.full(n, 1 / (n - 1))
    w[[0, -1]] /= 2
    return np.linspace(0, 1, n), w


def path_integral(ctx: Context, x: npt.NDArray[np.float32], base: npt.NDArray[np.float32],
                  target: int, alphas: npt.NDArray[np.float64],
                  weights: npt.NDArray[np.float64], chunk: int
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """sum_k w_k d f_c/dx (x' + alpha_k (x - x')) (C, H, W) and the scores (n, K) at the nodes.

    The path points are made and differentiated ``chunk`` at a time and their gradients summed
    in float64, so memory stays at one chunk whatever the number of steps.
    """
    diff = x - base
    total = np.zeros(x.shape)
    scores = []
    ctx.set_total(len(alphas))
    for sl in chunked(len(alphas), chunk):
        a = alphas[sl].astype(np.float32)[:, None, None, None]
        s, g = ctx.model.input_gradient(base[None] + a * diff[None],
                                        one_hot(len(a), ctx.model.num_classes, target),
                                        progress=ctx.progress)
        total += np.tensordot(weights[sl], g, axes=1)
        scores.append(s)
    return total, np.concatenate(scores)


_WHY_NOT_MET = ("a quantized model's straight-through gradient is not the derivative of its "
                "rounded scores, so no step count closes the gap (not refined)")


@register("integrated-gradients", family="gradient", reference="Sundararajan et al. 2017, "
          "arXiv:1703.01365", requires_graph=True, needs_gradient=True,
          fast={"steps": 16, "max_steps": 64})
def integrated_gradients(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
                         steps: Annotated[int, Range(1)] = 50, baseline: Baseline = "zero",
                         rule: Rule = "gauss-legendre",
                         tolerance: Annotated[float, Range(0)] = 0.01,
                         max_steps: Annotated[int, Range(1)] = 400) -> Attribution:
    """IG = (x - x') * int_0^1 d f_c/dx (x' + a (x - x')) da, Gauss-Legendre to a tolerance.

    The integral is a quadrature sum_k w_k g(alpha_k) over ``steps`` nodes (see
    :func:`quadrature`; Gauss-Legendre, as captum's default, converges far faster than the
    midpoint rule of the paper on smooth paths). Completeness (Sundararajan et al., Prop. 1):
    the attributions sum to f_c(x) - f_c(x'); the quadrature error leaves a gap
    sum(IG) - (f_c(x) - f_c(x')), reported in ``extras["completeness_gap"]``. With a
    ``tolerance``, the step count is doubled (a fresh rule each time, no node reused) until
    |gap| <= tolerance * |f_c(x) - f_c(x')| or the next count would pass ``max_steps``; a gap
    left above the tolerance is logged. A quantized graph is not refined: its straight-through
    gradient is a surrogate, whose integral need not match the rounded scores' difference.
    Queries: the steps of every round plus one for the baseline (the trapezoid rule's first
    node is the baseline). extras: attributions (C, H, W), completeness_gap,
    score_difference, steps (of the last round), tolerance_met (None without a tolerance).

    Args:
        steps: quadrature nodes on the straight path from the baseline to the input (the first
            round's count).
        baseline: the reference input x': zero, mean, blur, or a number.
        rule: quadrature rule: gauss-legendre, midpoint (the paper's Riemann sum) or trapezoid.
        tolerance: relative completeness gap to reach by doubling the steps; 0: no refinement,
            exactly ``steps`` steps.
        max_steps: no refinement round goes past this many steps.
    """
    base = make_baseline(x, baseline)
    chunk = chunk_size_for(query)
    n = int(steps)
    alphas, weights = quadrature(rule, n)
    if alphas[0] != 0:  # the baseline's score closes the gap: a node of weight 0 at alpha 0
        alphas, weights = np.append(alphas, 0.0), np.append(weights, 0.0)
    integral, scores = path_integral(ctx, x, base, target, alphas, weights, chunk)
    delta = float(ctx.scores[target] - scores[np.argmin(alphas), target])
    surrogate = is_quantized(ctx.model.graph())
    while True:
        attr = (x - base) * integral
        gap = float(attr.sum()) - delta
        met = abs(gap) <= tolerance * abs(delta)
        if tolerance == 0 or met or surrogate or 2 * n > max_steps:
            break
        n *= 2
        integral, _ = path_integral(ctx, x, base, target, *quadrature(rule, n), chunk)
    if tolerance and not met:
        share = f"{100 * abs(gap / delta):.1f}%" if delta else f"{gap:.3g} (all)"
        log.warning("integrated-gradients: completeness gap %s of the score difference after %d "
                    "steps, above --tolerance %g: %s", share, n, tolerance,
                    _WHY_NOT_MET if surrogate else f"--max-steps {max_steps} stopped the refinement")
    return Attribution(attr.sum(axis=0).astype(np.float32), {
        "attributions": attr.astype(np.float32), "completeness_gap": gap,
        "score_difference": delta, "steps": n, "tolerance_met": met if tolerance else None})


@register("smoothgrad", family="gradient", reference="Smilkov et al. 2017, arXiv:1706.03825",
          stochastic=True, requires_graph=True, needs_gradient=True, fast={"n_samples": 8})
def smoothgrad(query, x: npt.NDArray[np.float32], target: int, *, ctx: Context,
               n_samples: Annotated[int, Range(1)] = 25, sigma: Annotated[float, Range(0)] = 0.15
               ) -> Attribution:
    """SmoothGrad: mean over noisy copies x + N(0, (sigma (max x - min x))^2) of the saliency map.

    Averages the absolute gradients (max over channels), as the paper does for ImageNet
    visualisations. ``n_samples`` passes in one batch.

    Args:
        n_samples: noisy copies averaged.
        sigma: noise standard deviation, as a fraction of the input's value range.
    """
    noise = ctx.rng.standard_normal((n_samples, *x.shape), dtype=np.float32)
    noisy = x[None] + noise * np.float32(sigma * float(x.max() - x.min()))
    _, g = _grad(ctx, noisy, target)
    return Attribution(np.abs(g).max(axis=1).mean(axis=0), {"n_samples": n_samples})
