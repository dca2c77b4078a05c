"""Quantized (QDQ) models: straight-through gradients through QuantizeLinear/DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, ROOT
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.graph.autodiff import backward
from blackbox_xai.metrics import spearman
from blackbox_xai.preprocess import Preprocessing


def qdq_model(per_channel: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """scores = sum_hw (w * DQ(Q(x))) over a (N, 3, 4, 4) input, 2 classes."""
    w = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    scale = np.array([0.05, 0.1, 0.2], np.float32) if per_channel else np.array(0.05, np.float32)
    zero = np.zeros(scale.shape, np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], axis=1),
        helper.make_node("Unsqueeze", ["dq", "one"], ["dq1"]),
        helper.make_node("Mul", ["dq1", "w"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "axes"], ["scores"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(scale, "s"), (zero, "z"), (w, "w"), (np.array([1], np.int64), "one"),
              (np.array([2, 3, 4], np.int64), "axes")]]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w


def test_quantize_dequantize_pair_is_straight_through():
    for per_channel in (False, True):
        model, w = qdq_model(per_channel)
        sess = ort.InferenceSession(backward(model, ["x"]).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
        seed = np.array([[1, 0], [0.5, -2]], np.float32)
        _, grad = sess.run(None, {"x": x, "seed": seed})
        expected = np.einsum("nk,kchw->nchw", seed, w)  # d/dx of seed . (w * x)
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


def saturating_qdq(zero: int, dtype: int) -> onnx.ModelProto:
    """scores = sum(w * DQ(Q(x))) over (N, 6) with scale 0.1 per tensor and the given zero point."""
    w = np.arange(1, 7, dtype=np.float32)[:, None]
    zero_np = helper.tensor_dtype_to_np_dtype(dtype)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("MatMul", ["dq", "w"], ["scores"])]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(zero, zero_np), "z"), numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1])], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("zero, dtype, x, passes", [
    # uint8, zero point 0: the codes cover [0, 25.5], ReLU folded into the range
    (0, TensorProto.UINT8, [-3.0, -0.04, 0.0, 12.0, 25.5, 40.0], [0, 0, 1, 1, 1, 0]),
    # int8, zero point 28: codes -128..127 cover [-15.6, 9.9]
    (28, TensorProto.INT8, [-20.0, -15.5, 0.0, 9.8, 10.0, 3.0], [0, 1, 1, 1, 0, 1]),
])
def test_quantize_passes_the_gradient_only_inside_its_codes(zero, dtype, x, passes):
    """Clipped straight-through: d DQ(Q(x)) / dx = 1 where x / s + z is inside the type's codes,
    0 where the quantizer saturates (which is how it folds ReLU and ReLU6 away)."""
    sess = ort.InferenceSession(backward(saturating_qdq(zero, dtype), ["x"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    _, grad = sess.run(None, {"x": np.array([x], np.float32), "seed": np.ones((1, 1), np.float32)})
    np.testing.assert_allclose(grad[0], np.arange(1, 7) * np.array(passes), rtol=1e-6)


def relu_net(quantized: bool) -> onnx.ModelProto:
    """x (N, 4) -> MatMul -> ReLU -> MatMul -> 3 scores; ``quantized``: the ReLU folded into a
    uint8 QuantizeLinear / DequantizeLinear pair with zero point 0 and a fine scale, as
    ONNX Runtime's quantizer writes it."""
    rng = np.random.default_rng(3)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((4, 16), (16, 3)))
    act = ([helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["a"])] if quantized
           else [helper.make_node("Relu", ["h"], ["a"])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), *act,
             helper.make_node("MatMul", ["a", "w2"], ["scores"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array(0.01, np.float32), "s"),  # codes to 2.55
             numpy_helper.from_array(np.array(0, np.uint8), "z")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])


def test_a_relu_folded_into_quantization_keeps_its_gradient():
    """The quantized net's gradient equals the float net's: the saturating quantizer is the
    ReLU (before the clip, it passed the gradient of every negative unit too)."""
    x = np.random.default_rng(4).uniform(-0.05, 0.05, (8, 4)).astype(np.float32)
    seed = np.eye(3, dtype=np.float32)[np.arange(8) % 3]
    grads = []
    for quantized in (False, True):
        sess = ort.InferenceSession(backward(relu_net(quantized), ["x"]).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        grads.append(sess.run(None, {"x": x, "seed": seed})[1])
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_int8_input_gradient_follows_the_fp32_model():
    """The shipped INT8 build's input gradient against the FP32 model's (cat, class 282): the
    same size and direction up to quantization (measured: norm 6.98 against 7.52, cosine 0.53;
    before the clipped straight-through, norm 1.4e12 and cosine 0.007)."""
    pre = Preprocessing.for_model(ROOT / "models" / "efficientnet_lite0.onnx", (224, 224))
    x = pre.prepare(EXAMPLES / "cat.jpg").tensor[None]
    seed = np.eye(1000, dtype=np.float32)[[282]]
    g32, g8 = (load_model(ROOT / "models" / f"efficientnet_lite0{s}.onnx", device="cpu")
               .input_gradient(x, seed)[1].ravel() for s in ("", "_int8"))
    ratio = np.linalg.norm(g8) / np.linalg.norm(g32)
    cosine = g8 @ g32 / (np.linalg.norm(g8) * np.linalg.norm(g32))
    assert 0.8 < ratio < 1.25 and cosine > 0.4, (ratio, cosine)


def test_integrated_gradients_on_int8_is_not_refined_and_says_why(caplog):
    """A straight-through gradient is a surrogate: its integral need not match the rounded
    scores' difference (the cat: a 6.2% gap at 50 steps, 6.5% at 400), so refining is futile."""
    pre = Preprocessing.for_model(ROOT / "models" / "efficientnet_lite0.onnx", (224, 224))
    x = pre.prepare(EXAMPLES / "cat.jpg").tensor
    int8 = load_model(ROOT / "models" / "efficientnet_lite0_int8.onnx", device="cpu")
    with caplog.at_level("WARNING", logger="blackbox_xai"):
        e = explain(int8, x, "integrated-gradients", target=282, steps=8)
    assert e.extras["steps"] == 8 and e.extras["tolerance_met"] is False
    assert "straight-through gradient is not the derivative" in caplog.text


def test_gradcam_on_int8_model_agrees_with_fp32():
    pre = Preprocessing.for_model(ROOT / "models" / "efficientnet_lite0.onnx", (224, 224))
    x = pre.prepare(EXAMPLES / "coffee.jpg").tensor
    fp32 = explain(load_model(ROOT / "models" / "efficientnet_lite0.onnx"), x, "gradcam", target=967)
    int8 = explain(load_model(ROOT / "models" / "efficientnet_lite0_int8.onnx"), x, "gradcam", target=967)
    assert spearman(fp32.map, int8.map) > 0.95


def integer_conv_model(path) -> str:
    """x -> QuantizeLinear -> ConvInteger (int32 out, as dynamic quantization writes it) ->
    ReduceMean over the pixels (int32) -> Cast -> times the scales: 2 scores, no float map."""
    w = numpy_helper.from_array(np.full((2, 3, 3, 3), 2, np.uint8), "w")
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("ConvInteger", ["xq", "w", "xz"], ["acc"], name="conv_int",
                              pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["acc"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("Cast", ["pooled"], ["pooled_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["pooled_f", "scale"], ["scores"])]
    graph = helper.make_graph(
        nodes, "integer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        [w, numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
         numpy_helper.from_array(np.array(128, np.uint8), "xz"),
         numpy_helper.from_array(np.array(0.01, np.float32), "scale")])
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)]),
              path)
    return str(path)


def test_an_integer_model_names_where_its_float_path_ends(tmp_path):
    """Integer arithmetic without a QDQ form has no gradient: the refusal names the op where
    the float path ends, CAM methods name the integer layers; the black-box methods run."""
    path = integer_conv_model(tmp_path / "integer.onnx")
    model = load_model(path)
    x = np.random.default_rng(0).uniform(0, 2, size=(3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(path).run(None, {"x": x[None]})[0]
    np.testing.assert_allclose(model(x[None]), want)
    assert np.abs(want).max() > 0
    with pytest.raises(BlackboxError, match="float path ends at ConvInteger 'conv_int'.*int32"):
        explain(model, x, "saliency", target=0)
    with pytest.raises(BlackboxError, match="no 4-D feature map.*quantized \\(ConvInteger"):
        explain(model, x, "scorecam", target=0)
