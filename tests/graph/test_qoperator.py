"""INT8 models in ONNX Runtime's QOperator format (graph/qoperator.py): rewritten in QDQ form,
they compute what the file computes and explain like the QDQ build of the same calibration."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.model import one_hot


def float_cnn(path) -> str:
    """x (N,3,16,16) -> Conv-Relu (c1) -> MaxPool -> Conv-Relu (c2) + c1 residual -> Conv-Sigmoid
    (c3) -> GlobalAveragePool -> Flatten -> Gemm (4 classes)."""
    rng = np.random.default_rng(0)

    def f(a, n):
        return numpy_helper.from_array(np.asarray(a, np.float32), n)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1_output_0"], name="c1",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1_output_0"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2_output_0"], name="c2",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2_output_0"], ["r2"]),
             helper.make_node("Add", ["r2", "p1"], ["res"]),
             helper.make_node("Conv", ["res", "w3", "b3"], ["c3_output_0"], name="c3",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c3_output_0"], ["s3"]),
             helper.make_node("GlobalAveragePool", ["s3"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "g", "h"], ["logits"])]
    inits = [f(rng.normal(0, 0.4, (8, 3, 3, 3)), "w1"), f(rng.normal(0, 0.1, 8), "b1"),
             f(rng.normal(0, 0.2, (8, 8, 3, 3)), "w2"), f(rng.normal(0, 0.1, 8), "b2"),
             f(rng.normal(0, 0.2, (8, 8, 3, 3)), "w3"), f(rng.normal(0, 0.1, 8), "b3"),
             f(rng.normal(0, 2.0, (8, 4)), "g"), f(rng.normal(0, 0.1, 4), "h")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info(
        "x", T.FLOAT, ["N", 3, 16, 16])], [helper.make_tensor_value_info(
            "logits", T.FLOAT, ["N", 4])], inits)
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)]),
              path)
    return str(path)


def quantized(source: str, path, fmt, **options) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.items = iter([{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)}
                               for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    options = {"per_channel": True, "weight_type": QuantType.QInt8,
               "activation_type": QuantType.QUInt8, **options}
    quantize_static(source, str(path), Reader(), quant_format=fmt, **options)
    return str(path)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    from onnxruntime.quantization import QuantFormat

    d = tmp_path_factory.mktemp("qoperator")
    source = float_cnn(d / "cnn.onnx")
    return (quantized(source, d / "cnn_qop.onnx", QuantFormat.QOperator),
            quantized(source, d / "cnn_qdq.onnx", QuantFormat.QDQ))


def test_the_premise_the_qoperator_file_computes_in_integers(builds):
    ops = collections.Counter((n.domain, n.op_type) for n in onnx.load(builds[0]).graph.node)
    assert ops[("", "QLinearConv")] == 3 and ops[("com.microsoft", "QLinearAdd")] == 1
    assert ops[("com.microsoft", "QLinearGlobalAveragePool")] == 1


def test_the_rewrite_computes_what_the_file_computes(builds):
    model = load_model(builds[0])
    graph_ops = {(n.domain, n.op_type) for n in model.graph().graph.node}
    assert not any(op.startswith("QLinear") or domain for domain, op in graph_ops)
    x = np.random.default_rng(2).normal(size=(5, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(builds[0]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model(x), want, rtol=1e-6, atol=1e-6)
    rewritten = ort.InferenceSession(model.graph().SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(rewritten, want, rtol=1e-6, atol=1e-6)


def assert_same_scores_and_gradients(reference, other, x, target: int, rtol: float) -> None:
    """Two builds of one network: equal scores and input gradients (and the gradient is not 0)."""
    s0, g0 = reference.input_gradient(x, one_hot(len(x), 4, target))
    s1, g1 = other.input_gradient(x, one_hot(len(x), 4, target))
    np.testing.assert_allclose(s1, s0, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(g1, g0, rtol=10 * rtol, atol=rtol / 10 * np.abs(g0).max())
    assert np.abs(g0).max() > 0


def test_gradients_and_grad_cam_equal_the_qdq_build(builds):
    qop, qdq = load_model(builds[0]), load_model(builds[1])
    x = np.random.default_rng(3).normal(size=(2, 3, 16, 16)).astype(np.float32)
    assert_same_scores_and_gradients(qdq, qop, x, 1, rtol=1e-5)
    for layer in ("res", "c3_output_0"):  # named alike in both builds
        m0 = explain(qdq, x[0], "gradcam", layer=layer, target=1).map
        m1 = explain(qop, x[0], "gradcam", layer=layer, target=1).map
        assert np.abs(m0).max() > 0
        np.testing.assert_allclose(m1, m0, rtol=1e-4, atol=1e-5 * np.abs(m0).max())


def linear_net(path, weights: dict[str, np.ndarray]) -> str:
    """x (N,2,6,6) -> Conv w1 (+b1) -> Flatten -> MatMul g (+h): a linear function of x."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["conv"], ["flat"]),
             helper.make_node("MatMul", ["flat", "g"], ["mm"]),
             helper.make_node("Add", ["mm", "h"], ["logits"])]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("logits", T.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)]),
              path)
    return str(path)


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantization_differentiates_straight_through(tmp_path, per_channel):
    """quantize_dynamic writes DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast ->
    Mul(scales). Straight through the activations' quantization, a linear net's input
    gradient is the float net's with the dequantized weights (w_q - w_zp) w_scale, exactly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(4)
    weights = {"w1": rng.normal(size=(4, 2, 3, 3)), "b1": rng.normal(size=4),
               "g": rng.normal(size=(144, 3)), "h": rng.normal(size=3)}
    source = linear_net(tmp_path / "linear.onnx", weights)
    dynamic = tmp_path / "linear_dynamic.onnx"
    quantize_dynamic(source, str(dynamic), weight_type=QuantType.QUInt8, per_channel=per_channel)
    ops = {n.op_type for n in onnx.load(dynamic).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops  # the premise
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(dynamic).graph.initializer}

    def dequantized(name):
        q, zp = stored[f"{name}_quantized"].astype(np.float64), stored[f"{name}_zero_point"]
        scale = stored[f"{name}_scale"].astype(np.float64)
        if zp.size > 1:  # per output channel of the Conv (axis 0), per column of the MatMul
            shape = [-1, 1, 1, 1] if q.ndim == 4 else [1, -1]
            zp, scale = zp.reshape(shape), scale.reshape(shape)
        return (q - zp.astype(np.float64)) * scale

    reference = linear_net(tmp_path / "reference.onnx",
                           {**weights, "w1": dequantized("w1"), "g": dequantized("g")})
    x = rng.normal(size=(2, 2, 6, 6)).astype(np.float32)
    model = load_model(dynamic, layout="NCHW")
    want = ort.InferenceSession(str(dynamic)).run(None, {"x": x})[0]
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
    _, g = model.input_gradient(x, one_hot(2, 3, 2))
    _, g_ref = load_model(reference, layout="NCHW").input_gradient(x, one_hot(2, 3, 2))
    assert np.abs(g_ref).max() > 0.1
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * np.abs(g_ref).max())


def test_cam_reads_an_int8_head_through_its_quantize_dequantize_pairs(builds):
    """CAM's weights are the dequantized linear layer, (q - zp) scale, read through the
    Q/DQ pairs an INT8 build puts between the pooling and the head; both formats alike."""
    qop, qdq = load_model(builds[0]), load_model(builds[1])
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(builds[1]).graph.initializer}
    scale = stored["g_scale"].astype(np.float64)
    weights = (stored["g_quantized"] - stored["g_zero_point"].astype(np.float64)) * scale
    x = np.random.default_rng(5).normal(size=(3, 16, 16)).astype(np.float32)
    cams = [explain(m, x, "cam", target=2) for m in (qdq, qop)]
    for c in cams:
        np.testing.assert_allclose(c.extras["weights"], weights[:, 2], rtol=1e-6)
    np.testing.assert_allclose(cams[1].map, cams[0].map, rtol=1e-5, atol=1e-6)


def test_onnx_runtimes_contrib_quantize_ops_are_the_standard_ones(tmp_path):
    """16-bit activations with ``UseQDQContribOps``: com.microsoft QuantizeLinear /
    DequantizeLinear, unknown to shape inference and without a rule; at the opset 21 the
    quantizer sets they are the standard ops, so the build explains as the standard one."""
    from onnxruntime.quantization import QuantFormat, QuantType

    source = float_cnn(tmp_path / "cnn.onnx")
    builds = [quantized(source, tmp_path / f"cnn_q16_{k}.onnx", QuantFormat.QDQ,
                        activation_type=QuantType.QUInt16,
                        extra_options={"UseQDQContribOps": contrib})
              for k, contrib in (("standard", False), ("contrib", True))]
    ops = collections.Counter((n.domain, n.op_type) for n in onnx.load(builds[1]).graph.node)
    assert ops[("com.microsoft", "QuantizeLinear")] > 0  # the premise
    standard, contrib = (load_model(b) for b in builds)
    assert not any(n.domain for n in contrib.graph().graph.node)
    x = np.random.default_rng(6).normal(size=(2, 3, 16, 16)).astype(np.float32)
    assert_same_scores_and_gradients(standard, contrib, x, 3, rtol=1e-6)
