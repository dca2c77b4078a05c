"""Vector-Jacobian rules: one small function per ONNX op type that emits its adjoint as ONNX nodes.

A rule receives the forward node, the gradients of its outputs (``None`` where an output gets
none) and which inputs need a gradient; it returns one gradient tensor name (or ``None``) per
input. Gradients are float32 (float64 in float64 models): float16/bfloat16 forward values are
cast to float32 first, so small gradients do not underflow. Shapes the adjoint needs are read at
run time (``Shape`` ops) so the batch axis stays dynamic, or taken from shape inference where an
attribute must be static (``ConvTranspose`` output padding, pooling matrices).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import BlackboxError
from .io import node_attrs

Shape = list[int | str | None]
Grads = list[str | None]
Rule = Callable[["Emitter", onnx.NodeProto, Grads, list[bool]], Grads]
#: Runs a one-node model on its inputs: ``evaluate(model, feeds) -> outputs``.
Evaluate = Callable[[onnx.ModelProto, dict[str, np.ndarray]], list[np.ndarray]]


def reference_evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX's reference evaluator (pure onnx; the runtime passes its own, see :class:`Emitter`)."""
    from onnx.reference import ReferenceEvaluator  # 60 ms to import: only when used

    return list(ReferenceEvaluator(model).run(None, feeds))

FLOAT_TYPES = {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE}
# Ops whose outputs carry no gradient (piecewise constant or shape plumbing): paths through
# them are cut, exactly as if their outputs were constants.
NON_DIFFERENTIABLE = frozenset(
    ("Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "OneHot", "NonZero")
    + ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor")
    + ("IsNaN", "IsInf", "ArgMax", "ArgMin", "Floor", "Ceil", "Round", "Sign", "Multinomial")
    + ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike")
)


class UnsupportedOpError(BlackboxError):
    """An op on the path from the differentiated tensors to the scores has no gradient rule."""


def unsupported(node: onnx.NodeProto, why: str) -> UnsupportedOpError:
    """The error for ``node``: the op, the node and what is missing (``explain`` adds the
    methods that still work, from the registry)."""
    return UnsupportedOpError(
        f"cannot differentiate {node.op_type} node {node.name or node.output[0]!r}: {why}")


attrs = node_attrs  # the node's attributes as Python values (strings decoded)


def _np_dtype(dtype: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(dtype))


class GraphInfo:
    """Static facts about the forward graph's tensors: element type, shape, constant value."""

    def __init__(self, model: onnx.ModelProto) -> None:
        """``model`` should be shape-inferred; missing facts read as unknown (``None``)."""
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.ir_version = model.ir_version
        self._types: dict[str, onnx.TypeProto] = {
            v.name: v.type for v in [*g.input, *g.output, *g.value_info]
        }
        inputs = {i.name for i in g.input}
        self._consts: dict[str, Callable[[], np.ndarray]] = {}
        for t in g.initializer:
            self._types.setdefault(t.name, helper.make_tensor_type_proto(t.data_type, t.dims))
            if t.name not in inputs and t.data_location != TensorProto.EXTERNAL:
                self._consts[t.name] = lambda t=t: numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name in _CONSTANT_KINDS:
                self._consts[n.output[0]] = lambda n=n: _constant_value(n)
        self._values: dict[str, np.ndarray] = {}

    def dtype(self, name: str) -> int | None:
        t = self._types.get(name)
        return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else None

    def shape(self, name: str) -> Shape | None:
        """Dims as ints (static), strings (symbolic) or None; None if the rank is unknown."""
        t = self._types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in t.tensor_type.shape.dim
        ]

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def is_float(self, name: str) -> bool:
        """Whether the tensor can carry a gradient (unknown types are assumed to be float)."""
        dt = self.dtype(name)
        return dt is None or dt == 0 or dt in FLOAT_TYPES

    def value(self, name: str) -> np.ndarray | None:
        """The tensor's value if it is an initializer (not overridable) or a Constant output."""
        if name not in self._values and name in self._consts:
            self._values[name] = self._consts[name]()
        return self._values.get(name)


_CONSTANT_KINDS = {
    "value": None,
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node with a dense tensor or number attribute."""
    a = node.attribute[0]
    v = helper.get_attribute_value(a)
    if a.name == "value":
        return numpy_helper.to_array(v)
    return np.asarray(v, _CONSTANT_KINDS[a.name])


class Emitter:
    """Appends the backward nodes and constants with unique names; caches shared helpers."""

    def __init__(self, info: GraphInfo, taken: set[str], prefix: str = "bwd",
                 evaluate: Evaluate | None = None) -> None:
        self.info = info
        self.evaluate = evaluate or reference_evaluate
        self.opset = info.opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._taken = taken
        self._prefix = prefix
        self._count = itertools.count()
        self._cache: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        """A tensor or node name not used anywhere in the graph."""
        while True:
            name = f"{self._prefix}/{hint}_{next(self._count)}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op_n(self, op_type: str, inputs: Sequence[str], n_out: int, **kw: Any) -> list[str]:
        """Append an ``op_type`` node (None attributes dropped) and return its output names."""
        outs = [self.fresh(op_type) for _ in range(n_out)]
        kw = {k: v for k, v in kw.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **kw))
        return outs

    def op(self, op_type: str, *inputs: str, **kw: Any) -> str:
        return self.op_n(op_type, inputs, 1, **kw)[0]

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A cached 1-D int64 constant."""
        key = ("ints", tuple(int(v) for v in values))
        if key not in self._cache:
            self._cache[key] = self.const(np.asarray(key[1], np.int64), "ints")
        return self._cache[key]

    def scalar(self, value: float, dtype: int) -> str:
        """A cached 0-D constant of ``dtype`` (broadcasts against anything)."""
        key = ("scalar", float(value), dtype)
        if key not in self._cache:
            self._cache[key] = self.const(np.asarray(value, _np_dtype(dtype)), "scalar")
        return self._cache[key]

    def shape(self, name: str) -> str:
        """The cached run-time ``Shape`` of a tensor."""
        key = ("shape", name)
        if key not in self._cache:
            self._cache[key] = self.op("Shape", name)
        return self._cache[key]

    def dim(self, name: str, axis: int) -> str:
        """Run-time size of one axis as a 1-element int64 tensor."""
        key = ("dim", name, axis)
        if key not in self._cache:
            self._cache[key] = self.op("Gather", self.shape(name), self.ints([axis]), axis=0)
        return self._cache[key]

    def gdtype(self, name: str) -> int:
        """The gradient dtype of a tensor: float64 for float64 tensors, float32 otherwise."""
        return (
            TensorProto.DOUBLE if self.info.dtype(name) == TensorProto.DOUBLE else TensorProto.FLOAT
        )

    def fwd(self, name: str, dtype: int) -> str:
        """A forward tensor in the gradient dtype (constants converted once, others Cast)."""
        src = self.info.dtype(name)
        if src in (None, 0, dtype):
            return name
        key = ("fwd", name, dtype)
        if key not in self._cache:
            value = self.info.value(name)
            self._cache[key] = (
                self.op("Cast", name, to=dtype)
                if value is None
                else self.const(value.astype(_np_dtype(dtype)), "fwd")
            )
        return self._cache[key]

    def zeros(self, shape: str, dtype: int) -> str:
        """Zeros of a run-time shape."""
        return self.op("ConstantOfShape", shape, value=helper.make_tensor("v", dtype, [1], [0]))

    def reduce(
        self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool = True
    ) -> str:
        """``op_type`` (ReduceSum/Mean/Prod) over ``axes`` (None: all), as attribute or input."""
        since = 13 if op_type == "ReduceSum" else 18
        if axes is None:
            return self.op(op_type, x, keepdims=int(keepdims))
        if self.opset >= since:
            return self.op(op_type, x, self.ints(axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints(axes))
        return self.op("Unsqueeze", x, axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", x, self.ints(axes))
        return self.op("Squeeze", x, axes=list(axes))

    def split(self, x: str, sizes: Sequence[int], axis: int) -> list[str]:
        if self.opset >= 13:
            return self.op_n("Split", [x, self.ints(sizes)], len(sizes), axis=axis)
        return self.op_n("Split", [x], len(sizes), axis=axis, split=list(sizes))

    def reshape_like(self, g: str, like: str) -> str:
        return self.op("Reshape", g, self.shape(like))

    def where(self, cond: str, g: str, dtype: int) -> str:
        """``g`` where ``cond``, else 0."""
        return self.op("Where", cond, g, self.scalar(0, dtype))


RULES: dict[str, Rule] = {}
_DIFFERENTIABLE: dict[str, tuple[int, ...] | None] = {}


def register(*op_types: str, inputs: tuple[int, ...] | None = (0,)) -> Callable[[Rule], Rule]:
    """Register a rule for ``op_types``; ``inputs`` lists the input positions it differentiates
    (None: all of them)."""

    def deco(fn: Rule) -> Rule:
        for t in op_types:
            RULES[t] = fn
            _DIFFERENTIABLE[t] = inputs
        return fn

    return deco


def has_rule(node: onnx.NodeProto) -> bool:
    """Whether a gradient rule exists for ``node``'s op."""
    return node.domain in ("", "ai.onnx") and node.op_type in RULES


def vjp(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Gradients of ``node``'s inputs given its outputs' gradients, or UnsupportedOpError."""
    if not has_rule(node):
        raise unsupported(node, "no gradient rule for this op")
    allowed = _DIFFERENTIABLE[node.op_type]
    for i, n in enumerate(need):
        if n and allowed is not None and i not in allowed:
            raise unsupported(node, f"no gradient with respect to input {i} ({node.input[i]!r})")
    return RULES[node.op_type](e, node, gys, need)


# ----------------------------------------------------------------------------- shared helpers


def unbroadcast(e: Emitter, g: str, g_shape: Shape | None, target: str) -> str:
    """Sum ``g`` (shape ``g_shape``, the broadcast result) back to the shape of ``target``:
    ReduceSum over the leading and the broadcast (size-1) axes, then Reshape."""
    t_shape = e.info.shape(target)
    if g_shape is None or t_shape is None:
        raise UnsupportedOpError(f"cannot reduce a broadcast gradient to {target!r}: unknown rank")
    if g_shape == t_shape:
        return g
    lead = len(g_shape) - len(t_shape)
    axes, ambiguous = list(range(lead)), False
    for i, td in enumerate(t_shape):
        gd = g_shape[lead + i]
        if td == 1 and gd != 1:
            axes.append(lead + i)
        elif td != gd and gd != 1 and not isinstance(td, int):
            ambiguous = True  # e.g. symbolic target dim vs a different or unknown one
    if ambiguous:
        return _unbroadcast_runtime(e, g, len(g_shape), target)
    if not axes:
        return g
    return e.reshape_like(e.reduce("ReduceSum", g, axes), target)


def _unbroadcast_runtime(e: Emitter, g: str, g_rank: int, target: str) -> str:
    """Unbroadcast with the reduced axes found at run time (axes where the target has size 1)."""
    if e.opset < 13:
        raise UnsupportedOpError(
            f"cannot tell which axes of {target!r} were broadcast before opset 13 (shape unknown)"
        )
    lead = g_rank - (e.info.rank(target) or 0)
    t = e.op("Concat", e.ints([1] * lead), e.shape(target), axis=0) if lead else e.shape(target)
    one = e.ints([1])
    cond = e.op("And", e.op("Equal", t, one), e.op("Not", e.op("Equal", e.shape(g), one)))
    axes = e.op("Reshape", e.op("NonZero", cond), e.ints([-1]))
    s = e.op("ReduceSum", g, axes, keepdims=1, noop_with_empty_axes=1)
    return e.reshape_like(s, target)


def _count(e: Emitter, x: str, axes: Sequence[int], y: str, dtype: int) -> str:
    """Number of elements of ``x`` averaged into each element of ``y`` (over ``axes``)."""
    xs = e.info.shape(x)
    dims = [xs[a] for a in axes] if xs is not None else [None]
    if all(isinstance(d, int) for d in dims):
        return e.scalar(float(np.prod(dims)), dtype)
    ratio = e.op("Div", e.op("Size", x), e.op("Size", y))
    return e.op("Cast", ratio, to=dtype)


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [int(a) % rank for a in axes]


def _rank(e: Emitter, node: onnx.NodeProto, name: str) -> int:
    r = e.info.rank(name)
    if r is None:
        raise unsupported(node, f"the rank of {name!r} is unknown (shape inference failed)")
    return r


def _const_ints(e: Emitter, node: onnx.NodeProto, name: str, what: str) -> list[int]:
    v = e.info.value(name)
    if v is None:
        raise unsupported(node, f"{what} must be a constant")
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _input(node: onnx.NodeProto, i: int) -> str:
    """The i-th input name, '' when absent."""
    return node.input[i] if len(node.input) > i else ""


# ----------------------------------------------------------------------------- elementwise


@register("Identity", "Dropout")
def _identity(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy (Dropout at inference is the identity)."""
    return [gys[0]]


@register("Cast")
def _cast(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy, cast to the input's gradient dtype (float16 inputs keep float32 gradients)."""
    dt = e.gdtype(node.input[0])
    return [gys[0] if dt == e.gdtype(node.output[0]) else e.op("Cast", gys[0], to=dt)]


def _along_axis(e: Emitter, scale: str, like: str, axis: int, dt: int) -> str:
    """A quantisation scale broadcastable against ``like``: scalar, or 1-D per channel ``axis``."""
    s, rank = e.fwd(scale, dt), e.info.rank(like)
    if e.info.rank(scale) in (None, 0) or e.info.shape(scale) == [1]:
        return s
    if rank is None:
        raise UnsupportedOpError(f"per-axis scale {scale!r} on a tensor of unknown rank")
    shape = [1] * rank
    shape[axis % rank] = -1
    return e.op("Reshape", s, e.const(np.array(shape, np.int64), "axis_shape"))


def _qdq_axis(node: onnx.NodeProto) -> int:
    a = attrs(node)
    if a.get("block_size", 0):
        raise unsupported(node, "blocked quantisation")
    return int(a.get("axis", 1))


#: the codes (lowest, highest) of each integer type QuantizeLinear writes
QUANTIZED_RANGE = {
    TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7),
}


def _quantized_type(e: Emitter, node: onnx.NodeProto) -> int:
    """QuantizeLinear's output type: ``output_dtype``, else the zero point's, else uint8."""
    if attrs(node).get("output_dtype", 0):
        return int(attrs(node)["output_dtype"])
    has_zero = len(node.input) > 2 and node.input[2]
    return (e.info.dtype(node.input[2]) or TensorProto.UINT8) if has_zero else TensorProto.UINT8


@register("QuantizeLinear")
def _quantize(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Clipped straight-through: y = clip(round(x / s) + z, lo, hi) is differentiated as
    clip(x / s + z, lo, hi), so dx = dy / s where lo <= x / s + z <= hi, else 0 (lo, hi: the
    integer type's codes). The clip matters: quantizers fold ReLU / ReLU6 into the range
    (uint8, zero point 0), and without it an INT8 network's input gradient passed through
    every folded activation (1e12 against the float model's 7.5). Float8 outputs: dy / s."""
    dt, axis = e.gdtype(node.input[0]), _qdq_axis(node)
    scale = _along_axis(e, node.input[1], node.input[0], axis, dt)
    g = e.op("Div", gys[0], scale)
    bounds = QUANTIZED_RANGE.get(_quantized_type(e, node))
    if bounds is None:
        return [g]
    t = e.op("Div", e.fwd(node.input[0], dt), scale)
    if len(node.input) > 2 and node.input[2]:
        t = e.op("Add", t, _along_axis(e, node.input[2], node.input[0], axis, dt))
    outside = e.op("Or", e.op("Less", t, e.scalar(bounds[0], dt)),  # ops of every opset
                   e.op("Greater", t, e.scalar(bounds[1], dt)))
    return [e.where(e.op("Not", outside), g, dt)]


@register("DynamicQuantizeLinear", inputs=(0,))
def _dynamic_quantize(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Straight-through with the scale it computed held constant: y = round(x / s) + z is
    differentiated as x / s + z, so dx = dy / s (dynamic quantization's activations)."""
    dt = e.gdtype(node.input[0])
    return [e.op("Div", gys[0], e.fwd(node.output[1], dt))]


@register("DequantizeLinear")
def _dequantize(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """x = (q - z) s, so dq = dx s; a QuantizeLinear -> DequantizeLinear pair passes dy as is."""
    dt = e.gdtype(node.output[0])
    return [e.op("Mul", gys[0], _along_axis(e, node.input[1], node.output[0], _qdq_axis(node), dt))]


@register("Neg")
def _neg(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = -dy."""
    return [e.op("Neg", gys[0])]


def _interval_mask(
    e: Emitter, out: str, lo: float | None, hi: float | None, g: str, dt: int
) -> str:
    """``g`` where lo < y < hi, y = the activation's output ``out`` (so lo <= y <= hi), else 0.

    For float32 4-D tensors with a static channel count the mask is built from ops ONNX
    Runtime runs in its blocked NCHWc layout (BatchNormalization as a per-channel affine map,
    Mul, Tanh), so the backward graph avoids layout reorders around every activation:
    mask = tanh(t) with t = (y - lo) * B (hi - y) (one factor for one-sided intervals) and B a
    large power of two. t is exactly 0 at the bounds (B * bound is exact, and a float difference
    is 0 only for equal operands), never NaN (an overflow gives +inf, tanh(inf) = 1), and tanh(t)
    rounds to exactly 1 for t >= 16, i.e. whenever y is more than 16 / (B (hi - lo)) (2e-36 for
    ReLU6 and ReLU) inside the interval. Otherwise the exact Greater/Less/Where form is used.
    """
    y, shape = e.fwd(out, dt), e.info.shape(out)
    channels = shape[1] if shape and len(shape) == 4 else None
    span = None if lo is None or hi is None else hi - lo
    magnitude = max(abs(v) for v in (lo, hi, 1.0) if v is not None)
    big = 2.0 ** min(120, int(np.floor(np.log2(1e38 / magnitude))))  # B * bound stays finite
    if (
        dt != TensorProto.FLOAT
        or not isinstance(channels, int)
        or big < 2**20
        or (span is not None and span <= 0)
    ):
        return _where_inside(
            e, y, *(None if v is None else e.scalar(v, dt) for v in (lo, hi)), g, dt
        )

    def affine(scale: float, bias: float) -> str:  # scale * y + bias, per channel
        v = lambda c: e.const(np.full(channels, c, np.float32), "mask_affine")
        return e.op("BatchNormalization", y, v(scale), v(bias), v(0.0), v(1.0), epsilon=0.0)

    if span is None:
        t = affine(big, -big * lo) if lo is not None else affine(-big, big * hi)
    else:
        above = y if lo == 0 else affine(1.0, -lo)
        t = e.op("Mul", above, affine(-big, big * hi))
    return e.op("Mul", g, e.op("Tanh", t))


def _where_inside(e: Emitter, y: str, lo: str | None, hi: str | None, g: str, dt: int) -> str:
    """``g`` where lo < y < hi (bounds are tensors, None for no bound), else 0."""
    conds = ([e.op("Greater", y, lo)] if lo else []) + ([e.op("Less", y, hi)] if hi else [])
    cond = conds[0] if len(conds) == 1 else e.op("And", *conds)
    return e.where(cond, g, dt)


@register("Relu")
def _relu(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy * (y > 0)."""
    dt = e.gdtype(node.input[0])
    return [_interval_mask(e, node.output[0], 0.0, None, gys[0], dt)]


@register("LeakyRelu")
def _leaky_relu(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy where x > 0, alpha * dy elsewhere (tested on y when alpha > 0: keeps fusions)."""
    dt, alpha = e.gdtype(node.input[0]), attrs(node).get("alpha", 0.01)
    t = e.fwd(node.output[0] if alpha > 0 else node.input[0], dt)
    g = gys[0]
    return [
        e.op("Where", e.op("Greater", t, e.scalar(0, dt)), g, e.op("Mul", g, e.scalar(alpha, dt)))
    ]


@register("PRelu")
def _prelu(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy where x > 0, slope * dy elsewhere (slope broadcasts to x)."""
    dt = e.gdtype(node.input[0])
    x, g = e.fwd(node.input[0], dt), gys[0]
    return [
        e.op(
            "Where",
            e.op("Greater", x, e.scalar(0, dt)),
            g,
            e.op("Mul", g, e.fwd(node.input[1], dt)),
        )
    ]


@register("Clip")
def _clip(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy * (min < x < max), i.e. 1 strictly inside the interval. ``min < y < max`` holds
    exactly when it holds for x, so the mask is computed from the output (keeps Conv+Clip fused)."""
    dt, (lo, hi) = e.gdtype(node.input[0]), (_input(node, i) for i in (1, 2))
    if not lo and not hi:
        return [gys[0]]
    values = [e.info.value(b) if b else None for b in (lo, hi)]
    if any(b and v is None for b, v in zip((lo, hi), values)):  # bounds computed at run time
        bounds = (e.fwd(b, dt) if b else None for b in (lo, hi))
        return [_where_inside(e, e.fwd(node.output[0], dt), *bounds, gys[0], dt)]
    lo_v, hi_v = (None if v is None else float(v.reshape(())) for v in values)
    return [_interval_mask(e, node.output[0], lo_v, hi_v, gys[0], dt)]


@register("Sigmoid")
def _sigmoid(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy * y * (1 - y)."""
    dt = e.gdtype(node.input[0])
    y = e.fwd(node.output[0], dt)
    return [e.op("Mul", e.op("Mul", gys[0], y), e.op("Sub", e.scalar(1, dt), y))]


@register("HardSigmoid")
def _hard_sigmoid(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = alpha * dy * (0 < y < 1), y = max(0, min(1, alpha x + beta))."""
    dt, alpha = e.gdtype(node.input[0]), attrs(node).get("alpha", 0.2)
    g = e.op("Mul", gys[0], e.scalar(alpha, dt))
    return [_interval_mask(e, node.output[0], 0.0, 1.0, g, dt)]


@register("HardSwish")
def _hard_swish(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """y = x * relu6(x + 3) / 6: dx = dy * (0 if x < -3, 1 if x > 3, else x / 3 + 1/2)."""
    dt = e.gdtype(node.input[0])
    x, g = e.fwd(node.input[0], dt), gys[0]
    mid = e.op("Mul", g, e.op("Add", e.op("Mul", x, e.scalar(1 / 3, dt)), e.scalar(0.5, dt)))
    upper = e.op("Where", e.op("Greater", x, e.scalar(3, dt)), g, mid)
    return [e.op("Where", e.op("Less", x, e.scalar(-3, dt)), e.scalar(0, dt), upper)]


@register("Tanh")
def _tanh(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy * (1 - y^2)."""
    dt = e.gdtype(node.input[0])
    y = e.fwd(node.output[0], dt)
    return [e.op("Mul", gys[0], e.op("Sub", e.scalar(1, dt), e.op("Mul", y, y)))]


@register("Erf")
def _erf(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy * 2 / sqrt(pi) * exp(-x^2)."""
    dt = e.gdtype(node.input[0])
    x = e.fwd(node.input[0], dt)
    d = e.op("Exp", e.op("Neg", e.op("Mul", x, x)))
    return [e.op("Mul", gys[0], e.op("Mul", d, e.scalar(2 / np.sqrt(np.pi), dt)))]


@register("Gelu")
def _gelu(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Exact: dx = dy (Phi(x) + x phi(x)). Tanh form, t = tanh(u), u = c (x + 0.044715 x^3):
    dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)), c = sqrt(2 / pi)."""
    dt = e.gdtype(node.input[0])
    x, s = e.fwd(node.input[0], dt), lambda v: e.scalar(v, dt)
    x2 = e.op("Mul", x, x)
    if attrs(node).get("approximate", "none") == "tanh":
        c = np.sqrt(2 / np.pi)
        t = e.op("Tanh", e.op("Mul", x, e.op("Add", s(c), e.op("Mul", x2, s(c * 0.044715)))))
        du = e.op("Add", s(c), e.op("Mul", x2, s(3 * c * 0.044715)))
        half_x = e.op("Mul", x, s(0.5))
        d = e.op(
            "Add",
            e.op("Mul", e.op("Add", t, s(1)), s(0.5)),
            e.op("Mul", e.op("Mul", half_x, e.op("Sub", s(1), e.op("Mul", t, t))), du),
        )
    else:
        cdf = e.op("Mul", e.op("Add", e.op("Erf", e.op("Mul", x, s(1 / np.sqrt(2)))), s(1)), s(0.5))
        pdf = e.op("Mul", e.op("Exp", e.op("Mul", x2, s(-0.5))), s(1 / np.sqrt(2 * np.pi)))
        d = e.op("Add", cdf, e.op("Mul", x, pdf))
    return [e.op("Mul", gys[0], d)]


@register("Sqrt")
def _sqrt(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy / (2 y)."""
    dt = e.gdtype(node.input[0])
    return [e.op("Div", e.op("Mul", gys[0], e.scalar(0.5, dt)), e.fwd(node.output[0], dt))]


@register("Exp")
def _exp(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy * y."""
    return [e.op("Mul", gys[0], e.fwd(node.output[0], e.gdtype(node.input[0])))]


@register("Log")
def _log(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy / x."""
    return [e.op("Div", gys[0], e.fwd(node.input[0], e.gdtype(node.input[0])))]


@register("Reciprocal")
def _reciprocal(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = -dy * y^2."""
    y = e.fwd(node.output[0], e.gdtype(node.input[0]))
    return [e.op("Neg", e.op("Mul", gys[0], e.op("Mul", y, y)))]


@register("Softplus")
def _softplus(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = dy * sigmoid(x)."""
    return [e.op("Mul", gys[0], e.op("Sigmoid", e.fwd(node.input[0], e.gdtype(node.input[0]))))]


# ----------------------------------------------------------------------------- broadcasting binary


def _binary(e: Emitter, node: onnx.NodeProto) -> tuple[str, str, int, Shape | None]:
    dt = e.gdtype(node.output[0])
    return node.input[0], node.input[1], dt, e.info.shape(node.output[0])


@register("Add", "Sub", inputs=(0, 1))
def _add_sub(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """da = unbroadcast(dy), db = unbroadcast(+-dy)."""
    a, b, _, ys = _binary(e, node)
    g = gys[0]
    gb = e.op("Neg", g) if node.op_type == "Sub" and need[1] else g
    return [
        unbroadcast(e, g, ys, a) if need[0] else None,
        unbroadcast(e, gb, ys, b) if need[1] else None,
    ]


@register("Mul", inputs=(0, 1))
def _mul(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """da = unbroadcast(dy * b), db = unbroadcast(dy * a)."""
    a, b, dt, ys = _binary(e, node)
    g = gys[0]
    return [
        unbroadcast(e, e.op("Mul", g, e.fwd(b, dt)), ys, a) if need[0] else None,
        unbroadcast(e, e.op("Mul", g, e.fwd(a, dt)), ys, b) if need[1] else None,
    ]


@register("Div", inputs=(0, 1))
def _div(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """da = unbroadcast(dy / b), db = unbroadcast(-dy * y / b)."""
    a, b, dt, ys = _binary(e, node)
    g, bv = gys[0], e.fwd(b, dt)
    ga = e.op("Div", g, bv)
    gb = e.op("Neg", e.op("Mul", ga, e.fwd(node.output[0], dt))) if need[1] else None
    return [
        unbroadcast(e, ga, ys, a) if need[0] else None,
        unbroadcast(e, gb, ys, b) if need[1] else None,
    ]


@register("Pow", inputs=(0, 1))
def _pow(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """y = a^b: da = unbroadcast(dy * b * a^(b-1)), db = unbroadcast(dy * y * ln a)."""
    a, b, dt, ys = _binary(e, node)
    g, av, bv = gys[0], e.fwd(a, dt), e.fwd(b, dt)
    out: Grads = [None, None]
    if need[0]:
        d = e.op("Mul", bv, e.op("Pow", av, e.op("Sub", bv, e.scalar(1, dt))))
        out[0] = unbroadcast(e, e.op("Mul", g, d), ys, a)
    if need[1]:
        d = e.op("Mul", e.fwd(node.output[0], dt), e.op("Log", av))
        out[1] = unbroadcast(e, e.op("Mul", g, d), ys, b)
    return out


@register("Sum", inputs=None)
def _sum(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx_i = unbroadcast(dy)."""
    ys = e.info.shape(node.output[0])
    return [unbroadcast(e, gys[0], ys, x) if n else None for x, n in zip(node.input, need)]


@register("Expand")
def _expand(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = unbroadcast(dy)."""
    return [unbroadcast(e, gys[0], e.info.shape(node.output[0]), node.input[0])]


@register("Where", inputs=(1, 2))
def _where(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = unbroadcast(where(c, dy, 0)), dy_ = unbroadcast(where(c, 0, dy)); c has none."""
    c, x, y = node.input
    dt, ys, g = e.gdtype(node.output[0]), e.info.shape(node.output[0]), gys[0]
    zero = e.scalar(0, dt)
    return [
        None,
        unbroadcast(e, e.op("Where", c, g, zero), ys, x) if need[1] else None,
        unbroadcast(e, e.op("Where", c, zero, g), ys, y) if need[2] else None,
    ]


# ----------------------------------------------------------------------------- linear algebra


def _swap_last2(e: Emitter, x: str, rank: int) -> str:
    return e.op("Transpose", x, perm=[*range(rank - 2), rank - 1, rank - 2])


@register("MatMul", inputs=(0, 1))
def _matmul(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """y = a @ b (batched, broadcast): da = unbroadcast(dy @ b^T), db = unbroadcast(a^T @ dy).
    1-D operands are lifted to (1, k) / (k, 1) and dy gets the matching unit axis."""
    a, b = node.input
    dt, ra, rb = e.gdtype(node.output[0]), _rank(e, node, a), _rank(e, node, b)
    ys = e.info.shape(node.output[0])
    if ys is None:
        raise unsupported(node, "the output shape is unknown")
    g, gs = gys[0], list(ys)
    if ra == 1 and rb == 1:
        g, gs = e.op("Reshape", g, e.ints([1, 1])), [1, 1]
    elif ra == 1:
        g, gs = e.unsqueeze(g, [len(ys) - 1]), [*ys[:-1], 1, ys[-1]]
    elif rb == 1:
        g, gs = e.unsqueeze(g, [len(ys)]), [*ys, 1]
    av, bv = e.fwd(a, dt), e.fwd(b, dt)
    a2 = e.op("Reshape", av, e.ints([1, -1])) if ra == 1 else av
    b2 = e.op("Reshape", bv, e.ints([-1, 1])) if rb == 1 else bv
    a_s, b_s = e.info.shape(a), e.info.shape(b)
    out: Grads = [None, None]
    if need[0]:
        ga = e.op("MatMul", g, _swap_last2(e, b2, max(rb, 2)))
        out[0] = unbroadcast(e, ga, [*gs[:-1], a_s[-1]], a)
    if need[1]:
        gb = e.op("MatMul", _swap_last2(e, a2, max(ra, 2)), g)
        if rb == 1:  # (..., k, 1) -> (..., k)
            out[1] = unbroadcast(e, e.squeeze(gb, [-1]), [*gs[:-2], b_s[0]], b)
        else:
            out[1] = unbroadcast(e, gb, [*gs[:-2], b_s[-2], gs[-1]], b)
    return out


@register("Gemm", inputs=(0, 1, 2))
def _gemm(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """y = alpha A' B' + beta C (A' = A or A^T, B' likewise): dA' = alpha dy B'^T,
    dB' = alpha A'^T dy, dC = unbroadcast(beta dy). Each product is one Gemm."""
    at = attrs(node)
    ta, tb = at.get("transA", 0), at.get("transB", 0)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    dt, g = e.gdtype(node.output[0]), gys[0]
    a, b = e.fwd(node.input[0], dt), e.fwd(node.input[1], dt)
    out: Grads = [None, None, None]
    if need[0]:
        out[0] = (
            e.op("Gemm", b, g, transA=tb, transB=1, alpha=alpha)
            if ta
            else e.op("Gemm", g, b, transA=0, transB=1 - tb, alpha=alpha)
        )
    if need[1]:
        out[1] = (
            e.op("Gemm", g, a, transA=1, transB=ta, alpha=alpha)
            if tb
            else e.op("Gemm", a, g, transA=1 - ta, transB=0, alpha=alpha)
        )
    if len(need) > 2 and need[2]:
        gc = g if beta == 1 else e.op("Mul", g, e.scalar(beta, dt))
        out[2] = unbroadcast(e, gc, e.info.shape(node.output[0]), node.input[2])
    return out


# ----------------------------------------------------------------------------- convolution


def _spatial(e: Emitter, x: str, n: int) -> list[int | None]:
    s = e.info.shape(x)
    if s is None:
        return [None] * n
    return [d if isinstance(d, int) else None for d in s[2:]]


def _conv_pads(
    node: onnx.NodeProto,
    at: dict[str, Any],
    sizes: list[int | None],
    dk: list[int],
    strides: list[int],
) -> tuple[list[int], list[int]]:
    """Explicit (begin, end) pads, resolving auto_pad from static input sizes."""
    n = len(dk)
    mode = at.get("auto_pad", "NOTSET")
    if mode == "NOTSET":
        pads = at.get("pads", [0] * 2 * n)
        return list(pads[:n]), list(pads[n:])
    if mode == "VALID":
        return [0] * n, [0] * n
    begin, end = [], []
    for size, k, s in zip(sizes, dk, strides):
        if s == 1:
            total = k - 1
        elif size is None:
            raise unsupported(node, f"auto_pad={mode} with stride {s} needs static spatial sizes")
        else:
            total = max((-(-size // s) - 1) * s + k - size, 0)
        small = total // 2
        begin.append(small if mode == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin, end


def _flip_transpose(w: np.ndarray, group: int) -> np.ndarray:
    """Conv weights (M, C/g, *k) -> the adjoint's weights (C, M/g, *k), spatially flipped."""
    m, cg, *k = w.shape
    wt = w.reshape(group, m // group, cg, *k).swapaxes(1, 2).reshape(group * cg, m // group, *k)
    return np.ascontiguousarray(np.flip(wt, axis=tuple(range(2, 2 + len(k)))))


def _slice_to(e: Emitter, g: str, like: str, first_axis: int, rank: int) -> str:
    """Crop ``g`` to the run-time shape of ``like`` on axes first_axis..rank-1."""
    axes = list(range(first_axis, rank))
    ends = e.op("Slice", e.shape(like), e.ints([first_axis]), e.ints([rank]))
    return e.op("Slice", g, e.ints([0] * len(axes)), ends, e.ints(axes))


def _zero_insert(e: Emitter, g: str, channels: int, strides: list[int], dtype: int) -> str:
    """dy with stride - 1 zeros between its elements: a 1x1 ConvTranspose with unit weights."""
    ones = e.const(np.ones((channels, 1, *[1] * len(strides)), _np_dtype(dtype)), "ones")
    return e.op(
        "ConvTranspose", g, ones, group=channels, strides=strides, kernel_shape=[1] * len(strides)
    )


@dataclass
class _ConvShape:
    """A Conv node's geometry, with auto_pad resolved to explicit begin/end pads."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    group: int
    sizes: list[int | None]  # input spatial sizes (None: dynamic)
    out: list[int | None]  # output spatial sizes
    span: list[int]  # dilated kernel extent (k - 1) d + 1
    begin: list[int]
    end: list[int]

    @classmethod
    def of(cls, e: Emitter, node: onnx.NodeProto) -> _ConvShape:
        at, w_shape = attrs(node), e.info.shape(node.input[1])
        kernel = at.get("kernel_shape") or (w_shape[2:] if w_shape else None)
        if not kernel or not all(isinstance(k, int) for k in kernel):
            raise unsupported(node, "the kernel shape is unknown")
        n = len(kernel)
        strides, dil = at.get("strides", [1] * n), at.get("dilations", [1] * n)
        sizes, out = _spatial(e, node.input[0], n), _spatial(e, node.output[0], n)
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
        begin, end = _conv_pads(node, at, sizes, span, strides)
        return cls(kernel, strides, dil, at.get("group", 1), sizes, out, span, begin, end)


def _conv_adjoint_as_conv(e: Emitter, c: _ConvShape, w: np.ndarray, g: str, dt: int) -> str | None:
    """Conv(dy', W') with W' flipped and group-transposed, or None where it does not apply.
    dy' is dy for stride 1 and dy with zeros inserted (length (out - 1) s + 1) for strided
    depthwise convs; the pads then make the output exactly x's size."""
    strided = any(s > 1 for s in c.strides)
    if strided and (c.group != w.shape[0] or None in c.sizes + c.out):
        return None
    z = _zero_insert(e, g, c.group, c.strides, dt) if strided else g
    begin = [k - 1 - b for k, b in zip(c.span, c.begin)]
    end = [
        k - 1 - p if s == 1 else size - (o - 1) * s - 1 + b
        for k, p, s, size, o, b in zip(c.span, c.end, c.strides, c.sizes, c.out, c.begin)
    ]
    if min(begin + end) < 0:
        return None
    wf = e.const(_flip_transpose(w, c.group).astype(_np_dtype(dt)), "w_adjoint")
    return e.op(
        "Conv", z, wf, kernel_shape=c.kernel, dilations=c.dilations, group=c.group, pads=begin + end
    )


@register("Conv")
def _conv(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = ConvTranspose(dy, W) with the forward strides, pads, dilations and group, and the
    output padding that restores x's size. With a constant W the same adjoint is computed as a
    stride-1 Conv with flipped weights where that applies (stride 1, and strided depthwise
    convs after zero insertion): ONNX Runtime runs it in its NCHWc kernels, measured faster
    than ConvTranspose (about 4x for the depthwise 3x3 stride-2 adjoint at 112x112)."""
    x, w = node.input[0], node.input[1]
    c, dt, g = _ConvShape.of(e, node), e.gdtype(x), gys[0]
    wv = e.info.value(w)
    fast = None if wv is None else _conv_adjoint_as_conv(e, c, wv, g, dt)
    if fast is not None:
        return [fast]
    opad = [
        s - 1 if size is None else (size + b + en - k) % s
        for size, b, en, k, s in zip(c.sizes, c.begin, c.end, c.span, c.strides)
    ]
    gx = e.op(
        "ConvTranspose",
        g,
        e.fwd(w, dt),
        kernel_shape=c.kernel,
        strides=c.strides,
        dilations=c.dilations,
        group=c.group,
        pads=c.begin + c.end,
        output_padding=opad,
    )
    if None in c.sizes and any(s > 1 for s in c.strides):
        gx = _slice_to(e, gx, x, 2, len(c.kernel) + 2)
    return [gx]


@register("ConvTranspose")
def _conv_transpose(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """The adjoint of ConvTranspose(x, W) is Conv(dy, W) with the same strides, dilations and
    group, begin pads, and end pads minus output_padding (cropped if that is negative)."""
    x, w = node.input[0], node.input[1]
    at = attrs(node)
    if at.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or "output_shape" in at:
        raise unsupported(node, "only explicit pads and output_padding are supported")
    w_shape = e.info.shape(w)
    kernel = at.get("kernel_shape") or (w_shape[2:] if w_shape else None)
    if not kernel:
        raise unsupported(node, "the kernel shape is unknown")
    n = len(kernel)
    pads = at.get("pads", [0] * 2 * n) if at.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 2 * n
    opad = at.get("output_padding", [0] * n)
    end = [p - o for p, o in zip(pads[n:], opad)]
    dt = e.gdtype(x)
    gx = e.op(
        "Conv",
        gys[0],
        e.fwd(w, dt),
        kernel_shape=kernel,
        strides=at.get("strides", [1] * n),
        dilations=at.get("dilations", [1] * n),
        group=at.get("group", 1),
        pads=list(pads[:n]) + [max(v, 0) for v in end],
    )
    if min(end) < 0:
        gx = _slice_to(e, gx, x, 2, n + 2)
    return [gx]


# ----------------------------------------------------------------------------- normalization


@register("BatchNormalization")
def _batch_norm(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Inference mode, y = scale (x - mean) / sqrt(var + eps) + bias:
    dx = dy * scale / sqrt(var + eps), per channel (axis 1)."""
    at = attrs(node)
    if at.get("training_mode", 0) or any(gys[1:]):
        raise unsupported(node, "training-mode batch normalization")
    x, scale, _, _, var = node.input[:5]
    dt, eps, rank = e.gdtype(x), at.get("epsilon", 1e-5), _rank(e, node, x)
    sv, vv = e.info.value(scale), e.info.value(var)
    if sv is not None and vv is not None:
        f = (sv.astype(np.float64) / np.sqrt(vv.astype(np.float64) + eps)).astype(_np_dtype(dt))
        factor = e.const(f.reshape(-1, *[1] * (rank - 2)), "bn_factor")
    else:
        f = e.op(
            "Div", e.fwd(scale, dt), e.op("Sqrt", e.op("Add", e.fwd(var, dt), e.scalar(eps, dt)))
        )
        factor = e.op("Reshape", f, e.ints([-1, *[1] * (rank - 2)]))
    return [e.op("Mul", gys[0], factor)]


@register("LayerNormalization")
def _layer_norm(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """y = xhat * scale + bias, xhat = (x - mu) * r, r = 1 / sqrt(var + eps) over axes axis..:
    with h = dy * scale, dx = r * (h - mean(h) - xhat * mean(h * xhat))."""
    if any(gys[1:]):
        raise unsupported(node, "gradients of the Mean/InvStdDev outputs")
    at = attrs(node)
    x = node.input[0]
    dt, rank = e.gdtype(x), _rank(e, node, x)
    axes = list(range(at.get("axis", -1) % rank, rank))
    xv = e.fwd(x, dt)
    xc = e.op("Sub", xv, e.reduce("ReduceMean", xv, axes))
    var = e.reduce("ReduceMean", e.op("Mul", xc, xc), axes)
    r = e.op(
        "Div",
        e.scalar(1, dt),
        e.op("Sqrt", e.op("Add", var, e.scalar(at.get("epsilon", 1e-5), dt))),
    )
    xhat = e.op("Mul", xc, r)
    h = e.op("Mul", gys[0], e.fwd(node.input[1], dt))
    inner = e.op(
        "Sub",
        e.op("Sub", h, e.reduce("ReduceMean", h, axes)),
        e.op("Mul", xhat, e.reduce("ReduceMean", e.op("Mul", h, xhat), axes)),
    )
    return [e.op("Mul", r, inner)]


@register("Softmax", "LogSoftmax")
def _softmax(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Softmax: dx = y * (dy - sum(dy * y)); LogSoftmax: dx = dy - exp(y) * sum(dy).
    Sums over ``axis`` (opset >= 13) or over axes axis.. (the 2-D coercion of older opsets)."""
    x = node.input[0]
    dt, rank = e.gdtype(x), _rank(e, node, x)
    new = e.opset >= 13
    axis = attrs(node).get("axis", -1 if new else 1) % rank
    axes = [axis] if new else list(range(axis, rank))
    y, g = e.fwd(node.output[0], dt), gys[0]
    if node.op_type == "Softmax":
        s = e.reduce("ReduceSum", e.op("Mul", g, y), axes)
        return [e.op("Mul", y, e.op("Sub", g, s))]
    return [e.op("Sub", g, e.op("Mul", e.op("Exp", y), e.reduce("ReduceSum", g, axes)))]


# ----------------------------------------------------------------------------- reductions, pooling


@register("ReduceMean", "ReduceSum")
def _reduce(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = expand(dy with the reduced axes restored) (/ count for the mean)."""
    x, at = node.input[0], attrs(node)
    dt, rank = e.gdtype(x), _rank(e, node, x)
    axes = at.get("axes")
    if _input(node, 1):
        axes = _const_ints(e, node, node.input[1], "the axes input")
    if not axes:
        if at.get("noop_with_empty_axes", 0):
            return [gys[0]]
        axes = list(range(rank))
    axes, g = _norm_axes(axes, rank), gys[0]
    if not at.get("keepdims", 1):
        g = e.unsqueeze(g, sorted(axes))
    if node.op_type == "ReduceMean":
        g = e.op("Div", g, _count(e, x, axes, node.output[0], dt))
    return [e.op("Expand", g, e.shape(x))]


@register("GlobalAveragePool")
def _global_average_pool(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = expand(dy / (H * W)) over the spatial axes."""
    x = node.input[0]
    dt, rank = e.gdtype(x), _rank(e, node, x)
    g = e.op("Div", gys[0], _count(e, x, range(2, rank), node.output[0], dt))
    return [e.op("Expand", g, e.shape(x))]


def _probe_matrix(
    e: Emitter,
    op_type: str,
    at: dict[str, Any],
    extra: dict[str, np.ndarray],
    input_names: Sequence[str],
    length: int,
    axis: int,
    rank: int,
) -> np.ndarray:
    """The (L_in, L_out) matrix M of a separable linear op along ``axis``: y = M^T x there.
    Found by running the op on the identity basis (stacked on axis 0) with the emitter's
    evaluator: the model passes ONNX Runtime's (:func:`blackbox_xai.runtime.evaluate`), so the
    adjoint reproduces the semantics of the runtime that runs the forward pass (rounding modes,
    padding counts; they differ from the reference evaluator for opset-11 Resize)."""
    shape = [length if k in (0, axis) else 1 for k in range(rank)]
    probe = np.eye(length, dtype=np.float32).reshape(shape)
    names = [n if n == "" or n in extra else "P" for n in input_names]
    if op_type == "Resize" and e.opset < 13:  # roi and scales are required inputs: empty tensors
        names = [n or f"empty{i}" for i, n in enumerate(names)]
        extra = {**{f"empty{i}": np.zeros(0, np.float32) for i in (1, 2)}, **extra}
        names = names[:4] if "sizes" in extra else names[:3]
    inits = [numpy_helper.from_array(v, k) for k, v in extra.items() if k in names]
    node = helper.make_node(op_type, names, ["Y"], **at)
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("P", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", e.opset)])
    model.ir_version = e.info.ir_version
    (y,) = e.evaluate(model, {"P": probe})
    return y.reshape(length, -1)


def _apply_along(e: Emitter, g: str, mats: dict[int, np.ndarray], rank: int, dtype: int) -> str:
    """Apply each M (L_in, L_out) along its axis: g (.., L_out, ..) -> (.., L_in, ..)."""
    for axis, m in mats.items():
        m = m.astype(_np_dtype(dtype))
        if axis == rank - 1:
            g = e.op("MatMul", g, e.const(m.T, "pool_matrix"))
        elif axis == rank - 2:
            g = e.op("MatMul", e.const(m, "pool_matrix"), g)
        else:
            perm = [*[k for k in range(rank) if k != axis], axis]
            t = e.op("MatMul", e.op("Transpose", g, perm=perm), e.const(m.T, "pool_matrix"))
            g = e.op("Transpose", t, perm=[int(i) for i in np.argsort(perm)])
    return g


@register("AveragePool")
def _average_pool(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Average pooling is separable and linear: y = A_H x A_W^T per plane, so
    dx = A_H^T dy A_W, with each A read off ORT's AveragePool on a basis (pads, ceil_mode,
    count_include_pad and dilations included)."""
    x, at = node.input[0], attrs(node)
    rank = _rank(e, node, x)
    n, sizes = rank - 2, _spatial(e, x, rank - 2)
    if None in sizes:
        raise unsupported(node, "the spatial sizes must be static")
    mats = {}
    for j in range(n):
        one = {
            k: [v[j] if i == j else 1 for i in range(n)]
            for k, v in at.items()
            if k in ("kernel_shape", "strides", "dilations")
        }
        pads = at.get("pads")
        if pads is not None:
            one["pads"] = [pads[j] if i == j else 0 for i in range(n)] + [
                pads[n + j] if i == j else 0 for i in range(n)
            ]
        rest = {k: v for k, v in at.items() if k not in one and k != "pads"}
        mats[j + 2] = _probe_matrix(
            e, "AveragePool", {**rest, **one}, {}, [x], sizes[j], j + 2, rank
        )
    return [_apply_along(e, gys[0], mats, rank, e.gdtype(x))]


@register("Resize")
def _resize(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Resize (nearest, linear, cubic; any coordinate mode) is linear and separable:
    dx = apply M_j along every resized axis j, with M_j read off ORT's Resize on a basis.
    Needs static sizes on the resized axes and constant scales/sizes."""
    x, y, at = node.input[0], node.output[0], attrs(node)
    rank = _rank(e, node, x)
    xs, ys = e.info.shape(x), e.info.shape(y)
    if "axes" in at or at.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise unsupported(node, "the axes / keep_aspect_ratio_policy attributes")
    roi, scales, sizes = _input(node, 1), _input(node, 2), _input(node, 3)
    sv = None if not scales else e.info.value(scales)
    if sv is not None and sv.size == 0:
        sv = None
    if sv is None and not sizes:
        raise unsupported(node, "the scales must be constant")
    if ys is None:
        raise unsupported(node, "the output shape is unknown")
    # two unknown batch sizes: the model runs at any batch (verified), so axis 0 is not resized
    batch = not isinstance(xs[0], int) and not isinstance(ys[0], int)
    resized = [j for j in range(rank) if (xs[j] != ys[j] if sv is None else sv[j] != 1)
               and not (j == 0 and batch and sv is None)]
    if (
        any(not isinstance(xs[j], int) or not isinstance(ys[j], int) for j in resized)
        or 0 in resized
    ):
        raise unsupported(
            node, "resized axes need static sizes (and the batch axis must not be resized)"
        )
    rv = e.info.value(roi) if roi else None
    mats = {}
    for j in resized:
        extra, names = {}, [x, "", "", ""]
        if rv is not None and rv.size:
            r = np.array([0.0] * rank + [1.0] * rank, rv.dtype)
            r[j], r[rank + j] = rv[j], rv[rank + j]
            extra["roi"], names[1] = r, "roi"
        if sv is not None:
            s = np.ones(rank, np.float32)
            s[j] = sv[j]
            extra["scales"], names[2] = s, "scales"
        else:
            extra["sizes"], names[3] = (
                np.array(
                    [ys[j] if k == j else (xs[j] if k == 0 else 1) for k in range(rank)], np.int64
                ),
                "sizes",
            )
        mats[j] = _probe_matrix(e, "Resize", at, extra, names, xs[j], j, rank)
    return [_apply_along(e, gys[0], mats, rank, e.gdtype(x))]


@register("MaxPool")
def _max_pool(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = scatter-add of dy into zeros at the argmax of each window (MaxPool's Indices output,
    flat over N*C*H*W, from a second MaxPool so the forward one keeps its fast kernel; ties
    have one winner). Without ScatterElements' reduction (opset < 16), windows are split into
    phases (every P-th window per axis, P = ceil(dk / stride)) that do not overlap and are
    accumulated with GatherElements + Add + ScatterElements."""
    x, at = node.input[0], attrs(node)
    if at.get("storage_order", 0):
        raise unsupported(node, "storage_order=1")
    idx = node.output[1] if len(node.output) > 1 and node.output[1] else None
    if idx is None:
        idx = e.op_n("MaxPool", [x], 2, **at)[1]
    dt, g = e.gdtype(x), gys[0]
    flat = e.ints([-1])
    zeros = e.zeros(e.op("Reshape", e.op("Size", x), flat), dt)
    kernel = at["kernel_shape"]
    n = len(kernel)
    strides, dil = at.get("strides", [1] * n), at.get("dilations", [1] * n)
    phases = [-(-((k - 1) * d + 1) // s) for k, d, s in zip(kernel, dil, strides)]
    if e.opset >= 16:
        acc = e.op(
            "ScatterElements",
            zeros,
            e.op("Reshape", idx, flat),
            e.op("Reshape", g, flat),
            axis=0,
            reduction="add",
        )
    else:
        acc = zeros
        for start in itertools.product(*[range(p) for p in phases]):
            sl = [
                e.ints(start),
                e.ints([np.iinfo(np.int64).max] * n),
                e.ints(range(2, n + 2)),
                e.ints(phases),
            ]
            i = e.op("Reshape", e.op("Slice", idx, *sl), flat)
            u = e.op("Reshape", e.op("Slice", g, *sl), flat)
            if max(phases) > 1:
                u = e.op("Add", e.op("GatherElements", acc, i, axis=0), u)
            acc = e.op("ScatterElements", acc, i, u, axis=0)
    return [e.reshape_like(acc, x)]


# ----------------------------------------------------------------------------- shape plumbing


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _reshape(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = reshape(dy, shape(x))."""
    return [e.reshape_like(gys[0], node.input[0])]


@register("Transpose")
def _transpose(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = transpose(dy, inverse(perm))."""
    perm = attrs(node).get("perm") or list(range(_rank(e, node, node.input[0])))[::-1]
    return [e.op("Transpose", gys[0], perm=[int(i) for i in np.argsort(perm)])]


@register("Concat", inputs=None)
def _concat(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx_i = the i-th block of dy along ``axis`` (Split with static sizes, else Slices)."""
    rank = _rank(e, node, node.input[0])
    axis = attrs(node)["axis"] % rank
    shapes = [e.info.shape(i) for i in node.input]
    sizes = [s[axis] if s is not None else None for s in shapes]
    if all(isinstance(s, int) for s in sizes):
        parts = e.split(gys[0], sizes, axis)
        return [p if n else None for p, n in zip(parts, need)]
    out: Grads = []
    start = e.ints([0])
    for x, n in zip(node.input, need):
        end = e.op("Add", start, e.dim(x, axis))
        out.append(e.op("Slice", gys[0], start, end, e.ints([axis])) if n else None)
        start = end
    return out


@register("Split")
def _split(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = concat(dy_i) along ``axis``, zeros for outputs that get no gradient."""
    x = node.input[0]
    axis, dt = attrs(node).get("axis", 0), e.gdtype(x)
    parts = [g if g else e.zeros(e.shape(y), dt) for g, y in zip(gys, node.output)]
    return [e.op("Concat", *parts, axis=axis)]


@register("Slice")
def _slice(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Per sliced axis a, the kept indices are Slice(Range(0, dim_a), start, end, step); dx puts
    dy back at those indices with ScatterElements into zeros (indices are distinct)."""
    x = node.input[0]
    dt, rank = e.gdtype(x), _rank(e, node, x)
    starts, ends = node.input[1], node.input[2]
    axes_in, steps = _input(node, 3), _input(node, 4)
    if axes_in:
        axes = _const_ints(e, node, axes_in, "the axes input")
    else:
        sv = e.info.value(starts)
        n = sv.size if sv is not None else (e.info.shape(starts) or [None])[0]
        if not isinstance(n, int):
            raise unsupported(node, "the number of sliced axes is unknown")
        axes = list(range(n))

    def element(name: str, k: int) -> str:
        return e.op("Slice", name, e.ints([k]), e.ints([k + 1]))

    g = gys[0]
    zero, one = e.scalar(0, TensorProto.INT64), e.scalar(1, TensorProto.INT64)
    for k, a in enumerate(_norm_axes(axes, rank)):
        dim = e.op("Reshape", e.dim(x, a), e.ints([]))
        kept = e.op(
            "Slice",
            e.op("Range", zero, dim, one),
            element(starts, k),
            element(ends, k),
            e.ints([0]),
            *([element(steps, k)] if steps else []),
        )
        shape = [1] * rank
        shape[a] = -1
        idx = e.op("Expand", e.op("Reshape", kept, e.ints(shape)), e.shape(g))
        mask = e.const(np.arange(rank) == a, "axis_mask")
        full = e.op("Where", mask, e.shape(x), e.shape(g))
        g = e.op("ScatterElements", e.zeros(full, dt), idx, g, axis=a)
    return [g]


@register("Gather")
def _gather(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """dx = onehot(indices, dim)^T @ dy, contracting the indices' axes (duplicate indices add up).
    dy is reshaped to (x.shape[:axis], n_indices, rest) and the product reshaped to x's shape."""
    x, ind = node.input
    dt, rank = e.gdtype(x), _rank(e, node, x)
    axis = attrs(node).get("axis", 0) % rank
    depth = e.dim(x, axis)
    i = e.op("Reshape", e.op("Cast", ind, to=TensorProto.INT64), e.ints([-1, 1]))
    i = e.op("Where", e.op("Less", i, e.ints([0])), e.op("Add", i, depth), i)
    positions = e.op(
        "Range",
        e.scalar(0, TensorProto.INT64),
        e.op("Reshape", depth, e.ints([])),
        e.scalar(1, TensorProto.INT64),
    )
    onehot_t = e.op("Transpose", e.op("Cast", e.op("Equal", i, positions), to=dt), perm=[1, 0])
    pre = e.op("Slice", e.shape(x), e.ints([0]), e.ints([axis]))
    n_idx = e.op("Reshape", e.op("Size", ind), e.ints([1]))
    g3 = e.op("Reshape", gys[0], e.op("Concat", pre, n_idx, e.ints([-1]), axis=0))
    return [e.reshape_like(e.op("MatMul", onehot_t, g3), x), None]


@register("Pad")
def _pad(e: Emitter, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    """Constant mode, pads p (negative = crop): y = crop_{max(-p,0)}(zeropad_{max(p,0)}(x)), so
    dx = slice(zeropad_{max(-p,0)}(dy)) starting at max(p_begin, 0), with x's size."""
    at = attrs(node)
    if at.get("mode", "constant") != "constant":
        raise unsupported(node, f"mode={at['mode']!r} (only constant padding)")
    x, pads = node.input[0], node.input[1]
    rank = _rank(e, node, x)
    axes_in = _input(node, 3)
    axes = (
        _norm_axes(_const_ints(e, node, axes_in, "the axes input"), rank)
        if axes_in
        else list(range(rank))
    )
    n, g = len(axes), gys[0]
    pv = e.info.value(pads)
    if pv is not None:
        pv = pv.astype(np.int64)
        begin = e.ints(np.maximum(pv[:n], 0))
        if (pv < 0).any():
            g = e.op(
                "Pad",
                g,
                e.ints(np.maximum(-pv, 0)),
                *([e.scalar(0, e.gdtype(x)), axes_in] if axes_in else []),
            )
    else:
        pf = e.op("Cast", pads, to=TensorProto.FLOAT)
        pos = e.op("Cast", e.op("Relu", pf), to=TensorProto.INT64)
        neg = e.op("Cast", e.op("Relu", e.op("Neg", pf)), to=TensorProto.INT64)
        g = e.op("Pad", g, neg, *([e.scalar(0, e.gdtype(x)), axes_in] if axes_in else []))
        begin = e.op("Slice", pos, e.ints([0]), e.ints([n]))
    sizes = e.op("Gather", e.shape(x), e.ints(axes), axis=0)
    return [e.op("Slice", g, begin, e.op("Add", begin, sizes), e.ints(axes))]
