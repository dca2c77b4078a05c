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
from .io import fed_inputs, infer_shapes

Dim = int | str | None  # a size, a symbolic name, or unknown
TensorKind = Literal["input", "initializer", "intermediate", "output"]
Layout = Literal["NCHW", "NHWC", "tokens"]

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


def separates(graph: onnx.GraphProto, cut: str, source: str, target: str) -> bool:
    """Whether every path from tensor ``source`` to tensor ``target`` passes through ``cut``
    (a shape read of ``source`` around the cut counts as a path too)."""
    return not any(source in node_inputs(graph.node[i])
                   for i in needed_nodes(graph, [target], stop={cut}))


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


class UntypedTensorError(BlackboxError):
    """Shape inference cannot give a tensor's element type and rank."""


def typed_outputs(inferred: onnx.ModelProto, names: Iterable[str]) -> list[onnx.ValueInfoProto]:
    """Copies of the inferred ValueInfoProtos of ``names``, each with a shape (checker-clean)."""
    known = value_infos(inferred)
    names = list(names)
    missing = [n for n in names
               if n not in known or not known[n].type.tensor_type.HasField("shape")]
    if missing:
        raise UntypedTensorError(f"shape inference cannot type {', '.join(missing)}: "
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
    names = [i.name for i in fed_inputs(model.graph)]
    return names + [o for n in model.graph.node for o in n.output if o]


def resolve_tensor(model: onnx.ModelProto, name: str) -> str:
    """Return ``name`` if the graph has such a tensor, else raise with the closest names."""
    return resolve_tensors(model, [name])[0]


def resolve_tensors(model: onnx.ModelProto, wanted: list[str]) -> list[str]:
    """``wanted`` if the graph has every one of them (one pass over the graph), else raise with
    the closest names to the first one missing."""
    names = tensor_names(model)
    known = set(names)
    for name in wanted:
        if name not in known:
            raise UnknownNameError(did_you_mean(name, names, "tensor"))
    return wanted


# ---- CAM layers -------------------------------------------------------------------------------
# ops whose first input and output are channels-first by the ONNX spec (for 4-D tensors)
CHANNELS_FIRST_OPS = {"Conv", "ConvTranspose", "QLinearConv", "BatchNormalization",
                      "InstanceNormalization", "LRN", "MaxPool", "AveragePool", "LpPool",
                      "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "DepthToSpace",
                      "SpaceToDepth"}
# ops whose 4-D inputs and 4-D outputs line up axis by axis (elementwise, broadcasting, slicing)
AXIS_PRESERVING = ACTIVATIONS | {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Cast", "Abs", "Neg",
    "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Softsign",
    "ThresholdedRelu", "Pad", "Resize", "Upsample", "Concat", "Split", "Slice", "Expand", "Tile",
    "QuantizeLinear", "DequantizeLinear", "LayerNormalization"}
SPATIAL_AXES: dict[Layout, tuple[int, int]] = {"NCHW": (2, 3), "NHWC": (1, 2)}
_IDENTITY = (0, 1, 2, 3)
EXTRA_TOKENS = (0, 1, 2)  # none, a class token (ViT), class and distillation tokens (DeiT)
MERGES = 3  # token grids also at 1/2, 1/4, 1/8 of the patch grid (Swin's patch merging)
# ops a LayerNorm written out by the exporter is made of (below opset 17)
NORM_OPS = {"Sub", "Pow", "Mul", "Add", "Div", "Sqrt", "Reciprocal", "ReduceMean", "Cast"}


@dataclass(frozen=True)
class TokenGrid:
    """How a token tensor (N, extra + h*w, C) lays out the image: ``extra`` leading tokens
    (class, distillation) that are no image place, then the h x w patch grid in row-major
    order (the patch-embedding Conv's output, flattened)."""

    extra: int
    h: int
    w: int

    @property
    def tokens(self) -> int:
        return self.extra + self.h * self.w


@dataclass(frozen=True)
class CandidateLayer:
    """A float feature map a CAM can weight: its layout, and whether it feeds the pooling.

    4-D maps are "NCHW" (N, C, H, W) or "NHWC" (N, H, W, C, also Swin's token maps); "tokens"
    is a transformer's (N, extra + h*w, C), whose ``grid`` says how the tokens tile the image.
    """

    name: str
    shape: tuple[Dim, ...]
    layout: Layout
    op: str
    node: str | None
    feeds_pooling: bool
    grid: TokenGrid | None = None


class NotAFeatureMapError(BlackboxError):
    """A tensor asked for as a CAM layer is not a spatial feature map of known layout."""


def _reduce_axes(graph: onnx.GraphProto, node: onnx.NodeProto, rank: int = 4) -> set[int] | None:
    """The axes (mod ``rank``) a Reduce* node reduces, when an attribute or constant input
    gives them."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = constant_value(graph, node.input[1])  # opset 18: axes is an input
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else {int(a) % rank for a in axes}


def reduce_layout(graph: onnx.GraphProto, node: onnx.NodeProto) -> Layout | None:
    """The layout a spatial ReduceMean/ReduceMax implies for its 4-D input: axes {2, 3} are the
    spatial axes of NCHW, {1, 2} those of NHWC; None for any other reduction."""
    axes = _reduce_axes(graph, node) if node.op_type in SPATIAL_REDUCES else None
    return next((lay for lay, pair in SPATIAL_AXES.items() if axes == set(pair)), None)


def _feeds_pooling(graph: onnx.GraphProto, name: str, readers: dict[str, list[int]],
                   tokens: bool = False) -> bool:
    """Whether ``name`` reaches a global/spatial pooling directly or through activations (for
    a token tensor, a mean over the token axis 1, through activations or LayerNorm)."""
    for i in readers.get(name, []):
        n = graph.node[i]
        if n.input[0] != name:
            continue
        pools = (n.op_type in SPATIAL_REDUCES and _reduce_axes(graph, n, 3) == {1} if tokens
                 else n.op_type in GLOBAL_POOLS or reduce_layout(graph, n) is not None)
        through = ACTIVATIONS | {"LayerNormalization"} if tokens else ACTIVATIONS
        if pools or n.op_type in through and _feeds_pooling(graph, n.output[0], readers, tokens):
            return True
    return False


def _input_layout(shape: tuple[Dim, ...]) -> Layout | None:
    """A graph input's layout from its channel axis: 1, 3 or 4 channels first or last."""
    first, last = shape[1] in (1, 3, 4), shape[3] in (1, 3, 4)
    return "NCHW" if first else "NHWC" if last else None


def _head_width(graph: onnx.GraphProto, pooled: str, readers: dict[str, list[int]]) -> int | None:
    """Input size of the Gemm/MatMul that reads the pooled vector ``pooled`` (through
    Flatten/Reshape/Squeeze/Identity), from its constant weight; None when there is none."""
    for _ in range(4):
        nxt = [graph.node[i] for i in readers.get(pooled, [])]
        if len(nxt) != 1 or nxt[0].input[0] != pooled:
            return None
        node = nxt[0]
        if node.op_type in ("Gemm", "MatMul"):
            w = constant_value(graph, node.input[1])
            if w is None or w.ndim != 2:
                return None
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            return int(w.shape[1] if node.op_type == "Gemm" and trans_b else w.shape[0])
        if node.op_type not in ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout"):
            return None
        pooled = node.output[0]
    return None


def _layout_evidence(model: onnx.ModelProto, info: dict[str, TensorInfo]
                     ) -> tuple[dict[str, set[str]], list[tuple[str, str, tuple[int, ...]]]]:
    """Votes (tensor -> layouts the graph asserts for it) and edges (a, b, perm): label(b) is
    label(a) permuted by perm, for the input-dependent 4-D tensors of the main graph."""
    g = model.graph
    live = input_dependent(g)
    four = {n for n, t in info.items() if n in live and t.shape is not None and len(t.shape) == 4}
    readers = consumers(g)
    votes: dict[str, set[str]] = {}

    def vote(name: str, layout: str) -> None:
        if name in four:
            votes.setdefault(name, set()).add(layout)

    for i in g.input:
        if i.name in four and (lay := _input_layout(info[i.name].shape)) is not None:
            vote(i.name, lay)
    edges: list[tuple[str, str, tuple[int, ...]]] = []
    for n in g.node:
        if not n.input or not n.input[0]:
            continue
        if n.op_type in CHANNELS_FIRST_OPS:
            vote(n.input[0], "NCHW")
            vote(n.output[0], "NCHW")
        if n.op_type in SPATIAL_REDUCES | GLOBAL_POOLS and n.input[0] in four:
            if (lay := reduce_layout(g, n)) is not None:
                vote(n.input[0], lay)
            width, shape = _head_width(g, n.output[0], readers), info[n.input[0]].shape
            if width is not None and (shape[1] == width) != (shape[3] == width):
                vote(n.input[0], "NCHW" if shape[1] == width else "NHWC")
        if n.op_type == "Transpose" and n.input[0] in four and n.output[0] in four:
            perm = next((tuple(a.ints) for a in n.attribute if a.name == "perm"), (3, 2, 1, 0))
            edges.append((n.input[0], n.output[0], perm))
        elif n.op_type in AXIS_PRESERVING:
            outs = [o for o in n.output if o in four]
            edges += [(i, o, _IDENTITY) for i in node_inputs(n) if i in four for o in outs]
    return votes, edges


def tensor_layouts(model: onnx.ModelProto, info: dict[str, TensorInfo] | None = None
                   ) -> dict[str, Layout]:
    """The layout of every input-dependent 4-D tensor whose layout the graph establishes.

    Evidence: the model input's channel axis (1, 3 or 4 channels first or last); ops that are
    channels-first by definition (Conv, pooling, BatchNormalization... read and write NCHW);
    spatial ReduceMean/ReduceMax axes ({2, 3}: NCHW, {1, 2}: NHWC); a pooled vector's width
    equal to the next Gemm/MatMul's input size. It travels through axis-preserving ops
    (elementwise, Pad, Resize, Concat, Slice...) unchanged and through Transpose permuted
    (label(out)_i = label(in)_perm[i]). Tensors connected this way form a component that takes
    one consistent labelling; a component with contradictory evidence, or none, or a tensor
    whose label is neither NCHW nor NHWC (e.g. H and W swapped) has no layout.
    """
    info = tensor_info(model) if info is None else info
    votes, edges = _layout_evidence(model, info)
    links: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for a, b, perm in edges:
        inverse = tuple(perm.index(i) for i in range(4))
        links.setdefault(a, []).append((b, perm))
        links.setdefault(b, []).append((a, inverse))
    layouts: dict[str, Layout] = {}
    seen: set[str] = set()
    for root in dict.fromkeys([*votes, *links]):
        if root in seen:
            continue
        # rel[t] = q: label(t)_i = label(root)_q[i]
        rel: dict[str, tuple[int, ...]] = {root: _IDENTITY}
        stack, consistent = [root], True
        while stack:
            t = stack.pop()
            for u, perm in links.get(t, []):
                q = tuple(rel[t][p] for p in perm)
                if u not in rel:
                    rel[u] = q
                    stack.append(u)
                elif rel[u] != q:
                    consistent = False
        seen.update(rel)
        roots = set()
        for t, q in rel.items():
            for label in votes.get(t, ()):
                r = [""] * 4
                for i, axis in enumerate(q):
                    r[axis] = label[i]
                roots.add("".join(r))
        if consistent and len(roots) == 1:
            (r,) = roots
            for t, q in rel.items():
                label = "".join(r[i] for i in q)
                if label in SPATIAL_AXES:
                    layouts[t] = label  # type: ignore[assignment]
    return layouts


def _spatial(shape: tuple[Dim, ...], layout: Layout) -> tuple[Dim, Dim]:
    h, w = SPATIAL_AXES[layout]
    return shape[h], shape[w]


# ops whose output keeps a (N, T, C) token tensor's token axis as it is (element-wise ops,
# broadcasting against weights, LayerNorm, activations)
TOKEN_PRESERVING = (AXIS_PRESERVING | {"LayerNormalization"}) - {
    "Pad", "Resize", "Upsample", "Concat", "Split", "Slice", "Expand", "Tile"}


def token_grids(model: onnx.ModelProto, info: dict[str, TensorInfo]) -> dict[str, TokenGrid]:
    """The (N, T, C) token tensors of a vision transformer and how their tokens tile the image.

    The sequence starts at a patch embedding: a Conv's (N, C, h, w) output (static h, w)
    flattened to (N, C, h*w) by Reshape/Flatten and transposed to (N, h*w, C), or transposed to
    (N, h, w, C) and reshaped to (N, h*w, C). Tokens concatenated in front of it on axis 1 (a
    class token, DeiT's distillation token) count as ``extra``: T - h*w where shape inference
    knows the token count T (exporters expand the class token to a run-time shape, so the
    Concat's own sizes are often unknown), else their static sizes. The labelling then follows the
    token axis through the ops that keep it (:data:`TOKEN_PRESERVING`: residual Adds,
    LayerNorm, activations, MLP MatMuls with a 2-D weight); it stops at Reshapes and Transposes,
    so attention internals (heads split off, windows, tokens-first layouts) are never tokens.
    """
    g = model.graph
    made = producers(g)
    live = input_dependent(g)
    weights = {t.name: tuple(t.dims) for t in g.initializer}

    def shape(name: str) -> tuple[Dim, ...] | None:
        t = info.get(name)
        return weights.get(name) if t is None else t.shape

    def perm(n: onnx.NodeProto) -> tuple[int, ...] | None:
        return next((tuple(a.ints) for a in n.attribute if a.name == "perm"), None)

    def patch_grid(name: str) -> tuple[int, int] | None:
        """(h, w) when ``name`` is a patch Conv's output (N, C, h, w) with static h, w."""
        i = made.get(name)
        s = shape(name)
        if i is None or g.node[i].op_type != "Conv" or s is None or len(s) != 4:
            return None
        h, w = s[2:]
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h * w > 1 else None

    grids: dict[str, TokenGrid] = {}  # extra = -1: not known yet
    flat: dict[str, tuple[int, int]] = {}  # (N, C, h*w) or (N, h, w, C) on the way to tokens
    for n in g.node:
        if not n.input or not n.output or n.output[0] not in live:
            continue
        out, first, s = n.output[0], n.input[0], shape(n.output[0])
        if s is None or len(s) not in (3, 4):
            continue
        if n.op_type in ("Reshape", "Flatten") and len(s) == 3:
            if patch_grid(first):
                flat[out] = patch_grid(first)
            elif first in flat and len(shape(first) or ()) == 4:  # (N, h, w, C) -> (N, hw, C)
                h, w = flat[first]
                grids[out] = TokenGrid(0, h, w)
        elif n.op_type == "Transpose" and len(s) == 3 and first in flat and perm(n) == (0, 2, 1):
            h, w = flat[first]
            grids[out] = TokenGrid(0, h, w)
        elif n.op_type == "Transpose" and len(s) == 4 and perm(n) == (0, 2, 3, 1) \
                and patch_grid(first):
            flat[out] = patch_grid(first)
        elif len(s) != 3:
            continue
        elif n.op_type == "Concat" and any(i in grids for i in n.input):
            axis = next(a.i for a in n.attribute if a.name == "axis") % 3
            pos = next(k for k, i in enumerate(n.input) if i in grids)
            before = [shape(i) for i in n.input[:pos]]
            if axis == 1 and len(n.input) == pos + 1:
                grid = grids[n.input[pos]]
                sizes = [b[1] if b is not None else None for b in before]
                known = [d for d in sizes if isinstance(d, int)]
                extra = grid.extra + sum(known) if len(known) == len(sizes) \
                    and grid.extra >= 0 else -1
                grids[out] = TokenGrid(extra, grid.h, grid.w)
        elif n.op_type in TOKEN_PRESERVING | {"MatMul"} and first in grids:
            if n.op_type == "MatMul" and len(shape(n.input[1]) or ()) != 2:
                continue
            grids[out] = grids[first]
        elif n.op_type in TOKEN_PRESERVING and any(i in grids for i in n.input[1:]):
            grids[out] = next(grids[i] for i in n.input[1:] if i in grids)  # weight + tokens
    result: dict[str, TokenGrid] = {}
    for name, grid in grids.items():
        _, t, c = shape(name) or (None, None, None)
        extra = t - grid.h * grid.w if isinstance(t, int) else grid.extra
        if isinstance(c, int) and extra in EXTRA_TOKENS:
            result[name] = TokenGrid(extra, grid.h, grid.w)
    return result


def _batch_first(shape: tuple[Dim, ...], batch: Dim) -> bool:
    """Whether axis 0 can be the batch axis: not a static size other than the input's batch
    (the legacy torch export's 197 x N x 3 x 64 attention tensor has 197 there)."""
    d = shape[0]
    if not isinstance(d, int):
        return True
    return d == batch if isinstance(batch, int) else d == 1


def _attention_like(shape: tuple[Dim, ...] | None, counts: set[int]) -> bool:
    """A tensor whose last two axes are both a token count (attention weights, N x heads x
    T x T) or that holds a token count on an axis other than 1 (heads or windows split off,
    tokens-first layouts)."""
    if shape is None or not counts or len(shape) < 3:
        return False
    return (shape[-1] == shape[-2] and shape[-1] in counts) or any(
        d in counts for k, d in enumerate(shape) if k != 1)


def _candidates(model: onnx.ModelProto, info: dict[str, TensorInfo], layouts: dict[str, Layout],
                grids: dict[str, TokenGrid]) -> list[CandidateLayer]:
    g = model.graph
    on_path = {o for i in needed_nodes(g, [o.name for o in g.output]) for o in g.node[i].output}
    readers = consumers(g)
    batch = next((t.shape[0] for t in info.values() if t.kind == "input" and t.shape), None)
    counts = {grid.tokens for grid in grids.values()}
    out = []
    for t in info.values():
        if t.op is None or t.elem_type not in FLOAT_TYPES or t.name not in on_path:
            continue
        if t.name in grids:
            out.append(CandidateLayer(t.name, t.shape, "tokens", t.op, t.node,
                                      _feeds_pooling(g, t.name, readers, tokens=True),
                                      grids[t.name]))
        elif (t.name in layouts and _spatial(t.shape, layouts[t.name]) != (1, 1)
              and isinstance(t.shape[1 if layouts[t.name] == "NCHW" else 3], int)
              and _batch_first(t.shape, batch) and not _attention_like(t.shape, counts)):
            out.append(CandidateLayer(t.name, t.shape, layouts[t.name], t.op, t.node,
                                      _feeds_pooling(g, t.name, readers)))
    return out


def candidate_layers(model: onnx.ModelProto) -> list[CandidateLayer]:
    """The feature maps a CAM can use, in topological order.

    A candidate is a float tensor produced by a node from the input (not a constant) on a path
    to the graph outputs, either

    * 4-D, whose layout :func:`tensor_layouts` establishes (NCHW or NHWC), with a spatial extent
      larger than 1x1, a static channel count, a batch axis first, and not shaped like
      attention weights; or
    * a transformer's token tensor (N, extra + h*w, C) (:func:`token_grids`).

    ``feeds_pooling`` marks tensors that feed GlobalAveragePool/GlobalMaxPool or a spatial
    ReduceMean/ReduceMax (a mean over the tokens), directly or through activations.
    """
    info = tensor_info(model)
    return _candidates(model, info, tensor_layouts(model, info), token_grids(model, info))


def norm_outputs(model: onnx.ModelProto, tokens: Collection[str]) -> list[str]:
    """The LayerNorm outputs among ``tokens``, in graph order: LayerNormalization's output, or
    the end of a LayerNorm written out by the exporter (opset < 17): the last token tensor
    reached from a ReduceMean over the channel axis of a token tensor through :data:`NORM_OPS`
    whose other operands are constants (mean, centring, Pow 2, variance, eps, Sqrt, Div, scale,
    shift)."""
    g = model.graph
    readers = consumers(g)
    live = input_dependent(g)
    order = {o: i for i, n in enumerate(g.node) for o in n.output}
    ends: set[str] = set()
    for n in g.node:
        if not n.input or n.input[0] not in tokens:
            continue
        if n.op_type == "LayerNormalization":
            if n.output[0] in tokens:  # a typed token tensor (an output shape inference left
                ends.add(n.output[0])  # untyped is no candidate)
        elif n.op_type == "ReduceMean" and _reduce_axes(g, n, 3) == {2}:
            x, reached, stack = n.input[0], {n.output[0]}, [n.output[0]]
            while stack:
                for i in readers.get(stack.pop(), []):
                    m = g.node[i]
                    if m.op_type in NORM_OPS and all(
                            v in reached or v == x or v not in live for v in m.input if v):
                        new = [o for o in m.output if o and o not in reached]
                        reached.update(new)
                        stack += new
            inside = [t for t in reached if t in tokens]
            if inside:
                ends.add(max(inside, key=order.__getitem__))
    return sorted(ends, key=order.__getitem__)


def _default(model: onnx.ModelProto, info: dict[str, TensorInfo], layers: list[CandidateLayer]
             ) -> CandidateLayer:
    """The default CAM layer among ``layers`` (see :func:`default_layer`)."""
    if not layers:
        quantized = sorted({n.op_type for n in model.graph.node if n.op_type.startswith("QLinear")
                            or n.op_type in ("QGemm", "ConvInteger", "MatMulInteger")})
        why = (f"its layers are quantized ({', '.join(quantized)}: integer feature maps); "
               "explain the float model or use a black-box method" if quantized else
               "CAM methods need a convolutional or vision-transformer layer")
        raise BlackboxError("the model has no 4-D feature map (N, C, H, W or N, H, W, C) of "
                            "floats nor token grid (N, tokens, C) on the path to its outputs: "
                            f"{why}")
    tokens = [c for c in layers if c.layout == "tokens"]
    if tokens:
        g = model.graph
        live = input_dependent(g)
        attention = [n.output[0] for n in g.node if n.op_type == "Softmax"
                     and n.output[0] in live and len(info[n.output[0]].shape or ()) >= 3]
        norms = norm_outputs(model, {c.name for c in tokens})
        if attention:
            before = {o for i in needed_nodes(g, attention[-1:]) for o in g.node[i].output}
            norms = [t for t in norms if t in before]
        named = {c.name: c for c in tokens}
        if norms:
            return named[norms[-1]]
        layers = tokens
    pooled = [c for c in layers if c.feeds_pooling]
    return (pooled or layers)[-1]


def default_layer(model: onnx.ModelProto) -> str:
    """The CAM layer.

    For a vision transformer (token layers): the output of the LayerNorm that feeds the last
    attention block (its first LayerNorm: pytorch-grad-cam's ``blocks[-1].norm1``), since the
    class token read after the last block no longer mixes the patch tokens; without attention,
    the last LayerNorm output, then the last token layer. Otherwise the last candidate feeding
    the global pooling, else the last candidate.

    Deviation: the transformer issue asked for the LayerNorm's *input*; pytorch-grad-cam's
    tutorial names the module ``blocks[-1].norm1`` and its forward hook records the module's
    *output*, which is what its users get and what our parity check matches (Pearson r 1.000
    against pytorch-grad-cam, ``tools/check_transformers_against_torch.py``). The input (the
    residual stream) can be chosen with ``layer=``; ``bbx layers`` lists it.
    """
    return feature_map(model).name


def _dims(shape: tuple[Dim, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def _why_not(t: TensorInfo, layouts: dict[str, Layout], counts: set[int]) -> str:
    """Why tensor ``t`` is not a candidate layer, in a few words."""
    shape = "?" if t.shape is None else _dims(t.shape)
    if t.op is None:
        return "is a graph input, not a feature map"
    if t.shape is None:
        return "has an unknown rank"
    if _attention_like(t.shape, counts):
        return (f"({shape}) is laid out like an attention tensor (token axes other than "
                "(N, tokens, C)), not a feature map")
    if len(t.shape) != 4:
        return f"is {len(t.shape)}-D ({shape}), not a 4-D feature map nor a token grid"
    if t.elem_type not in FLOAT_TYPES:
        return f"({shape}) is not a float tensor"
    if t.name not in layouts:
        return f"({shape}) is 4-D but the graph does not establish its layout (NCHW or NHWC)"
    if _spatial(t.shape, layouts[t.name]) == (1, 1):
        return f"({shape}, {layouts[t.name]}) has no spatial extent"
    return f"({shape}) is a constant, has no batch axis first or does not lead to the outputs"


def describe_layout(layer: CandidateLayer) -> str:
    """The layout in words: NCHW, NHWC, or tokens with the grid (``tokens 1+4x4``)."""
    if layer.grid is None:
        return layer.layout
    return f"tokens {layer.grid.extra}+{layer.grid.h}x{layer.grid.w}"


def feature_map(model: onnx.ModelProto, name: str | None = None) -> CandidateLayer:
    """The candidate layer ``name`` (default: :func:`default_layer`'s), or a one-line error.

    Raises :class:`UnknownNameError` (with close matches) for a name the graph lacks, and
    :class:`NotAFeatureMapError` listing a few candidates for a tensor that is not a feature map
    of known layout (attention tensors included): a CAM is never computed on misread axes.
    """
    info = tensor_info(model)
    layouts = tensor_layouts(model, info)
    grids = token_grids(model, info)
    layers = _candidates(model, info, layouts, grids)
    if name is None:
        return _default(model, info, layers)
    resolve_tensor(model, name)
    found = next((c for c in layers if c.name == name), None)
    if found is not None:
        return found
    shown = []
    if layers:
        best = _default(model, info, layers)
        shown = [best] + [c for c in reversed(layers) if c != best][:3]
    listed = ", ".join(f"{c.name} ({describe_layout(c)} {_dims(c.shape)})" for c in shown)
    counts = {grid.tokens for grid in grids.values()}
    raise NotAFeatureMapError(f"layer {name!r} {_why_not(info[name], layouts, counts)}; CAM "
                              f"layers: {listed or 'none (the model has no feature map)'}")


# ---- attention --------------------------------------------------------------------------------
# ops an exporter may put between the attention probabilities and their MatMul with V
_ATTENTION_PASS = {"Dropout", "Identity", "Cast"}


class NoAttentionError(BlackboxError):
    """The graph has no attention a rollout can read (a CNN, window attention, no class token)."""


@dataclass(frozen=True)
class AttentionBlocks:
    """A vision transformer's attention probabilities, one tensor per block in graph order.

    Each of ``names`` is the output of a Softmax over the key axis of the block's attention
    logits, (N, heads, T, T) or (N * heads, T, T), read as the first operand of the MatMul with
    the values; T is ``grid.tokens``: the ``grid.extra`` leading tokens (class, distillation)
    and the h x w patches.
    """

    names: tuple[str, ...]
    grid: TokenGrid


def _softmax_axis(model: onnx.ModelProto, node: onnx.NodeProto, rank: int) -> int:
    """The axis a Softmax normalises (mod ``rank``); the default is -1 from opset 13 on, 1
    before (where it also flattens the axes after it: the last axis only when it is the last)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    default = -1 if opset >= 13 else 1
    return next((a.i for a in node.attribute if a.name == "axis"), default) % rank


def _feeds_values_matmul(graph: onnx.GraphProto, name: str,
                         readers: dict[str, list[int]]) -> bool:
    """Whether ``name`` is the first operand of a MatMul (probabilities @ values), directly or
    through :data:`_ATTENTION_PASS` ops."""
    for i in readers.get(name, []):
        n = graph.node[i]
        if n.input and n.input[0] == name and (
                n.op_type == "MatMul"
                or n.op_type in _ATTENTION_PASS and _feeds_values_matmul(graph, n.output[0],
                                                                         readers)):
            return True
    return False


def attention_blocks(model: onnx.ModelProto) -> AttentionBlocks:
    """Every block's attention probabilities (:class:`AttentionBlocks`), or a one-line error.

    An attention is the output of a Softmax over the last axis of a rank-3 or rank-4 tensor
    whose last two axes are one static token count T (queries x keys), on the path to the
    outputs, and whose output is the first operand of a MatMul (the product with the values).
    The blocks are global attention over a token sequence of :func:`token_grids` when T is its
    token count, with at least one extra token whose row is read (the class token).

    Raises:
        NoAttentionError: no such Softmax (a CNN, or attention fused into one op); attention
            over T tokens that are not a class token and the image's patch grid (Swin's window
            attention, pooled ViTs without a class token); blocks over different token counts;
            or heads folded into a batch axis fixed above 1 (runs are padded to that batch).
    """
    info = tensor_info(model)
    g = model.graph
    readers = consumers(g)
    live = input_dependent(g)
    on_path = {o for i in needed_nodes(g, [o.name for o in g.output]) for o in g.node[i].output}
    found: list[tuple[str, int]] = []
    folded = False  # some block's heads share the batch axis: (N * heads, T, T)
    for n in g.node:
        if n.op_type != "Softmax" or n.output[0] not in live or n.output[0] not in on_path:
            continue
        shape = info[n.output[0]].shape
        if shape is None or len(shape) not in (3, 4) or \
                _softmax_axis(model, n, len(shape)) != len(shape) - 1:
            continue
        t = shape[-1]
        if isinstance(t, int) and t == shape[-2] and _feeds_values_matmul(g, n.output[0], readers):
            found.append((n.output[0], t))
            folded = folded or len(shape) == 3
    if not found:
        raise NoAttentionError(
            "the model has no recognisable attention (no Softmax over the keys of a (N, heads, "
            "T, T) tensor multiplied with the values): attention methods need a vision "
            "transformer such as ViT or DeiT; use gradcam or a black-box method")
    counts = sorted({t for _, t in found})
    grids = {grid for grid in token_grids(model, info).values() if grid.tokens in counts}
    if len(counts) > 1 or not grids:
        raise NoAttentionError(
            f"the model's {len(found)} attention blocks attend over {'/'.join(map(str, counts))} "
            "tokens, not over one global sequence of a class token and the image's patches "
            "(window attention, as in Swin, has no class token to read): attention rollout "
            "does not apply; use gradcam on a feature map or a black-box method")
    if len(grids) > 1:
        raise NoAttentionError(f"the model's attention over {counts[0]} tokens matches several "
                               f"token grids ({', '.join(map(str, sorted(grids, key=str)))})")
    (grid,) = grids
    if grid.extra == 0:
        raise NoAttentionError(
            f"the model's attention is over its {grid.h}x{grid.w} patch tokens with no class "
            "token (a transformer pooled by averaging its tokens): rollout reads the class "
            "token's row; use gradcam on a token layer or a black-box method")
    batch = next((t.shape[0] for t in info.values() if t.kind == "input" and t.shape), None)
    if folded and isinstance(batch, int) and batch > 1:
        raise NoAttentionError(
            f"the model's attention is laid out (N * heads, T, T) and its batch axis is fixed at "
            f"{batch}: one image's heads cannot be told from the padding; export it with a "
            "dynamic batch axis")
    return AttentionBlocks(tuple(name for name, _ in found), grid)
