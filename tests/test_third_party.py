"""Real third-party exports (tests/third_party/, see LICENSES.md there): predictions with the
files' own preprocessing, input gradients against finite differences, integrated-gradients
completeness, and one-line refusals of the files that are not image classifiers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXAMPLES, ROOT

from blackbox_xai import explain, load_model
from blackbox_xai.errors import ModelInputError
from blackbox_xai.model import one_hot
from blackbox_xai.preprocess import Preprocessing

FILES = ROOT / "tests" / "third_party"

#: file, --output, expected top-1 on the cat photo (None: out of domain, any class),
#: fp16 (finite differences of an fp16 forward are too coarse for a gradient check)
CLASSIFIERS = [
    ("wml_squeezenet11_fp16_caffe2.onnx", None, {281, 282, 285}, True),  # Caffe2, IR 3, opset 7
    ("wml_mnist_cntk.onnx", None, None, False),  # CNTK 2.5.1, IR 3, opset 7, 1 channel
    ("wml_cifar10_pytorch17.onnx", None, {3}, False),  # PyTorch 1.7, opset 10: "cat"
    ("ppocr_mobile_v2_cls.onnx", None, None, False),  # old paddle2onnx, opset 11
    ("mtcnn_onet_keras2onnx.onnx", "softmax_2", None, False),  # keras2onnx, NHWC, 3 outputs
]

#: integrated-gradients options where the defaults' first rounds would only be refined away:
#: ppocr's score at the black baseline is within 0.15 of the photo's, so its completeness gap
#: relative to that difference was still 3.9% at 256 nodes (4.2x at 16); from a blurred copy
#: (a difference of 0.81) the gap is 1.5% at 32 nodes
IG_OPTIONS = {"ppocr_mobile_v2_cls.onnx": {"baseline": "blur", "steps": 32}}


def prepared(model):
    pre = Preprocessing.for_model(model.path, model.input.chw[1:])
    return pre.prepare(EXAMPLES / "cat.jpg", model.input.channels).tensor


@pytest.mark.parametrize("name, output, top1, fp16", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_third_party_classifier_gradients(name, output, top1, fp16):
    model = load_model(FILES / name, output=output, device="cpu")
    assert model.graph_problem is None  # old opsets and IR 3 were normalised for the graph
    x = prepared(model)
    scores = model(x[None])[0]
    target = int(scores.argmax())
    if top1 is not None:
        assert target in top1
    options = {"steps": 16, **IG_OPTIONS.get(name, {})}
    ig = explain(model, x, "integrated-gradients", **options, tolerance=0.05, target=target)
    gap = abs(ig.extras["completeness_gap"]) / abs(ig.extras["score_difference"])
    assert np.isfinite(ig.map).all() and gap < 0.06
    if fp16:
        return
    _, g = model.input_gradient(x[None], one_hot(1, model.num_classes, target))
    v = g[0] / np.linalg.norm(g[0])  # the steepest direction: far above float32 rounding
    eps = 1e-3 * float(np.linalg.norm(x))
    up, down = (model((x + s * eps * v)[None])[0, target] for s in (1, -1))
    fd = (up - down) / (2 * eps)
    assert fd == pytest.approx(float((g[0] * v).sum()), rel=0.03)
    cam = explain(model, x, "gradcam", target=target).map
    assert np.isfinite(cam).all() and cam.max() > cam.min()


@pytest.mark.parametrize("name, message", [
    ("ppocrv4_det.onnx", "not class scores"),  # paddle2onnx text detector: (N, 1, H, W)
    ("mtcnn_pnet_keras2onnx.onnx", "--output NAME"),  # fully convolutional, two spatial outputs
    ("silero_vad_16k_op15.onnx", "an image model has one"),  # audio, three inputs
])
def test_third_party_files_that_are_not_classifiers_are_refused(name, message):
    with pytest.raises(ModelInputError, match=message):
        load_model(FILES / name, device="cpu")


def test_a_custom_vision_export_is_explained_through_its_zipmap(run, tmp_path):
    """Azure Custom Vision's export (OnnxMLTools 1.2, IR 3, opset 7): its scores reach the
    outputs only as a ZipMap and a string label, its input is scaled by the ImageScaler op that
    opset 10 removed, and its Windows ML metadata says Bgr8 without a pixel range (0-255 by
    Windows ML's default). The scores are the ZipMap's input, explained before the final
    Sigmoid; the class names are the ZipMap's; the cat photo is a "laptop" at the top."""
    path = FILES / "customvision_computer.onnx"
    model = load_model(path, device="cpu")
    assert (model.zipped_outputs, model.logits_name, model.activation) == (
        {"loss": "loss1"}, "fc", "Sigmoid")
    assert model.graph_problem is None  # the ImageScaler replaced, the opset upgraded
    pre = Preprocessing.for_model(path, model.input.chw[1:], num_classes=model.num_classes)
    assert (pre.channel_order, pre.scale, pre.sources["scale"]) == ("BGR", 1.0, "metadata")
    assert pre.labels == ["controller", "keyboard", "laptop", "monitor", "mouse"]
    x = pre.prepare(EXAMPLES / "cat.jpg", model.input.channels).tensor
    _, g = model.input_gradient(x[None], one_hot(1, model.num_classes, 2))
    v = g[0] / np.linalg.norm(g[0])
    # central differences along the steepest direction converge to the backward graph's
    # derivative (0.151) as the step shrinks: 0.110, 0.147, 0.150, 0.151 at 1e-3 to 1e-6 |x|
    # (|x| = 48,000 for 0-255 pixels: the larger steps cross ReLU and MaxPool kinks)
    eps = 1e-5 * float(np.linalg.norm(x))
    up, down = (model((x + s * eps * v)[None])[0, 2] for s in (1, -1))
    assert (up - down) / (2 * eps) == pytest.approx(float((g[0] * v).sum()), rel=0.01)
    r = run("explain", "gradcam", path, EXAMPLES / "cat.jpg", "--output", "loss", "--out",
            tmp_path / "out")
    assert r.exit_code == 0 and "target 2 (laptop)" in r.output, r.output
