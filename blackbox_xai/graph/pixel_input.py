"""Integer image inputs: a float view of a graph that only casts its pixels to float.

TensorFlow exports (tf2onnx's object-detection and TF-Hub models, tflite2onnx conversions) often
take uint8 NHWC pixels and cast them to float as their first op. Perturbations (a blurred or
mean fill, a mask's soft edge) and gradients need the pixels as real numbers:
:func:`float_pixel_input` declares the input with the Cast's float type and makes those Casts
Identity, which is the same function on integer pixels and its natural continuation between
them (what every gradient method assumes of a network anyway). A graph that uses the integer
tensor otherwise (a quantized op reading uint8 directly, integer arithmetic) has no such view.

Pure ``ModelProto -> ModelProto``; no ONNX Runtime here.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .io import copy_model

#: integer element types an image input may arrive in
PIXEL_TYPES = frozenset((TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16,
                         TensorProto.INT16))
_FLOAT_TYPES = frozenset((TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE))


def _read_in_subgraphs(graph: onnx.GraphProto, name: str) -> bool:
    """Whether a subgraph (an If branch, a Loop body) reads ``name`` from the outer scope."""
    for n in graph.node:
        for a in n.attribute:
            for sub in [*a.graphs, *([a.g] if a.HasField("g") else [])]:
                if any(name in m.input for m in sub.node) or _read_in_subgraphs(sub, name):
                    return True
    return False


def why_no_float_view(model: onnx.ModelProto, name: str) -> str | None:
    """None when input ``name`` is only ever cast to one float type; else what uses it."""
    users = [n for n in model.graph.node if name in n.input]
    if any(o.name == name for o in model.graph.output):
        return "is also a graph output"
    if _read_in_subgraphs(model.graph, name):
        return "is read inside a subgraph"
    others = [n.op_type for n in users if n.op_type != "Cast"]
    if others:
        return f"feeds {others[0]} directly"
    targets = {helper.get_attribute_value(next(a for a in n.attribute if a.name == "to"))
               for n in users}
    if not targets or len(targets) > 1 or not targets <= _FLOAT_TYPES:
        return "is not cast to one float type"
    return None


def float_pixel_input(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of ``model`` whose integer input ``name`` is declared with the float type its
    Casts produce, those Casts made Identity (check :func:`why_no_float_view` first)."""
    out = copy_model(model)
    casts = [n for n in out.graph.node if name in n.input]
    to = helper.get_attribute_value(next(a for a in casts[0].attribute if a.name == "to"))
    next(i for i in out.graph.input if i.name == name).type.tensor_type.elem_type = to
    for n in casts:
        n.op_type = "Identity"
        del n.attribute[:]
    return out
