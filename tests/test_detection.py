"""Detectors: decoders, NMS, the D-RISE similarity target, drise, and the detect CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import model_path
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from blackbox_xai import Detection, explain, load_model
from blackbox_xai.cli import cli
from blackbox_xai.decode import Decoder, OutputInfo, box_iou, choose_decoder, nms
from blackbox_xai.errors import BlackboxError, ModelInputError
from blackbox_xai.methods.rise import rise_masks
from blackbox_xai.targets import DetectionScore, Detector, similarity

SIZE = 32
REGION = (slice(8, 16), slice(8, 16))  # the only pixels the toy detector reads (rows, cols)
BOX = (8.0, 8.0, 24.0, 24.0)  # its anchor-0 box, xyxy in input pixels (constant)


def toy_head(x: np.ndarray) -> np.ndarray:
    """The toy YOLOv8-layout head in numpy: (N, 4 + 2, 2). Anchor 0: box BOX, class scores
    (s, 0.5) with s = sigmoid(4 (mean of channel 0 over REGION - 0.5)); anchor 1: box
    (2, 2, 6, 6), scores (0, 0.1)."""
    s = 1 / (1 + np.exp(-4 * (x[:, 0, REGION[0], REGION[1]].mean(axis=(1, 2)) - 0.5)))
    out = np.zeros((len(x), 6, 2))
    out[:, :4, 0] = [16, 16, 16, 16]
    out[:, :4, 1] = [4, 4, 4, 4]
    out[:, 4, 0], out[:, 5, 0], out[:, 5, 1] = s, 0.5, 0.1
    return out.astype(np.float32)


def toy_similarity(x: np.ndarray) -> np.ndarray:
    """D-RISE similarity of toy_head's anchor 0 to Detection(BOX, 0): IoU 1, cos = s / |(s, .5)|."""
    s = toy_head(x)[:, 4, 0].astype(np.float64)
    return s / np.sqrt(s ** 2 + 0.25)


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory) -> str:
    """toy_head as an ONNX graph (input (N, 3, 32, 32), output (N, 6, 2))."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 6, 2])
    base = np.zeros((1, 6, 2), np.float32)
    base[0, :4, 0], base[0, :4, 1], base[0, 5, 0], base[0, 5, 1] = 16, 4, 0.5, 0.1
    pick = np.zeros((1, 6, 2), np.float32)
    pick[0, 4, 0] = 1
    consts = {"starts": np.array([0, 8, 8], np.int64), "ends": np.array([1, 16, 16], np.int64),
              "axes": np.array([1, 2, 3], np.int64), "four": np.array(4, np.float32),
              "half": np.array(0.5, np.float32), "shape": np.array([-1, 1, 1], np.int64),
              "base": base, "pick": pick}
    nodes = [helper.make_node("Slice", ["images", "starts", "ends", "axes"], ["region"]),
             helper.make_node("ReduceMean", ["region"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Sub", ["mean", "half"], ["centred"]),
             helper.make_node("Mul", ["centred", "four"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["s3"]),
             helper.make_node("Mul", ["s3", "pick"], ["placed"]),
             helper.make_node("Add", ["placed", "base"], ["output0"])]
    graph = helper.make_graph(nodes, "toy_yolov8", [x], [y],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(proto)
    path = tmp_path_factory.mktemp("det") / "toy_yolov8.onnx"
    onnx.save(proto, path)
    return str(path)


def textured(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 1.0, (3, SIZE, SIZE)).astype(np.float32)


def inside_outside(m: np.ndarray) -> tuple[float, float]:
    inside = np.zeros(m.shape, bool)
    inside[REGION] = True
    return float(m[inside].mean()), float(m[~inside].mean())


# ---- decoders ----------------------------------------------------------------------------------
def test_yolov8_decoder_hand_written_boxes():
    raw = np.zeros((1, 4 + 2, 3))
    raw[0, :4] = [[10, 50, 0], [20, 60, 0], [4, 10, 2], [8, 20, 2]]  # cx, cy, w, h per anchor
    raw[0, 4:] = [[0.9, 0.1, 0.0], [0.2, 0.7, 0.0]]
    props = Decoder("yolov8", (0,))([raw], (100, 100))
    np.testing.assert_allclose(props.boxes[0], [[8, 16, 12, 24], [45, 50, 55, 70], [-1, -1, 1, 1]])
    np.testing.assert_allclose(props.classes[0], [[0.9, 0.2], [0.1, 0.7], [0, 0]])
    assert props.objectness is None
    (dets,) = Detector(lambda x: raw).detect(np.zeros((1, 3, 100, 100), np.float32), conf=0.5)
    assert [(d.box, d.label, round(d.score, 6)) for d in dets] == [
        ((8.0, 16.0, 12.0, 24.0), 0, 0.9), ((45.0, 50.0, 55.0, 70.0), 1, 0.7)]


def test_yolov5_decoder_multiplies_objectness():
    raw = np.array([[[50, 50, 20, 10, 0.5, 0.8, 0.2], [10, 10, 4, 4, 0.9, 0.1, 0.3]]])
    props = Decoder("yolov5", (0,))([raw], (100, 100))
    np.testing.assert_allclose(props.boxes[0], [[40, 45, 60, 55], [8, 8, 12, 12]])
    np.testing.assert_allclose(props.objectness[0], [0.5, 0.9])
    np.testing.assert_allclose(props.confidence[0], [[0.4, 0.1], [0.09, 0.27]])
    (dets,) = Detector(lambda x: raw).detect(np.zeros((1, 3, 100, 100), np.float32), conf=0.25)
    assert [(d.label, round(d.score, 6)) for d in dets] == [(0, 0.4), (1, 0.27)]


def test_boxes_decoder_normalised_pixels_and_labels():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]])
    scores = np.array([[[0.1, 0.9], [0.6, 0.4]]])
    infos = [OutputInfo("boxes", (1, 2, 4)), OutputInfo("scores", (1, 2, 2))]
    dec = choose_decoder(infos, sample=[boxes, scores])
    assert dec == Decoder("boxes", (0, 1), normalized=True)
    props = dec([boxes, scores], (200, 100))  # H 200, W 100
    np.testing.assert_allclose(props.boxes[0], [[10, 40, 50, 120], [0, 0, 100, 200]])
    pixels = boxes * 100
    assert not choose_decoder(infos, sample=[pixels, scores]).normalized
    # scores (N, A) + integer labels (N, A): one-hot classes, the score is the objectness
    labels = np.array([[2, 0]])
    infos3 = [OutputInfo("det_boxes", (1, 2, 4)), OutputInfo("det_scores", (1, 2)),
              OutputInfo("det_classes", (1, 2), integer=True)]
    dec3 = choose_decoder(infos3, sample=[pixels, scores[..., 0], labels])
    assert dec3 == Decoder("boxes", (0, 1, 2), normalized=False)
    props3 = dec3([pixels, np.array([[0.7, 0.3]]), labels], (100, 100))
    np.testing.assert_allclose(props3.classes[0], [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(props3.confidence[0].max(axis=-1), [0.7, 0.3])


def test_decoder_choice_from_shapes_and_override():
    assert choose_decoder([OutputInfo("output0", (1, 22, 2100))]).kind == "yolov8"
    assert choose_decoder([OutputInfo("output", (1, 25200, 85))]).kind == "yolov5"
    assert choose_decoder([OutputInfo("o", (1, 25200, 85))], "yolov8").kind == "yolov8"
    with pytest.raises(ModelInputError, match="no detector head"):
        choose_decoder([OutputInfo("logits", (1, 1000))])
    with pytest.raises(ModelInputError, match="--decoder 'ssd'"):
        choose_decoder([OutputInfo("o", (1, 6, 10))], "ssd")
    with pytest.raises(ModelInputError, match="too narrow"):
        choose_decoder([OutputInfo("o", (1, 100, 5))], "yolov5")


# ---- NMS and similarity ------------------------------------------------------------------------
def test_box_iou_and_nms():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 0, 2], [0, 0, 0, 2]) == 0  # no area: 0, not NaN
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(3, 0) = 0.9, IoU(3, 1) = 81/119 = 0.68, IoU(0, 1) = 90/110 = 0.82
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.85).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.5, labels=[0, 1, 0, 0]).tolist() == [3, 1, 2]


def test_similarity_is_iou_times_cosine_times_objectness():
    from blackbox_xai.decode import Proposals

    props = Proposals(boxes=np.array([[[0, 0, 10, 10], [0, 0, 10, 20]]], np.float64),
                      classes=np.array([[[0.6, 0.8], [1.0, 0.0]]]),
                      objectness=np.array([[0.5, 0.9]]))
    # proposal 0: IoU 1, cos 0.6, obj 0.5 -> 0.3; proposal 1: IoU 0.5, cos 1, obj 0.9 -> 0.45
    assert similarity(Detection((0, 0, 10, 10), 0), props) == pytest.approx([0.45])
    assert similarity(Detection((0, 0, 10, 10), 1), props) == pytest.approx([0.4])
    assert similarity(Detection((0, 0, 10, 10), 5), props) == pytest.approx([0.0])


def test_detection_box_maps_to_image_pixels_and_back():
    footprint = (-10.0, 20.0, 310.0, 180.0)  # a 320 x 160 footprint for a 64 x 32 input (H, W)
    d = Detection((8, 16, 24, 48), 3)
    img = d.to_image(footprint, (64, 32))
    assert img == pytest.approx((70.0, 60.0, 230.0, 140.0))
    back = Detection.from_image(img, 3, footprint, (64, 32))
    assert back.box == pytest.approx(d.box) and back.label == 3
    with pytest.raises(BlackboxError, match="x1 > x0"):
        Detection((5, 5, 5, 9), 0)


# ---- explaining a detection ----------------------------------------------------------------------
def test_drise_weights_match_numpy_recomputation():
    x = textured()
    n, grid, p, seed = 64, 4, 0.5, 3
    exp = explain(toy_head, x, "drise", target=Detection(BOX, 0), seed=seed, n_masks=n, grid=grid)
    rng = np.random.default_rng(seed)
    grids = (rng.random((n, grid, grid)) < p).astype(np.float64)
    dy, dx = rng.integers(0, SIZE // grid, n), rng.integers(0, SIZE // grid, n)
    masks = rise_masks(grids, dy, dx, SIZE, SIZE)
    weights = toy_similarity(x[None] * masks[:, None])
    np.testing.assert_allclose(exp.extras["weights"], weights, rtol=1e-5)
    np.testing.assert_allclose(exp.map, np.tensordot(weights, masks, 1) / n, rtol=1e-4, atol=1e-6)
    assert exp.n_queries == n + 1 and exp.target == 0
    assert exp.score == pytest.approx(toy_similarity(x[None])[0], rel=1e-6)
    assert exp.extras["detection"]["decoder"]["kind"] == "yolov8"


def test_drise_same_seed_same_map_at_any_batch_size(toy_onnx):
    maps = [explain(load_model(toy_onnx, device="cpu", task="detect", batch_size=b), textured(),
                    "drise", target=Detection(BOX, 0), seed=5, n_masks=40, grid=4).map
            for b in (1, 7, 64)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)
    other = explain(toy_head, textured(), "drise", target=Detection(BOX, 0), seed=6, n_masks=40,
                    grid=4).map
    assert not np.allclose(other, maps[0])


@pytest.mark.parametrize(("method", "options"), [
    ("drise", {"n_masks": 300, "grid": 4}),
    ("occlusion", {"window": 8, "stride": 4}),
    ("rise", {"n_masks": 300, "grid": 4}),
    ("shapley", {"grid": 4, "n_permutations": 4}),
    ("lime", {"segments": np.arange(16).reshape(4, 4).repeat(8, 0).repeat(8, 1), "num_samples": 200,
              "fill": "zero"}),
])
def test_black_box_maps_find_the_region_the_detection_reads(toy_onnx, method, options):
    model = load_model(toy_onnx, device="cpu", task="detect", batch_size=32)
    exp = explain(model, textured(), method, target=Detection(BOX, 0), seed=0, **options)
    inside, outside = inside_outside(exp.map)
    assert inside > outside + 0.1 * abs(exp.map).max(), (method, inside, outside)
    if method == "occlusion":  # the detection reads nothing outside REGION: exactly 0 there
        m = exp.map.copy()
        m[4:20, 4:20] = 0
        assert abs(m).max() == 0
    assert exp.model["task"] == "detect" and exp.extras["detection"]["box"] == list(BOX)


def test_detector_model_keeps_raw_outputs(toy_onnx):
    model = load_model(toy_onnx, device="cpu", task="detect")
    x = textured()[None]
    (raw,) = model.raw_outputs(np.concatenate([x, x * 0]))
    np.testing.assert_allclose(raw, toy_head(np.concatenate([x, x * 0])), rtol=1e-5, atol=1e-6)
    assert model.num_classes is None and model.output_names == ["output0"]
    with pytest.raises(ModelInputError, match="loaded as a detector"):
        model(x)
    with pytest.raises(ModelInputError, match="bbx detect"):
        load_model(toy_onnx, device="cpu")


def test_refusals_are_one_line(toy_onnx):
    with pytest.raises(BlackboxError, match="through the model's graph"):
        explain(toy_head, textured(), "gradcam", target=Detection(BOX, 0))
    classifier = load_model(model_path("tiny_cnn"), device="cpu")
    x = np.zeros(classifier.example_chw(), np.float32)
    with pytest.raises(BlackboxError, match="drise explains a detection"):
        explain(classifier, x, "drise", n_masks=4)
    with pytest.raises(BlackboxError, match="task='detect'"):
        explain(classifier, x, "occlusion", target=Detection(BOX, 0))
    assert isinstance(DetectionScore(Detector(toy_head), Detection(BOX, 0))(textured()[None]),
                      np.ndarray)


# ---- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def bright_region_image(tmp_path) -> str:
    """A 64 x 64 photo, white where the toy detector reads (input pixels 8..16 -> 16..32)
    and around it."""
    pixels = np.full((64, 64, 3), 40, np.uint8)
    pixels[12:36, 12:36] = 255  # covers the region's resampling support
    path = tmp_path / "square.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def test_cli_detect_lists_the_box_in_image_pixels(toy_onnx, bright_region_image):
    r = CliRunner().invoke(cli, ["detect", toy_onnx, bright_region_image, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "square.png: 1 detection (decoder yolov8, conf 0.25, iou 0.45)"
    s = 1 / (1 + np.exp(-4 * (1.0 - 0.5)))  # the region is white: mean 1
    assert lines[1].split() == ["0", "0", f"{s:.4f}", "16.0,16.0,48.0,48.0"]


def test_cli_explain_detection_and_box(toy_onnx, bright_region_image, tmp_path):
    r = CliRunner().invoke(cli, ["explain", "drise", toy_onnx, bright_region_image, "--detection",
                                 "0", "--n-masks", "50", "--grid", "4", "--device", "cpu",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "drise target 0 box 16.0,16.0,48.0,48.0 score" in r.stdout
    manifest = json.loads((tmp_path / "out" / "square_drise.json").read_text())
    assert manifest["extras"]["detection"]["box"] == [8.0, 8.0, 24.0, 24.0]
    r = CliRunner().invoke(cli, ["explain", "occlusion", toy_onnx, bright_region_image, "--box",
                                 "16,16,48,48", "--class", "0", "--window", "8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "occlusion target 0 box 16.0,16.0,48.0,48.0" in r.stdout


def test_cli_refuses_detection_on_a_classifier(bright_region_image):
    r = CliRunner().invoke(cli, ["explain", "occlusion", model_path("tiny_cnn"),
                                 bright_region_image, "--detection", "0", "--device", "cpu"])
    assert r.exit_code == 2
    errors = [line for line in r.stderr.splitlines() if not line.startswith("bbx: ")]
    assert len(errors) == 1 and errors[0].startswith("error: no detector head")
    r = CliRunner().invoke(cli, ["explain", "occlusion", model_path("tiny_cnn"),
                                 bright_region_image, "--box", "1,1,5,5"])
    assert r.exit_code == 2 and "--class k" in r.stderr


# ---- box formats, letterbox, detect --out --------------------------------------------------------
def test_box_formats_and_normalised_coordinates_hand_written():
    from blackbox_xai.decode import to_xyxy

    b = np.array([[10.0, 20.0, 30.0, 40.0]])
    np.testing.assert_allclose(to_xyxy(b, "xyxy"), [[10, 20, 30, 40]])
    np.testing.assert_allclose(to_xyxy(b, "xywh"), [[10, 20, 40, 60]])
    np.testing.assert_allclose(to_xyxy(b, "cxcywh"), [[-5, 0, 25, 40]])
    # YOLOv8 head with normalised cxcywh (H 200, W 100): x by W, y by H
    raw = np.zeros((1, 4 + 1, 1))
    raw[0, :, 0] = [0.5, 0.25, 0.2, 0.1, 0.9]
    dec = choose_decoder([OutputInfo("o", (1, 5, 1))], "yolov8", normalized=True)
    assert dec.describe() == {"kind": "yolov8", "outputs": [0], "normalized": True,
                              "box_format": "cxcywh"}
    np.testing.assert_allclose(dec([raw], (200, 100)).boxes[0], [[40, 40, 60, 60]])
    # YOLOv5 head in xywh pixels
    raw5 = np.array([[[4, 6, 10, 20, 0.5, 1.0]]])
    dec5 = choose_decoder([OutputInfo("o", (1, 1, 6))], box_format="xywh")
    assert (dec5.kind, dec5.format) == ("yolov5", "xywh")
    np.testing.assert_allclose(dec5([raw5], (64, 64)).boxes[0], [[4, 6, 14, 26]])
    # boxes + scores: cxcywh normalised, and the automatic normalisation overridden
    boxes, scores = np.array([[[0.5, 0.5, 0.5, 1.0]]]), np.array([[[0.3, 0.7]]])
    infos = [OutputInfo("boxes", (1, 1, 4)), OutputInfo("scores", (1, 1, 2))]
    decb = choose_decoder(infos, sample=[boxes, scores], box_format="cxcywh")
    assert decb.normalized and decb.format == "cxcywh"
    np.testing.assert_allclose(decb([boxes, scores], (40, 80)).boxes[0], [[20, 0, 60, 40]])
    pixels = choose_decoder(infos, sample=[boxes, scores], normalized=False)
    np.testing.assert_allclose(pixels([boxes, scores], (40, 80)).boxes[0], [[0.5, 0.5, 0.5, 1]])
    with pytest.raises(ModelInputError, match="--box-format 'yxyx'"):
        choose_decoder(infos, box_format="yxyx")


def test_letterboxed_detection_maps_back_to_photo_pixels():
    """A 64 x 32 (W x H) photo letterboxed into 32 x 32: scale 0.5, 8 rows of padding on top,
    footprint (0, -16, 64, 48); an input box (8, 12, 16, 20) is (16, 8, 32, 24) in the photo."""
    from blackbox_xai.preprocess import Preprocessing

    pre = Preprocessing(crop=(32, 32), mode="letterbox", mean=(0, 0, 0), std=(1, 1, 1), scale=255)
    tensor, footprint = pre.to_tensor(Image.new("RGB", (64, 32), (255, 255, 255)))
    assert footprint == pytest.approx((0.0, -16.0, 64.0, 48.0))
    raw = np.zeros((1, 4 + 1, 1))
    raw[0, :, 0] = [12 / 32, 16 / 32, 8 / 32, 8 / 32, 0.9]  # normalised cxcywh
    (dets,) = Detector(lambda x: raw, normalized=True).detect(tensor[None])
    assert dets[0].box == pytest.approx((8, 12, 16, 20))
    assert dets[0].to_image(footprint, (32, 32)) == pytest.approx((16, 8, 32, 24))


def test_cli_detect_out_draws_the_boxes(toy_onnx, bright_region_image, tmp_path):
    from blackbox_xai.viz import BOX_COLORS

    out = tmp_path / "pics"
    r = CliRunner().invoke(cli, ["detect", toy_onnx, bright_region_image, "--device", "cpu",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    pic = np.asarray(Image.open(out / "square_detections.png"))
    assert pic.shape == (64, 64, 3)
    # the box is 16,16,48,48 in the photo: a 2-pixel outline in class 0's colour
    for x, y in [(16, 40), (17, 40), (47, 40), (46, 40), (30, 47)]:
        assert tuple(pic[y, x]) == BOX_COLORS[0], (x, y)
    assert tuple(pic[30, 18]) == (255, 255, 255) and tuple(pic[40, 18]) == (40, 40, 40)
    assert (pic[:16, 16:40] == BOX_COLORS[0]).all(axis=-1).sum() > 20  # the caption's strip
    again = CliRunner().invoke(cli, ["detect", toy_onnx, bright_region_image, "--device", "cpu",
                                     "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.stderr
    r = CliRunner().invoke(cli, ["detect", toy_onnx, bright_region_image, "--device", "cpu",
                                 "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    # all or none: one picture already there refuses the whole run before any computing
    other = tmp_path / "other.png"
    Image.open(bright_region_image).save(other)
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "square_detections.png").write_bytes(b"old")
    r = CliRunner().invoke(cli, ["detect", toy_onnx, str(other), bright_region_image,
                                 "--device", "cpu", "--out", str(tmp_path / "fresh")])
    assert r.exit_code != 0 and "--overwrite" in r.stderr
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["square_detections.png"]


@pytest.mark.parametrize(("s", "h", "w"), [(16, 40, 56), (4, 32, 32), (7, 30, 9), (1, 5, 5)])
def test_drise_float32_masks_equal_rise_masks(s, h, w):
    from blackbox_xai.methods.drise import masks_float32

    rng = np.random.default_rng(s)
    grids = (rng.random((5, s, s)) < 0.5).astype(np.float64)
    dy, dx = rng.integers(0, -(-h // s), 5), rng.integers(0, -(-w // s), 5)
    got = masks_float32(s, h, w)(grids, dy, dx)
    assert got.dtype == np.float32 and got.shape == (5, h, w)
    np.testing.assert_allclose(got, rise_masks(grids, dy, dx, h, w), atol=1e-6)
    assert len(np.unique(got)) > 2 or s == 1  # smooth masks: the check can fail


def test_cli_detect_box_format_options(tmp_path):
    """tiny_boxes' normalised xyxy boxes read as pixels (--pixel-boxes) stay within 1 pixel;
    read as cxcywh they move; both are listed in image pixels."""
    image = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).uniform(0, 1, (32, 32, 3)) * 255).astype(np.uint8)
                    ).save(image)
    args = ["detect", model_path("tiny_boxes"), str(image), "--device", "cpu", "--scale", "255",
            "--mean", "0", "--std", "1", "--conf", "0.7"]
    auto = CliRunner().invoke(cli, args)
    pixels = CliRunner().invoke(cli, [*args, "--pixel-boxes"])
    centre = CliRunner().invoke(cli, [*args, "--box-format", "cxcywh"])
    assert auto.exit_code == pixels.exit_code == centre.exit_code == 0, auto.output
    first = [line.split()[-1] for line in (auto.stdout, pixels.stdout, centre.stdout)
             for line in [line.splitlines()[1]]]
    x0, y0, x1, y1 = (float(v) for v in first[0].split(","))
    assert (x1 - x0, y1 - y0) == (4.0, 4.0)  # a cell's box in pixels
    px = [float(v) for v in first[1].split(",")]
    assert max(px) <= 1.0  # the normalised numbers taken as pixels
    cx = [float(v) for v in first[2].split(",")]
    # (x0, y0, x1, y1) read as (cx, cy, w, h): x0' = x0 - (x1 - x0)/2 ... in pixels of 32
    assert cx == pytest.approx([x0 - x1 / 2, y0 - y1 / 2, x0 + x1 / 2, y0 + y1 / 2], abs=0.06)
