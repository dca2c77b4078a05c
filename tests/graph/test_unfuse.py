"""Files saved after ONNX Runtime's graph optimisation (graph/unfuse.py): its fused
``com.microsoft`` ops become standard ops again, so layers and gradients are those of the
original export; its NCHWc files are refused for graph methods in one line."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, SHIPPED, TEST_MODELS, THIRD_PARTY
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from PIL import Image

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError, ModelLoadError
from blackbox_xai.graph.inspect import candidate_layers, default_layer
from blackbox_xai.graph.unfuse import unfuse_runtime_ops
from blackbox_xai.model import one_hot


def optimised(source, path, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED) -> str:
    """The file ONNX Runtime writes after optimising ``source`` at ``level``."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])
    return str(path)


def ops(path) -> collections.Counter:
    return collections.Counter((n.domain, n.op_type) for n in onnx.load(path).graph.node)


def cnn(path) -> str:
    """x (N,3,12,12) -> six Convs, each followed by an activation ORT fuses (Relu, LeakyRelu,
    Clip 0-6, HardSigmoid, Sigmoid, Tanh), the first two added (a residual) -> GlobalAveragePool
    -> Flatten -> Gemm -> Relu -> Gemm (4 classes). Nodes are named as PyTorch's exporter names
    them (``c1`` makes ``c1_output_0``)."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    acts = [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Clip", None), ("HardSigmoid", {}),
            ("Sigmoid", {}), ("Tanh", {})]
    for i, (act, attrs) in enumerate(acts, 1):
        cin = 3 if i == 1 else 8
        inits += [numpy_helper.from_array(rng.normal(0, 0.4, (8, cin, 3, 3)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}_output_0"],
                                      name=f"c{i}", pads=[1, 1, 1, 1]))
        if act == "Clip":
            nodes.append(helper.make_node("Clip", [f"c{i}_output_0", "zero", "six"], [f"a{i}"]))
        else:
            nodes.append(helper.make_node(act, [f"c{i}_output_0"], [f"a{i}"], **attrs))
        x = f"a{i}"
        if i == 2:
            nodes.append(helper.make_node("Add", ["a1", "a2"], ["res"]))
            x = "res"
    inits += [numpy_helper.from_array(np.float32(0), "zero"),
              numpy_helper.from_array(np.float32(6), "six"),
              numpy_helper.from_array(rng.normal(0, 0.5, (8, 6)).astype(np.float32), "g1"),
              numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "h1"),
              numpy_helper.from_array(rng.normal(0, 0.5, (6, 4)).astype(np.float32), "g2")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "g1", "h1"], ["fc1_output_0"], name="fc1"),
              helper.make_node("Relu", ["fc1_output_0"], ["fc1_relu"]),
              helper.make_node("Gemm", ["fc1_relu", "g2"], ["logits"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", T.FLOAT,
                                                                           ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", T.FLOAT, ["N", 4])], inits)
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]),
              path)
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("unfuse")
    original = cnn(d / "cnn.onnx")
    fused = optimised(original, d / "cnn_ort.onnx")
    return load_model(original), load_model(fused), fused


def test_the_premise_onnx_runtime_writes_fused_ops(pair):
    counts = ops(pair[2])  # ONNX Runtime 1.31 fuses all six Conv + activation pairs
    assert counts[("com.microsoft", "FusedConv")] >= 4
    assert counts[("com.microsoft", "FusedGemm")] >= 1
    assert not any(domain == "com.microsoft" for domain, _ in ops_of(pair[1].graph()))


def ops_of(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter((n.domain, n.op_type) for n in model.graph.node)


def test_scores_and_input_gradients_are_the_original_exports(pair):
    original, fused, _ = pair
    x = np.random.default_rng(1).normal(size=(2, 3, 12, 12)).astype(np.float32)
    seed = one_hot(2, 4, 3)
    s0, g0 = original.input_gradient(x, seed)
    s1, g1 = fused.input_gradient(x, seed)
    np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-6)
    assert np.abs(g0).max() > 1e-3  # a gradient that says something


def test_a_file_whose_fused_kernels_do_not_load_runs_its_checked_rewrite(pair, monkeypatch):
    """The CUDA provider cannot build FusedConv with the CPU-only activations ORT saved (seen
    on an H200, ORT 1.31): the file's session fails to load (simulated here for the file's
    path), and the model runs the standard-op form checked against the file on the CPU."""
    import blackbox_xai.model as model_module

    real = model_module.create_session
    files = []

    def refuse_the_file(model, *args, **kwargs):
        if isinstance(model, str):
            files.append(model)
            raise ModelLoadError("ONNX Runtime cannot load the model: FusedConv (simulated)")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(model_module, "create_session", refuse_the_file)
    original, _, fused = pair
    model = load_model(fused)
    assert files == [fused]
    x = np.random.default_rng(3).normal(size=(2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(model(x), original(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelLoadError, match="simulated"):  # no checked rewrite: the error
        load_model(original.path)


@pytest.mark.parametrize("layer", ["c1_output_0", "c5_output_0", "a6"])
def test_layers_keep_the_original_names_and_grad_cam_maps(pair, layer):
    original, fused, _ = pair
    x = np.random.default_rng(2).normal(size=(3, 12, 12)).astype(np.float32)
    m0 = explain(original, x, "gradcam", layer=layer, target=2).map
    m1 = explain(fused, x, "gradcam", layer=layer, target=2).map
    assert np.abs(m0).max() > 0
    np.testing.assert_allclose(m1, m0, rtol=1e-4, atol=1e-5 * np.abs(m0).max())


def gelu_family(path) -> str:
    """The Gelu-like ops ONNX Runtime's fusions write, side by side on one input."""
    nodes = [helper.make_node("Gelu", ["x"], ["gelu"], domain="com.microsoft"),
             helper.make_node("QuickGelu", ["x"], ["quick"], domain="com.microsoft", alpha=1.5),
             helper.make_node("FastGelu", ["x", "bias"], ["fast"], domain="com.microsoft"),
             helper.make_node("BiasGelu", ["x", "bias"], ["biased"], domain="com.microsoft"),
             helper.make_node("Sum", ["gelu", "quick", "fast", "biased"], ["y"])]
    graph = helper.make_graph(
        nodes, "gelus", [helper.make_tensor_value_info("x", T.FLOAT, [2, 5])],
        [helper.make_tensor_value_info(n, T.FLOAT, [2, 5])
         for n in ("gelu", "quick", "fast", "biased")],
        [numpy_helper.from_array(np.linspace(-1, 1, 5).astype(np.float32), "bias")])
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, path)
    return str(path)


def test_gelu_family_computes_what_onnx_runtime_kernels_compute(tmp_path):
    path = gelu_family(tmp_path / "gelus.onnx")
    model = onnx.load(path)
    assert unfuse_runtime_ops(model) == 4
    assert all(n.domain == "" for n in model.graph.node)
    x = {"x": np.array([[-6, -2.5, -0.3, 0, 0.7], [1.3, 2.2, 3, 5, 9]], np.float32)}
    want = ort.InferenceSession(path).run(None, x)
    got = ort.InferenceSession(model.SerializeToString()).run(None, x)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_the_shipped_model_saved_by_onnx_runtime_explains_as_the_export(tmp_path):
    fused = optimised(SHIPPED, tmp_path / "effnet_ort.onnx")
    assert ops(fused)[("com.microsoft", "FusedConv")] > 20
    original, loaded = load_model(SHIPPED), load_model(fused)
    assert default_layer(loaded.graph()) == default_layer(original.graph())
    img = Image.open(EXAMPLES / "cat.jpg").convert("RGB").resize((224, 224))
    x = ((np.asarray(img, np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)
    m0 = explain(original, x, "saliency", target=282).map
    m1 = explain(loaded, x, "saliency", target=282).map
    assert np.corrcoef(m0.ravel(), m1.ravel())[0, 1] > 0.9999


@pytest.mark.parametrize("name", ["wml_squeezenet11_fp16_caffe2", "customvision_computer"])
def test_blocked_layout_files_run_the_black_box_methods_and_refuse_graph_ones(tmp_path, name):
    """At ORT_ENABLE_ALL the SqueezeNet's logits (before its Softmax) follow NCHWc ops that
    inference cannot type: exposing them refused every command, black-box ones included. The
    Custom Vision file (opset 7) is also upgraded; the NCHWc refusal was lost once that
    upgrade was verified, and Grad-CAM failed on an NCHWc Conv 'without a rule'."""
    source = THIRD_PARTY / f"{name}.onnx"
    blocked = optimised(source, tmp_path / f"{name}_all.onnx",
                        ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert any(domain == "com.microsoft.nchwc" for domain, _ in ops(blocked))  # the premise
    original, model = load_model(source), load_model(blocked)
    x = np.random.default_rng(15).uniform(0, 255, (1, *original.example_chw())).astype(np.float32)
    np.testing.assert_allclose(model(x), original(x), rtol=0.02, atol=0.02 * np.abs(original(x)).max())
    assert explain(model, x[0], "occlusion", window=56, stride=56, target=1).n_queries > 1
    with pytest.raises(BlackboxError, match="ORT_ENABLE_ALL"):
        explain(model, x[0], "gradcam", target=1)


def test_layers_of_a_blocked_layout_file_are_refused_not_listed(tmp_path, run):
    """The SqueezeNet saved at ORT_ENABLE_ALL keeps a Cast of its input before the NCHWc ops:
    `bbx layers` listed it as the default layer, which every CAM method then refused."""
    blocked = optimised(THIRD_PARTY / "wml_squeezenet11_fp16_caffe2.onnx",
                        tmp_path / "squeezenet_all.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    result = run("layers", blocked)
    assert result.exit_code == 2 and "com.microsoft.nchwc" in result.output
    assert "Cast" not in result.output


def test_a_blocked_layout_file_refuses_graph_methods_in_one_line(tmp_path, run):
    blocked = optimised(SHIPPED, tmp_path / "effnet_all.onnx",
                        ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert ops(blocked)[("com.microsoft.nchwc", "Conv")] > 0
    model = load_model(blocked)
    x = np.zeros((3, 224, 224), np.float32)
    with pytest.raises(BlackboxError, match="ORT_ENABLE_ALL.*ORT_ENABLE_EXTENDED"):
        explain(model, x, "gradcam", target=1)
    result = run("layers", blocked)
    assert result.exit_code == 2 and "com.microsoft.nchwc" in result.output
    assert len(result.output.strip().splitlines()) == 1


def attention_pieces(path, opset: int) -> str:
    """FusedMatMul with a transposed operand after another fused op (its rank comes from shape
    inference on the partly unfused graph) and SkipLayerNormalization with its sum output."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("QuickGelu", ["a"], ["a1"], domain="com.microsoft"),
             helper.make_node("FusedMatMul", ["a1", "b"], ["scores"], domain="com.microsoft",
                              transB=1, alpha=0.5),
             helper.make_node("SkipLayerNormalization", ["scores", "skip", "gamma", "beta", "bias"],
                              ["normed", "", "", "sum"], domain="com.microsoft", epsilon=1e-5)]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("a", T.FLOAT, [2, 3, 4]),
                             helper.make_tensor_value_info("b", T.FLOAT, [2, 5, 4])],
        [helper.make_tensor_value_info(n, T.FLOAT, [2, 3, 5]) for n in ("normed", "sum")],
        [numpy_helper.from_array(rng.normal(size=(2, 3, 5)).astype(np.float32), "skip"),
         numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "gamma"),
         numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "beta"),
         numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "bias")])
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]), path)
    return str(path)


@pytest.mark.parametrize("opset", [13, 17])  # LayerNormalization's formula before opset 17
def test_attention_pieces_compute_what_onnx_runtime_kernels_compute(tmp_path, opset):
    path = attention_pieces(tmp_path / "attention.onnx", opset)
    model = onnx.load(path)
    assert unfuse_runtime_ops(model) == 3
    assert all(n.domain == "" for n in model.graph.node)
    rng = np.random.default_rng(4)
    feeds = {"a": rng.normal(size=(2, 3, 4)).astype(np.float32),
             "b": rng.normal(size=(2, 5, 4)).astype(np.float32)}
    want = ort.InferenceSession(path).run(None, feeds)
    got = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_a_vision_transformer_saved_by_onnx_runtime_explains_as_the_export(tmp_path):
    source = TEST_MODELS / "transformers" / "vit_tiny_dynamo.onnx"
    fused = optimised(source, tmp_path / "vit_ort.onnx")
    assert ops(fused)[("com.microsoft", "SkipLayerNormalization")] >= 1  # the premise
    x = np.random.default_rng(5).normal(size=(3, 32, 32)).astype(np.float32)
    original, loaded = load_model(source), load_model(fused)
    assert x.shape == original.example_chw()
    m0 = explain(original, x, "saliency", target=1).map
    m1 = explain(loaded, x, "saliency", target=1).map
    np.testing.assert_allclose(m1, m0, rtol=1e-4, atol=1e-5 * np.abs(m0).max())


def test_an_fp16_model_saved_by_onnx_runtime_computes_in_float_and_explains(tmp_path):
    """ONNX Runtime's CPU optimisation runs an fp16 model in float: Casts in front, the
    Softmax in float, a Cast to fp16 after it. The explained logits are float while the output
    is fp16; the scores graph declared them fp16 and ONNX Runtime refused it (an internal
    error in every gradient method)."""
    source = THIRD_PARTY / "wml_squeezenet11_fp16_caffe2.onnx"
    fused = optimised(source, tmp_path / "squeezenet_ort.onnx")
    proto = onnx.load(fused)
    assert proto.graph.node[-1].op_type == "Cast"  # the premise: fp16 only after the Softmax
    x = np.random.default_rng(6).normal(size=(1, 3, 224, 224)).astype(np.float32)
    original, loaded = load_model(source), load_model(fused)
    graph, name = loaded.scores_graph()
    assert next(o for o in graph.graph.output if o.name == name).type.tensor_type.elem_type \
        == T.FLOAT
    s0, g0 = original.input_gradient(x, one_hot(1, 1000, 281))
    s1, g1 = loaded.input_gradient(x, one_hot(1, 1000, 281))
    np.testing.assert_allclose(s1, s0, atol=0.05 * np.abs(s0).max())  # fp16 against float
    assert np.corrcoef(g0.ravel(), g1.ravel())[0, 1] > 0.99


def test_an_ir3_file_saved_by_onnx_runtime_keeps_no_input_nobody_reads(tmp_path):
    """ONNX Runtime saving an IR 3 export (every weight listed as an input) folds a weight and
    leaves it listed as an input that no node reads but that its sessions ask for. Before,
    the model was refused as having two inputs; with the input dropped and the FusedGemm's
    Sigmoid unfused, the scores are the original's logits before that Sigmoid."""
    source = THIRD_PARTY / "customvision_computer.onnx"
    fused = optimised(source, tmp_path / "customvision_ort.onnx")
    proto = onnx.load(fused)
    read = {i for n in proto.graph.node for i in n.input}
    initializers = {t.name for t in proto.graph.initializer}
    unread = [i.name for i in proto.graph.input if i.name not in read | initializers]
    assert unread  # the premise
    with pytest.raises(Exception, match="missing from input feed"):
        ort.InferenceSession(fused).run(None, {"data": np.zeros((1, 3, 227, 227), np.float32)})
    x = np.random.default_rng(7).uniform(0, 255, (2, 3, 227, 227)).astype(np.float32)
    original, loaded = load_model(source), load_model(fused)
    assert loaded.activation == original.activation == "Sigmoid"
    assert loaded.graph_problem is None
    np.testing.assert_allclose(loaded(x), original(x), rtol=1e-4, atol=1e-4)


def test_an_input_nothing_reads_is_not_asked_for(tmp_path):
    """A graph input no node reads (ONNX Runtime still asks for it) is dropped even when
    nothing else about the file changes."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 1, 4, 4]),
         helper.make_tensor_value_info("unread", T.FLOAT, [3])],
        [helper.make_tensor_value_info("logits", T.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.arange(48, dtype=np.float32).reshape(16, 3) / 48, "w")])
    path = tmp_path / "unread.onnx"
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)]),
              path)
    x = np.random.default_rng(8).normal(size=(2, 1, 4, 4)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x, "unread": np.zeros(3, np.float32)})
    np.testing.assert_allclose(load_model(path)(x), want[0], rtol=1e-6)


def attention_model(path, *, mask: bool = False) -> str:
    """Patches (Conv 4x4 stride 4) -> 4 tokens of width 8 -> com.microsoft.Attention (2 heads;
    with ``mask``, a mask_index input, which is not unfused) -> mean over the tokens -> Gemm."""
    rng = np.random.default_rng(9)

    def f(a, n):
        return numpy_helper.from_array(np.asarray(a, np.float32), n)

    extra = ["mask"] if mask else []
    nodes = [helper.make_node("Conv", ["x", "pw"], ["patches"], kernel_shape=[4, 4],
                              strides=[4, 4]),
             helper.make_node("Reshape", ["patches", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("Attention", ["tokens", "qkv", "qkv_b", *extra], ["attended"],
                              domain="com.microsoft", num_heads=2),
             helper.make_node("ReduceMean", ["attended"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["pooled", "head"], ["logits"])]
    inits = [f(rng.normal(0, 0.3, (8, 3, 4, 4)), "pw"), f(rng.normal(0, 0.3, (8, 24)), "qkv"),
             f(rng.normal(0, 0.1, 24), "qkv_b"), f(rng.normal(0, 0.5, (8, 5)), "head"),
             numpy_helper.from_array(np.array([0, 8, 4], np.int64), "shape")]
    if mask:
        inits.append(numpy_helper.from_array(np.ones((1, 4), np.int32), "mask"))
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", T.FLOAT, [1, 5])], inits)
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]), path)
    return str(path)


def test_attention_is_unfused_into_the_chain_the_attention_methods_find(tmp_path):
    path = attention_model(tmp_path / "attention.onnx")
    model = load_model(path)
    assert not any(n.domain for n in model.graph().graph.node)
    x = np.random.default_rng(10).normal(size=(3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(path).run(None, {"x": x[None]})[0]
    np.testing.assert_allclose(model(x[None]), want, rtol=1e-5, atol=1e-6)
    _, g = model.input_gradient(x[None], one_hot(1, 5, 2))  # against central differences
    eps, rng = 1e-2, np.random.default_rng(11)
    for _ in range(3):
        d = rng.normal(size=x.shape).astype(np.float32)
        up = ort.InferenceSession(path).run(None, {"x": (x + eps * d)[None]})[0][0, 2]
        down = ort.InferenceSession(path).run(None, {"x": (x - eps * d)[None]})[0][0, 2]
        assert abs(float((g[0] * d).sum()) - (up - down) / (2 * eps)) < 2e-3
    # the attention methods find its heads (and refuse this toy only for having no class token)
    with pytest.raises(BlackboxError, match="attention is over its 2x2 patch tokens"):
        explain(model, x, "attention-rollout", target=2)


def test_an_op_kept_fused_is_named_by_the_gradient_refusal(tmp_path):
    """An Attention with a mask input stays fused: the model runs for the black-box methods,
    and the gradient refusal names Attention, not the ReduceMean after it whose rank
    Attention left unknown."""
    path = attention_model(tmp_path / "masked.onnx", mask=True)
    model = load_model(path)
    x = np.random.default_rng(12).normal(size=(3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(path).run(None, {"x": x[None]})[0]
    np.testing.assert_allclose(model(x[None]), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(BlackboxError, match="Attention node 'attended': no gradient rule"):
        explain(model, x, "saliency", target=0)

def test_a_final_sigmoid_left_fused_is_refused_not_explained_as_logits(tmp_path, monkeypatch):
    """When normalisation fails (simulated), a FusedGemm keeps the final Sigmoid inside it:
    its probabilities would have been explained as logits; it is refused in one line."""
    import blackbox_xai.model as model_module
    from blackbox_xai.graph.normalize import Normalized

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("FusedGemm", ["flat", "w"], ["probs"], domain="com.microsoft",
                          name="head", activation="Sigmoid")], "g",
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("probs", T.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.ones((48, 2), np.float32) / 48, "w")])
    path = tmp_path / "fused_sigmoid.onnx"
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]), path)
    assert load_model(path).activation == "Sigmoid"  # normalised: unfused, cut before it
    monkeypatch.setattr(model_module, "normalize", lambda m: Normalized(
        m, (), None, "the model's opset cannot be upgraded (simulated)"))
    with pytest.raises(BlackboxError, match="final Sigmoid is fused into ONNX Runtime's "
                                            "FusedGemm 'head'"):
        load_model(path)


def test_onnx_runtimes_own_layer_norm_before_opset_17_is_written_out(tmp_path):
    """ORT's LayerNormFusion writes LayerNormalization in the default domain into an opset-14
    ViT, where ONNX has no such op: every rewrite failed the checker (an internal error in
    backward, Grad-CAM, saliency) and the layer search crashed on its untyped output."""
    source = TEST_MODELS / "transformers" / "vit_tiny_opset14.onnx"
    fused = optimised(source, tmp_path / "vit14_ort.onnx")
    assert ops(fused)[("", "LayerNormalization")] > 0  # the premise, at opset 14
    # the raw file: no KeyError on the untyped output, and a token layer the export has too
    raw_default = default_layer(onnx.load(fused))
    assert raw_default in {c.name for c in candidate_layers(onnx.load(source))}
    x = np.random.default_rng(13).normal(size=(3, 32, 32)).astype(np.float32)
    original, loaded = load_model(source), load_model(fused)
    assert not any(n.op_type == "LayerNormalization" for n in loaded.graph().graph.node)
    m0 = explain(original, x, "saliency", target=1).map
    m1 = explain(loaded, x, "saliency", target=1).map
    np.testing.assert_allclose(m1, m0, rtol=1e-3, atol=1e-4 * np.abs(m0).max())


def test_cam_reads_the_cast_weights_of_an_fp16_model_saved_by_onnx_runtime(tmp_path):
    """Saved by ONNX Runtime, an fp16 model's head is Cast(fp16 weight) -> Gemm -> Cast: CAM
    refused it ('GlobalAveragePool -> Flatten -> Gemm'); its weights are the cast ones."""
    source = TEST_MODELS / "tiny_cnn_fp16.onnx"
    fused = optimised(source, tmp_path / "tiny_fp16_ort.onnx")
    assert onnx.load(fused).graph.node[-1].op_type == "Cast"  # the premise
    x = np.random.default_rng(14).normal(size=(3, 32, 32)).astype(np.float32)
    c0 = explain(load_model(source), x, "cam", target=1)
    c1 = explain(load_model(fused), x, "cam", target=1)
    np.testing.assert_allclose(c1.extras["weights"], c0.extras["weights"], rtol=1e-6)
    assert np.corrcoef(c0.map.ravel(), c1.map.ravel())[0, 1] > 0.9999  # fp16 against float
