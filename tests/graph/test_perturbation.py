"""graph/perturbation.py: the masks made inside the graph equal the host's, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import model_path
from onnx import TensorProto, helper

from blackbox_xai.graph.perturbation import BASELINE, IMAGE, perturbation_graph
from blackbox_xai.methods.occlusion import window_starts
from blackbox_xai.methods.rise import rise_masks
from blackbox_xai.methods.shapley import draw_permutations, prefix_keep, ranks
from blackbox_xai.perturb import BoxMasks, GridMasks, MaskParams, SegmentMasks, masks_from_keep
from blackbox_xai.runtime import evaluate

H, W = 20, 28  # not square, not a multiple of the RISE grid


def identity_model(layout: str = "NCHW", elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A one-channel 'image model' that returns its input: the wrapped graph shows the masks."""
    shape = ["N", 1, H, W] if layout == "NCHW" else ["N", H, W, 1]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def in_graph_masks(params: MaskParams, layout: str = "NCHW", elem: int = TensorProto.FLOAT
                   ) -> np.ndarray:
    """The masks the wrapped identity model makes: image 1, baseline 0, so x = M."""
    wrapped = perturbation_graph(identity_model(layout, elem), "x", params.kind, layout=layout)
    ones, zeros = np.ones((1, H, W), np.float32), np.zeros((1, H, W), np.float32)
    (out,) = evaluate(wrapped, {**params.feeds(), IMAGE: ones, BASELINE: zeros, **params.shared()})
    return out[..., 0] if layout == "NHWC" else out[:, 0]


def occlusion_boxes(window: int, stride: int) -> BoxMasks:
    corners = np.array([(y, x) for y in window_starts(H, window, stride)
                        for x in window_starts(W, window, stride)])
    return BoxMasks(np.concatenate([corners[:, :1], corners[:, :1] + window,
                                    corners[:, 1:], corners[:, 1:] + window], axis=1), H, W)


def rise_grids(n: int, s: int, seed: int = 0) -> GridMasks:
    rng = np.random.default_rng(seed)
    grids = (rng.random((n, s, s)) < 0.5).astype(np.float64)
    dy, dx = rng.integers(0, -(-H // s), n), rng.integers(0, -(-W // s), n)
    return GridMasks(grids, dy, dx, rise_masks(grids, dy, dx, H, W))


def shapley_prefixes(d: int = 6) -> SegmentMasks:
    labels = (np.arange(H)[:, None] * 3 // H) * 2 + (np.arange(W)[None] * 2 // W)
    rank = ranks(draw_permutations(np.random.default_rng(0), 4, d, True))
    return SegmentMasks(prefix_keep(rank, slice(0, 4 * (d - 1))), labels)


def test_box_masks_match_occlusion_windows():
    boxes = occlusion_boxes(window=6, stride=5)
    want = np.ones((len(boxes.boxes), H, W), np.float32)
    for i, (y0, y1, x0, x1) in enumerate(boxes.boxes):
        want[i, y0:y1, x0:x1] = 0
    np.testing.assert_array_equal(boxes.masks(), want)
    np.testing.assert_array_equal(in_graph_masks(boxes), want)


@pytest.mark.parametrize("cells", [1, 3, 7])
def test_grid_masks_equal_rise_masks(cells):
    params = rise_grids(33, cells)
    got = in_graph_masks(params)
    assert got.dtype == np.float32 and got.shape == (33, H, W)
    np.testing.assert_array_equal(got, params.host)
    assert got.min() >= 0 and got.max() <= 1
    assert len(np.unique(got)) > 2 or cells == 1  # smooth, not binary: the test can fail


def test_segment_masks_equal_keep_matrix_masks():
    params = shapley_prefixes()
    want = masks_from_keep(params.keep, params.labels)
    assert set(np.unique(want)) == {0.0, 1.0}
    np.testing.assert_array_equal(in_graph_masks(params), want)


@pytest.mark.parametrize("params", [occlusion_boxes(5, 4), rise_grids(9, 4), shapley_prefixes()],
                         ids=["boxes", "grids", "segments"])
def test_nhwc_and_fp16_inputs_get_the_same_masks(params):
    host = params.masks()
    np.testing.assert_array_equal(in_graph_masks(params, "NHWC"), host)
    fp16 = in_graph_masks(params, "NCHW", TensorProto.FLOAT16)
    assert fp16.dtype == np.float16
    np.testing.assert_array_equal(fp16, host.astype(np.float16))


def test_blend_is_the_hosts_formula_with_a_non_zero_baseline():
    rng = np.random.default_rng(3)
    image = rng.standard_normal((1, H, W)).astype(np.float32)
    baseline = rng.standard_normal((1, H, W)).astype(np.float32)
    params = rise_grids(5, 3)
    wrapped = perturbation_graph(identity_model(), "x", "grids")
    (out,) = evaluate(wrapped, {**params.feeds(), IMAGE: image, BASELINE: baseline,
                                **params.shared()})
    want = (image - baseline)[None] * params.host[:, None] + baseline[None]
    np.testing.assert_array_equal(out, want)


def test_the_rewrite_keeps_the_model_and_its_versions():
    source = onnx.load(model_path("tiny_cnn"))
    wrapped = perturbation_graph(source, "x", "segments")
    assert wrapped.ir_version == source.ir_version
    assert list(wrapped.opset_import) == list(source.opset_import)
    assert [i.name for i in wrapped.graph.input][:4] == ["bbx_keep", IMAGE, BASELINE, "bbx_labels"]
    assert "x" not in {i.name for i in wrapped.graph.input}
    assert [o.name for o in wrapped.graph.output] == [o.name for o in source.graph.output]
    assert source.graph.input[0].name == "x"  # the input model is not modified


def test_bad_arguments_are_refused():
    model = identity_model()
    with pytest.raises(ValueError, match="kind='stripes'"):
        perturbation_graph(model, "x", "stripes")
    with pytest.raises(ValueError, match="input_name='image'"):
        perturbation_graph(model, "image", "boxes")
    with pytest.raises(ValueError, match="layout='CHW'"):
        perturbation_graph(model, "x", "boxes", layout="CHW")
    old = identity_model()
    old.opset_import[0].version = 11
    with pytest.raises(ValueError, match="opset >= 13, not 11"):
        perturbation_graph(old, "x", "boxes")
    clash = identity_model()
    clash.graph.node[0].output[0] = "bbx_image"
    clash.graph.output[0].name = "bbx_image"
    with pytest.raises(ValueError, match="bbx_image"):
        perturbation_graph(clash, "x", "boxes")
