"""Shape inference sets the large float weights aside (graph/io.py): the inferred model must be
the one inference gives with the weights in, byte for byte, and the input left as it was."""

from __future__ import annotations

import onnx
import pytest
from helpers import SHIPPED, TEST_MODELS

from blackbox_xai.graph.io import infer_shapes

MODELS = [SHIPPED, TEST_MODELS / "transformers" / "swin_tiny.onnx",
          TEST_MODELS / "transformers" / "vit_tiny_dynamo.onnx"]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_inference_without_the_weights_gives_what_inference_with_them_gives(path):
    model = onnx.load(path)
    before = model.SerializeToString()
    full = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    ours = infer_shapes(model)
    assert model.SerializeToString() == before
    assert len(ours.graph.value_info) > 0
    assert ours.SerializeToString() == full.SerializeToString()
