"""Bring any exported ONNX file to one canonical form before it is rewritten or differentiated.

Real exports come from a decade of converters (Caffe2, CNTK, tf2onnx, keras2onnx, paddle2onnx,
PyTorch 1.x and 2.x): IR 3 files that list every weight as a graph input, opsets 7 to 10 whose
ops changed meaning since (Slice, Upsample, Squeeze, ReduceMean), and shapes nobody declared.
:func:`normalize` returns a private copy with

1. the IR upgraded: initializers are no longer graph inputs (IR >= 4 lets weights be constants);
2. the default opset raised to at least :data:`MIN_OPSET` with ``onnx.version_converter``
   (the caller must check the result computes the same function: :func:`blackbox_xai.runtime.
   verify_same_function`; when the converter fails, the original opset is kept and
   :attr:`Normalized.problem` says why graph methods cannot run);
3. integer shape plumbing computed from constants alone folded into ``Constant`` nodes
   (:func:`fold_shape_constants`: PyTorch's legacy exporter computes e.g. ``unflatten``'s
   axis with a ``Mod`` that data propagation cannot follow, leaving attention tensors of
   unknown rank);
4. every tensor's rank and as much of its shape as can be known: ONNX shape inference with data
   propagation, then a rank pass of our own for what it leaves unknown (Gemm, Flatten, MatMul,
   Reshape with a shape of known length, element-wise ops, declared outputs).

Pure ``ModelProto -> ModelProto``; no ONNX Runtime here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from .inspect import node_inputs
from .io import copy_model, fed_inputs, infer_shapes, node_attrs
from .qoperator import qoperator_to_qdq
from .unfuse import blocked_layout_problem, unfuse_runtime_ops

log = logging.getLogger(__name__)

MIN_OPSET = 13  # Squeeze/Unsqueeze/ReduceSum axes as inputs, Softmax on one axis
MIN_IR = 7  # the IR version that opset 13 came with
FOLD_MAX_ELEMENTS = 1024  # folded constants are shape plumbing: small integer tensors

# Ops whose output has the rank of their (first) input.
_SAME_RANK = frozenset((
    "Abs", "Cast", "Clip", "Dropout", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish",
    "Identity", "LeakyRelu", "Log", "LogSoftmax", "LRN", "Mish", "Neg", "PRelu", "Reciprocal",
    "Relu", "Selu", "Sigmoid", "Softmax", "Softplus", "Softsign", "Sqrt", "Tanh", "BatchNormalization",
    "InstanceNormalization", "LayerNormalization", "QuantizeLinear", "DequantizeLinear",
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Pad", "Resize", "Upsample", "Transpose", "Floor", "Ceil", "Round", "Sign", "Not",
))
# Element-wise ops with numpy broadcasting: the output has the largest rank of the inputs.
_BROADCAST = frozenset((
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less",
    "Greater", "And", "Or", "Xor", "Mod", "BitShift",
))


@dataclass(frozen=True)
class Normalized:
    """A normalised copy of a model and what was done to it.

    Attributes:
        model: the canonical model (never the caller's object).
        changes: human-readable steps, e.g. ``("IR 3 -> 7", "opset 7 -> 13")``.
        rewritten: what was rewritten beyond declarations (an opset conversion, unfused ONNX
            Runtime ops), for the caller to check the result computes the same function; None
            when nothing was.
        problem: why graph rewrites cannot run on this model (``None`` when they can).
    """

    model: onnx.ModelProto
    changes: tuple[str, ...]
    rewritten: str | None
    problem: str | None


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def normalize(model: onnx.ModelProto) -> Normalized:
    """A canonical copy of ``model`` (see the module docstring); ``model`` is not modified."""
    out, changes, problem = copy_model(model), [], blocked_layout_problem(model)
    ir = out.ir_version
    opset = default_opset(out)
    scalers = replace_image_scalers(out)
    if scalers:
        changes.append(f"{scalers} ImageScaler -> Mul + Add")
    rewrites = []
    unfused = unfuse_runtime_ops(out)
    if unfused:
        changes.append(f"{unfused} ONNX Runtime fused ops -> standard ops")
        rewrites.append(f"unfusing {unfused} ONNX Runtime ops")
    if out.ir_version < 4:  # IR 3 lists every initializer as a graph input too: the converter
        _list_initializers_as_inputs(out.graph)  # reads their types there, and its adapters
        out.ir_version = 4  # add initializers of their own, which IR 4 need not list
    if opset < MIN_OPSET:
        try:
            upgraded = version_converter.convert_version(out, MIN_OPSET)
            onnx.checker.check_model(upgraded)
        except Exception as e:  # noqa: BLE001 - the converter raises anything (C++ errors)
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problem = (f"the model's opset {opset} cannot be upgraded to {MIN_OPSET} for graph "
                       f"rewrites ({detail})")
            log.info("%s", problem)
        else:
            out = upgraded
            changes.append(f"opset {opset} -> {MIN_OPSET}")
            rewrites.append(f"upgrading opset {opset} to {MIN_OPSET}")
    _drop_initializer_inputs(out.graph)  # after the converter, which expects IR 3's inputs
    requantized = qoperator_to_qdq(out)  # after it too: per-channel DequantizeLinear is opset 13
    if requantized:
        changes.append(f"{requantized} QOperator INT8 ops -> QDQ form")
        rewrites.append(f"rewriting {requantized} QOperator INT8 ops in QDQ form")
    out, unread = without_unread_inputs(out)
    if unread:
        changes.append(f"{len(unread)} inputs nothing reads dropped")
    min_ir = MIN_IR if default_opset(out) >= MIN_OPSET else 4
    out.ir_version = max(out.ir_version, min_ir)
    if out.ir_version != ir:
        changes.append(f"IR {ir} -> {out.ir_version}")
    for o in out.graph.output:  # exporters write rank 0 for "unknown": let inference say
        if _rank_of(o) == 0:
            o.type.tensor_type.ClearField("shape")
    folded = fold_shape_constants(out)
    if folded:
        changes.append(f"{folded} constant shape computations folded")
    out = infer_shapes(out)
    added = complete_ranks(out)
    if added:
        changes.append(f"ranks of {added} tensors completed")
    return Normalized(out, tuple(changes), " and ".join(rewrites) or None, problem)


def without_unread_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model``, or a copy without the fed inputs that no node (subgraphs included) and no
    output reads, and their names. ONNX Runtime asks for every graph input: a file it saved
    from an IR 3 export keeps a folded weight listed as an input nobody reads."""
    g = model.graph
    read = {o.name for o in g.output} | {i for n in g.node for i in node_inputs(n)}
    unread = [i.name for i in fed_inputs(g) if i.name not in read]
    if not unread:
        return model, []
    out = copy_model(model)
    kept = [i for i in out.graph.input if i.name not in unread]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    return out, unread


def replace_image_scalers(model: onnx.ModelProto) -> int:
    """Replace every ``ImageScaler`` (an experimental op of opsets 1-9, removed in opset 10,
    which Custom Vision's and other early exports use on their input) by what it computes:
    ``y = scale * x + bias[c]`` over NCHW, a Mul by a constant and an Add of a (1, C, 1, 1)
    constant. The version converter has no rule for it, so without this such a file could not
    be upgraded for graph rewrites. Works in place; returns how many were replaced."""
    g = model.graph
    nodes, count = [], 0
    for n in g.node:
        if n.op_type != "ImageScaler" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        attrs = node_attrs(n)
        bias = np.asarray(attrs.get("bias", [0.0]), np.float32)
        stem = f"{n.output[0]}/image_scaler"
        consts = [
            numpy_helper.from_array(np.asarray(attrs.get("scale", 1.0), np.float32), stem + "/scale"),
            numpy_helper.from_array(bias.reshape(1, -1, 1, 1), stem + "/bias")]
        g.initializer.extend(consts)
        nodes += [helper.make_node("Mul", [n.input[0], stem + "/scale"], [stem + "/scaled"]),
                  helper.make_node("Add", [stem + "/scaled", stem + "/bias"], [n.output[0]])]
        count += 1
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return count


def _list_initializers_as_inputs(g: onnx.GraphProto) -> None:
    """Add a graph input for every initializer that has none (what IR 3 requires; some IR 3
    exports, and our own replacements above, leave them out)."""
    listed = {i.name for i in g.input}
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                   for t in g.initializer if t.name not in listed)


def _drop_initializer_inputs(g: onnx.GraphProto) -> None:
    """Remove weights from ``graph.input`` (IR 3 requires them there; they are constants)."""
    inits = {t.name for t in g.initializer}
    kept = [i for i in g.input if i.name not in inits]
    if len(kept) != len(g.input):
        del g.input[:]
        g.input.extend(kept)


def fold_shape_constants(model: onnx.ModelProto) -> int:
    """Replace each node whose inputs are all constants and whose outputs are small integer or
    boolean tensors by ``Constant`` nodes with those values (in place; returns how many).

    Only main-graph, default-domain, deterministic nodes without subgraphs are folded, in
    topological order, so chains (Constant -> Mod -> Reshape -> Slice ends) fold completely.
    Float computations are left alone: they are weights, not shapes, and their rank is known.
    """
    g = model.graph
    inputs = {i.name for i in g.input}  # an initializer that is also an input can be fed
    values: dict[str, np.ndarray] = {
        t.name: numpy_helper.to_array(t) for t in g.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL and t.data_type in _INT_TYPES
        and t.name not in inputs}
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    nodes: list[onnx.NodeProto] = []
    folded = 0
    for n in g.node:
        outs = None if n.op_type == "Constant" else _fold(n, values, opset)
        if outs is None:
            nodes.append(n)
            v = next((a.t for a in n.attribute if a.name == "value"), None)
            if n.op_type == "Constant" and v is not None and v.data_type in _INT_TYPES:
                values[n.output[0]] = numpy_helper.to_array(v)
            continue
        for k, (name, o) in enumerate(outs.items()):  # one Constant per output
            nodes.append(helper.make_node("Constant", [], [name],
                                          name=f"{n.name}_{k}" if n.name and k else n.name,
                                          value=numpy_helper.from_array(o, name)))
            values[name] = o
        folded += 1
    if folded:
        del g.node[:]
        g.node.extend(nodes)
    return folded


def _fold(n: onnx.NodeProto, values: dict[str, np.ndarray], opset: list[onnx.OperatorSetIdProto]
          ) -> dict[str, np.ndarray] | None:
    """The outputs of ``n`` computed from the constant ``values``, or None when it is not
    foldable (see :func:`fold_shape_constants`)."""
    ins = [x for x in n.input if x]
    if (n.domain not in ("", "ai.onnx") or n.op_type in _NOT_FOLDED or not ins
            or not all(x in values for x in ins)
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in n.attribute)):
        return None
    names = [o for o in n.output if o]
    one = helper.make_graph(
        [n], "fold",
        [helper.make_tensor_value_info(x, helper.np_dtype_to_tensor_dtype(values[x].dtype),
                                       values[x].shape) for x in dict.fromkeys(ins)],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in names])
    try:
        from onnx.reference import ReferenceEvaluator  # 60 ms to import: only when used

        outs = ReferenceEvaluator(helper.make_model(one, opset_imports=opset)).run(
            None, {x: values[x] for x in ins})
    except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: runtime's job
        return None
    outs = [np.asarray(o) for o in outs]
    if not all(o.dtype.kind in "iub" and o.size <= FOLD_MAX_ELEMENTS for o in outs):
        return None
    return dict(zip(names, outs))


_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}
_NOT_FOLDED = frozenset(("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                         "Multinomial", "Bernoulli", "If", "Loop", "Scan"))


def _rank_of(v: onnx.ValueInfoProto | onnx.TypeProto | None) -> int | None:
    t = v.type if isinstance(v, onnx.ValueInfoProto) else v
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return len(t.tensor_type.shape.dim)


def complete_ranks(model: onnx.ModelProto) -> int:
    """Add ``value_info`` with the rank (dims unknown) for tensors shape inference left untyped.

    Rules: Gemm and Flatten give 2-D; MatMul the larger input rank (1-D operands per numpy);
    Reshape the length of its shape tensor when that is known; same-rank and broadcasting
    element-wise ops; a graph output's declared rank (when it is not 0). The element type is
    the op's (:func:`_node_elem_type`); a tensor whose element type cannot be known keeps its
    rank for the tensors after it but gets no ``value_info`` (ONNX Runtime refuses type 0:
    ops from other domains, e.g. ORT's fused ``com.microsoft`` ops, leave their outputs so).
    Returns how many tensors were completed. Works in place on ``model`` (a private copy).
    """
    g = model.graph
    types: dict[str, onnx.TypeProto] = {}
    elem: dict[str, int] = {}
    for v in [*g.input, *g.value_info, *g.output]:
        if v.type.tensor_type.elem_type:
            elem.setdefault(v.name, v.type.tensor_type.elem_type)
        if _rank_of(v) is not None and (v.name not in types or _rank_of(types[v.name]) == 0):
            types[v.name] = v.type
    for t in g.initializer:
        types.setdefault(t.name, helper.make_tensor_type_proto(t.data_type, t.dims))
        elem.setdefault(t.name, t.data_type)
    declared = {o.name: _rank_of(o) for o in g.output}

    def rank(name: str) -> int | None:
        return _rank_of(types.get(name))

    added = 0
    for n in g.node:
        for i, out in enumerate(n.output):
            known = rank(out)
            if not out or known is not None and not (known == 0 and out in declared):
                continue  # a declared rank 0 is checked: exporters write [] for "unknown"
            r = _node_rank(n, i, rank, types)
            if r is None and declared.get(out):
                r = declared[out]
            if r is None or r == known:
                continue
            et = elem.get(out) or _node_elem_type(n, elem)
            types[out] = helper.make_tensor_type_proto(et, [None] * r)
            if not et:
                continue
            elem[out] = et
            existing = [v for v in g.value_info if v.name == out]
            if existing:
                existing[0].type.CopyFrom(types[out])
            else:
                g.value_info.append(helper.make_value_info(out, types[out]))
            added += 1
    for o in g.output:
        if declared[o.name] != rank(o.name) and rank(o.name) is not None and elem.get(o.name):
            o.type.CopyFrom(types[o.name])  # a declared rank 0 that is really (N, K)
    return added


#: Ops whose output element type is not their first input's.
_BOOL_OUTPUT = frozenset(("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And",
                          "Or", "Xor", "Not", "IsNaN", "IsInf"))


def _node_elem_type(n: onnx.NodeProto, elem: dict[str, int]) -> int:
    """The element type of ``n``'s first output from its op and its inputs' types; 0 when
    unknown (an input of unknown type, or an op whose rule is not here)."""
    op, ins = n.op_type, list(n.input)
    if n.domain not in ("", "ai.onnx"):
        return 0
    if op in ("Shape", "Size", "ArgMax", "ArgMin", "NonZero"):
        return onnx.TensorProto.INT64
    if op in _BOOL_OUTPUT:
        return onnx.TensorProto.BOOL
    if op == "Cast":
        return int(node_attrs(n).get("to", 0))
    if op == "QuantizeLinear":
        return elem.get(ins[2], 0) if len(ins) > 2 and ins[2] else onnx.TensorProto.UINT8
    if op == "DequantizeLinear":
        return elem.get(ins[1], 0) if len(ins) > 1 else 0
    if op not in _SAME_RANK and op not in _BROADCAST and op not in _TYPE_OF_DATA:
        return 0
    typed_like_output = ins[1:] if op == "Where" else ins if op in _ALL_INPUTS_TYPED_ALIKE \
        else ins[:1]
    return next((elem[i] for i in typed_like_output if i and elem.get(i)), 0)


#: Ops (besides same-rank and element-wise ones) whose output has their first input's type.
_TYPE_OF_DATA = frozenset(("Gemm", "Flatten", "MatMul", "Reshape", "Concat", "Split", "Squeeze",
                           "Unsqueeze", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"))
#: Ops whose every input has the output's type (the others' shapes, axes, exponents may not).
_ALL_INPUTS_TYPED_ALIKE = frozenset(("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean",
                                     "Mod", "Concat", "Gemm", "MatMul", "PRelu", "Conv",
                                     "ConvTranspose", "InstanceNormalization"))


def _node_rank(n: onnx.NodeProto, index: int, rank, types: dict[str, onnx.TypeProto]) -> int | None:
    """The rank of output ``index`` of ``n`` from its inputs' ranks, or None."""
    op = n.op_type
    ins = [i for i in n.input if i]
    if index != 0 and op not in ("Split",):
        return None
    if op in ("Gemm", "Flatten"):
        return 2
    if op in ("Shape",):
        return 1
    if op in ("Size",):
        return 0
    if op in _SAME_RANK or op == "Split":
        return rank(ins[0]) if ins else None
    if op in _BROADCAST:
        ranks = [rank(i) for i in ins]
        return None if any(r is None for r in ranks) else max(ranks)
    if op == "MatMul":
        ra, rb = rank(ins[0]), rank(ins[1])
        if ra is None or rb is None:
            return None
        return max(ra, rb) - (ra == 1) - (rb == 1)
    if op == "Reshape":
        shape_type = types.get(ins[1])
        if shape_type is None or _rank_of(shape_type) != 1:
            return None
        d = shape_type.tensor_type.shape.dim[0]
        return d.dim_value if d.HasField("dim_value") else None
    if op == "Concat":
        ranks = [rank(i) for i in ins]
        return next((r for r in ranks if r is not None), None)
    if op in ("Squeeze", "Unsqueeze", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
        return _axes_rank(n, rank(ins[0]) if ins else None)
    return None


def _axes_rank(n: onnx.NodeProto, r: int | None) -> int | None:
    """Rank after Squeeze/Unsqueeze/Reduce* whose axes are an attribute (inputs: unknown)."""
    if r is None:
        return None
    at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    axes = at.get("axes")
    if n.op_type.startswith("Reduce"):
        if at.get("keepdims", 1):
            return r
        return 0 if axes is None else r - len(axes)
    if axes is None:
        return None
    return r - len(axes) if n.op_type == "Squeeze" else r + len(axes)


def declare_output_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]
                          ) -> onnx.ModelProto:
    """``model``, or a copy whose outputs declare the ranks seen in a real run (batch axis
    symbolic, other axes as run); ``shapes`` maps output names to the shapes of a batch run.
    Exporters declare rank 0 or nothing for outputs they could not type."""
    wrong = [o for o in model.graph.output if o.name in shapes
             and _rank_of(o) != len(shapes[o.name])]
    if not wrong:
        return model
    out = copy_model(model)
    for o in out.graph.output:
        if o.name in shapes and _rank_of(o) != len(shapes[o.name]):
            shape = shapes[o.name]
            dims = ["N", *shape[1:]] if shape else []
            o.type.CopyFrom(helper.make_tensor_type_proto(o.type.tensor_type.elem_type, dims))
    return out


_FLOAT_TYPES = frozenset((onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16))


def incomplete_shapes(model: onnx.ModelProto) -> list[str]:
    """Float tensors computed by main-graph nodes whose rank is known and whose shape is not,
    past the first axis (an output can only be exposed, hence measured, with its rank).

    Exports that compute sizes at run time (HF transformers' position-embedding interpolation,
    decoders that resize to the input's size) leave them so after inference; gradient rules
    (Resize, pooling) and the attention finder need them, so the model measures them
    (:func:`declare_shapes`). The first axis is left alone: it is the batch axis, or a
    multiple of it.
    """
    typed = {v.name: v.type for v in (*model.graph.value_info, *model.graph.output)}
    names = []
    for n in model.graph.node:
        for o in n.output:
            t = typed.get(o)
            if not o or (t is not None and t.tensor_type.elem_type not in _FLOAT_TYPES
                         and t.tensor_type.elem_type != onnx.TensorProto.UNDEFINED):
                continue
            if t is not None and t.tensor_type.HasField("shape") and any(
                    not d.HasField("dim_value") for d in t.tensor_type.shape.dim[1:]):
                names.append(o)
    return names


def declare_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int | None, ...]],
                   types: dict[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose ``value_info`` declares ``shapes`` (None: an axis that varies
    with the batch) with element types ``types`` for those tensors, replacing what inference
    had; the shapes were measured in runs at two batch sizes."""
    out = copy_model(model)
    g = out.graph
    kept = [v for v in g.value_info if v.name not in shapes]
    del g.value_info[:]
    g.value_info.extend(kept)
    outputs = {o.name for o in g.output}
    for name, dims in shapes.items():
        if name not in outputs:
            g.value_info.append(helper.make_tensor_value_info(name, types[name], list(dims)))
    return out


def fix_input_size(model: onnx.ModelProto, name: str, axes: tuple[int, int],
                   size: tuple[int, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose input ``name`` has the spatial ``axes`` fixed at ``size``,
    every shape inferred again from there (ranks completed as :func:`normalize` does).

    For gradient rules that need static sizes (Resize's and pooling's matrices) on models whose
    image size is dynamic: detectors and segmentation nets exported for any size.
    """
    out = copy_model(model)
    inp = next(i for i in out.graph.input if i.name == name)
    for a, v in zip(axes, size):
        d = inp.type.tensor_type.shape.dim[a]
        d.Clear()
        d.dim_value = int(v)
    del out.graph.value_info[:]  # symbolic sizes: inferred again from the fixed ones
    out = infer_shapes(out)
    complete_ranks(out)
    return out
