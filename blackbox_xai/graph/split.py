"""Cut a model at a tensor: feature extractor (inputs -> tensor) and head (tensor -> outputs)."""

from __future__ import annotations

import onnx

from ..errors import BlackboxError
from .inspect import (
    input_dependent,
    needed_nodes,
    node_inputs,
    producers,
    resolve_tensor,
    typed_outputs,
)
from .io import fed_inputs, finalize, infer_shapes, with_graph


def split(model: onnx.ModelProto, tensor: str, *, allow_crossing: bool = True
          ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Split ``model`` at ``tensor`` into ``(features, head)``: ``head(*features(x)) == model(x)``.

    ``features`` has the model's inputs and outputs ``[tensor, *crossing]``; ``head`` has the
    inputs ``[tensor, *crossing]``, in that same order, and the model's outputs. ``crossing``
    are the other input-dependent tensors the head reads that are computed before the cut (skip
    connections that jump over it, or a graph input read directly after it), in graph order.
    Constants the head needs (shape computations, Constant nodes) are copied into it instead.
    Initializers go to the part(s) that read them.

    Args:
        model: the model (not modified).
        tensor: the cut; the name of a tensor computed by a node.
        allow_crossing: when False, a cut with crossing tensors raises instead.

    Raises:
        UnknownNameError: ``tensor`` is not in the graph (with close matches).
        BlackboxError: the cut is a graph input or a constant, does not reach the outputs, or
            has crossing tensors while ``allow_crossing`` is False.
    """
    g = model.graph
    resolve_tensor(model, tensor)
    live = input_dependent(g)
    if tensor not in producers(g) or tensor not in live:
        raise BlackboxError(f"cannot split at {tensor!r}: it is a graph input or a constant, "
                            "not a tensor computed from the input")
    outputs = [o.name for o in g.output]
    feature_nodes = needed_nodes(g, [tensor])
    computed = {o for i in feature_nodes for o in g.node[i].output}
    before_cut = (computed | set(_real_inputs(g))) & live
    head_nodes = needed_nodes(g, outputs, stop=before_cut)
    head_needs = _reads(g, head_nodes) | {o for o in outputs if o in before_cut}
    if tensor not in head_needs:
        raise BlackboxError(f"cannot split at {tensor!r}: the outputs do not depend on it")
    order = {name: i for i, name in enumerate([*_real_inputs(g), *producers(g)])}
    crossing = sorted((head_needs & before_cut) - {tensor}, key=order.__getitem__)
    if crossing and not allow_crossing:
        raise BlackboxError(
            f"cutting at {tensor!r} leaves {len(crossing)} other tensor(s) crossing the cut "
            f"(skip connections): {', '.join(crossing)}; cut after they merge, or pass "
            "allow_crossing=True")
    cut = [tensor, *crossing]
    cut_types = typed_outputs(infer_shapes(model), cut)
    feature_reads, head_reads = _reads(g, feature_nodes), _reads(g, head_nodes)
    feature_inputs = [i for i in g.input if i.name in feature_reads or i.name in cut]
    features = _subgraph(model, feature_nodes, "features", feature_inputs, cut_types)
    head = _subgraph(model, head_nodes, "head",
                     cut_types + [i for i in g.input if i.name in head_reads and i.name not in cut],
                     list(g.output))
    return finalize(features), finalize(head)


def _real_inputs(g: onnx.GraphProto) -> list[str]:
    return [i.name for i in fed_inputs(g)]


def _reads(g: onnx.GraphProto, nodes: list[int]) -> set[str]:
    """Tensors the nodes read that none of them produces."""
    made = {o for i in nodes for o in g.node[i].output}
    return {t for i in nodes for t in node_inputs(g.node[i]) if t not in made}


def _subgraph(model: onnx.ModelProto, nodes: list[int], suffix: str,
              inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
              ) -> onnx.ModelProto:
    """A model made of ``nodes`` of ``model`` with the given inputs and outputs."""
    g = model.graph
    reads = _reads(g, nodes)
    tensors = {o for i in nodes for o in g.node[i].output}
    graph = onnx.GraphProto(name=f"{g.name}_{suffix}", doc_string=g.doc_string)
    graph.node.extend(g.node[i] for i in nodes)
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(t for t in g.initializer if t.name in reads)
    graph.value_info.extend(v for v in g.value_info if v.name in tensors)
    return with_graph(model, graph)
