"""Files that declare a newer ONNX IR version or opset than ONNX Runtime reads: run as a copy
declared at the versions it reads when they use nothing newer, else refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, model_path
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai import load_model
from blackbox_xai import model as model_module
from blackbox_xai.errors import ModelLoadError
from blackbox_xai.graph.runtime_versions import (
    changed_ops,
    declare_ir,
    declare_opset,
    element_types,
    features_after,
)
from blackbox_xai.runtime import max_ir_version, max_opset


def declared(path, ir: int, tmp_path, name: str = "model.onnx"):
    """A copy of the model at ``path`` whose file declares IR version ``ir``."""
    proto = onnx.load(str(path))
    proto.ir_version = ir
    out = tmp_path / name
    onnx.save(proto, str(out))
    return out


def with_initializer(proto: onnx.ModelProto, data_type: int) -> onnx.ModelProto:
    """``proto`` plus an unused one-element initializer of ``data_type`` (raw bytes)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.initializer.append(helper.make_tensor("extra", data_type, [1], b"\x01", raw=True))
    return out


def test_the_runtime_says_which_ir_versions_it_reads():
    """ORT 1.31 reads up to IR 13; a file declaring one more is refused by ONNX Runtime itself."""
    limit = max_ir_version()
    assert isinstance(limit, int) and limit >= 10
    proto = onnx.load(str(model_path("tiny_cnn")))
    proto.ir_version = limit + 1
    with pytest.raises(Exception, match="Unsupported model IR version"):
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_newer_declared_file_runs_as_a_copy_and_is_not_changed(tmp_path, caplog):
    limit = max_ir_version()
    path = declared(model_path("tiny_cnn"), limit + 1, tmp_path)
    before = path.read_bytes()
    caplog.set_level("INFO", logger="blackbox_xai")
    model = load_model(path, device="cpu")
    assert f"declares ONNX IR version {limit + 1}" in caplog.text
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(model(x), load_model(model_path("tiny_cnn"), device="cpu")(x))
    assert model.graph().ir_version == limit  # derived graphs load too
    assert model.describe()["declared_as"] == {"ir_version": limit}  # in every explanation
    assert path.read_bytes() == before


def test_a_file_using_a_type_the_runtime_lacks_is_refused_in_one_line(tmp_path, monkeypatch,
                                                                      run):
    """A runtime that reads IR 9 at most (as ONNX Runtime 1.15 to 1.17 did), simulated: a file
    declaring IR 10 with an INT4 tensor cannot be declared 9; one without it can, and runs."""
    monkeypatch.setattr(model_module, "max_ir_version", lambda: 9)
    proto = onnx.load(str(model_path("tiny_cnn")))
    proto.ir_version = 10
    onnx.save(with_initializer(proto, TensorProto.INT4), str(tmp_path / "int4.onnx"))
    with pytest.raises(ModelLoadError, match=r"IR version 10 and uses INT4 tensors \(IR 10\)"):
        load_model(tmp_path / "int4.onnx", device="cpu")
    r = run("explain", "occlusion", tmp_path / "int4.onnx", EXAMPLES / "cat.jpg", "--out",
            tmp_path / "out")
    errors = [line for line in r.stderr.splitlines() if not line.startswith("bbx: ")]
    assert r.exit_code == 2 and not (tmp_path / "out").exists()
    assert len(errors) == 1 and "INT4 tensors (IR 10)" in errors[0], r.stderr
    assert load_model(declared(model_path("tiny_cnn"), 10, tmp_path), device="cpu").proto \
        .ir_version == 9


@pytest.mark.parametrize("ir, newer", [
    (8, ["FLOAT8E4M3FN tensors (IR 9)", "UINT2 tensors (IR 13)"]),
    (9, ["UINT2 tensors (IR 13)"]),
    (12, ["UINT2 tensors (IR 13)"]),
    (13, []),
])
def test_types_are_found_wherever_the_graph_names_them(ir, newer):
    """A Cast to FLOAT8E4M3FN inside an If branch and a UINT2 Constant in the other: found in
    subgraphs, in type attributes and in constants; nothing newer than IR 13 used."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    cast = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=17)], "then", [], [y])
    const = helper.make_graph([
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", 25, [1], b"\x01",
                                                                         raw=True)),
        helper.make_node("Identity", ["x"], ["y"])], "else", [], [y])
    cond = numpy_helper.from_array(np.array(True), "cond")
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=cast,
                                                else_branch=const)], "g", [x], [y], [cond])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 14
    assert {17, 25} <= element_types(proto)
    assert features_after(proto, ir) == newer
    if newer:
        with pytest.raises(ModelLoadError, match="upgrade it"):
            declare_ir(proto, ir)
    else:
        copy = declare_ir(proto, ir)
        assert copy.ir_version == ir and proto.ir_version == 14 and copy is not proto
    assert declare_ir(proto, 14) is proto


def opset_copy(path, opset: int, ir: int, out) -> object:
    """A copy of the model at ``path`` importing ai.onnx ``opset``, declared IR ``ir``."""
    proto = onnx.load(str(path))
    proto.opset_import[0].version, proto.ir_version = opset, ir
    onnx.save(proto, str(out))
    return out


def test_a_newer_opset_whose_ops_did_not_change_runs_as_a_copy(tmp_path, caplog):
    """ORT 1.31 runs opsets up to 26 and refuses 27; the test CNN's ops (Conv, Gemm, Flatten,
    ...) last changed at opset 21, so importing the runtime's limit + 1 changes nothing: it runs,
    with the same scores, as a copy importing the limit (and declared at the IR it reads)."""
    limit = max_opset()
    assert isinstance(limit, int) and limit >= 21
    path = opset_copy(model_path("tiny_cnn"), limit + 1, max_ir_version(), tmp_path / "m.onnx")
    with pytest.raises(Exception, match=f"Opset {limit + 1}"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    before = path.read_bytes()
    caplog.set_level("INFO", logger="blackbox_xai")
    model = load_model(path, device="cpu")
    assert f"imports opset {limit + 1}" in caplog.text and path.read_bytes() == before
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(model(x), load_model(model_path("tiny_cnn"), device="cpu")(x))
    assert model.graph().opset_import[0].version == limit
    assert model.describe()["declared_as"] == {"opset": limit}
    assert "declared_as" not in load_model(model_path("tiny_cnn"), device="cpu").describe()


def test_a_newer_opset_whose_ops_changed_is_refused_in_one_line(tmp_path, monkeypatch, run):
    """A runtime that runs opsets up to 20, simulated: the test CNN importing opset 21 uses
    Flatten, whose schema changed at 21 (new types), so it is not re-declared; at opset 20's
    own schemas nothing is refused."""
    monkeypatch.setattr(model_module, "max_opset", lambda: 20)
    path = opset_copy(model_path("tiny_cnn"), 21, 10, tmp_path / "m21.onnx")
    assert changed_ops(onnx.load(str(path)), 20) == ["Flatten (changed in opset 21)"]
    r = run("explain", "gradcam", path, EXAMPLES / "cat.jpg", "--out", tmp_path / "out")
    errors = [line for line in r.stderr.splitlines() if not line.startswith("bbx: ")]
    assert r.exit_code == 2 and not (tmp_path / "out").exists()
    assert len(errors) == 1 and "opset 21 and uses Flatten (changed in opset 21)" in errors[0]
    assert load_model(opset_copy(model_path("tiny_cnn"), 20, 10, tmp_path / "m20.onnx"),
                      device="cpu").proto.opset_import[0].version == 20
    proto = onnx.load(str(path))
    assert declare_opset(proto, 21) is proto
