"""ONNX Runtime's fused ops back into standard ONNX ops, for files saved after its optimisation.

A file written by ``SessionOptions.optimized_model_filepath`` (at ``ORT_ENABLE_EXTENDED``, as
deployment pipelines do to skip optimisation at load time) carries ``com.microsoft`` ops that
ONNX shape inference does not know and that have no gradient rule: every tensor after the first
one lost its type and shape, so no layer could be found and no gradient taken. Each is replaced
by what it computes (ONNX Runtime's contrib op definitions):

* ``FusedConv(X, W, B, Z)`` = act(Conv(X, W, B) + Z), ``activation`` one of Relu, Tanh,
  Sigmoid, LeakyRelu (``activation_params`` = [alpha]), Clip ([min, max]), HardSigmoid
  ([alpha, beta]);
* ``FusedGemm(A, B, C)`` = act(Gemm(A, B, C)), the activation's attributes prefixed
  ``activation_`` (``activation_alpha`` ...);
* ``Gelu(x)`` = x/2 (1 + erf(x / sqrt 2)); ``BiasGelu(a, b)`` = Gelu(a + b);
  ``QuickGelu(x)`` = x sigmoid(alpha x), alpha 1.702 by default;
  ``FastGelu(x, bias)`` = u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))), u = x + bias;
* ``FusedMatMul(A, B)`` = alpha op(A) op(B), op transposing the last two axes when ``transA`` /
  ``transB`` (not the ``transBatch`` forms);
* ``SkipLayerNormalization(x, skip, gamma, beta, bias)`` = LayerNorm over the last axis of
  x + skip + bias, times gamma plus beta (``LayerNormalization`` from opset 17, its formula
  before), its optional 4th output the sum;
* ``QuantizeLinear`` / ``DequantizeLinear`` (the quantizer's ``UseQDQContribOps`` form) = the
  standard ops where the opset allows their types (8-bit, or 16-bit from opset 21);
* ``LayerNormalization`` in the default domain at an opset before 17 (ONNX Runtime's own,
  which its LayerNormFusion writes; ONNX has none there) = the formula over the last axis;
* ``Attention(x, W, b)`` (the transformer optimiser's, without mask, cache or attention bias)
  = softmax(Q K^T / sqrt d) V over ``num_heads`` heads of Q | K | V = x W + b, written as the
  MatMul / Softmax / MatMul chain the attention methods find.

Ops with an activation or an attribute not listed stay as they are. The Conv or Gemm before a
fused activation gets back the name PyTorch's exporter gives it (``<node>_output_0``), so a
layer is named as in the original export. The caller checks the result in ONNX Runtime
(:func:`blackbox_xai.runtime.verify_same_function`). Works in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .io import infer_shapes, node_attrs
from .node_builder import NodeBuilder

MICROSOFT = "com.microsoft"

#: Activations a fused op may carry, and the names of their float parameters in order.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
    "Clip": ("min", "max"),
}


class _Emitter(NodeBuilder):
    """Builds the replacement nodes of one fused node."""

    def __init__(self, node: onnx.NodeProto, opset: int, taken: set[str],
                 ranks: dict[str, int], initializers: dict[str, onnx.TensorProto]):
        super().__init__(f"{node.name or node.output[0]}/unfused", taken)
        self.node, self.opset, self.ranks = node, opset, ranks
        weights = {i: initializers[i] for i in node.input if i in initializers}
        self.dtypes = {i: helper.tensor_dtype_to_np_dtype(t.data_type) for i, t in weights.items()}
        #: constants take the type of the node's first initializer (its weights), else float32
        self.dtype = next(iter(self.dtypes.values()), np.dtype(np.float32))
        self.widths = {i: t.dims[-1] for i, t in weights.items() if t.dims}  # last axes

    def main_output(self) -> str | None:
        """A name for the fused op's own result (the Conv or Gemm before its activation): what
        PyTorch's exporter names a node's output, ``<node name>_output_0``, which the fusion
        took away, when no other tensor has it (else a generated name)."""
        return self.named(f"{self.node.name}_output_0") if self.node.name else None

    def const_ints(self, values: list[int]) -> str:
        name = self.tensor("shape")
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.asarray(values, np.int64), name)))
        return name

    def const(self, value: float) -> str:
        name = self.tensor("const")
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.asarray(value, self.dtype), name)))
        return name

    def activation(self, kind: str, params: list[float], x: str, out: str) -> str:
        if kind == "Clip":
            if self.opset < 11:
                return self.op("Clip", [x], out, min=params[0], max=params[1])
            return self.op("Clip", [x, self.const(params[0]), self.const(params[1])], out)
        names = ACTIVATIONS[kind]
        return self.op(kind, [x], out, **dict(zip(names, params)))

    def layer_norm(self, x: str, gamma: str, beta: str | None, eps: float, out: str) -> str:
        """(x - mean) / sqrt(var + eps) gamma + beta over the last axis: LayerNormalization from
        opset 17, its formula before."""
        if self.opset >= 17:
            return self.op("LayerNormalization", [x, gamma, *([beta] if beta else [])], out,
                           axis=-1, epsilon=eps)
        centred = self.op("Sub", [x, self.op("ReduceMean", [x], axes=[-1])])
        var = self.op("ReduceMean", [self.op("Mul", [centred, centred])], axes=[-1])
        normed = self.op("Div", [centred, self.op("Sqrt", [self.op("Add", [var, self.const(eps)])])])
        scaled = self.op("Mul", [normed, gamma], None if beta else out)
        return self.op("Add", [scaled, beta], out) if beta else scaled

    def gelu(self, x: str, out: str) -> str:
        erf = self.op("Erf", [self.op("Div", [x, self.const(math.sqrt(2.0))])])
        half_x = self.op("Mul", [x, self.const(0.5)])
        return self.op("Mul", [half_x, self.op("Add", [erf, self.const(1.0)])], out)


def _activation_name(attrs: dict[str, object]) -> str | None:
    """The fused activation's op name ("" for none), or None for one we cannot write."""
    kind = str(attrs.get("activation", ""))
    return kind if kind == "" or kind in ACTIVATIONS else None


def _fused_conv(e: _Emitter) -> bool:
    attrs = node_attrs(e.node)
    kind = _activation_name(attrs)
    params = [float(v) for v in attrs.get("activation_params", [])]
    if kind is None or kind and len(params) < len(ACTIVATIONS[kind]):
        return False
    conv_attrs = {k: v for k, v in attrs.items() if k not in ("activation", "activation_params")}
    inputs, y = list(e.node.input), e.node.output[0]
    summand = inputs[3] if len(inputs) > 3 and inputs[3] else None
    t = e.op("Conv", inputs[:3], e.main_output() if kind or summand else y, **conv_attrs)
    if summand:
        t = e.op("Add", [t, summand], None if kind else y)
    if kind:
        e.activation(kind, params, t, y)
    return True


def _fused_gemm(e: _Emitter) -> bool:
    attrs = node_attrs(e.node)
    kind = _activation_name(attrs)
    names = ACTIVATIONS.get(kind or "", ())
    if kind is None or any(f"activation_{n}" not in attrs for n in names):
        return False
    gemm_attrs = {k: v for k, v in attrs.items() if not k.startswith("activation")}
    y = e.node.output[0]
    t = e.op("Gemm", list(e.node.input), e.main_output() if kind else y, **gemm_attrs)
    if kind:
        e.activation(kind, [float(attrs[f"activation_{n}"]) for n in names], t, y)
    return True


def _gelu(e: _Emitter) -> bool:
    e.gelu(e.node.input[0], e.node.output[0])
    return True


def _bias_gelu(e: _Emitter) -> bool:
    e.gelu(e.op("Add", list(e.node.input[:2])), e.node.output[0])
    return True


def _quick_gelu(e: _Emitter) -> bool:
    x = e.node.input[0]
    alpha = float(node_attrs(e.node).get("alpha", 1.702))
    gate = e.op("Sigmoid", [e.op("Mul", [x, e.const(alpha)])])
    e.op("Mul", [x, gate], e.node.output[0])
    return True


def _fast_gelu(e: _Emitter) -> bool:
    ins = [i for i in e.node.input if i]
    u = e.op("Add", ins[:2]) if len(ins) > 1 else ins[0]
    cube = e.op("Mul", [e.op("Mul", [u, u]), u])
    inner = e.op("Add", [u, e.op("Mul", [cube, e.const(0.044715)])])
    tanh = e.op("Tanh", [e.op("Mul", [inner, e.const(math.sqrt(2.0 / math.pi))])])
    half_u = e.op("Mul", [u, e.const(0.5)])
    e.op("Mul", [half_u, e.op("Add", [tanh, e.const(1.0)])], e.node.output[0])
    return True


def _fused_matmul(e: _Emitter) -> bool:
    attrs = node_attrs(e.node)
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        return False
    operands = []
    for name, flag in zip(e.node.input[:2], ("transA", "transB")):
        if attrs.get(flag, 0):
            rank = e.ranks.get(name)
            if rank is None or rank < 2:
                return False  # its rank comes from shape inference, in a later pass
            perm = [*range(rank - 2), rank - 1, rank - 2]
            name = e.op("Transpose", [name], perm=perm)
        operands.append(name)
    alpha = float(attrs.get("alpha", 1.0))
    y = e.node.output[0]
    product = e.op("MatMul", operands, y if alpha == 1.0 else None)
    if alpha != 1.0:
        e.op("Mul", [product, e.const(alpha)], y)
    return True


def _skip_layer_norm(e: _Emitter) -> bool:
    """y = LayerNorm(input + skip + bias) gamma + beta over the last axis; a 4th output is the
    sum itself (the mean and inverse deviation outputs are not written)."""
    ins, outs = list(e.node.input), list(e.node.output)
    if any(outs[1:3]):
        return False
    total = e.op("Add", ins[:2], outs[3] if len(outs) > 3 and outs[3] and len(ins) < 5 else None)
    if len(ins) > 4 and ins[4]:
        total = e.op("Add", [total, ins[4]], outs[3] if len(outs) > 3 and outs[3] else None)
    eps = float(node_attrs(e.node).get("epsilon", 1e-12))
    e.layer_norm(total, ins[2], ins[3] if len(ins) > 3 and ins[3] else None, eps, outs[0])
    return True


def _legacy_layer_norm(e: _Emitter) -> bool:
    """ONNX Runtime's own LayerNormalization, which its LayerNormFusion writes in the default
    domain at opsets before 17 (where ONNX has none, so the checker refuses the file's every
    rewrite): the same normalisation, over the last axis only here."""
    ins, outs, attrs = list(e.node.input), list(e.node.output), node_attrs(e.node)
    if any(outs[1:]) or attrs.get("axis", -1) != -1:
        return False
    e.layer_norm(ins[0], ins[1], ins[2] if len(ins) > 2 and ins[2] else None,
                 float(attrs.get("epsilon", 1e-5)), outs[0])
    return True


def _attention(e: _Emitter) -> bool:
    """Multi-head self-attention (the transformer optimiser's Attention, no mask, cache or
    attention bias): Q | K | V = x W + b split along the last axis, each (B, S, heads, d) ->
    (B, heads, S, d); softmax(Q K^T scale) V back to (B, S, heads d); scale 1/sqrt(d) unless
    given. The weights (H, 3H) must be an initializer (their width gives H)."""
    ins, attrs = list(e.node.input), node_attrs(e.node)
    heads = int(attrs.get("num_heads", 0))
    width = e.widths.get(ins[1]) if len(ins) > 1 else None
    if (any(ins[3:]) or len(e.node.output) > 1 and any(e.node.output[1:]) or not heads
            or width is None or width % (3 * heads) or attrs.get("unidirectional", 0)
            or any(k in attrs for k in ("qkv_hidden_sizes", "do_rotary"))):
        return False
    hidden = width // 3
    d = hidden // heads
    qkv = e.op("MatMul", ins[:2])
    if len(ins) > 2 and ins[2]:
        qkv = e.op("Add", [qkv, ins[2]])
    q, k, v = (e.tensor(n) for n in ("q", "k", "v"))
    sizes = [hidden, hidden, hidden]
    e.nodes.append(helper.make_node("Split", [qkv, e.const_ints(sizes)], [q, k, v], axis=-1)
                   if e.opset >= 13 else  # the sizes were an attribute before opset 13
                   helper.make_node("Split", [qkv], [q, k, v], axis=-1, split=sizes))
    per_head = e.const_ints([0, 0, heads, d])
    q, k, v = (e.op("Transpose", [e.op("Reshape", [t, per_head])], perm=[0, 2, 1, 3])
               for t in (q, k, v))
    scale = float(attrs.get("scale", 1.0 / math.sqrt(d)))
    scores = e.op("Mul", [e.op("MatMul", [q, e.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                          e.const(scale)])
    context = e.op("MatMul", [e.op("Softmax", [scores], axis=-1), v])
    merged = e.op("Transpose", [context], perm=[0, 2, 1, 3])
    e.op("Reshape", [merged, e.const_ints([0, 0, hidden])], e.node.output[0])
    return True


def _contrib_qdq(e: _Emitter) -> bool:
    """ONNX Runtime's QuantizeLinear / DequantizeLinear (what its quantizer writes with
    ``UseQDQContribOps``, e.g. for 16-bit activations) are the standard ops wherever the
    model's opset allows their types: 8-bit always, 16-bit from opset 21."""
    ins = list(e.node.input)
    zero = e.dtypes.get(ins[2]) if len(ins) > 2 and ins[2] else np.dtype(np.uint8)
    eight_bit = zero is not None and zero.itemsize == 1
    if not (e.opset >= 21 or eight_bit and (e.opset >= 13 or "axis" not in node_attrs(e.node))):
        return False
    e.op(e.node.op_type, ins, e.node.output[0], **node_attrs(e.node))
    return True


_RULES: dict[str, Callable[[_Emitter], bool]] = {
    "FusedConv": _fused_conv, "FusedGemm": _fused_gemm, "Gelu": _gelu, "BiasGelu": _bias_gelu,
    "QuickGelu": _quick_gelu, "FastGelu": _fast_gelu, "FusedMatMul": _fused_matmul,
    "SkipLayerNormalization": _skip_layer_norm, "Attention": _attention,
    "QuantizeLinear": _contrib_qdq, "DequantizeLinear": _contrib_qdq,
}


def unfuse_runtime_ops(model: onnx.ModelProto) -> int:
    """Replace ONNX Runtime's fused ``com.microsoft`` ops in the main graph by standard ops
    (see the module docstring); returns how many were replaced.

    A FusedMatMul that transposes an operand needs its rank: after a first pass, shape
    inference runs on the partly unfused graph and the pass repeats while it makes progress.
    """
    total, ranks = 0, {}
    while True:
        count = _unfuse_pass(model, ranks)
        total += count
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        if not count or not any(_rule(n, opset) for n in model.graph.node):
            return total
        ranks = _ranks(infer_shapes(model))


def _rule(n: onnx.NodeProto, opset: int) -> Callable[[_Emitter], bool] | None:
    if n.domain == MICROSOFT:
        return _RULES.get(n.op_type)
    legacy = n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx") and opset < 17
    return _legacy_layer_norm if legacy else None


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*g.input, *g.value_info)
             if v.type.tensor_type.HasField("shape")}
    ranks.update({t.name: len(t.dims) for t in g.initializer})
    return ranks


def _unfuse_pass(model: onnx.ModelProto, ranks: dict[str, int]) -> int:
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    initializers = {t.name: t for t in g.initializer}
    taken = {t for n in g.node for t in (*n.input, *n.output)} | {i.name for i in g.input}
    nodes, count = [], 0
    for n in g.node:
        rule = _rule(n, opset)
        emitter = _Emitter(n, opset, taken, ranks, initializers)
        if rule is None or not rule(emitter):
            nodes.append(n)
            continue
        nodes.extend(emitter.nodes)
        count += 1
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return count


#: ONNX Runtime's NCHWc ops (saved at ``ORT_ENABLE_ALL``): a blocked channel layout specific to
#: the CPU that wrote the file, with reordered weights; not unfused.
NCHWC = "com.microsoft.nchwc"


def blocked_layout_problem(model: onnx.ModelProto) -> str | None:
    """Why graph methods cannot run on a file with NCHWc ops, or None."""
    count = sum(n.domain == NCHWC for n in model.graph.node)
    if not count:
        return None
    return (f"the model was saved by ONNX Runtime at ORT_ENABLE_ALL: its {count} {NCHWC} ops compute "
            "in a blocked channel layout of the CPU that saved it, so no layer or gradient can "
            "be read; use the original export or a file saved at ORT_ENABLE_EXTENDED")
