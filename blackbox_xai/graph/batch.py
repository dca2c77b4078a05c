"""Make a fixed batch axis symbolic (a pure rewrite; :func:`blackbox_xai.runtime.
verify_batch_dynamic` checks the result: batch 2 against two batch-1 runs)."""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from ..errors import BlackboxError
from .inspect import constant_value, node_inputs
from .io import copy_model, fed_inputs, finalize


def make_batch_dynamic(model: onnx.ModelProto, dim_name: str = "N") -> onnx.ModelProto:
    """A copy of ``model`` whose fixed batch axis (axis 0 of inputs and outputs) is ``dim_name``.

    Reshape shape constants that start with the batch size get 0 there ("copy the input's
    axis"; -1 where ``allowzero=1``). ``value_info`` is dropped (its static batch would
    contradict the new one; ONNX Runtime infers shapes itself). Only a run can tell whether the
    graph hard-codes the batch elsewhere (Expand, Tile...): verify the result with
    :func:`blackbox_xai.runtime.verify_batch_dynamic`. A model with no fixed batch is returned
    as a plain copy.

    Raises:
        BlackboxError: the inputs disagree on the batch size, or an output has no batch axis.
    """
    out = copy_model(model)
    g = out.graph
    inputs = fed_inputs(g)
    sizes = {d.dim_value for i in inputs if (d := _batch_dim(i)) is not None and d.dim_value > 0}
    if not sizes:
        return out
    if len(sizes) > 1:
        raise BlackboxError(f"the inputs have different fixed batch sizes {sorted(sizes)}: "
                            "cannot tell which axis is the batch")
    batch = sizes.pop()
    for v, required in [*((i, True) for i in inputs), *((o, False) for o in g.output)]:
        d = _batch_dim(v)
        if d is None and not required:
            continue  # an output of unknown shape
        if d is None or d.dim_value not in (0, batch):
            shape = [x.dim_value or x.dim_param for x in v.type.tensor_type.shape.dim]
            raise BlackboxError(f"{v.name!r} has shape {shape}: it has no batch axis of size "
                                f"{batch} first, so the batch cannot be made dynamic")
        d.dim_param = dim_name  # clears dim_value (a oneof)
    del g.value_info[:]
    _free_reshape_batch(g, batch)
    return finalize(out)


def _batch_dim(v: onnx.ValueInfoProto) -> onnx.TensorShapeProto.Dimension | None:
    t = v.type.tensor_type
    return t.shape.dim[0] if t.HasField("shape") and t.shape.dim else None


def _free_reshape_batch(g: onnx.GraphProto, batch: int) -> None:
    """Point each Reshape whose constant shape starts with ``batch`` at a batch-free copy of it."""
    taken = {*(i.name for i in g.input), *(t.name for t in g.initializer),
             *(o for n in g.node for o in n.output)}
    constants, replaced = [], set()
    for n in g.node:
        value = constant_value(g, n.input[1]) if n.op_type == "Reshape" else None
        if value is None or value.size == 0 or value.reshape(-1)[0] != batch:
            continue
        shape = value.reshape(-1).copy()
        if not any(a.name == "allowzero" and a.i for a in n.attribute):
            shape[0] = 0
        elif -1 not in shape:
            shape[0] = -1
        else:
            raise BlackboxError(f"Reshape {n.name or n.output[0]!r} hard-codes the batch in its "
                                f"shape {value.tolist()} with allowzero=1: the batch cannot be "
                                "made dynamic")
        name = _unique(f"{n.input[1]}_dynamic_batch", taken)
        constants.append(helper.make_node("Constant", [], [name], name=name,
                                          value=numpy_helper.from_array(shape, name)))
        replaced.add(n.input[1])
        n.input[1] = name
    nodes = constants + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused(g, replaced)


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _drop_unused(g: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers and Constant nodes among ``names`` that nothing reads any more."""
    read = {t for n in g.node for t in node_inputs(n)} | {o.name for o in g.output}
    unused = names - read
    for field in (g.initializer, g.input):
        kept = [v for v in field if v.name not in unused]
        del field[:]
        field.extend(kept)
    kept_nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in unused)]
    del g.node[:]
    g.node.extend(kept_nodes)
