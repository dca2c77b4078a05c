"""Class scores behind a ZipMap: the (N, K) tensor that an ``ai.onnx.ml`` ZipMap turns into one
``{label: score}`` map per input.

Azure Custom Vision exports, skl2onnx pipelines and others end in a ZipMap (output ``loss``, a
sequence of maps) beside a string label (``classLabel``): neither is a tensor of class scores,
but the ZipMap's input is. :func:`unzipped_outputs` declares that input as the graph output in
the ZipMap's place (the ZipMap dropped), :func:`without_string_outputs` drops the label output
and the nodes only it needs, and :func:`zipmap_labels` reads the class names the ZipMap carries.

Pure ``ModelProto -> ModelProto``; no ONNX Runtime here.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .inspect import needed_nodes
from .io import copy_model


def _zipmaps(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The graph outputs made by a ZipMap, with their ZipMap."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    return {o.name: made_by[o.name] for o in model.graph.output
            if o.name in made_by and made_by[o.name].op_type == "ZipMap"
            and made_by[o.name].domain == "ai.onnx.ml"}


def unzipped_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` and {} when no graph output is a ZipMap's; else a copy whose ZipMap outputs
    are replaced by the ZipMap's input tensor (an output already, or declared one), and the
    renaming {ZipMap output: its input}."""
    zipped = _zipmaps(model)
    if not zipped:
        return model, {}
    out = copy_model(model)
    renamed = {name: z.input[0] for name, z in zipped.items()}
    read = {i for n in out.graph.node if n.output[0] not in zipped for i in n.input}
    kept = [n for n in out.graph.node if not (n.op_type == "ZipMap" and n.output[0] in zipped
                                              and n.output[0] not in read)]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    typed = {v.name: v for v in out.graph.value_info}
    outputs, seen = [], set()
    for o in out.graph.output:
        name = renamed.get(o.name, o.name)
        if name in seen:
            continue
        seen.add(name)
        if name == o.name:
            outputs.append(o)
            continue
        # ZipMap's input is float (N, C) by its definition; shape inference may know more
        v = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", f"{name}_classes"])
        known = typed[name].type.tensor_type if name in typed else None
        if known is not None and known.HasField("shape"):
            v.type.tensor_type.shape.CopyFrom(known.shape)
        if known is not None and known.elem_type:
            v.type.tensor_type.elem_type = known.elem_type
        outputs.append(v)
    del out.graph.output[:]
    out.graph.output.extend(outputs)
    return out, renamed


def zipmap_labels(model: onnx.ModelProto) -> list[str] | None:
    """The class names of the (first) ZipMap that makes a graph output, or None."""
    for z in _zipmaps(model).values():
        for a in z.attribute:
            if a.name == "classlabels_strings":
                return [s.decode() for s in a.strings]
            if a.name == "classlabels_int64s":
                return [str(i) for i in a.ints]
    return None


def without_string_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` and [] when no graph output is a string tensor (or all are); else a copy
    without them (a classifier's label name beside its scores) and the nodes only they need,
    and their names. No method explains a string, and Custom Vision's opset-7 files make theirs
    from a string Constant that opset 7 does not allow, which fails the strict check every
    rewritten graph gets."""
    strings = [o.name for o in model.graph.output
               if o.type.tensor_type.elem_type == onnx.TensorProto.STRING]
    keep = [o.name for o in model.graph.output if o.name not in strings]
    if not strings or not keep:
        return model, []
    out = copy_model(model)
    g = out.graph
    kept = [g.node[i] for i in needed_nodes(g, keep)]
    del g.node[:]
    g.node.extend(kept)
    outputs = [o for o in g.output if o.name in keep]
    del g.output[:]
    g.output.extend(outputs)
    return out, strings
