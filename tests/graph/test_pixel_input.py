"""uint8 image inputs that the graph only casts to float (TensorFlow exports): every method runs
on a float view of the graph, which equals the same network built with a float input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError, ModelInputError
from blackbox_xai.preprocess import Preprocessing

TARGET = 2


def nhwc_net(path, pixel_type: int, first: list[onnx.NodeProto] | None = None,
             metadata: dict[str, str] | None = None):
    """Cast (for an integer input) -> Transpose -> Conv -> Relu -> GAP -> Gemm on (N, 32, 32, 3)
    pixels; the same weights whatever the input type."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 50, "w")
    g = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "g")
    head = [] if pixel_type == TensorProto.FLOAT else [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT)]
    start = "image" if not head else "pixels"
    nodes = [*(first or head),
             helper.make_node("Transpose", [start], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["features"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["features"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "g"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("image", pixel_type, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], [w, g])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixels")
    return (nhwc_net(folder / "uint8.onnx", TensorProto.UINT8),
            nhwc_net(folder / "float.onnx", TensorProto.FLOAT))


def test_the_float_view_equals_the_float_network(pair):
    """On whole pixel values (what a uint8 input can hold) the scores are the float network's;
    every method's map too: black-box (occlusion, its hidden pixels at the zero baseline),
    gradient (saliency, integrated gradients) and CAM."""
    before = pair[0].read_bytes()
    u8, fp = (load_model(p, device="cpu") for p in pair)
    assert u8.pixel_type == "uint8" and fp.pixel_type is None
    assert u8.describe()["input_pixels"] == "uint8" and "input_pixels" not in fp.describe()
    assert u8.input.layout == "NHWC" and u8.input.chw == (3, 32, 32)
    x = np.random.default_rng(1).integers(0, 256, (3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(u8(x[None]), fp(x[None]))
    for method, options in (("occlusion", {"window": 8, "stride": 8}), ("saliency", {}),
                            ("integrated-gradients", {"steps": 8, "tolerance": 0}),
                            ("gradcam", {})):
        a, b = (explain(m, x, method, target=TARGET, **options).map for m in (u8, fp))
        np.testing.assert_array_equal(a, b, err_msg=method)
        assert np.abs(a).max() > 0 and a.std() > 0, method
    assert pair[0].read_bytes() == before


def test_integer_pixels_are_taken_as_they_are(pair, tmp_path, run):
    """A uint8 input states its range: pixel values 0-255 as they are (scale 1, no mean or
    std); a recipe that would normalise them (a preset, flags, metadata) is refused in one
    line, as a uint8 input cannot hold what it makes. Channel order stays a guess."""
    pre = Preprocessing.for_model(pair[0], (32, 32), warn_if_guessed=False)
    assert (pre.scale, pre.mean, pre.std, pre.sources["scale"]) == (1.0, (0.0,), (1.0,),
                                                                    "metadata")
    assert Preprocessing.for_model(pair[1], (32, 32), warn_if_guessed=False).scale == 255.0
    tensor = pre.prepare(EXAMPLES / "cat.jpg").tensor
    assert tensor.max() > 1 and np.array_equal(tensor, np.round(tensor))
    with pytest.raises(BlackboxError, match="takes uint8 pixels.*scale from preset torchvision"):
        Preprocessing.for_model(pair[0], (32, 32), preset="torchvision")
    stated = nhwc_net(tmp_path / "stated.onnx", TensorProto.UINT8,
                      metadata={"Image.NominalPixelRange": "Normalized_0_1"})
    with pytest.raises(BlackboxError, match="scale from metadata"):
        Preprocessing.for_model(stated, (32, 32))
    r = run("explain", "occlusion", pair[0], EXAMPLES / "cat.jpg", "--mean", "0.5", "--out",
            tmp_path / "out")
    errors = [line for line in r.stderr.splitlines() if not line.startswith("bbx: ")]
    assert r.exit_code == 2 and len(errors) == 1 and "mean from flag" in errors[0]
    assert not (tmp_path / "out").exists()


def test_integers_used_otherwise_are_refused_in_one_line(tmp_path, run):
    """An input added to a uint8 constant before the cast is integer arithmetic (it wraps
    around at 256): there is no float view of it."""
    offset = helper.make_node("Constant", [], ["offset"], value=numpy_helper.from_array(
        np.array(1, np.uint8), "offset"))
    first = [offset, helper.make_node("Add", ["image", "offset"], ["shifted"]),
             helper.make_node("Cast", ["shifted"], ["pixels"], to=TensorProto.FLOAT)]
    path = nhwc_net(tmp_path / "wraps.onnx", TensorProto.UINT8, first=first)
    with pytest.raises(ModelInputError, match="is tensor\\(uint8\\) .* and feeds Add directly"):
        load_model(path, device="cpu")
    r = run("explain", "occlusion", path, EXAMPLES / "cat.jpg", "--out", tmp_path / "out")
    errors = [line for line in r.stderr.splitlines() if not line.startswith("bbx: ")]
    assert r.exit_code == 2 and len(errors) == 1 and "feeds Add directly" in errors[0]
    assert not (tmp_path / "out").exists()


def test_the_cli_explains_a_uint8_model(pair, tmp_path, run):
    r = run("explain", "gradcam", pair[0], EXAMPLES / "cat.jpg", "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "takes uint8 pixels that the graph only casts to float" in r.stderr
    assert "(pixel / 1 - mean) / std, mean 0, std 1" in r.stderr
