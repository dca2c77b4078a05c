"""Classifiers that end in an ai.onnx.ml ZipMap (Azure Custom Vision, skl2onnx): the scores are
the ZipMap's input, its class names the labels; the string label output is refused as scores."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.errors import ModelInputError
from blackbox_xai.preprocess import Preprocessing

LABELS = ["apple", "boat", "cat", "dog", "eel"]


def classifier(path, zipped: bool):
    """Conv -> Relu -> GAP -> Gemm -> Softmax; with ``zipped``, then as Custom Vision exports
    end: ZipMap -> ``loss`` (one {label: probability} map per image) and ArgMax ->
    LabelEncoder -> ``classLabel`` (strings); else the probabilities are the output."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "g")
    nodes = [helper.make_node("Conv", ["data", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "g"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["model_outputs0"], axis=1)]
    outputs = [helper.make_tensor_value_info("model_outputs0", TensorProto.FLOAT, ["N", 5])]
    if zipped:
        nodes += [helper.make_node("ZipMap", ["model_outputs0"], ["loss"], domain="ai.onnx.ml",
                                   classlabels_strings=LABELS),
                  helper.make_node("ArgMax", ["model_outputs0"], ["index"], axis=1, keepdims=0),
                  helper.make_node("LabelEncoder", ["index"], ["classLabel"], domain="ai.onnx.ml",
                                   keys_int64s=list(range(5)), values_strings=LABELS)]
        maps = helper.make_sequence_type_proto(helper.make_map_type_proto(
            TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
        outputs = [helper.make_tensor_value_info("classLabel", TensorProto.STRING, ["N"]),
                   helper.make_value_info("loss", maps)]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 32, 32])],
        outputs, [w, g])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("ai.onnx.ml", 2)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zipmap")
    return classifier(folder / "zipped.onnx", True), classifier(folder / "plain.onnx", False)


def test_the_scores_are_the_zipmaps_input(pair):
    """Found without --output, and with --output naming the ZipMap's output: the logits before
    the softmax, as for the same network ending in its probabilities; Grad-CAM the same."""
    before = pair[0].read_bytes()
    zipped, plain = (load_model(p, device="cpu") for p in pair)
    named = load_model(pair[0], device="cpu", output="loss")
    assert zipped.logits_name == named.logits_name == plain.logits_name == "logits"
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(zipped(x), plain(x))
    np.testing.assert_array_equal(named(x), plain(x))
    a, b = (explain(m, x[0], "gradcam", target=3).map for m in (zipped, plain))
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0 and pair[0].read_bytes() == before


def test_the_zipmaps_class_names_are_the_labels(pair):
    pre = Preprocessing.for_model(pair[0], (32, 32), num_classes=5, warn_if_guessed=False)
    assert pre.labels == LABELS and pre.sources["labels"] == "metadata"
    assert not Preprocessing.for_model(pair[1], (32, 32), num_classes=5,
                                       warn_if_guessed=False).labels


def test_the_cli_refuses_the_string_output_and_explains_through_the_zipmap(pair, tmp_path, run):
    with pytest.raises(ModelInputError, match="'classLabel' holds strings, not class scores"):
        load_model(pair[0], device="cpu", output="classLabel")
    r = run("explain", "occlusion", pair[0], EXAMPLES / "cat.jpg", "--output", "classLabel",
            "--out", tmp_path / "out")
    errors = [line for line in r.stderr.splitlines() if not line.startswith("bbx: ")]
    assert r.exit_code == 2 and len(errors) == 1 and "holds strings" in errors[0]
    assert not (tmp_path / "out").exists()
    ok = run("explain", "occlusion", pair[0], EXAMPLES / "cat.jpg", "--out", tmp_path / "ok")
    target = re.search(r"target (\d+) \((\w+)\)", ok.output)
    assert ok.exit_code == 0 and target, ok.output
    assert target.group(2) == LABELS[int(target.group(1))]  # named by the ZipMap's labels
    listed = run("layers", pair[0], "--output", "loss")  # the ZipMap's output means its scores
    assert listed.exit_code == 0 and any(line.startswith("* r ") for line in
                                         listed.output.splitlines()), listed.output


def test_a_detector_keeps_its_string_outputs(tmp_path):
    """A classifier's string label output is dropped, but a detector's raw outputs all reach its
    decoder in their order, a string one (here a list of class names) included."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Reshape", ["c", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["boxes"], perm=[0, 2, 1]),
             helper.make_node("Constant", [], ["names"], value=helper.make_tensor(
                 "names", TensorProto.STRING, [1], [b"box"]))]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 64, 4]),
         helper.make_tensor_value_info("names", TensorProto.STRING, [1])], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "det.onnx"))
    assert load_model(tmp_path / "det.onnx", device="cpu", task="detect").output_names == [
        "boxes", "names"]
