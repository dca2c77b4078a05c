"""The rank pass after shape inference (graph/normalize.complete_ranks) records element types
ONNX Runtime accepts: the op's own, never type 0 and never a shape input's int64."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.graph.normalize import complete_ranks


def elem_types(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    return {v.name: (v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim))
            for v in model.graph.value_info}


def test_each_op_gets_its_own_element_type():
    # "u" comes from an op of another domain: rank and type unknown to the rank pass
    nodes = [helper.make_node("Custom", ["x"], ["u"], domain="org.example"),
             helper.make_node("Flatten", ["u"], ["flat"]),           # rank 2, type unknown
             helper.make_node("Gemm", ["flat", "w"], ["gemm"]),        # type from the weight
             helper.make_node("Reshape", ["flat", "shape"], ["resh"]),  # not the shape's int64
             helper.make_node("Cast", ["gemm"], ["cast"], to=T.FLOAT16),
             helper.make_node("Less", ["gemm", "gemm"], ["less"]),
             helper.make_node("Where", ["less", "gemm", "gemm"], ["where"]),
             helper.make_node("Pow", ["gemm", "two"], ["pow"]),         # the base's type
             helper.make_node("Shape", ["gemm"], ["shp"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(n, T.UNDEFINED, None)
         for n in ("resh", "cast", "where", "pow", "shp")],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
         numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
         numpy_helper.from_array(np.array(2, np.int32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("org.example", 1)])
    complete_ranks(model)
    got = elem_types(model)
    assert "flat" not in got and "resh" not in got  # rank 2, type unknown: no value_info
    assert got["gemm"] == (T.FLOAT, 2)
    assert got["cast"] == (T.FLOAT16, 2)
    assert got["less"] == (T.BOOL, 2)
    assert got["where"] == (T.FLOAT, 2)
    assert got["pow"] == (T.FLOAT, 2)
    assert got["shp"] == (T.INT64, 1)
    assert all(t != T.UNDEFINED for t, _ in got.values())


def test_a_type_shape_inference_gave_is_kept():
    nodes = [helper.make_node("Custom", ["x"], ["u"], domain="org.example"),
             helper.make_node("Flatten", ["u"], ["flat"]),
             helper.make_node("Cast", ["flat"], ["cast"], to=T.INT32)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cast", T.INT32, None)],
        value_info=[helper.make_tensor_value_info("flat", T.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("org.example", 1)])
    complete_ranks(model)
    assert elem_types(model)["flat"] == (T.DOUBLE, 2)


def test_a_model_with_an_onnx_runtime_fused_op_exposes_its_layers(tmp_path):
    """ORT-optimised files carry com.microsoft ops that ONNX shape inference does not know; the
    tensors after one got type 0 and every graph method failed to load its rewritten graph."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("QuickGelu", ["conv"], ["act"], domain="com.microsoft"),
             helper.make_node("Flatten", ["act"], ["flat"]),
             helper.make_node("Gemm", ["flat", "g"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((256, 5)).astype(np.float32) * 0.1, "g")])
    path = tmp_path / "fused.onnx"
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]), path)
    x = rng.standard_normal((3, 8, 8)).astype(np.float32)
    exposed = onnx.load(path)
    exposed.graph.output.append(helper.make_tensor_value_info("conv", T.FLOAT, None))
    y, conv = ort.InferenceSession(exposed.SerializeToString()).run(None, {"x": x[None]})

    model = load_model(path)
    scores, act = model.layer_activation(x[None], "conv")
    np.testing.assert_allclose(act, conv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scores, y, rtol=1e-6, atol=1e-6)
    eigen = explain(model, x, "eigencam", layer="conv", target=0).map
    a = conv[0].reshape(4, -1).T  # Eigen-CAM: ReLU of the centred A on its first component
    centred = a - a.mean(axis=0)
    projection = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    projection *= np.sign(projection @ (a.sum(1) - a.sum(1).mean()))
    expected = np.maximum(projection.reshape(8, 8), 0)
    np.testing.assert_allclose(eigen / eigen.max(), expected / expected.max(), atol=1e-5)
