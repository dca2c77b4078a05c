"""Declare a model at the older IR version and opset a runtime reads, when that changes nothing.

Exporters write the IR version and opset of the onnx package they run with (onnx 1.23: IR 14,
opset up to 28), and ONNX Runtime refuses every file above the newest it knows ("Unsupported
model IR version: 14, max supported IR version: 13"; "Opset 27 is under development ...
official support for domain ai.onnx is till opset 26"), even when the graph uses nothing that
came later: the commonest ONNX Runtime load error in exporters' issue trackers, whose usual fix
is to edit the file's ``ir_version``. Each IR version since 9 only added element types and a
few model-level fields (the version history in onnx.proto): :func:`declare_ir` returns a copy
declared at the older version when the model uses none of them. An opset is a set of operator
versions: :func:`declare_opset` returns a copy importing the older opset when no operator the
model uses changed between the two (every one's schema is the same at both). Otherwise each
names what the model uses, in one line.

Pure ``ModelProto -> ModelProto``; no ONNX Runtime here.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from ..errors import ModelLoadError
from .io import copy_model

#: element types (TensorProto.DataType) by the IR version that introduced them
TYPES_SINCE: dict[int, dict[int, str]] = {
    9: {17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ"},
    10: {21: "UINT4", 22: "INT4"},
    11: {23: "FLOAT4E2M1"},
    12: {24: "FLOAT8E8M0"},
    13: {25: "UINT2", 26: "INT2"},
    14: {27: "FLOAT6E2M3", 28: "FLOAT6E3M2"},
}
#: integer node attributes that name an element type (Cast's ``to``, RandomNormal's ``dtype``,
#: QuantizeLinear's ``output_dtype``)
TYPE_ATTRIBUTES = frozenset(("to", "dtype", "output_dtype"))


def _types_of(t: onnx.TypeProto) -> Iterator[int]:
    kind = t.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        yield getattr(t, kind).elem_type
    elif kind in ("sequence_type", "optional_type"):
        yield from _types_of(getattr(t, kind).elem_type)
    elif kind == "map_type":
        yield t.map_type.key_type
        yield from _types_of(t.map_type.value_type)


def _graph_types(g: onnx.GraphProto) -> Iterator[int]:
    for v in (*g.input, *g.output, *g.value_info):
        yield from _types_of(v.type)
    yield from (t.data_type for t in g.initializer)
    yield from (s.values.data_type for s in g.sparse_initializer)
    yield from _node_types(g.node)


def _node_types(nodes) -> Iterator[int]:
    for n in nodes:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.INT and a.name in TYPE_ATTRIBUTES:
                yield a.i
            yield from (t.data_type for t in _listed(a, "t", "tensors"))
            yield from (s.values.data_type for s in _listed(a, "sparse_tensor", "sparse_tensors"))
            for tp in _listed(a, "tp", "type_protos"):
                yield from _types_of(tp)
            for sub in _listed(a, "g", "graphs"):
                yield from _graph_types(sub)


def _listed(a: onnx.AttributeProto, one: str, many: str) -> list:
    """An attribute's values of one kind: its single field (when set) and its repeated one."""
    return [*getattr(a, many), *([getattr(a, one)] if a.HasField(one) else [])]


def element_types(model: onnx.ModelProto) -> set[int]:
    """Every element type ``model`` names: value infos, initializers, constants, type
    attributes, in subgraphs and model-local functions too."""
    used = set(_graph_types(model.graph))
    for f in model.functions:
        used.update(_node_types(f.node))
    return used


def features_after(model: onnx.ModelProto, ir: int) -> list[str]:
    """What ``model`` uses that IR versions after ``ir`` introduced."""
    used = element_types(model)
    found = [f"{name} tensors (IR {v})" for v, types in sorted(TYPES_SINCE.items()) if v > ir
             for t, name in types.items() if t in used]
    if ir < 8 and model.functions:
        found.append("model-local functions (IR 8)")
    if ir < 10 and any(getattr(f, "overload", "") for f in model.functions):
        found.append("function overloads (IR 10)")
    if ir < 11 and len(getattr(model, "configuration", ())):
        found.append("a multi-device configuration (IR 11)")
    return found


def declare_ir(model: onnx.ModelProto, ir: int, runtime: str = "the runtime") -> onnx.ModelProto:
    """``model`` itself when its IR version is at most ``ir``; else a copy declaring ``ir``
    when it uses nothing that later versions introduced, or a one-line
    :class:`ModelLoadError` naming what it uses."""
    if model.ir_version <= ir:
        return model
    newer = features_after(model, ir)
    if newer:
        raise ModelLoadError(f"the model declares ONNX IR version {model.ir_version} and uses "
                             f"{', '.join(newer)}, which {runtime} cannot read (it reads IR "
                             f"versions up to {ir}): upgrade it")
    out = copy_model(model)
    out.ir_version = ir
    return out


def default_domain_ops(model: onnx.ModelProto) -> set[str]:
    """The op types of the default (ai.onnx) domain that ``model`` uses, subgraphs included;
    model-local functions' bodies too, when they import the default domain's opset."""
    ops: set[str] = set()

    def walk(nodes) -> None:
        for n in nodes:
            if n.domain in ("", "ai.onnx"):
                ops.add(n.op_type)
            for a in n.attribute:
                for sub in _listed(a, "g", "graphs"):
                    walk(sub.node)

    walk(model.graph.node)
    for f in model.functions:
        walk(f.node)
    return ops


def changed_ops(model: onnx.ModelProto, opset: int) -> list[str]:
    """The ops ``model`` uses whose schema at its opset is newer than ``opset`` (or unknown)."""
    current = _default_opset(model)
    changed = []
    for op in sorted(default_domain_ops(model)):
        try:
            since = onnx.defs.get_schema(op, current).since_version
        except onnx.defs.SchemaError:
            changed.append(f"{op} (no schema)")
            continue
        if since > opset:
            changed.append(f"{op} (changed in opset {since})")
    return changed


def declare_opset(model: onnx.ModelProto, opset: int, runtime: str = "the runtime"
                  ) -> onnx.ModelProto:
    """``model`` itself when its ai.onnx opset is at most ``opset``; else a copy importing
    ``opset`` when none of its ops changed in between, or a one-line :class:`ModelLoadError`
    naming those that did."""
    current = _default_opset(model)
    if current <= opset:
        return model
    changed = changed_ops(model, opset)
    if changed:
        raise ModelLoadError(f"the model imports opset {current} and uses {', '.join(changed)}, "
                             f"which {runtime} cannot run (it reads opsets up to {opset}): "
                             "upgrade it, or export at that opset")
    out = copy_model(model)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    for f in out.functions:
        for o in f.opset_import:
            if o.domain in ("", "ai.onnx") and o.version > opset:
                o.version = opset
    return out


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
