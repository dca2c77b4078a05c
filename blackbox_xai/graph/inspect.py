"""What is in a graph: tensors with shapes and producers, CAM candidate layers, name lookup.

Also the small graph walks the rewrites share (producers, consumers, the nodes a set of tensors
needs). Nodes of an ONNX graph are stored in topological order, so "last" means last in
``graph.node``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import uses_external_data

from ..errors import BlackboxError, UnknownNameError, did_you_mean
from .io import infer_shapes

Dim = int | str | None  # a size, a symbolic name, or unknown
TensorKind = Literal["input", "initializer", "intermediate", "output"]

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool"}
SPATIAL_REDUCES = {"ReduceMean", "ReduceMax"}
# elementwise one-tensor ops a feature map may pass through on its way to the pooling
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid",
               "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Mish", "Gelu", "Identity",
               "Dropout"}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the main graph: type and shape from shape inference, and who makes it."""

    name: str
    kind: TensorKind
    shape: tuple[Dim, ...] | None  # None: rank unknown
    elem_type: int  # onnx.TensorProto data type; 0 when unknown
    op: str | None  # producing op type (None for inputs and initializers)
    node: str | None  # producing node name


@dataclass(frozen=True)
class CandidateLayer:
    """A 4-D float feature map a CAM can weight, and whether it feeds the global pooling."""

    name: str
    shape: tuple[Dim, ...]
    op: str
    node: str | None
    feeds_pooling: bool


# ---- graph walks ------------------------------------------------------------------------------
def node_inputs(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs and the outer-scope names its subgraphs use."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            inner = ({i.name for i in sub.input} | {t.name for t in sub.initializer}
                     | {o for n in sub.node for o in n.output})
            names += [i for n in sub.node for i in node_inputs(n) if i not in inner]
    return names


def producers(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> index of the node that produces it."""
    return {o: i for i, n in enumerate(graph.node) for o in n.output if o}


def consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes that read it."""
    out: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for name in dict.fromkeys(node_inputs(n)):
            out.setdefault(name, []).append(i)
    return out


def needed_nodes(graph: onnx.GraphProto, targets: Iterable[str],
                 stop: Collection[str] = ()) -> list[int]:
    """Sorted indices of the nodes needed to compute ``targets``, not looking past ``stop``."""
    made = producers(graph)
    seen: set[int] = set()
    stack = [t for t in targets if t not in stop]
    while stack:
        i = made.get(stack.pop())
        if i is not None and i not in seen:
            seen.add(i)
            stack += [t for t in node_inputs(graph.node[i]) if t not in stop]
    return sorted(seen)


def input_dependent(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value depends on a graph input (the rest are constants)."""
    inits = {t.name for t in graph.initializer}
    live = {i.name for i in graph.input if i.name not in inits}
    for n in graph.node:
        if any(i in live for i in node_inputs(n)):
            live.update(o for o in n.output if o)
    return live


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an in-memory initializer or of a Constant node's output, or None."""
    for t in graph.initializer:
        if t.name == name:
            return None if uses_external_data(t) else numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value)
    return None


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Name -> typed ValueInfoProto, from the graph inputs, outputs and value_info."""
    g = model.graph
    everything = [*g.value_info, *g.input, *g.output]
    return {v.name: v for v in everything if v.type.HasField("tensor_type")}


def typed_outputs(inferred: onnx.ModelProto, names: Iterable[str]) -> list[onnx.ValueInfoProto]:
    """Copies of the inferred ValueInfoProtos of ``names``, each with a shape (checker-clean)."""
    known = value_infos(inferred)
    names = list(names)
    missing = [n for n in names
               if n not in known or not known[n].type.tensor_type.HasField("shape")]
    if missing:
        raise BlackboxError(f"shape inference cannot type {', '.join(missing)}: "
                            "the rewrite needs its element type and rank")
    out = []
    for n in names:
        v = onnx.ValueInfoProto()
        v.CopyFrom(known[n])
        out.append(v)
    return out


# ---- tensors ----------------------------------------------------------------------------------
def _shape(v: onnx.ValueInfoProto | None) -> tuple[Dim, ...] | None:
    if v is None or not v.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None
                 for d in v.type.tensor_type.shape.dim)


def tensor_info(model: onnx.ModelProto, include_initializers: bool = False
                ) -> dict[str, TensorInfo]:
    """Every tensor of the main graph, in topological order, typed by shape inference."""
    g = model.graph
    known = value_infos(infer_shapes(model))
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    info: dict[str, TensorInfo] = {}

    def add(name: str, kind: TensorKind, op: str | None = None, node: str | None = None) -> None:
        v = known.get(name)
        info[name] = TensorInfo(name, kind, _shape(v), v.type.tensor_type.elem_type if v else 0,
                                op, node)

    for i in g.input:
        if i.name not in inits:
            add(i.name, "input")
    if include_initializers:
        for t in g.initializer:
            info[t.name] = TensorInfo(t.name, "initializer", tuple(t.dims), t.data_type, None, None)
    for n in g.node:
        for o in n.output:
            if o:
                add(o, "output" if o in outputs else "intermediate", n.op_type, n.name or None)
    return info


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Op type -> number of nodes in the main graph, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def tensor_names(model: onnx.ModelProto) -> list[str]:
    """Names that can be exposed or cut at: graph inputs and node outputs, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    return names + [o for n in model.graph.node for o in n.output if o]


def resolve_tensor(model: onnx.ModelProto, name: str) -> str:
    """Return ``name`` if the graph has such a tensor, else raise with the closest names."""
    names = tensor_names(model)
    if name not in set(names):
        raise UnknownNameError(did_you_mean(name, names, "tensor"))
    return name


# ---- CAM layers -------------------------------------------------------------------------------
def _is_spatial_reduce(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """A ReduceMean/ReduceMax over the two spatial axes of a 4-D tensor (NCHW or NHWC)."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = constant_value(graph, node.input[1])  # opset 18: axes is an input
        axes = None if value is None else value.reshape(-1).tolist()
    return axes is not None and {a % 4 for a in axes} in ({2, 3}, {1, 2})


def _feeds_pooling(graph: onnx.GraphProto, name: str, readers: dict[str, list[int]]) -> bool:
    """Whether ``name`` reaches a global/spatial pooling directly or through activations."""
    for i in readers.get(name, []):
        n = graph.node[i]
        if n.input[0] != name:
            continue
        if n.op_type in GLOBAL_POOLS:
            return True
        if n.op_type in SPATIAL_REDUCES and _is_spatial_reduce(graph, n):
            return True
        if n.op_type in ACTIVATIONS and _feeds_pooling(graph, n.output[0], readers):
            return True
    return False


def _is_feature_map(shape: tuple[Dim, ...] | None) -> bool:
    """4-D with a spatial extent: at most one non-batch axis is 1 (a pooled (N, C, 1, 1) is not)."""
    return shape is not None and len(shape) == 4 and sum(d == 1 for d in shape[1:]) < 2


def candidate_layers(model: onnx.ModelProto) -> list[CandidateLayer]:
    """The 4-D float feature maps a CAM can use, in topological order.

    A candidate is produced by a node from the input (not a constant), has a spatial extent
    larger than 1x1, and lies on a path to the graph outputs. ``feeds_pooling`` marks tensors that
    feed GlobalAveragePool/GlobalMaxPool or a spatial ReduceMean/ReduceMax, directly or through
    activations.
    """
    g = model.graph
    on_path = {o for i in needed_nodes(g, [o.name for o in g.output]) for o in g.node[i].output}
    live = input_dependent(g)
    readers = consumers(g)
    return [CandidateLayer(t.name, t.shape, t.op, t.node, _feeds_pooling(g, t.name, readers))
            for t in tensor_info(model).values()
            if t.op is not None and t.elem_type in FLOAT_TYPES and _is_feature_map(t.shape)
            and t.name in on_path and t.name in live]


def default_layer(model: onnx.ModelProto) -> str:
    """The CAM layer: the last candidate feeding the global pooling, else the last candidate."""
    layers = candidate_layers(model)
    if not layers:
        raise BlackboxError("the model has no 4-D feature map (N, C, H, W) on the path to its "
                            "outputs: CAM methods need a convolutional layer")
    pooled = [c for c in layers if c.feeds_pooling]
    return (pooled or layers)[-1].name
