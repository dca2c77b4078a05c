"""The CAM family on a chosen layer's activation ``A`` (k, h, w) and gradient ``g = dy_c/dA``.

Each method only supplies its channel weights (or its own combination); the shared code gets
``A`` and ``g`` from one forward+backward pass of the exported backward graph, or ``A`` alone
from the model with the layer exposed (the gradient-free Score-CAM, Ablation-CAM, Eigen-CAM).
The layer's layout comes from the graph (:func:`~blackbox_xai.graph.inspect.feature_map`): NHWC
activations and gradients are transposed to (k, h, w) before any weight is computed, and back
where a method feeds the graph. Maps are ReLU'd where the paper says so and upsampled bilinearly
to the input size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from ..errors import BlackboxError
from ..graph.gradients import layer_activation, layer_gradient, scores_graph, scores_output
from ..graph.inspect import CandidateLayer, Layout, reduce_layout
from ..perturb import chunk_size_for, chunked, scores_for_masks
from ..registry import Attribution, Context, register
from ..resample import upsample

Array = npt.NDArray[np.float32]


def resolve_layer(ctx: Context, layer: str | None) -> CandidateLayer:
    """The user's layer, checked to be a spatial feature map of known layout (a one-line error
    listing candidates otherwise), or the last such map feeding global pooling."""
    from ..graph.inspect import feature_map

    if ctx.model is None:
        raise BlackboxError("CAM methods need a Model from load_model(), not a plain function")
    key = f"layer:{layer}"
    if key not in ctx.model.memo:  # graph inspection runs shape inference: once per model
        ctx.model.memo[key] = feature_map(ctx.model.proto, layer)
    return ctx.model.memo[key]


def channels_first(a: Array, layout: Layout) -> Array:
    """A batch of activations or gradients (N, ...) in ``layout`` as (N, k, h, w)."""
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def channels_back(a: Array, layout: Layout) -> Array:
    """The inverse of :func:`channels_first`: (N, k, h, w) back to the layer's ``layout``."""
    return a.transpose(0, 2, 3, 1) if layout == "NHWC" else a


def _activation_and_gradient(ctx: Context, x: Array, target: int, layer: str | None
                             ) -> tuple[CandidateLayer, Array, Array]:
    """The layer, its activation A and dy_target/dA, both (k, h, w)."""
    lay = resolve_layer(ctx, layer)
    _, act, grad = layer_gradient(ctx.model, x[None], target, lay.name, ctx.progress)
    return lay, channels_first(act, lay.layout)[0], channels_first(grad, lay.layout)[0]


def _activation(ctx: Context, x: Array, layer: str | None) -> tuple[CandidateLayer, Array]:
    """The layer and its activation A (k, h, w), from the model with the layer exposed."""
    lay = resolve_layer(ctx, layer)
    _, act = layer_activation(ctx.model, x[None], lay.name)
    return lay, channels_first(act, lay.layout)[0]


def _result(x: Array, cam: Array, layer: CandidateLayer, relu: bool = True,
            **extras) -> Attribution:
    cam = np.maximum(cam, 0) if relu else cam
    return Attribution(upsample(cam, x.shape[1:]),
                       {"layer": layer.name, "layout": layer.layout, "cam": cam, **extras})


def _weighted_sum(weights: Array, act: Array) -> Array:
    return np.tensordot(weights, act, axes=1)


def gradcampp_weights(act: Array, g1: Array, g2: Array, g3: Array) -> Array:
    """Grad-CAM++ channel weights: a = g^2 / (2 g^2 + sum_ab A g^3) (0 where g = 0),
    w_k = sum_ij a_kij ReLU(g_kij); g1, g2, g3 are the first derivative and its powers."""
    denom = 2 * g2 + (act * g3).sum(axis=(1, 2), keepdims=True)
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=(g2 != 0) & (denom != 0))
    return (alpha * np.maximum(g1, 0)).sum(axis=(1, 2))


@register("gradcam", family="cam", reference="Selvaraju et al. 2017, arXiv:1610.02391",
          requires_graph=True)
def gradcam(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """Grad-CAM: alpha_k = mean_ij g_kij, M = ReLU(sum_k alpha_k A_k). One forward+backward."""
    lay, act, g = _activation_and_gradient(ctx, x, target, layer)
    w = g.mean(axis=(1, 2))
    return _result(x, _weighted_sum(w, act), lay, weights=w)


@register("gradcampp", family="cam", reference="Chattopadhay et al. 2018, arXiv:1710.11063",
          requires_graph=True)
def gradcampp(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """Grad-CAM++: w_k = sum_ij a_kij ReLU(g_kij), a = g^2 / (2 g^2 + sum A g^3). One pass.

    The exponential-score closed form of the paper; see :func:`gradcampp_weights`.
    """
    lay, act, g = _activation_and_gradient(ctx, x, target, layer)
    w = gradcampp_weights(act, g, g**2, g**3)
    return _result(x, _weighted_sum(w, act), lay, weights=w)


def _parse_filters(filters: str | list[int] | None, k: int) -> npt.NDArray[np.bool_]:
    keep = np.ones(k, bool)
    if filters is None:
        return keep
    idx = [int(v) for v in filters.split(",")] if isinstance(filters, str) else list(filters)
    if not idx or min(idx) < 0 or max(idx) >= k:
        raise BlackboxError(f"filters={filters!r}: channel indices must be in 0..{k - 1}")
    keep[:] = False
    keep[idx] = True
    return keep


def _parse_neurons(neurons: str | tuple | list | None, act_hw: tuple[int, int],
                   input_hw: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Activation cells to keep: a box ``"x0,y0,x1,y1"`` or points ``"x,y;x,y"`` in input pixels."""
    h, w = act_hw
    keep = np.ones((h, w), bool)
    if neurons is None:
        return keep
    if isinstance(neurons, str):
        parts = [[float(v) for v in p.split(",")] for p in neurons.split(";") if p.strip()]
    else:
        parts = [list(p) for p in neurons] if np.ndim(neurons) == 2 else [list(neurons)]
    sy, sx = h / input_hw[0], w / input_hw[1]
    keep[:] = False
    for p in parts:
        if len(p) == 4:
            x0, y0, x1, y1 = p
            keep[int(y0 * sy):max(int(np.ceil(y1 * sy)), int(y0 * sy) + 1),
                 int(x0 * sx):max(int(np.ceil(x1 * sx)), int(x0 * sx) + 1)] = True
        elif len(p) == 2:
            keep[min(int(p[1] * sy), h - 1), min(int(p[0] * sx), w - 1)] = True
        else:
            raise BlackboxError(f"neurons={neurons!r}: give a box 'x0,y0,x1,y1' or points 'x,y;x,y'")
    return keep


@register("smooth-gradcampp", family="cam", reference="Omeiza et al. 2019, arXiv:1908.01224",
          stochastic=True, requires_graph=True)
def smooth_gradcampp(query, x: Array, target: int, *, ctx: Context, layer: str | None = None,
                     n_samples: int = 4, sigma: float = 0.3, filters: str | None = None,
                     neurons: str | None = None) -> Attribution:
    """Smooth Grad-CAM++: Grad-CAM++ with g, g^2, g^3 averaged over noisy copies of the input.

    Noise x + N(0, sigma^2), ``n_samples`` copies; A from the clean input (n_samples=0 is
    Grad-CAM++).

    ``filters`` ("3,17,42") keeps a subset of feature maps; ``neurons`` keeps a region
    ("x0,y0,x1,y1") or points ("x,y;x,y") in input pixels, zeroing activations outside, as the
    paper's API does. One batch of n_samples + 1 forward+backward passes.
    """
    lay = resolve_layer(ctx, layer)
    noisy = x[None] + sigma * ctx.rng.standard_normal((n_samples, *x.shape), dtype=np.float32)
    _, act, g = layer_gradient(ctx.model, np.concatenate([x[None], noisy]), target, lay.name,
                               ctx.progress)
    act, g = channels_first(act, lay.layout), channels_first(g, lay.layout)
    a, gs = act[0], (g[1:] if n_samples > 0 else g[:1])
    a = a * _parse_filters(filters, a.shape[0])[:, None, None]
    a = a * _parse_neurons(neurons, a.shape[1:], x.shape[1:])[None]
    w = gradcampp_weights(a, gs.mean(axis=0), (gs**2).mean(axis=0), (gs**3).mean(axis=0))
    return _result(x, _weighted_sum(w, a), lay, weights=w)


@register("xgradcam", family="cam", reference="Fu et al. 2020, arXiv:2008.02312",
          requires_graph=True)
def xgradcam(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """XGrad-CAM: w_k = sum_ij (A_kij / sum_ab A_kab) g_kij, M = ReLU(sum_k w_k A_k)."""
    lay, act, g = _activation_and_gradient(ctx, x, target, layer)
    total = act.sum(axis=(1, 2), keepdims=True)
    norm = np.divide(act, total, out=np.zeros_like(act), where=total != 0)
    w = (norm * g).sum(axis=(1, 2))
    return _result(x, _weighted_sum(w, act), lay, weights=w)


@register("layercam", family="cam", reference="Jiang et al. 2021, IEEE TIP 30:5875",
          requires_graph=True)
def layercam(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """Layer-CAM: M = ReLU(sum_k ReLU(g_kij) A_kij); spatial weights, so shallow layers work."""
    lay, act, g = _activation_and_gradient(ctx, x, target, layer)
    return _result(x, (np.maximum(g, 0) * act).sum(axis=0), lay)


def gap_linear_head(proto: onnx.ModelProto, layer: str, layout: Layout = "NCHW"
                    ) -> npt.NDArray[np.float32]:
    """W (K, k) of a head ``layer -> global average pooling -> [Flatten] -> Gemm/MatMul``.

    The pooling is GlobalAveragePool (NCHW) or a ReduceMean over the spatial axes of ``layout``
    ({2, 3} for NCHW, {1, 2} for NHWC); either way the pooled vector is indexed by channel.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name: i for i in proto.graph.initializer}
    node, path, pooled = None, [], False
    tensor = layer
    for _ in range(6):
        nxt = consumers.get(tensor, [])
        if len(nxt) != 1:
            break
        node = nxt[0]
        path.append(node.op_type)
        if node.op_type in ("Gemm", "MatMul"):
            break
        if (node.op_type == "GlobalAveragePool" and layout == "NCHW"
                or node.op_type == "ReduceMean" and reduce_layout(proto.graph, node) == layout):
            pooled = True
        elif node.op_type not in ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout"):
            break
        tensor = node.output[0]
    if node is None or node.op_type not in ("Gemm", "MatMul") or not pooled or node.input[1] not in inits:
        raise BlackboxError(
            f"CAM needs layer -> global average pooling -> linear; after {layer!r} ({layout}) the "
            f"graph has {' -> '.join(path) or 'nothing'}. Use gradcam (same map for such heads) "
            "instead")
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return w if node.op_type == "Gemm" and attrs.get("transB", 0) else w.T


@register("cam", family="cam", reference="Zhou et al. 2016, arXiv:1512.04150", requires_graph=True)
def cam(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """CAM: M = sum_k w_k^c A_k with w the linear layer after global average pooling (no ReLU)."""
    lay = resolve_layer(ctx, layer)
    w = gap_linear_head(ctx.model.proto, lay.name, lay.layout)[target]  # refuse before a pass
    _, act = _activation(ctx, x, layer)
    return _result(x, _weighted_sum(w, act), lay, relu=False, weights=w)


@register("scorecam", family="cam", reference="Wang et al. 2020, arXiv:1910.01279",
          requires_graph=True)
def scorecam(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """Score-CAM: M = ReLU(sum_k s_k A_k), s_k = softmax(f(x * H_k))_c. K queries, no gradient.

    H_k = min-max normalised upsample(A_k); the K masked inputs are scored in batches.
    """
    lay, act = _activation(ctx, x, layer)
    lo = act.min(axis=(1, 2), keepdims=True)
    span = act.max(axis=(1, 2), keepdims=True) - lo
    norm = np.divide(act - lo, span, out=np.zeros_like(act), where=span > 0)
    ctx.set_total(len(act))

    def masks() -> Iterator[Array]:
        for sl in chunked(len(act), chunk_size_for(query)):
            yield upsample(norm[sl], x.shape[1:])

    probs = ctx.model.probabilities(scores_for_masks(query, x, np.zeros_like(x), masks()))
    w = probs[:, target]
    return _result(x, _weighted_sum(w, act), lay, weights=w)


@register("ablationcam", family="cam", reference="Desai & Ramaswamy 2020, WACV",
          requires_graph=True)
def ablationcam(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """Ablation-CAM: w_k = (y - y_k) / y, y_k the score with channel k of A zeroed. No gradient.

    The head subgraph (layer -> scores) runs on the K ablated activations in batches;
    M = ReLU(sum_k w_k A_k).
    """
    from ..graph.split import split

    lay = resolve_layer(ctx, layer)
    name = lay.name
    out_name = scores_output(ctx.model)
    key = f"head:{out_name}:{name}"
    if key not in ctx.model._sessions:
        features, head = split(scores_graph(ctx.model)[0], name)
        ctx.model.session_for(key + ":features", features)
        ctx.model.session_for(key, head)
    head_session = ctx.model._sessions[key]
    head_inputs = [i.name for i in head_session.get_inputs()]
    feats = ctx.model.run_batched(ctx.model._sessions[key + ":features"], {ctx.model.input.name: x[None]},
                                  head_inputs)
    values = dict(zip(head_inputs, feats))
    act = channels_first(values[name], lay.layout)[0]
    k = len(act)
    y = float(ctx.scores[target])
    ctx.set_total(k)
    drops = []
    for sl in chunked(k, chunk_size_for(query)):
        n = sl.stop - sl.start
        ablated = np.repeat(act[None], n, axis=0)
        ablated[np.arange(n), np.arange(sl.start, sl.stop)] = 0
        feeds = {h: np.repeat(v, n, axis=0) for h, v in values.items() if h != name}
        feeds[name] = channels_back(ablated, lay.layout)
        (scores,) = ctx.model.run_batched(head_session, feeds, [out_name], progress=ctx.progress)
        drops.append(scores.reshape(n, -1)[:, target])
    w = (y - np.concatenate(drops)) / (y if abs(y) > 1e-12 else 1e-12)
    return _result(x, _weighted_sum(w.astype(np.float32), act), lay, weights=w)


@register("eigencam", family="cam", reference="Muhammad & Yeasin 2020, arXiv:2008.00299",
          requires_graph=True)
def eigencam(query, x: Array, target: int, *, ctx: Context, layer: str | None = None) -> Attribution:
    """Eigen-CAM: ReLU of A projected on its first principal component; class-agnostic.

    A is (hw x k), centred; the SVD's sign is chosen so the map correlates positively with
    sum_k A_k (the SVD alone leaves it arbitrary).
    """
    lay, act = _activation(ctx, x, layer)
    a = act.reshape(len(act), -1).T
    centred = a - a.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[0]
    if np.dot(proj, a.sum(axis=1) - a.sum(axis=1).mean()) < 0:
        proj = -proj
    return _result(x, proj.reshape(act.shape[1:]).astype(np.float32), lay)
