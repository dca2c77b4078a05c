"""A quantized (QDQ) graph's frozen surrogate: the function its straight-through gradient is of.

At a point x0, each QuantizeLinear -> DequantizeLinear pair on a computed tensor x becomes

    y = m x + c,   m = [lo <= x0 / s + z <= hi],   c = y(x0) - m x0

(lo, hi: the codes of the quantized type; x0 and y(x0) read from one run of the quantized
graph): the same value at x0 as that run, and the derivative the clipped straight-through rule
(:mod:`.vjp_rules`) takes there. Between the pairs the graph is unchanged, so where the pairs
fold a network's only nonlinearities (ReLU / ReLU6 into uint8 ranges) the surrogate is affine
in the input and its finite differences are exact at any step, where the rounded graph's own
scores are a staircase. ``m`` and ``c`` are inputs of the surrogate graph
(:func:`frozen_surrogate`), computed per point by :func:`frozen_values`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .inspect import constant_value, consumers, input_dependent
from .io import copy_model, node_attrs
from .vjp_rules import QUANTIZED_RANGE


@dataclass(frozen=True)
class Pair:
    """A QuantizeLinear -> DequantizeLinear pair: its float input ``x``, the DequantizeLinear's
    output ``y``, and the quantization's scale, zero point, codes and axis."""

    x: str
    y: str
    scale: np.ndarray
    zero: np.ndarray
    codes: tuple[int, int]
    axis: int

    @property
    def inputs(self) -> tuple[str, str]:
        """The surrogate's inputs for this pair's m and c."""
        return f"{self.y}_surrogate_mask", f"{self.y}_surrogate_offset"


def frozen_surrogate(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Pair]] | None:
    """The surrogate graph (each pair's output y = m * x + c, m and c new inputs) and its
    pairs, or None where the graph quantizes otherwise: dynamic quantization, a quantized
    tensor read by anything but a DequantizeLinear with the same scale and zero point, a scale
    or zero point that is not a constant, a type without integer codes (float8)."""
    g = model.graph
    if any(n.op_type == "DynamicQuantizeLinear" for n in g.node):
        return None
    readers, live = consumers(g), input_dependent(g)
    pairs: dict[int, Pair] = {}  # index of the DequantizeLinear: its pair
    quantizers: set[int] = set()
    for i, node in enumerate(g.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in live:
            continue
        params = _params(g, node)
        if params is None or params[2] not in QUANTIZED_RANGE:
            return None
        for j in readers.get(node.output[0], []):
            reader = g.node[j]
            if reader.op_type != "DequantizeLinear" or not _same(params, _params(g, reader)):
                return None
            scale, zero, kind, axis = params
            pairs[j] = Pair(node.input[0], reader.output[0], scale, zero, QUANTIZED_RANGE[kind],
                            axis)
        quantizers.add(i)
    out = copy_model(model)
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(g.node):
        pair = pairs.get(i)
        if pair is not None:
            mask, offset = pair.inputs
            scaled = f"{pair.y}_surrogate_scaled"
            nodes += [helper.make_node("Mul", [pair.x, mask], [scaled]),
                      helper.make_node("Add", [scaled, offset], [pair.y])]
            out.graph.input.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                                   for name in pair.inputs)
        elif i not in quantizers:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, list(pairs.values())


def frozen_values(pairs: list[Pair], values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each pair's m and c where its input ``x`` and output ``y`` have ``values[x]`` and
    ``values[y]`` (one input: a batch of 1): m = [lo <= x / s + z <= hi], c = y - m x."""
    out: dict[str, np.ndarray] = {}
    for p in pairs:
        x = values[p.x].astype(np.float64)
        shape = [1] * x.ndim
        if p.scale.size > 1:
            shape[p.axis % x.ndim] = -1
        s = p.scale.astype(np.float64).reshape(shape if p.scale.size > 1 else ())
        z = p.zero.astype(np.float64).reshape(shape if p.zero.size > 1 else ())
        t = x / s + z
        inside = ((t >= p.codes[0]) & (t <= p.codes[1])).astype(np.float64)
        mask, offset = p.inputs
        out[mask] = inside.astype(np.float32)
        out[offset] = (values[p.y].astype(np.float64) - inside * x).astype(np.float32)
    return out


def _params(g: onnx.GraphProto, node: onnx.NodeProto
            ) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """(scale, zero point, quantized type, axis) of a QuantizeLinear / DequantizeLinear whose
    scale and zero point are constants, else None."""
    scale = constant_value(g, node.input[1])
    has_zero = len(node.input) > 2 and bool(node.input[2])
    zero = constant_value(g, node.input[2]) if has_zero else np.zeros((), np.uint8)
    if scale is None or zero is None:
        return None
    attrs = node_attrs(node)
    kind = int(attrs.get("output_dtype", 0) or helper.np_dtype_to_tensor_dtype(zero.dtype))
    return scale, zero, kind, int(attrs.get("axis", 1))


def _same(a: tuple | None, b: tuple | None) -> bool:
    """Whether two (scale, zero point, type, axis) are the same quantization."""
    return a is not None and b is not None and a[2:] == b[2:] and all(
        np.array_equal(u, v) for u, v in zip(a[:2], b[:2]))
