"""INT8 models in ONNX Runtime's QOperator and dynamic formats, rewritten in the QDQ format.

``quantize_static(..., quant_format=QOperator)`` (and the ONNX Model Zoo's INT8 builds) write
integer ops end to end: QLinearConv, QLinearMatMul and ``com.microsoft`` QLinearAdd /
QLinearMul / QLinearGlobalAveragePool / QLinearAveragePool / QLinearSigmoid / QLinearLeakyRelu /
QLinearConcat / QGemm. No tensor between the first QuantizeLinear and the last DequantizeLinear
is float, so no layer can be read and no gradient taken. Each such op computes, by definition,

    y = Q(op(DQ(a), DQ(b), ...), y_scale, y_zero_point),   DQ(q) = (q - zp) scale

(a bias of int32 dequantized with scale a_scale b_scale, zero point 0), and is replaced by
exactly that: the QDQ form ONNX Runtime's own QDQ quantization writes, whose float tensors our
gradient rules differentiate straight through QuantizeLinear (``tests/graph/test_qdq.py``).
Integer data movement on a quantized tensor (MaxPool, Reshape, Flatten, Transpose, Squeeze,
Unsqueeze, Identity) runs in float between a DequantizeLinear and a QuantizeLinear with the
tensor's own scale, which gives the same integers (DQ is monotone and Q(DQ(q)) = q).

Dynamic quantization (``quantize_dynamic``) writes DynamicQuantizeLinear -> ConvInteger /
MatMulInteger -> Cast -> Mul(a_scale b_scale): the integer op runs in float on DQ(q, 1, zp)
= q - zp (the same integers, summed in float) when only that Cast reads it, and
DynamicQuantizeLinear differentiates straight through with its computed scale held constant
(``vjp_rules``).

ONNX Runtime's integer kernels round their int32 accumulators once; the float form rounds
each product: an output can move by one quantization step, so the caller checks the result
within the model's output step (:func:`blackbox_xai.runtime.verify_same_function`). Ops with
per-channel scales where the format needs an axis we cannot tell, channels-last pooling, and
any other integer op stay as they are. Works in place on ``model`` (opset 13 or later: the
per-channel DequantizeLinear needs its ``axis``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from .io import node_attrs
from .node_builder import NodeBuilder
from .unfuse import MICROSOFT

#: Ops that move integers without arithmetic: run on the dequantized tensor, requantized alike.
DATA_MOVEMENT = frozenset(("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                           "Identity"))

Quantization = tuple[str, str]  # (scale tensor, zero point tensor)


class _Rewriter(NodeBuilder):
    """Replacement nodes for one QOperator node."""

    def __init__(self, node: onnx.NodeProto, taken: set[str],
                 quantized: dict[str, Quantization], dequantized: dict[tuple, str],
                 cast_only: bool):
        super().__init__(f"{node.name or node.output[0]}/qdq", taken)
        self.node, self.quantized, self.dequantized = node, quantized, dequantized
        self.cast_only = cast_only  # every reader of the output is a Cast

    def float_output(self) -> str | None:
        """The float result's name: the quantized output's without ONNX Runtime's
        ``_quantized`` suffix (the float model's tensor), when free."""
        y = self.node.output[0]
        return self.named(y[:-len("_quantized")]) if y.endswith("_quantized") else None

    def dq(self, q: str, scale: str, zero: str, axis: int | None = None) -> str:
        """``DQ(q)``, one node per quantized tensor (``<q>_dequantized``) whoever reads it."""
        key = (q, scale, zero, axis)
        if key not in self.dequantized:
            attrs = {} if axis is None else {"axis": axis}
            self.dequantized[key] = self.op(
                "DequantizeLinear", [q, scale, *([zero] if zero else [])],
                self.named(f"{q}_dequantized"), **attrs)
        return self.dequantized[key]

    def ones(self, n: int) -> str:
        """A float scale of one: a scalar, or n ones beside a per-channel zero point."""
        dims = [] if n == 1 else [n]
        return self.op("Constant", [], value=helper.make_tensor(
            "one", onnx.TensorProto.FLOAT, dims, [1.0] * n))

    def q(self, x: str, scale: str, zero: str, out: str) -> str:
        self.quantized[out] = (scale, zero)
        return self.op("QuantizeLinear", [x, scale, *([zero] if zero else [])], out)


def _ins(node: onnx.NodeProto, count: int) -> list[str]:
    return [*node.input, *[""] * (count - len(node.input))][:count]


def _per_channel(sizes: dict[str, int], scale: str) -> bool:
    return sizes.get(scale, 1) > 1


def _conv(r: _Rewriter, sizes: dict[str, int]) -> bool:
    x, xs, xz, w, ws, wz, ys, yz, bias = _ins(r.node, 9)
    xf = r.dq(x, xs, xz)
    wf = r.dq(w, ws, wz, axis=0 if _per_channel(sizes, ws) else None)
    inputs = [xf, wf]
    if bias:
        inputs.append(r.dq(bias, r.op("Mul", [xs, ws]), "",
                           axis=0 if _per_channel(sizes, ws) else None))
    r.q(r.op("Conv", inputs, r.float_output(), **node_attrs(r.node)), ys, yz, r.node.output[0])
    return True


def _matmul(r: _Rewriter, sizes: dict[str, int]) -> bool:
    a, as_, az, b, bs, bz, ys, yz = _ins(r.node, 8)
    if _per_channel(sizes, as_) or _per_channel(sizes, bs):
        return False  # per-column B needs the last axis of an operand of unknown rank
    product = r.op("MatMul", [r.dq(a, as_, az), r.dq(b, bs, bz)], r.float_output())
    r.q(product, ys, yz, r.node.output[0])
    return True


def _gemm(r: _Rewriter, sizes: dict[str, int]) -> bool:
    a, as_, az, b, bs, bz, c, ys, yz = _ins(r.node, 9)
    attrs = node_attrs(r.node)
    column = 0 if attrs.get("transB", 0) else 1
    per_column = _per_channel(sizes, bs)
    inputs = [r.dq(a, as_, az), r.dq(b, bs, bz, axis=column if per_column else None)]
    if c:  # int32 bias at scale alpha a_scale b_scale
        scale = r.op("Mul", [as_, bs])
        alpha = float(attrs.get("alpha", 1.0))
        if alpha != 1.0:
            alpha_t = r.op("Constant", [], value=helper.make_tensor(
                "alpha", onnx.TensorProto.FLOAT, [], [alpha]))
            scale = r.op("Mul", [scale, alpha_t])
        inputs.append(r.dq(c, scale, "", axis=0 if per_column else None))
    y = r.node.output[0]
    product = r.op("Gemm", inputs, r.float_output() if ys else y, **attrs)
    if ys:
        r.q(product, ys, yz, y)
    return True


def _binary(op_type: str) -> Callable[[_Rewriter, dict[str, int]], bool]:
    def rule(r: _Rewriter, sizes: dict[str, int]) -> bool:
        a, as_, az, b, bs, bz, cs, cz = _ins(r.node, 8)
        y = r.op(op_type, [r.dq(a, as_, az), r.dq(b, bs, bz)], r.float_output())
        r.q(y, cs, cz, r.node.output[0])
        return True
    return rule


def _unary(op_type: str, keep: tuple[str, ...] = ()) -> Callable[[_Rewriter, dict[str, int]], bool]:
    def rule(r: _Rewriter, sizes: dict[str, int]) -> bool:
        attrs = node_attrs(r.node)
        if attrs.get("channels_last", 0):
            return False
        x, xs, xz, ys, yz = _ins(r.node, 5)
        y = r.op(op_type, [r.dq(x, xs, xz)], r.float_output(),
                 **{k: v for k, v in attrs.items() if k in keep})
        r.q(y, ys, yz, r.node.output[0])
        return True
    return rule


def _concat(r: _Rewriter, sizes: dict[str, int]) -> bool:
    ys, yz, *rest = r.node.input
    parts = [r.dq(*rest[i:i + 3]) for i in range(0, len(rest), 3)]
    r.q(r.op("Concat", parts, r.float_output(), axis=node_attrs(r.node)["axis"]), ys, yz,
        r.node.output[0])
    return True


def _integer(op_type: str) -> Callable[[_Rewriter, dict[str, int]], bool]:
    """ConvInteger / MatMulInteger (dynamic quantization: int32 = (a - a_zp) op (b - b_zp),
    then Cast to float and a Mul by the scales) in float, DQ with scale 1: the same integers,
    summed in float. Only when every reader is that Cast (the output turns float). A
    per-channel weight zero point runs along the Conv's output channels (axis 0) or the
    MatMul weight's columns (axis 1, a 2-D weight)."""
    def rule(r: _Rewriter, sizes: dict[str, int]) -> bool:
        a, b, az, bz = _ins(r.node, 4)
        if not r.cast_only or _per_channel(sizes, az):
            return False
        b_axis = (0 if op_type == "Conv" else 1) if _per_channel(sizes, bz) else None
        r.op(op_type, [r.dq(a, r.ones(1), az), r.dq(b, r.ones(sizes.get(bz, 1)), bz, b_axis)],
             r.node.output[0], **node_attrs(r.node))
        return True
    return rule


_POOL = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
_RULES: dict[tuple[str, str], Callable[[_Rewriter, dict[str, int]], bool]] = {
    ("", "QLinearConv"): _conv, ("", "QLinearMatMul"): _matmul, (MICROSOFT, "QGemm"): _gemm,
    (MICROSOFT, "QLinearAdd"): _binary("Add"), (MICROSOFT, "QLinearMul"): _binary("Mul"),
    (MICROSOFT, "QLinearGlobalAveragePool"): _unary("GlobalAveragePool"),
    (MICROSOFT, "QLinearAveragePool"): _unary("AveragePool", _POOL),
    (MICROSOFT, "QLinearSigmoid"): _unary("Sigmoid"),
    (MICROSOFT, "QLinearLeakyRelu"): _unary("LeakyRelu", ("alpha",)),
    (MICROSOFT, "QLinearConcat"): _concat,
    ("", "ConvInteger"): _integer("Conv"), ("", "MatMulInteger"): _integer("MatMul"),
}


def qoperator_to_qdq(model: onnx.ModelProto) -> int:
    """Rewrite the QOperator ops of the main graph in QDQ form (see the module docstring);
    returns how many were rewritten."""
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < 13 or not any((n.domain if n.domain != "ai.onnx" else "", n.op_type) in _RULES
                             for n in g.node):
        return 0
    sizes = {t.name: int(np.prod(t.dims)) for t in g.initializer}  # scales: initializers or Constants
    sizes.update({n.output[0]: int(np.prod(a.t.dims)) for n in g.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value"})
    taken = {t for n in g.node for t in (*n.input, *n.output)} | {i.name for i in g.input}
    quantized: dict[str, Quantization] = {
        n.output[0]: (n.input[1], n.input[2] if len(n.input) > 2 else "")
        for n in g.node if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")}
    dequantized: dict[tuple, str] = {}
    readers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    outputs = {o.name for o in g.output}
    nodes, count = [], 0
    for n in g.node:
        read_by = readers.get(n.output[0], []) if n.output else []
        cast_only = bool(read_by) and set(read_by) == {"Cast"} and n.output[0] not in outputs
        r = _Rewriter(n, taken, quantized, dequantized, cast_only)
        rule = _RULES.get((n.domain if n.domain != "ai.onnx" else "", n.op_type))
        if rule is not None and rule(r, sizes):
            nodes.extend(r.nodes)
            count += 1
        elif (n.domain in ("", "ai.onnx") and n.op_type in DATA_MOVEMENT and n.input
              and n.input[0] in quantized and len(n.output) == 1):
            scale, zero = quantized[n.input[0]]
            moved = r.op(n.op_type, [r.dq(n.input[0], scale, zero), *n.input[1:]],
                         r.float_output(), **node_attrs(n))
            r.q(moved, scale, zero, n.output[0])
            nodes.extend(r.nodes)
        else:
            nodes.append(n)
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return count


