"""The CAM family on a chosen layer's activation ``A`` (k, h, w) and gradient ``g = dy_c/dA``.

A CAM method is one *weight function* registered with :func:`register_cam`: it reads the
layer's tensors from a :class:`CamInput` and returns its channel weights with the activation
they weight (:class:`Weights`, the map is ``sum_k w_k A_k``) or, where that is the natural unit
(Layer-CAM, Eigen-CAM), the (h, w) map itself. The shared code, as pytorch-grad-cam's
``BaseCAM`` but without hooks, does everything else once: it resolves the layer (its layout
comes from the graph, :func:`~blackbox_xai.graph.inspect.feature_map`; NHWC tensors are
transposed to (k, h, w) before any weight is computed, and back where a method feeds the
graph; a vision transformer's token tensor (N, extra + h*w, C) is read as (C, h, w) with the
class/distillation tokens dropped, as pytorch-grad-cam's ViT ``reshape_transform`` does, for
activations and gradients alike), fetches ``A`` (and ``g``) in one pass from the graph the method's ``source`` names,
applies the weights, ReLUs where the method's definition has it, upsamples bilinearly to the
input size, and builds the :class:`~blackbox_xai.registry.Attribution` with the extras
``layer``, ``layout``, ``cam`` (the map at the layer's resolution) and ``weights``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import onnx

from ..errors import BlackboxError, InternalError
from ..graph.inspect import (
    CandidateLayer,
    constant_value,
    consumers,
    describe_layout,
    reduce_layout,
)
from ..perturb import chunk_size_for, chunked, scores_for_masks
from ..registry import Attribution, Context, Range, register, register_batch
from ..resample import upsample

Array = npt.NDArray[np.float32]
QueryFn = Callable[[Array], Array]
#: where a CAM method's tensors come from: the model with the layer exposed (A), its backward
#: graph (A and g = dy_target/dA), or the model cut at the layer (A, and the rest as a head)
Source = Literal["activation", "gradient", "head"]
LAYER_HELP = ("the feature map or token layer to explain (`bbx layers MODEL` lists them); "
              "default: the last one feeding global pooling (vision transformers: the "
              "LayerNorm before the last attention).")


def resolve_layer(ctx: Context, layer: str | None) -> CandidateLayer:
    """The user's layer, checked to be a spatial feature map of known layout (a one-line error
    listing candidates otherwise), or the last such map feeding global pooling."""
    from ..graph.inspect import feature_map

    if ctx.model is None:
        raise BlackboxError("CAM methods need a Model from load_model(), not a plain function")
    ctx.model.graph()  # every CAM method rewrites the graph: its refusal comes first
    # graph inspection runs shape inference: once per model and layer
    return ctx.model.fact(("layer", layer), lambda: feature_map(ctx.model.proto, layer))


def channels_first(a: Array, layer: CandidateLayer) -> Array:
    """A batch of activations or gradients (N, ...) laid out as ``layer`` as (N, k, h, w).

    Tokens (N, e + h*w, C): the e extra tokens are dropped and the grid is unflattened
    row-major, A[n, c, i, j] = T[n, e + i w + j, c].
    """
    if layer.grid is not None:
        g = layer.grid
        return a[:, g.extra:].reshape(len(a), g.h, g.w, -1).transpose(0, 3, 1, 2)
    return a.transpose(0, 3, 1, 2) if layer.layout == "NHWC" else a


def channels_back(a: Array, layer: CandidateLayer, extra: Array | None = None) -> Array:
    """The inverse of :func:`channels_first`: (N, k, h, w) back to the layer's layout; for
    tokens, ``extra`` (N or 1, e, C) are the extra tokens put back in front (required)."""
    if layer.grid is not None:
        if extra is None:
            raise InternalError("channels_back: a token layer needs its extra tokens")
        tokens = a.transpose(0, 2, 3, 1).reshape(len(a), -1, a.shape[1])
        front = np.broadcast_to(extra, (len(a), *extra.shape[1:])).astype(a.dtype)
        return np.concatenate([front, tokens], axis=1)
    return a.transpose(0, 2, 3, 1) if layer.layout == "NHWC" else a


@dataclass
class CamInput:
    """What a CAM weight function reads: the input, the target, the resolved layer, and the
    layer's tensors as (k, h, w), fetched on first use in one pass from the graph ``source``
    names (so a method may refuse before any pass, as CAM does for a head it cannot read)."""

    query: QueryFn
    x: Array
    target: int
    ctx: Context
    layer: CandidateLayer
    source: Source
    #: A and g already fetched in a batch (:func:`_batched`): no pass of its own
    prefetched: tuple[Array, Array | None] | None = None

    @cached_property
    def _fetched(self) -> tuple[Array, Array | None, dict[str, Array]]:
        """A (k, h, w), g (k, h, w) or None, and the other tensors the head reads (N = 1),
        with the layer's own raw value under its name."""
        if self.prefetched is not None:
            return (*self.prefetched, {})
        model, name = self.ctx.model, self.layer.name
        if self.source == "gradient":
            acts, grads = self.gradients(self.x[None])
            return acts[0], grads[0], {}
        if self.source == "head":
            features, _, names, _ = model.cut(name)
            values = dict(zip(names, model.run_batched(features, {model.input.name: self.x[None]},
                                                       names)))
            return channels_first(values[name], self.layer)[0], None, values
        _, act = model.layer_activation(self.x[None], name)
        return channels_first(act, self.layer)[0], None, {}

    def _require(self, source: Source, what: str) -> None:
        if self.source != source:
            raise InternalError(f"a CAM method reads {what} but is registered with "
                                f"source={self.source!r}, not {source!r}")

    @property
    def act(self) -> Array:
        """The layer's activation A (k, h, w) for ``x``."""
        return self._fetched[0]

    @property
    def grad(self) -> Array:
        """g = dy_target/dA (k, h, w) at ``x`` (``source="gradient"``)."""
        self._require("gradient", "the gradient")
        return typing.cast(Array, self._fetched[1])

    def gradients(self, xs: Array) -> tuple[Array, Array]:
        """A and g = dy_target/dA at a batch of inputs (N, C, H, W), both (N, k, h, w): one
        batch of forward+backward passes (``source="gradient"``)."""
        self._require("gradient", "gradients")
        _, act, grad = self.ctx.model.layer_gradient(xs, self.target, self.layer.name,
                                      self.ctx.progress)
        return channels_first(act, self.layer), channels_first(grad, self.layer)

    def head(self, acts: Array) -> Array:
        """Scores (n, K) of the model's head run on layer activations (n, k, h, w); any other
        tensor the head reads (a skip connection over the cut) and a token layer's extra
        tokens keep their values at ``x`` (``source="head"``)."""
        self._require("head", "the head")
        model, name = self.ctx.model, self.layer.name
        n = len(acts)
        own = self._fetched[2][name]
        extra = own[:, :self.layer.grid.extra] if self.layer.grid is not None else None
        feeds = {h: np.repeat(v, n, axis=0) for h, v in self._fetched[2].items() if h != name}
        feeds[name] = channels_back(acts, self.layer, extra)
        (scores,) = model.run_batched(model.cut(name).head, feeds, [model.scores_output()],
                                      progress=self.ctx.progress)
        return scores.reshape(n, -1)


class Weights(NamedTuple):
    """Channel weights ``w`` (k,) of an activation ``act`` (k, h, w): the map is sum_k w_k A_k."""

    w: npt.NDArray[np.floating]
    act: Array


WeightFn = Callable[..., "Weights | Array"]
#: what a batched method returns: scores (N, K), each input's target, its attribution
BatchResult = tuple[Array, list[int], list[Attribution]]


def _attribution(x: Array, layer: CandidateLayer, result: Weights | Array,
                 relu: bool) -> Attribution:
    """Combine, ReLU (``relu``), upsample to the input size; the common extras."""
    extras: dict[str, Any] = {}
    if isinstance(result, Weights):
        cam, extras["weights"] = np.tensordot(result.w, result.act, axes=1), result.w
    else:
        cam = result
    cam = np.maximum(cam, 0) if relu else cam
    return Attribution(upsample(cam, x.shape[1:]),
                       {"layer": layer.name, "layout": layer.layout, "cam": cam, **extras})


def _with_layer_help(doc: str) -> str:
    """``doc`` with ``layer`` first in its ``Args:`` section (one added when there is none)."""
    entry = f"    layer: {LAYER_HELP}"
    if "\nArgs:\n" in doc:
        return doc.replace("\nArgs:\n", f"\nArgs:\n{entry}\n", 1)
    return f"{doc}\n\nArgs:\n{entry}"


def register_cam(name: str, *, reference: str, source: Source = "activation", relu: bool = True,
                 stochastic: bool = False, fast: dict[str, Any] | None = None,
                 single_pass: bool = False) -> Callable[[WeightFn], Callable[..., Attribution]]:
    """Register the weight function ``fn(c: CamInput, **options)`` as the CAM method ``name``.

    The registered method is ``(query, x, target, *, ctx, layer=None, **options)``: it resolves
    the layer (before any pass), calls ``fn`` and turns what it returns into the Attribution
    (:func:`_attribution`; ``relu`` where the method's definition has it). ``fn``'s keyword-only
    arguments are the method's options, with their ranges (``Annotated[int, Range(0)]``) and the
    help of its docstring's ``Args:`` section, where ``layer`` is added. ``source="gradient"``
    marks the method as running the backward graph (``needs_gradient`` in the registry).
    ``single_pass``: ``fn`` reads only A (and g) of ``x``, so the method also gets a batched
    form (:func:`_batched`) that fetches them for many inputs in one batch of passes.
    """

    def deco(fn: WeightFn) -> Callable[..., Attribution]:
        hints = typing.get_type_hints(fn, include_extras=True)
        options = [p.replace(annotation=hints[p.name])
                   for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]

        def method(query: QueryFn, x: Array, target: int, *, ctx: Context,
                   layer: str | None = None, **opts: Any) -> Attribution:
            c = CamInput(query, x, target, ctx, resolve_layer(ctx, layer), source)
            return _attribution(x, c.layer, fn(c, **opts), relu)

        positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
        keyword = inspect.Parameter.KEYWORD_ONLY
        method.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("query", positional),
             inspect.Parameter("x", positional, annotation=Array),
             inspect.Parameter("target", positional, annotation=int),
             inspect.Parameter("ctx", keyword, annotation=Context),
             inspect.Parameter("layer", keyword, default=None, annotation=str | None), *options],
            return_annotation=Attribution)
        method.__annotations__ = {"layer": str | None, **{p.name: p.annotation for p in options},
                                  "return": Attribution}
        method.__name__, method.__qualname__ = fn.__name__, fn.__qualname__
        method.__doc__ = _with_layer_help(inspect.getdoc(fn) or "")
        register(name, family="cam", reference=reference, stochastic=stochastic,
                 requires_graph=True, needs_gradient=source == "gradient", fast=fast)(method)
        if single_pass:
            register_batch(name)(_batched(fn, source, relu))
        return method

    return deco


def _batched(fn: WeightFn, source: Source, relu: bool) -> Callable[..., BatchResult]:
    """The batched form of a one-pass CAM method: the scores, A (and g, each row seeded with
    its target, the top-1 found in the graph) for all inputs in one batch of passes, then
    ``fn`` per input on its slice."""
    from .gradients import batch_gradients

    def batch(xs: Array, targets: list[int | None], *, ctx: Context, layer: str | None = None,
              **opts: Any) -> BatchResult:
        resolved = resolve_layer(ctx, layer)
        if source == "gradient":
            scores, chosen, (act,), (grad,) = batch_gradients(ctx.model, xs, targets,
                                                              [resolved.name])
            acts, grads = channels_first(act, resolved), channels_first(grad, resolved)
        else:
            scores, act = ctx.model.layer_activation(xs, resolved.name)
            acts, grads = channels_first(act, resolved), [None] * len(xs)
            chosen = [int(t) if t is not None else int(np.argmax(s))
                      for t, s in zip(targets, scores)]
        out = []
        for i, (x, target) in enumerate(zip(xs, chosen)):
            c = CamInput(typing.cast(QueryFn, None), x, target,
                         replace(ctx, scores=scores[i]), resolved, source, (acts[i], grads[i]))
            out.append(_attribution(x, resolved, fn(c, **opts), relu))
        return scores, chosen, out

    return batch


# ---- methods ------------------------------------------------------------------------------------
#: ops a pooled vector passes through unchanged on its way to the linear layer or the scores
_FLATTEN_OPS = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")
#: type conversions read as the identity they approximate: an INT8 build's quantize /
#: dequantize pairs, an fp16 model's casts
_CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "Cast")
#: readers of a tensor's shape only (PyTorch 1.x's flatten chain: Shape -> Gather -> Unsqueeze
#: -> Concat feeds the Reshape of the pooled vector), not of its values
_SHAPE_READERS = ("Shape", "Size")


def _whole_average_pool(node: onnx.NodeProto, layer: CandidateLayer) -> bool:
    """Whether ``node`` is an AveragePool whose window is the whole (static) h x w of an NCHW
    ``layer``, with no padding: a global average pooling (tf2onnx writes GAP this way)."""
    if node.op_type != "AveragePool" or layer.layout != "NCHW":
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return (list(attrs.get("kernel_shape", [])) == list(layer.shape[2:])
            and not any(attrs.get("pads", [])) and auto_pad in (b"NOTSET", b"VALID"))


def gap_linear_head(proto: onnx.ModelProto, layer: CandidateLayer, logits: str
                    ) -> npt.NDArray[np.float32]:
    """W (K, k) of a head ``layer -> global average pooling -> Gemm/MatMul [-> bias]`` that
    ends at ``logits``, or the identity (k, k) for ``layer -> pooling`` ending there.

    The pooling is GlobalAveragePool or an AveragePool over the whole h x w (NCHW), or a
    ReduceMean over the spatial axes of the layer's layout ({2, 3} for NCHW, {1, 2} for NHWC);
    either way the pooled vector is indexed by channel. Flatten, Squeeze, Reshape, Identity
    and Dropout may come in between, including PyTorch 1.x's Reshape whose target shape is
    computed from the pooled vector's Shape (shape readers are no second consumer). With no
    linear layer (SqueezeNet: conv10 -> ReLU -> GlobalAveragePool -> [Flatten] -> Softmax) the
    pooled channels are the logits themselves: K = k, W = I and CAM_c = A_c.

    Raises:
        BlackboxError: any other head, including a linear layer whose output reaches the logits
            through anything but its bias and flattening (one line naming the ops after the
            layer, and for a transformer's token layer, that its class token feeds the
            classifier).
    """
    g = proto.graph
    readers = {name: [g.node[i] for i in idx
                      if g.node[i].op_type not in _SHAPE_READERS]
               for name, idx in consumers(g).items()}
    path: list[str] = []
    tensor, pooled, w = layer.name, False, None
    for _ in range(10):
        if pooled and tensor == logits:
            if w is None:
                return np.eye(int(layer.shape[1 if layer.layout == "NCHW" else 3]),
                              dtype=np.float32)
            return w
        nxt = readers.get(tensor, [])
        if len(nxt) != 1 or nxt[0].input[0] != tensor:
            break
        node = nxt[0]
        path.append(node.op_type)
        if not pooled and (node.op_type == "GlobalAveragePool" and layer.layout == "NCHW"
                           or _whole_average_pool(node, layer)
                           or node.op_type == "ReduceMean"
                           and reduce_layout(g, node) == layer.layout):
            pooled = True
        elif pooled and w is None and node.op_type in ("Gemm", "MatMul", "Conv"):
            w = _linear_weight(g, node)
            if w is None:
                break
        elif not (node.op_type in _FLATTEN_OPS + _CONVERSIONS or w is not None
                  and node.op_type == "Add" and constant_value(g, node.input[1]) is not None):
            break  # after the linear layer only its bias and flattening may follow
        tensor = node.output[0]
    after = " -> ".join(path) or "nothing"
    if layer.grid is not None:
        why = ("its classifier reads the class token, not an average of the patch tokens"
               if layer.grid.extra else "that is not a mean over the tokens and a linear layer")
        raise BlackboxError(
            f"CAM needs layer -> global average pooling -> linear; {layer.name!r} is a "
            f"transformer token layer ({describe_layout(layer)}) followed by {after}, and "
            f"{why}, so there are no CAM weights: use gradcam"
            + (", attention-rollout or gradient-rollout" if layer.grid.extra else ""))
    raise BlackboxError(
        f"CAM needs layer -> global average pooling -> linear; after {layer.name!r} "
        f"({layer.layout}) the graph has {after}. Use gradcam instead (on a pooling + "
        "linear head it is CAM's map, ReLU'd and scaled)")


def _linear_weight(g: onnx.GraphProto, node: onnx.NodeProto) -> npt.NDArray[np.float32] | None:
    """W (K, k) of a Gemm/MatMul reading the pooled vector with a constant 2-D weight, or of a
    1x1 Conv reading the pooled (N, k, 1, 1) map (Caffe2-era heads); an INT8 build's dequantized
    weight and a cast fp16 one included."""
    w = constant_value(g, node.input[1])
    if w is None:
        w = _converted_constant(g, node.input[1])
    if node.op_type == "Conv":  # a 1x1 convolution of the pooled (N, k, 1, 1) map: W (K, k)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        return w[:, :, 0, 0].astype(np.float32) \
            if w is not None and w.ndim == 4 and w.shape[2:] == (1, 1) and groups == 1 else None
    if w is None or w.ndim != 2:
        return None
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return (w if trans_b else w.T).astype(np.float32)


def _converted_constant(g: onnx.GraphProto, name: str) -> npt.NDArray[np.float64] | None:
    """A weight stored in another type: ``Cast`` of a constant (ONNX Runtime's float
    computation of an fp16 model casts every weight), or ``DequantizeLinear(q, scale, zero
    point)`` of constants, (q - zp) scale with vector scales along ``axis`` (default 1);
    else None."""
    node = next((n for n in g.node if name in n.output), None)
    if node is not None and node.op_type == "Cast":
        value = constant_value(g, node.input[0])
        return None if value is None else value.astype(np.float64)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    values = [constant_value(g, i) if i else None for i in node.input]
    q, scale = values[0], values[1]
    if q is None or scale is None:
        return None
    zero = values[2] if len(values) > 2 and values[2] is not None else np.zeros_like(scale)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
    shape = [-1 if a == axis else 1 for a in range(q.ndim)] if np.ndim(scale) == 1 else []
    return ((q.astype(np.float64) - np.reshape(zero, shape).astype(np.float64))
            * np.reshape(scale, shape).astype(np.float64))


@register_cam("cam", reference="Zhou et al. 2016, arXiv:1512.04150", relu=False,
              single_pass=True)
def cam(c: CamInput) -> Weights:
    """CAM: M = sum_k w_k^c A_k with w the linear layer after global average pooling (no ReLU).

    The weights are read from the graph (a head that is not GAP + linear is refused before any
    pass; a head with no linear layer after the pooling, whose pooled channels are the logits,
    has w = one-hot(c): M = A_c); one forward pass with the layer exposed gives A.
    """
    model = c.ctx.model
    w = gap_linear_head(model.graph(), c.layer, model.logits_name)[c.target]
    return Weights(w, c.act)  # A is fetched here, after a head CAM cannot read was refused


@register_cam("gradcam", reference="Selvaraju et al. 2017, arXiv:1610.02391", source="gradient",
              single_pass=True)
def gradcam(c: CamInput) -> Weights:
    """Grad-CAM: alpha_k = mean_ij g_kij, M = ReLU(sum_k alpha_k A_k). One forward+backward."""
    return Weights(c.grad.mean(axis=(1, 2)), c.act)


def gradcampp_weights(act: Array, g1: Array, g2: Array, g3: Array) -> Array:
    """Grad-CAM++ channel weights: a = g^2 / (2 g^2 + sum_ab A g^3) (0 where g = 0),
    w_k = sum_ij a_kij ReLU(g_kij); g1, g2, g3 are the first derivative and its powers."""
    denom = 2 * g2 + (act * g3).sum(axis=(1, 2), keepdims=True)
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=(g2 != 0) & (denom != 0))
    return (alpha * np.maximum(g1, 0)).sum(axis=(1, 2))


@register_cam("gradcampp", reference="Chattopadhay et al. 2018, arXiv:1710.11063",
              source="gradient", single_pass=True)
def gradcampp(c: CamInput) -> Weights:
    """Grad-CAM++: w_k = sum_ij a_kij ReLU(g_kij), a = g^2 / (2 g^2 + sum A g^3). One pass.

    The exponential-score closed form of the paper; see :func:`gradcampp_weights`.
    M = ReLU(sum_k w_k A_k).
    """
    g = c.grad
    return Weights(gradcampp_weights(c.act, g, g**2, g**3), c.act)


def _parse_filters(filters: str) -> list[int]:
    """The channel indices in ``filters`` ("3,17,42"); a one-line error naming ``--filters``."""
    try:
        return [int(v) for v in filters.split(",")]
    except ValueError:
        raise BlackboxError(f"--filters {filters!r}: give channel indices separated by commas, "
                            "e.g. 3,17,42") from None


def _filter_mask(filters: str, idx: list[int], k: int) -> npt.NDArray[np.bool_]:
    """The channels (k,) kept by the indices ``idx`` parsed from ``filters``; an index outside
    the layer's channels is a one-line error naming ``--filters``, the value and the range."""
    bad = [i for i in idx if not 0 <= i < k]
    if bad:
        raise BlackboxError(f"--filters {filters!r}: channel {bad[0]} is out of range: the layer "
                            f"has {k} channels, 0..{k - 1}")
    keep = np.zeros(k, bool)
    keep[idx] = True
    return keep


def _parse_neurons(neurons: str, input_hw: tuple[int, int]) -> list[list[float]]:
    """The boxes ``x0,y0,x1,y1`` and points ``x,y`` (``;``-separated) in ``neurons``, in input
    pixels, each inside the input; a one-line error naming ``--neurons``, the value and the
    valid range otherwise."""
    height, width = input_hw

    def inside(p: list[float]) -> bool:
        if len(p) == 2:
            return 0 <= p[0] < width and 0 <= p[1] < height
        return len(p) == 4 and 0 <= p[0] <= p[2] <= width and 0 <= p[1] <= p[3] <= height \
            and p[0] < width and p[1] < height

    try:
        parts = [[float(v) for v in p.split(",")] for p in neurons.split(";") if p.strip()]
    except ValueError:
        parts = []
    if not parts or not all(map(inside, parts)):
        raise BlackboxError(
            f"--neurons {neurons!r}: give a box x0,y0,x1,y1 (0 <= x0 <= x1 <= {width}, "
            f"0 <= y0 <= y1 <= {height}, x0 < {width}, y0 < {height}) or points x,y;x,y "
            f"(0 <= x < {width}, 0 <= y < {height}) in input pixels")
    return parts


def _neuron_mask(parts: list[list[float]], act_hw: tuple[int, int], input_hw: tuple[int, int]
                 ) -> npt.NDArray[np.bool_]:
    """The activation cells (h, w) under the boxes and points ``parts`` (input pixels)."""
    h, w = act_hw
    sy, sx = h / input_hw[0], w / input_hw[1]
    keep = np.zeros((h, w), bool)
    for p in parts:
        if len(p) == 4:
            x0, y0, x1, y1 = p
            keep[int(y0 * sy):max(int(np.ceil(y1 * sy)), int(y0 * sy) + 1),
                 int(x0 * sx):max(int(np.ceil(x1 * sx)), int(x0 * sx) + 1)] = True
        else:
            keep[min(int(p[1] * sy), h - 1), min(int(p[0] * sx), w - 1)] = True
    return keep


@register_cam("smooth-gradcampp", reference="Omeiza et al. 2019, arXiv:1908.01224",
              source="gradient", stochastic=True, fast={"n_samples": 2})
def smooth_gradcampp(c: CamInput, *, n_samples: Annotated[int, Range(0)] = 4,
                     sigma: Annotated[float, Range(0)] = 0.3, filters: str | None = None,
                     neurons: str | None = None) -> Weights:
    """Smooth Grad-CAM++: Grad-CAM++ with g, g^2, g^3 averaged over noisy copies of the input.

    Noise x + N(0, sigma^2), ``n_samples`` copies; A from the clean input (n_samples=0 is
    Grad-CAM++): w_k = sum_ij a_kij ReLU(mean g_kij), a = mean g^2 / (2 mean g^2 +
    sum_ab A_kab mean g^3), M = ReLU(sum_k w_k A_k). ``filters`` and ``neurons`` zero the
    activations outside a subset, as the paper's API does. One batch of n_samples + 1
    forward+backward passes.

    Args:
        n_samples: noisy copies whose gradients are averaged (0: Grad-CAM++).
        sigma: noise standard deviation, in model-input units.
        filters: feature maps to keep, as channel indices "3,17,42" (default: all).
        neurons: activations to keep: a box "x0,y0,x1,y1" or points "x,y;x,y" in input pixels
            (default: all).
    """
    x = c.x
    # options checked before the passes (the channel count is known after them)
    idx = None if filters is None else _parse_filters(filters)
    parts = None if neurons is None else _parse_neurons(neurons, x.shape[1:])
    noisy = x[None] + sigma * c.ctx.rng.standard_normal((n_samples, *x.shape), dtype=np.float32)
    acts, grads = c.gradients(np.concatenate([x[None], noisy]))
    a, gs = acts[0], (grads[1:] if n_samples > 0 else grads[:1])
    if idx is not None:
        a = a * _filter_mask(filters, idx, a.shape[0])[:, None, None]
    if parts is not None:
        a = a * _neuron_mask(parts, a.shape[1:], x.shape[1:])[None]
    return Weights(gradcampp_weights(a, gs.mean(axis=0), (gs**2).mean(axis=0),
                                     (gs**3).mean(axis=0)), a)


@register_cam("xgradcam", reference="Fu et al. 2020, arXiv:2008.02312", source="gradient",
              single_pass=True)
def xgradcam(c: CamInput) -> Weights:
    """XGrad-CAM: w_k = sum_ij (A_kij / sum_ab A_kab) g_kij, M = ReLU(sum_k w_k A_k)."""
    act = c.act
    total = act.sum(axis=(1, 2), keepdims=True)
    norm = np.divide(act, total, out=np.zeros_like(act), where=total != 0)
    return Weights((norm * c.grad).sum(axis=(1, 2)), act)


@register_cam("layercam", reference="Jiang et al. 2021, IEEE TIP 30:5875", source="gradient",
              single_pass=True)
def layercam(c: CamInput) -> Array:
    """Layer-CAM: M = ReLU(sum_k ReLU(g_kij) A_kij); spatial weights, so shallow layers work."""
    return (np.maximum(c.grad, 0) * c.act).sum(axis=0)


@register_cam("scorecam", reference="Wang et al. 2020, arXiv:1910.01279")
def scorecam(c: CamInput) -> Weights:
    """Score-CAM: M = ReLU(sum_k s_k A_k), s_k = softmax(f(x * H_k))_c. K queries, no gradient.

    H_k = min-max normalised upsample(A_k); the K masked inputs are scored in batches.
    """
    act, x = c.act, c.x
    lo = act.min(axis=(1, 2), keepdims=True)
    span = act.max(axis=(1, 2), keepdims=True) - lo
    norm = np.divide(act - lo, span, out=np.zeros_like(act), where=span > 0)
    c.ctx.set_total(len(act))

    def masks() -> Iterator[Array]:
        for sl in chunked(len(act), chunk_size_for(c.query)):
            yield upsample(norm[sl], x.shape[1:])

    probs = c.ctx.model.probabilities(scores_for_masks(c.query, x, np.zeros_like(x), masks()))
    return Weights(probs[:, c.target], act)


@register_cam("ablationcam", reference="Desai & Ramaswamy 2020, WACV", source="head")
def ablationcam(c: CamInput) -> Weights:
    """Ablation-CAM: w_k = (y - y_k) / y, y_k the score with channel k of A zeroed. No gradient.

    The head subgraph (layer -> scores) runs on the K ablated activations in batches;
    M = ReLU(sum_k w_k A_k).
    """
    act = c.act
    k = len(act)
    y = float(c.ctx.scores[c.target])
    c.ctx.set_total(k)
    drops = []
    for sl in chunked(k, chunk_size_for(c.query)):
        n = sl.stop - sl.start
        ablated = np.repeat(act[None], n, axis=0)
        ablated[np.arange(n), np.arange(sl.start, sl.stop)] = 0
        drops.append(c.head(ablated)[:, c.target])
    w = (y - np.concatenate(drops)) / (y if abs(y) > 1e-12 else 1e-12)
    return Weights(w.astype(np.float32), act)


@register_cam("eigencam", reference="Muhammad & Yeasin 2020, arXiv:2008.00299",
              single_pass=True)
def eigencam(c: CamInput) -> Array:
    """Eigen-CAM: ReLU of A projected on its first principal component; class-agnostic.

    A is (hw x k), centred; the SVD's sign is chosen so the map correlates positively with
    sum_k A_k (the SVD alone leaves it arbitrary).
    """
    act = c.act
    a = act.reshape(len(act), -1).T
    centred = a - a.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[0]
    if np.dot(proj, a.sum(axis=1) - a.sum(axis=1).mean()) < 0:
        proj = -proj
    return proj.reshape(act.shape[1:]).astype(np.float32)
