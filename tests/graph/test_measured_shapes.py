"""Shapes that ONNX inference cannot know are measured (issue 12: HF-style ViT exports that
size their position embeddings and decoders at run time).

The model below resizes a feature map to a size computed from ``Shape(input)`` through a float
Cast (as HF transformers' ``interpolate_pos_encoding`` does), so inference leaves the resized
tensor's spatial axes unknown and the Resize gradient rule could not run before.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai import explain
from blackbox_xai.graph.io import infer_shapes
from blackbox_xai.graph.normalize import incomplete_shapes
from blackbox_xai.model import Model, one_hot


def _model(path) -> None:
    """x (N,3,8,8) -> Conv 3->4 k2 s2 -> Relu -> (N,4,4,4) -> Resize to (H, W) of x computed as
    Cast(Cast(Shape(x)[2:4], float) * 1.0, int64) -> (N,4,8,8) -> ReduceMean(2,3) -> Gemm (3)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 2, 2)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([4], np.int64), "four"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["a"]),
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Slice", ["sx", "two", "four", "zero"], ["hw"]),
        helper.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["hwf", "one"], ["hws"]),
        helper.make_node("Cast", ["hws"], ["hwi"], to=TensorProto.INT64),
        helper.make_node("Shape", ["a"], ["sa"]),
        helper.make_node("Slice", ["sa", "zero", "two", "zero"], ["nc"]),
        helper.make_node("Concat", ["nc", "hwi"], ["sizes"], axis=0),
        helper.make_node("Resize", ["a", "", "", "sizes"], ["r"], mode="linear"),
        helper.make_node("ReduceMean", ["r"], ["p"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["p", "fc"], ["y"], transB=1),
    ]
    g = helper.make_graph(nodes, "measured", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    path = tmp_path_factory.mktemp("measured") / "runtime_sized.onnx"
    _model(path)
    return Model(path)


def test_inference_leaves_the_resized_axes_unknown(model):
    assert "r" in incomplete_shapes(infer_shapes(onnx.load(model.path)))


def test_the_model_measures_them_with_the_batch_axis_left_unknown(model):
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim] for v in model.graph().graph.value_info}
    assert shapes["r"] == [None, 4, 8, 8]
    assert "r" not in incomplete_shapes(model.graph())


def test_input_gradient_through_the_runtime_sized_resize_matches_finite_differences(model):
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    grad = model.input_gradient(x, one_hot(1, 3, 2))[1][0]
    eps, fd = 1e-2, np.zeros_like(x[0])
    for i in np.ndindex(*x.shape[1:]):
        hi, lo = x.copy(), x.copy()
        hi[(0, *i)] += eps
        lo[(0, *i)] -= eps
        fd[i] = (model.logits(hi)[0, 2] - model.logits(lo)[0, 2]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=2e-3, rtol=1e-2)


def test_gradcam_on_the_resized_map_equals_numpy(model):
    """Grad-CAM on ``r``: ReLU(sum_c w_c A_c), w_c = mean over space of dy/dA_c = fc[k, c] / 64
    (the mean pool's gradient), A = the resized map read from the model."""
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    _, act = model.layer_activation(x, "r")
    fc = numpy_helper.to_array(next(t for t in onnx.load(model.path).graph.initializer
                                    if t.name == "fc"))
    expected = np.maximum(np.tensordot(fc[2] / 64, act[0], axes=1), 0)
    got = explain(model, x[0], "gradcam", target=2, layer="r").map
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
