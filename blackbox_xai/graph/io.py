"""Read, write, copy and validate ONNX models; every graph rewrite ends in :func:`finalize`.

Rewrites keep the source ``ir_version`` and opset imports (older runtimes reject the newest IR),
so models are rebuilt with :func:`with_graph`, never with ``onnx.helper.make_model`` defaults.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
from onnx import helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from ..errors import BlackboxError, ModelLoadError
from ..outputs import OutputPlan, staging_folder

log = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD = int(1.8e9)  # protobuf cannot serialize more than 2 GiB in one message


def load(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (and its external data) or raise a one-line :class:`ModelLoadError`.

    With ``load_external_data=False`` the initializers keep pointing at the ``.data`` file, which
    is how models over 2 GB are rewritten: save the result in the same folder.
    """
    p = Path(path)
    if p.is_dir():
        raise ModelLoadError(f"{p} is a folder, not an ONNX file")
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=load_external_data)
    except Exception as e:  # protobuf, missing external data, ...
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{p} is not a readable ONNX model ({detail})") from e
    if not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{p} is not an ONNX model (no graph or opset)")
    return model


def inline_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes of the initializers held in memory (external files not counted)."""
    return sum(t.ByteSize() for t in model.graph.initializer)


def save(model: onnx.ModelProto, path: str | os.PathLike,
         external_data: bool | None = None, *, plan: OutputPlan | None = None) -> Path:
    """Write ``model`` to ``path`` all-or-nothing (through :class:`~blackbox_xai.outputs.OutputPlan`);
    returns the path.

    Args:
        model: the model (not modified).
        path: the ``.onnx`` file to write; without ``plan`` its folder must exist and an
            existing file is replaced.
        external_data: store the initializers of 1 KiB or more in ``<name>.data`` next to the
            file. ``None``: only when they exceed 1.8 GB (protobuf stops at 2 GB). Initializers
            that already refer to external data (loaded with ``load_external_data=False``) keep
            their relative location, so save such models into the folder of their ``.data`` file.
        plan: the command's plan, already checked, holding ``path`` and (optional)
            :func:`external_data_path`; the files are committed through it.
    """
    path = Path(path)
    if external_data is None:
        external_data = inline_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data = external_data_path(path)
    if plan is None:
        if not path.parent.is_dir():
            raise BlackboxError(f"cannot write {path}: folder {path.parent} does not exist")
        plan = OutputPlan(overwrite=True)
        plan.add(path)
        if external_data:
            plan.add(data, optional=True)
    # the weights this model still reads from files must survive its saving
    plan.check({path.parent / ExternalDataInfo(t).location: "external data of the model saved"
                for t in model.graph.initializer if uses_external_data(t)})
    if not external_data:
        plan.commit({path: model.SerializeToString()})
        return path
    with staging_folder(path) as tmp:
        # onnx.save moves the tensors out of the proto it is given: save a copy
        onnx.save(copy_model(model), str(tmp / path.name), save_as_external_data=True,
                  all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        written = {path: tmp / path.name}
        if (tmp / data.name).exists():
            written[data] = tmp / data.name
        plan.commit(written)
    return path


def external_data_path(path: str | os.PathLike) -> Path:
    """Where :func:`save` puts the external data of ``path``: ``<name>.data`` beside it."""
    return Path(path).with_name(Path(path).name + ".data")


def fed_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds: those that are not initializers too (IR 3 files list
    every weight as an input)."""
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def node_attrs(node: onnx.NodeProto) -> dict[str, object]:
    """The node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def with_graph(model: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    """A model with ``graph`` and everything else (IR, opsets, metadata, functions) of ``model``."""
    new = onnx.ModelProto(
        ir_version=model.ir_version, producer_name=model.producer_name,
        producer_version=model.producer_version, domain=model.domain,
        model_version=model.model_version, doc_string=model.doc_string, graph=graph)
    new.opset_import.extend(model.opset_import)
    new.metadata_props.extend(model.metadata_props)
    new.functions.extend(model.functions)
    return new


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ``value_info`` for every tensor ONNX shape inference can type.

    Strict inference with data propagation first (it keeps symbolic batch dims and folds shape
    computations); if that fails (an op the inference rejects), the permissive mode, which
    types what it can and skips the rest.
    """
    weights = _set_aside_weights(model)
    try:
        try:
            out = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
            log.info("strict shape inference failed (%s); using the permissive mode",
                     str(e).splitlines()[0])
            out = onnx.shape_inference.infer_shapes(model)
    finally:
        _put_back_weights(model, weights)
    _put_back_weights(out, weights)
    return out


#: float initializers of at least this many bytes are set aside during shape inference (integer
#: tensors are kept whatever their size: shape computations may read them)
_SET_ASIDE_BYTES = 4096
_WEIGHT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                           onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE})


def _set_aside_weights(model: onnx.ModelProto) -> dict[str, bytes]:
    """Take the data of ``model``'s large initializers out, leaving them typed as external data.

    Shape inference works on a serialized copy of the model; without the weights (which it
    reads for types and shapes only: shape computations use small integer tensors) that copy is
    a fraction of the size: 0.23 -> 0.08 s on EfficientNet-Lite0 at every model load, with the
    same inferred model byte for byte. Returns the data by initializer name."""
    aside = {}
    for t in model.graph.initializer:
        if (t.data_location == onnx.TensorProto.DEFAULT and t.data_type in _WEIGHT_TYPES
                and len(t.raw_data) >= _SET_ASIDE_BYTES):
            aside[t.name] = t.raw_data
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            t.external_data.add(key="location", value="set-aside-by-blackbox-xai")
    return aside


def _put_back_weights(model: onnx.ModelProto, aside: dict[str, bytes]) -> None:
    """Undo :func:`_set_aside_weights` on ``model`` (or on the inferred copy of it)."""
    for t in model.graph.initializer:
        if t.name in aside:
            del t.external_data[:]
            t.ClearField("data_location")
            t.raw_data = aside[t.name]


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Validate a rewritten model with ``onnx.checker`` (full check: strict shape inference too).

    Returns ``model`` itself, so that a rewrite can end with ``return finalize(out)``; raises a
    one-line :class:`BlackboxError` with the checker's complaint. Initializers left in an
    external file (``load(..., load_external_data=False)``) are checked by type and shape only.
    """
    target = _external_as_inputs(model)
    try:
        if inline_bytes(target) > EXTERNAL_DATA_THRESHOLD:  # the checker needs a file past 2 GB
            with tempfile.TemporaryDirectory() as tmp:
                onnx.checker.check_model(str(save(target, Path(tmp) / "model.onnx")),
                                         full_check=True)
        else:
            onnx.checker.check_model(target, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        detail = str(e).splitlines()[0]
        raise BlackboxError(f"the rewritten model is not valid ONNX: {detail}") from e
    return model


def _external_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy whose external initializers are typed graph inputs instead.

    The checker looks for external files relative to the working directory when it is given a
    proto; as inputs, the weights keep the types and shapes shape inference needs.
    """
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    if not external:
        return model
    out = copy_model(model)  # cheap: the external weights are not in memory
    names = {t.name for t in external}
    kept = [t for t in out.graph.initializer if t.name not in names]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    listed = {i.name for i in out.graph.input}
    out.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                           for t in external if t.name not in listed)
    return out
