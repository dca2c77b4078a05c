"""Graph surgery invariants, checked with real numbers in ONNX Runtime.

expose: the original outputs stay bit-identical. split: head(*features(x)) == model(x).
make_batch_dynamic: batch 2 == two batch-1 runs == the fixed-batch original. Every rewrite
keeps the source IR version and opsets, passes the full checker, and leaves its input alone.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import SHIPPED, model_path
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai.errors import BlackboxError, ModelLoadError, UnknownNameError
from blackbox_xai.graph import (
    candidate_layers,
    copy_model,
    default_layer,
    expose,
    finalize,
    infer_shapes,
    load,
    make_batch_dynamic,
    op_histogram,
    resolve_tensor,
    save,
    split,
    tensor_info,
)
from blackbox_xai.graph.inspect import NotAFeatureMapError, feature_map, tensor_layouts
from blackbox_xai.model import create_session

LITE0_LAYER = "/_swish_1/Clip_output_0"
RNG = np.random.default_rng(0)


# ---- helpers ----------------------------------------------------------------------------------
def run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = model if isinstance(model, str) else model.SerializeToString()
    return create_session(src, "cpu", 2)[0].run(None, feeds)


def run_split(features: onnx.ModelProto, head: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    cut = run(features, feeds)
    return run(head, dict(zip([i.name for i in head.graph.input], cut)))


def image(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, size, size)).astype(np.float32)


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_rewrite(result: onnx.ModelProto, source: onnx.ModelProto) -> None:
    assert result.ir_version == source.ir_version
    assert [(o.domain, o.version) for o in result.opset_import] == \
        [(o.domain, o.version) for o in source.opset_import]
    onnx.checker.check_model(result, full_check=True)
    onnx.shape_inference.infer_shapes(result, strict_mode=True, data_prop=True)


def build(nodes, inputs, outputs, inits: dict[str, np.ndarray], ir: int = 7) -> onnx.ModelProto:
    """A model at an old IR (7) and opset 13, which onnx.helper.make_model would never produce."""
    graph = helper.make_graph(nodes, "test", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = ir
    onnx.checker.check_model(m, full_check=True)
    return m


def weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def residual_net(pool: str = "gap") -> onnx.ModelProto:
    """x -> conv/relu 'r1' -> conv 'c2'; 'sum' = c2 + r1 -> relu 'act' -> pooling -> Gemm 'logits'.

    The skip from r1 crosses any cut at c2. pool: 'gap', 'reducemean' (axes 2, 3) or 'flatten'.
    """
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["sum"]),
             helper.make_node("Relu", ["sum"], ["act"])]
    features = 4
    if pool == "gap":
        nodes += [helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["flat"])]
    elif pool == "reducemean":
        nodes += [helper.make_node("ReduceMean", ["act"], ["flat"], axes=[2, 3], keepdims=0)]
    else:
        nodes += [helper.make_node("Flatten", ["act"], ["flat"])]
        features = 4 * 6 * 6
    nodes += [helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)]
    return build(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                 [vi("logits", TensorProto.FLOAT, ["N", 3])],
                 {"w1": weights(4, 3, 3, 3), "w2": weights(4, 4, 3, 3), "fc": weights(3, features)})


def fixed_batch_net(tail: str = "reshape", shape_from: str = "initializer") -> onnx.ModelProto:
    """Batch 1: x (1, 3, 6, 6) -> conv/relu 'act' -> Reshape [1, -1] 'flat' -> tail.

    tail: 'reshape' (MatMul: fine), 'concat' (concatenates a (1, 2) constant: fails at batch 2),
    'reducesum' (sums over the batch: runs, but wrong).
    """
    vi = helper.make_tensor_value_info
    inits = {"w": weights(4, 3, 3, 3), "fc": weights(144, 3)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["act"])]
    if shape_from == "initializer":
        inits["shape"] = np.array([1, -1], np.int64)
    else:
        nodes.append(helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array([1, -1], np.int64))))
    nodes += [helper.make_node("Reshape", ["act", "shape"], ["flat"]),
              helper.make_node("MatMul", ["flat", "fc"], ["mm"])]
    out = 3
    if tail == "concat":
        inits["extra"] = np.ones((1, 2), np.float32)
        nodes.append(helper.make_node("Concat", ["mm", "extra"], ["scores"], axis=1))
        out = 5
    elif tail == "reducesum":
        inits["axis0"] = np.array([0], np.int64)
        nodes.append(helper.make_node("ReduceSum", ["mm", "axis0"], ["scores"], keepdims=1))
    else:
        nodes.append(helper.make_node("Identity", ["mm"], ["scores"]))
    return build(nodes, [vi("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                 [vi("scores", TensorProto.FLOAT, [1, out])], inits, ir=8)


@pytest.fixture(scope="module")
def lite0() -> onnx.ModelProto:
    return load(SHIPPED)


@pytest.fixture(scope="module")
def lite0_x() -> np.ndarray:
    return image(2, 224)


@pytest.fixture(scope="module")
def lite0_ref(lite0, lite0_x) -> np.ndarray:
    return run(lite0, {"input": lite0_x})[0]


# ---- io ---------------------------------------------------------------------------------------
def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model") as e:
        load(tmp_path / "text.onnx")
    assert "\n" not in str(e.value)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        load(tmp_path / "empty.onnx")


def test_save_is_atomic_and_roundtrips(tmp_path):
    m = load(model_path("tiny_cnn"))
    out = save(m, tmp_path / "a.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]  # no temporary left over
    assert load(out).SerializeToString() == m.SerializeToString()
    with pytest.raises(BlackboxError, match="does not exist"):
        save(m, tmp_path / "no" / "a.onnx")


def test_save_with_external_data_keeps_the_model_in_memory(tmp_path):
    m = load(model_path("linear"))  # W is 120 KiB
    before = m.SerializeToString()
    save(m, tmp_path / "ext.onnx", external_data=True)
    assert m.SerializeToString() == before
    assert (tmp_path / "ext.onnx.data").stat().st_size == 3 * 32 * 32 * 10 * 4
    save(m, tmp_path / "ext.onnx", external_data=True)  # rewriting does not append
    assert (tmp_path / "ext.onnx.data").stat().st_size == 3 * 32 * 32 * 10 * 4
    x = image(2)
    np.testing.assert_array_equal(run(str(tmp_path / "ext.onnx"), {"x": x})[0], run(m, {"x": x})[0])


def test_copy_model_is_deep():
    m = load(model_path("tiny_cnn"))
    c = copy_model(m)
    c.graph.node[0].name = "changed"
    assert m.graph.node[0].name != "changed"


def test_finalize_rejects_broken_graphs_in_one_line():
    m = copy_model(load(model_path("tiny_cnn")))
    m.graph.node[1].input[0] = "nowhere"
    with pytest.raises(BlackboxError, match="not valid ONNX") as e:
        finalize(m)
    assert "\n" not in str(e.value)


def test_infer_shapes_falls_back_when_strict_inference_fails():
    m = copy_model(load(model_path("tiny_cnn")))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7  # Gemm makes 5
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    shapes = {v.name for v in infer_shapes(m).graph.value_info}
    assert {"conv", "bn", "features", "pooled", "flat"} <= shapes


# ---- inspect ----------------------------------------------------------------------------------
def test_tensor_info_types_every_tensor():
    m = load(model_path("tiny_cnn"))
    info = tensor_info(m)
    assert list(info) == ["x", "conv", "bn", "features", "pooled", "flat", "logits"]
    assert info["x"].kind == "input" and info["x"].op is None
    assert info["features"].shape == ("N", 8, 32, 32) and info["features"].op == "Relu"
    assert info["features"].elem_type == TensorProto.FLOAT
    assert info["features"].kind == "intermediate"
    assert info["logits"].kind == "output" and info["logits"].shape == ("N", 5)
    with_inits = tensor_info(m, include_initializers=True)
    assert with_inits["conv.w"].kind == "initializer" and with_inits["conv.w"].shape == (8, 3, 3, 3)
    assert op_histogram(m) == {"Conv": 1, "BatchNormalization": 1, "Relu": 1,
                               "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}


def test_candidate_layers_of_tiny_cnn():
    layers = candidate_layers(load(model_path("tiny_cnn")))
    assert [(c.name, c.op, c.feeds_pooling) for c in layers] == [
        ("conv", "Conv", False), ("bn", "BatchNormalization", True), ("features", "Relu", True)]
    assert layers[-1].shape == ("N", 8, 32, 32) and {c.layout for c in layers} == {"NCHW"}
    assert default_layer(load(model_path("tiny_cnn"))) == "features"
    assert default_layer(load(model_path("tiny_cnn_fp16"))) == "features"


def test_default_layer_of_efficientnet_lite0_is_relu6_before_the_pooling(lite0):
    layers = {c.name: c for c in candidate_layers(lite0)}
    assert default_layer(lite0) == LITE0_LAYER
    assert layers[LITE0_LAYER].op == "Clip" and layers[LITE0_LAYER].feeds_pooling
    assert layers[LITE0_LAYER].shape == ("N", 1280, 7, 7)
    assert {c.layout for c in layers.values()} == {"NCHW"}
    readers = [n.op_type for n in lite0.graph.node if LITE0_LAYER in n.input]
    assert readers == ["GlobalAveragePool"]
    assert "input" not in layers and not any(c.shape[2:] == (1, 1) for c in layers.values())


@pytest.mark.parametrize("pool, default, feeds", [("gap", "act", True), ("reducemean", "act", True),
                                                  ("flatten", "act", False)])
def test_default_layer_with_and_without_global_pooling(pool, default, feeds):
    m = residual_net(pool)
    assert default_layer(m) == default
    layers = {c.name: c.feeds_pooling for c in candidate_layers(m)}
    assert layers == {"c1": False, "r1": False, "c2": False, "sum": feeds, "act": feeds}


def test_no_feature_map_is_a_clear_error():
    with pytest.raises(BlackboxError, match="no 4-D feature map"):
        default_layer(load(model_path("linear")))


def test_unknown_tensor_lists_close_matches(lite0):
    with pytest.raises(UnknownNameError, match="did you mean: /_swish_1/Clip_output_0"):
        resolve_tensor(lite0, "/_swish_1/Clip_outpt_0")
    assert resolve_tensor(lite0, LITE0_LAYER) == LITE0_LAYER
    for rewrite in (lambda m: expose(m, ["featurs"]), lambda m: split(m, "featurs")):
        with pytest.raises(UnknownNameError, match="did you mean: features"):
            rewrite(load(model_path("tiny_cnn")))



def layout_net() -> onnx.ModelProto:
    """x (NCHW) -> Conv 'c1' -> Transpose(0, 2, 3, 1) 't' -> Relu 'act' -> ReduceMean(1, 2) ->
    MatMul 'mm'; a side branch from c1: Transpose(0, 1, 3, 2) 'swapped' (H and W swapped) ->
    Reshape (N, 4, 3, 12) 'odd' (no evidence) -> Reshape (N, 4, 36) 'tok3' -> ReduceMean(2)
    'side' -> MatMul; logits = mm + side_mm."""
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c1"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["t"], ["act"]),
             helper.make_node("ReduceMean", ["act"], ["pooled"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["pooled", "fc"], ["mm"]),
             helper.make_node("Transpose", ["c1"], ["swapped"], perm=[0, 1, 3, 2]),
             helper.make_node("Reshape", ["swapped", "shape4"], ["odd"]),
             helper.make_node("Reshape", ["odd", "shape3"], ["tok3"]),
             helper.make_node("ReduceMean", ["tok3"], ["side"], axes=[2], keepdims=0),
             helper.make_node("MatMul", ["side", "fc_side"], ["side_mm"]),
             helper.make_node("Add", ["mm", "side_mm"], ["logits"])]
    return build(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                 [vi("logits", TensorProto.FLOAT, ["N", 3])],
                 {"w1": weights(4, 3, 3, 3), "fc": weights(4, 3), "fc_side": weights(4, 3),
                  "shape4": np.array([0, 4, 3, 12], np.int64),
                  "shape3": np.array([0, 4, 36], np.int64)})


def test_layouts_follow_transposes_and_readers():
    m = layout_net()
    assert tensor_layouts(m) == {"x": "NCHW", "c1": "NCHW", "t": "NHWC", "act": "NHWC"}
    layers = candidate_layers(m)
    assert [(c.name, c.layout, c.feeds_pooling) for c in layers] == [
        ("c1", "NCHW", False), ("t", "NHWC", True), ("act", "NHWC", True)]
    assert default_layer(m) == "act" and feature_map(m).layout == "NHWC"
    assert feature_map(m, "c1") == layers[0]


@pytest.mark.parametrize("name, reason", [
    ("swapped", r"'swapped' \(Nx4x6x6\) is 4-D but the graph does not establish its layout"),
    ("odd", r"'odd' \(Nx4x3x12\) is 4-D but the graph does not establish its layout"),
    ("tok3", r"'tok3' is 3-D \(Nx4x36\), not a 4-D feature map"),
    ("logits", r"'logits' is 2-D \(Nx3\)"),
    ("x", r"'x' is a graph input"),
])
def test_a_tensor_that_is_not_a_spatial_feature_map_is_refused(name, reason):
    with pytest.raises(NotAFeatureMapError, match=reason) as e:
        feature_map(layout_net(), name)
    message = str(e.value)
    assert "\n" not in message
    assert message.endswith("CAM layers: act (NHWC Nx6x6x4), t (NHWC Nx6x6x4), c1 (NCHW Nx4x6x6)")
    with pytest.raises(UnknownNameError, match="did you mean: act"):
        feature_map(layout_net(), "acts")


def test_pooled_map_has_no_spatial_extent():
    with pytest.raises(NotAFeatureMapError, match=r"'pooled' \(Nx8x1x1, NCHW\) has no spatial"):
        feature_map(load(model_path("tiny_cnn")), "pooled")


def test_contradictory_evidence_gives_no_layout():
    """A Conv output (NCHW by definition) averaged over axes 1, 2 (an NHWC reader) is 4-D, but
    which axis holds the channels is contradictory: it is not a candidate."""
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["act"]),
             helper.make_node("ReduceMean", ["act"], ["pooled"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["pooled", "fc"], ["logits"])]
    m = build(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, 6, 5])],
              [vi("logits", TensorProto.FLOAT, ["N", 3])],
              {"w1": weights(4, 3, 3, 3), "fc": weights(5, 3)})
    assert tensor_layouts(m) == {"x": "NCHW"}
    with pytest.raises(BlackboxError, match="no 4-D feature map"):
        default_layer(m)
    with pytest.raises(NotAFeatureMapError, match="does not establish its layout"):
        feature_map(m, "act")


@pytest.mark.parametrize("channels, layout", [(4, "NHWC"), (5, "NCHW")])
def test_layout_from_the_head_width_alone(channels, layout):
    """No Conv, no readable axes (opset 18: ReduceMean's axes computed in the graph): the
    pooled width equal to the MatMul's input size says which axis holds the channels."""
    vi = helper.make_tensor_value_info
    shape = [0, 6, 6, 4] if layout == "NHWC" else [0, 5, 6, 6]
    axes = [1, 2] if layout == "NHWC" else [2, 3]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["act"]),
             helper.make_node("Identity", ["axes"], ["axes_live"]),
             helper.make_node("Add", ["axes_live", "zero"], ["axes_sum"]),
             helper.make_node("ReduceMean", ["act", "axes_sum"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "fc"], ["logits"])]
    graph = helper.make_graph(
        nodes, "head_width", [vi("x", TensorProto.FLOAT, ["N", 144 if channels == 4 else 180]),
                              vi("zero", TensorProto.INT64, [2])],
        [vi("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in
                     {"shape": np.array(shape, np.int64), "axes": np.array(axes, np.int64),
                      "fc": weights(channels, 3)}.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    layers = candidate_layers(m)
    assert [(c.name, c.layout, c.feeds_pooling) for c in layers] == [
        ("r", layout, False), ("act", layout, False)]


# ---- expose -----------------------------------------------------------------------------------
def test_expose_keeps_outputs_bit_identical_on_tiny_cnn():
    m = load(model_path("tiny_cnn"))
    source = m.SerializeToString()
    out = expose(m, ["features", "bn", "logits"])
    assert m.SerializeToString() == source  # the input is not modified
    assert_rewrite(out, m)
    assert [o.name for o in out.graph.output] == ["logits", "features", "bn"]
    x = image(3)
    logits, features, bn = run(out, {"x": x})
    np.testing.assert_array_equal(logits, run(m, {"x": x})[0])
    np.testing.assert_array_equal(features, np.maximum(bn, 0))
    assert features.shape == (3, 8, 32, 32)
    dims = out.graph.output[1].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 8, 32, 32]


def test_exposing_a_batchnorm_input_only_changes_the_last_bits():
    """ORT folds BatchNormalization into the Conv weights; with the Conv output exposed it cannot,
    and the logits differ by a few ulp. Post-activation tensors keep them bit-identical."""
    m = load(model_path("tiny_cnn"))
    x = image(3)
    logits = run(expose(m, ["conv"]), {"x": x})[0]
    np.testing.assert_allclose(logits, run(m, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_expose_keeps_outputs_bit_identical_on_efficientnet_lite0(lite0, lite0_x, lite0_ref):
    inner = "/_blocks.5/_depthwise_conv/Conv_output_0"  # a Conv output that feeds a Clip
    out = expose(lite0, [LITE0_LAYER, inner])
    assert_rewrite(out, lite0)
    logits, layer, _ = run(out, {"input": lite0_x})
    np.testing.assert_array_equal(logits, lite0_ref)
    assert layer.shape == (2, 1280, 7, 7) and 0 <= layer.min() and layer.max() <= 6


# ---- split ------------------------------------------------------------------------------------
def test_split_tiny_cnn():
    m = load(model_path("tiny_cnn"))
    features, head = split(m, "features")
    for part in (features, head):
        assert_rewrite(part, m)
    assert [o.name for o in features.graph.output] == ["features"]
    assert [i.name for i in head.graph.input] == ["features"]
    assert {t.name for t in head.graph.initializer} == {"fc.w", "fc.b"}
    assert "fc.w" not in {t.name for t in features.graph.initializer}
    x = image(3)
    np.testing.assert_allclose(run_split(features, head, {"x": x})[0], run(m, {"x": x})[0],
                               rtol=0, atol=1e-5)


def test_split_efficientnet_lite0_at_the_default_layer(lite0, lite0_x, lite0_ref):
    features, head = split(lite0, default_layer(lite0))
    assert_rewrite(head, lite0)
    assert [n.op_type for n in head.graph.node] == ["GlobalAveragePool", "Flatten", "Gemm"]
    np.testing.assert_allclose(run_split(features, head, {"input": lite0_x})[0], lite0_ref,
                               rtol=0, atol=1e-5)


def test_split_across_a_skip_connection():
    m = residual_net()
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)
    features, head = split(m, "c2")
    for part in (features, head):
        assert_rewrite(part, m)
    assert [o.name for o in features.graph.output] == ["c2", "r1"]
    assert [i.name for i in head.graph.input] == ["c2", "r1"]
    np.testing.assert_allclose(run_split(features, head, {"x": x})[0], run(m, {"x": x})[0],
                               rtol=0, atol=1e-5)
    with pytest.raises(BlackboxError, match=r"1 other tensor\(s\) crossing the cut.*: r1"):
        split(m, "c2", allow_crossing=False)
    features, head = split(m, "sum", allow_crossing=False)  # after the merge: nothing crosses
    assert [i.name for i in head.graph.input] == ["sum"]


def test_split_refuses_a_graph_input():
    m = residual_net()
    with pytest.raises(BlackboxError, match="graph input or a constant"):
        split(m, "x")


# ---- batch ------------------------------------------------------------------------------------
def test_make_batch_dynamic_on_tiny_cnn_batch1():
    fixed = load(model_path("tiny_cnn_batch1"))
    dynamic = make_batch_dynamic(fixed)
    assert_rewrite(dynamic, fixed)
    for v in (dynamic.graph.input[0], dynamic.graph.output[0]):
        assert v.type.tensor_type.shape.dim[0].dim_param == "N"
    x = image(3)
    three = run(dynamic, {"x": x})[0]
    ones = np.concatenate([run(dynamic, {"x": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(three, ones, rtol=1e-5, atol=1e-6)
    # the same weights with a dynamic batch from the start
    np.testing.assert_allclose(three, run(load(model_path("tiny_cnn")), {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape_from", ["initializer", "constant"])
def test_make_batch_dynamic_frees_a_reshape_batch(shape_from):
    fixed = fixed_batch_net(shape_from=shape_from)
    x = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(np.float32)
    dynamic = make_batch_dynamic(fixed)
    assert_rewrite(dynamic, fixed)
    reshape = next(n for n in dynamic.graph.node if n.op_type == "Reshape")
    shape = next(numpy_helper.to_array(n.attribute[0].t) for n in dynamic.graph.node
                 if n.output[0] == reshape.input[1])
    assert shape.tolist() == [0, -1]
    assert "shape" not in {t.name for t in dynamic.graph.initializer} | \
        {o for n in dynamic.graph.node for o in n.output}  # the old constant is gone
    three = run(dynamic, {"x": x})[0]
    ones = [run(fixed, {"x": x[i:i + 1]})[0] for i in range(3)]
    np.testing.assert_allclose(three, np.concatenate(ones), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail, message", [("concat", "fails on the rewritten model"),
                                           ("reducesum", "'scores' differs")])
def test_make_batch_dynamic_refuses_graphs_that_pin_the_batch(tail, message):
    from blackbox_xai.runtime import verify_batch_dynamic

    fixed = fixed_batch_net(tail)
    with pytest.raises(BlackboxError, match=message):
        verify_batch_dynamic(fixed, make_batch_dynamic(fixed), 1)


def test_make_batch_dynamic_leaves_a_dynamic_model_alone():
    m = load(model_path("tiny_cnn"))
    assert make_batch_dynamic(m).SerializeToString() == m.SerializeToString()


# ---- files ------------------------------------------------------------------------------------
def test_rewrites_never_touch_the_model_file(tmp_path):
    src = tmp_path / "model.onnx"
    shutil.copy(model_path("tiny_cnn_batch1"), src)
    before = sha(src)
    m = load(src)
    save(expose(m, ["features"]), tmp_path / "exposed.onnx")
    for i, part in enumerate(split(m, "features")):
        save(part, tmp_path / f"part{i}.onnx")
    save(make_batch_dynamic(m), tmp_path / "dynamic.onnx")
    assert sha(src) == before


@pytest.mark.parametrize("load_data", [True, False])
def test_external_data_model(tmp_path, load_data):
    src = tmp_path / "ext.onnx"
    onnx.save(load(model_path("tiny_cnn")), str(src), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    before = (sha(src), sha(tmp_path / "ext.onnx.data"))
    m = load(src, load_external_data=load_data)
    x = image(2)
    ref = run(str(src), {"x": x})[0]
    # without the data in memory, results must be saved next to ext.onnx.data to run
    exposed = save(expose(m, ["features"]), tmp_path / "exposed.onnx")
    np.testing.assert_array_equal(run(str(exposed), {"x": x})[0], ref)
    features, head = (save(p, tmp_path / f"{n}.onnx") for n, p in zip("fh", split(m, "features")))
    cut = run(str(features), {"x": x})[0]
    np.testing.assert_allclose(run(str(head), {"features": cut})[0], ref, rtol=0, atol=1e-5)
    assert (sha(src), sha(tmp_path / "ext.onnx.data")) == before
