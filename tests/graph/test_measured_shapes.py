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
from blackbox_xai.errors import BlackboxError
from blackbox_xai.graph.io import infer_shapes
from blackbox_xai.graph.normalize import incomplete_shapes
from blackbox_xai.model import Model, one_hot


def _model(path) -> None:
    """x (N,3,8,8) -> Reshape to (N, 3, h, h) -> Conv 3->4 k2 s2 -> Relu ``a`` (N,4,4,4) ->
    Resize ``r`` to (h, h) computed as Cast(Cast([h, h], float) * 1.0, int64) -> (N,4,8,8) ->
    ReduceMean(2,3) -> Gemm (3), with h = Unsqueeze(Shape(x)[2]) used on both sides of ``a``
    (as exporters reuse one shape scalar)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 2, 2)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array(2, np.int64), "two_scalar"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Gather", ["sx", "two_scalar"], ["h"], axis=0),
        helper.make_node("Unsqueeze", ["h", "zero"], ["h1"]),
        helper.make_node("Slice", ["sx", "zero", "two", "zero"], ["nc_x"]),
        helper.make_node("Concat", ["nc_x", "h1", "h1"], ["shape_x"], axis=0),
        helper.make_node("Reshape", ["x", "shape_x"], ["xr"]),
        helper.make_node("Conv", ["xr", "w", "b"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["a"]),
        helper.make_node("Concat", ["h1", "h1"], ["hw"], axis=0),
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


def central_differences(model: Model, x: np.ndarray, k: int, eps: float = 1e-2) -> np.ndarray:
    """d logit_k / dx of one input (1, C, H, W) by central differences, pixel by pixel."""
    fd = np.zeros_like(x[0])
    for i in np.ndindex(*x.shape[1:]):
        hi, lo = x.copy(), x.copy()
        hi[(0, *i)] += eps
        lo[(0, *i)] -= eps
        fd[i] = (model.logits(hi)[0, k] - model.logits(lo)[0, k]) / (2 * eps)
    return fd


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
    np.testing.assert_allclose(grad, central_differences(model, x, 2), atol=2e-3, rtol=1e-2)


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


def test_ablationcam_refuses_a_head_that_reads_shape_arithmetic_from_before_the_cut(model):
    """Cut at ``a``, the head's Resize also reads ``sizes`` (from Shape(x), no batch axis): the
    head cannot run on a batch of ablated activations, so the method says so in one line."""
    x = np.random.default_rng(3).normal(size=(3, 8, 8)).astype(np.float32)
    with pytest.raises(BlackboxError, match="shape arithmetic.*choose a later --layer"):
        explain(model, x, "ablationcam", target=2, layer="a")


def test_ablationcam_after_the_resize_equals_its_closed_form(model):
    """Cut at ``r`` the head is mean-pool then linear: y = sum_c fc[t, c] m_c (m_c the mean of
    channel c), so zeroing channel k gives w_k = (y - y_k) / y = fc[t, k] m_k / y."""
    x = np.random.default_rng(4).normal(size=(1, 3, 8, 8)).astype(np.float32)
    _, act = model.layer_activation(x, "r")
    fc = numpy_helper.to_array(next(t for t in onnx.load(model.path).graph.initializer
                                    if t.name == "fc"))
    m = act[0].mean(axis=(1, 2))
    y = float(fc[2] @ m)
    expected = np.maximum(np.tensordot(fc[2] * m / y, act[0], axes=1), 0)
    got = explain(model, x[0], "ablationcam", target=2, layer="r").map
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def _dynamic_size_model(path) -> None:
    """x (N, 3, H, W), any H and W -> Conv 3->4 k2 s2 -> Sigmoid -> Resize x2 (constant scales)
    -> ReduceMean(2,3) -> Gemm (3): the resized axes have no static size until H, W are known."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 2, 2)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["c"], ["a"]),
        helper.make_node("Resize", ["a", "", "scales"], ["r"], mode="linear"),
        helper.make_node("ReduceMean", ["r"], ["p"], axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["p", "fc"], ["y"], transB=1),
    ]
    g = helper.make_graph(nodes, "dynamic_size", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, "H", "W"])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_a_dynamic_size_model_is_differentiated_at_each_image_size(tmp_path, size):
    """The backward graph is built for the batch's (H, W): gradients at two sizes of one model
    match central finite differences."""
    _dynamic_size_model(tmp_path / "dyn.onnx")
    model = Model(tmp_path / "dyn.onnx")
    x = np.random.default_rng(6).normal(size=(1, 3, *size)).astype(np.float32)
    grad = model.input_gradient(x, one_hot(1, 3, 1))[1][0]
    np.testing.assert_allclose(grad, central_differences(model, x, 1), atol=2e-3, rtol=1e-2)


def test_sessions_of_image_sizes_are_bounded(tmp_path):
    """Six image sizes of a dynamic-size model: the backward sessions of the four most recent
    are kept (memory does not grow with the number of sizes in a dataset), and a size seen
    again after eviction is rebuilt with the same gradient."""
    from blackbox_xai.model import SIZED_SESSIONS

    _dynamic_size_model(tmp_path / "dyn.onnx")
    model = Model(tmp_path / "dyn.onnx")
    rng = np.random.default_rng(7)
    first = rng.normal(size=(1, 3, 6, 6)).astype(np.float32)
    grad = model.input_gradient(first, one_hot(1, 3, 0))[1]
    for side in (8, 10, 12, 14, 16):
        model.input_gradient(rng.normal(size=(1, 3, side, side)).astype(np.float32),
                             one_hot(1, 3, 0))
    sizes = [k[-1] for k in model._sessions if k[0] == "backward"]
    assert sizes == [(10, 10), (12, 12), (14, 14), (16, 16)] and len(sizes) == SIZED_SESSIONS
    np.testing.assert_array_equal(model.input_gradient(first, one_hot(1, 3, 0))[1], grad)


def test_bbx_layers_shows_the_measured_shapes(model, run):
    """``bbx layers`` reads the graph the CAMs use: the resized map's size is measured."""
    r = run("layers", model.path)
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "Resize" in ln)
    assert line.split()[:3] == ["*", "r", "?x4x8x8"] and "unk" not in r.output
