"""Model-randomization sanity check (Adebayo 2018): model-dependent maps decorrelate, an edge map does not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import model_path
from onnx import numpy_helper

from blackbox_xai import load_model
from blackbox_xai.errors import BlackboxError, UnknownNameError
from blackbox_xai.metrics import parametrized_layers, randomization_check, randomize


@pytest.fixture(scope="module")
def tiny():
    return load_model(model_path("tiny_cnn"), device="cpu")


def edge_map(model, x, target):
    """A 'method' that never looks at the model: the gradient magnitude of the image."""
    from skimage.filters import sobel

    return sobel(x.mean(axis=0))


def weights(proto):
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def test_layers_and_randomize(tiny):
    layers = parametrized_layers(tiny.proto)
    assert [(l.name, l.weights) for l in layers] == [
        ("Conv(conv)", ("conv.w", "conv.b")),
        ("BatchNormalization(bn)", ("bn.scale", "bn.shift")),  # running stats stay
        ("Gemm(logits)", ("fc.w", "fc.b"))]
    before = weights(tiny.proto)
    out = randomize(tiny.proto, layers[:1], seed=3)
    after = weights(out)
    assert not np.allclose(after["conv.w"], before["conv.w"])
    assert after["conv.w"].std() == pytest.approx(before["conv.w"].std(), rel=0.5)
    for name in ("bn.scale", "bn.mean", "fc.w"):
        np.testing.assert_array_equal(after[name], before[name])
    np.testing.assert_array_equal(weights(randomize(tiny.proto, layers, seed=3))["conv.w"],
                                  after["conv.w"])  # same seed, same weights: the cascade shares them
    assert out.ir_version == tiny.proto.ir_version and out.opset_import == tiny.proto.opset_import
    onnx.checker.check_model(out)
    np.testing.assert_array_equal(weights(tiny.proto)["conv.w"], before["conv.w"])  # input untouched


def test_occlusion_decorrelates_on_the_tiny_cnn(tiny, x32):
    r = randomization_check(tiny, x32, "occlusion", window=8, stride=4)
    assert [(row.mode, row.n_randomized) for row in r.rows] == [
        ("cascading", 1), ("cascading", 2), ("cascading", 3),
        ("independent", 1), ("independent", 1), ("independent", 1)]
    cascade = [row for row in r.rows if row.mode == "cascading"]
    assert cascade[0].layer == "Gemm(logits)" and cascade[-1].layer == "Conv(conv)"
    assert all(row.score_change > 0.1 for row in r.rows)
    assert abs(cascade[-1].spearman) < 0.3  # the fully random model: no relation left
    assert max(row.spearman for row in cascade) < 0.5
    conv = next(row for row in r.rows if row.mode == "independent" and row.layer == "Conv(conv)")
    assert conv.spearman < 0.8


def test_a_model_independent_map_does_not_decorrelate(tiny, x32):
    r = randomization_check(tiny, x32, edge_map)
    assert r.method == "edge_map" and len(r.rows) == 6
    assert all(row.spearman == pytest.approx(1.0) for row in r.rows)
    assert all(row.ssim == pytest.approx(1.0) for row in r.rows)


def test_steps_layers_and_errors(tiny, x32):
    r = randomization_check(tiny, x32, edge_map, modes=("cascading",), steps=2, keep_maps=True)
    assert [row.n_randomized for row in r.rows] == [1, 3]
    assert set(r.maps) == {("cascading", "Gemm(logits)"), ("cascading", "Conv(conv)")}
    r = randomization_check(tiny, x32, edge_map, modes=("independent",), layers=["Conv(conv)"])
    assert [row.layer for row in r.rows] == ["Conv(conv)"]
    assert [row["layer"] for row in r.table()] == ["Conv(conv)"]
    with pytest.raises(UnknownNameError, match="did you mean"):
        randomization_check(tiny, x32, edge_map, layers=["Conv(con)"])
    with pytest.raises(BlackboxError, match="mode"):
        randomization_check(tiny, x32, edge_map, modes=("backwards",))


def test_gradcam_decorrelates_on_the_tiny_cnn(tiny, x32):
    r = randomization_check(tiny, x32, "gradcam", modes=("cascading",))
    assert max(row.spearman for row in r.rows) < 0.5 and abs(r.rows[-1].spearman) < 0.5
