"""Add intermediate tensors as graph outputs, typed so that ``onnx.checker`` accepts them."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from ..errors import UnknownNameError, did_you_mean
from .inspect import UntypedTensorError, needed_nodes, resolve_tensors, typed_outputs
from .io import copy_model, finalize, infer_shapes


def expose(model: onnx.ModelProto, names: str | Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names``, after its original outputs.

    Each new output gets the type and shape shape inference gives it (a typed but shapeless
    output fails the onnx 1.23 checker). Names that already are outputs are left as they are.

    In ONNX Runtime the original outputs stay bit-identical unless an exposed tensor sits inside
    a fusion that changes the arithmetic: exposing a Conv output that feeds a
    BatchNormalization stops ORT from folding the BN into the Conv weights, and the outputs
    move by a few ulp. Expose post-activation tensors (what Grad-CAM wants anyway): a Conv
    feeding a Relu/Clip only loses the fusion, not the bits.

    Raises:
        UnknownNameError: a name is not a tensor of the graph (the message lists close matches).
    """
    wanted = resolve_tensors(model, [names] if isinstance(names, str) else list(names))
    present = {o.name for o in model.graph.output}
    new = [n for n in dict.fromkeys(wanted) if n not in present]
    out = copy_model(model)
    out.graph.output.extend(typed_outputs(infer_shapes(model), new))
    return finalize(out)


def keep_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of ``model`` with ``name`` as its only output and only the nodes it needs."""
    outputs = [o.name for o in model.graph.output]
    if name not in outputs:
        raise UnknownNameError(did_you_mean(name, outputs, "output"))
    out = copy_model(model)
    g = out.graph
    kept = [g.node[i] for i in needed_nodes(g, [name])]
    del g.node[:]
    g.node.extend(kept)
    only = [o for o in g.output if o.name == name]
    del g.output[:]
    g.output.extend(only)
    return out


def expose_for_session(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """:func:`expose`, or, when inference cannot type a tensor (it follows an op inference does
    not know, such as ONNX Runtime's NCHWc ops), a copy with that output declared by name alone,
    which ONNX Runtime types itself: for a session only, never written or rewritten further
    (the onnx checker refuses untyped outputs)."""
    try:
        return expose(model, names)
    except UntypedTensorError:
        pass
    present = {o.name for o in model.graph.output}
    out = copy_model(model)
    for name in dict.fromkeys(names):
        if name not in present:
            out.graph.output.add().name = name
    return out
