"""Build the small ONNX models the tests use (exact attributions are known for them).

Run ``python tools/make_test_models.py`` to rewrite ``tests/models/*.onnx``; the weights come from
a fixed seed, so the files are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "tests" / "models"
OPSET, IR_VERSION = 17, 8
SIZE, CLASSES, FEATURES = 32, 5, 8


def _model(nodes, inputs, outputs, inits, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="blackbox-xai tools/make_test_models.py")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def linear(rng: np.random.Generator) -> onnx.ModelProto:
    """scores = flatten(x) @ W^T + b: every attribution has a closed form."""
    w = rng.standard_normal((3 * SIZE * SIZE, 10)).astype(np.float32) * 0.1
    b = rng.standard_normal(10).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["scores"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
                  [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")], "linear")


def tiny_cnn(rng: np.random.Generator, *, batch: int | str = "N", nhwc: bool = False,
             softmax: bool = False, dtype: type = np.float32) -> onnx.ModelProto:
    """Conv(3->8, 3x3) - BatchNorm - Relu ('features') - GlobalAveragePool - Flatten - Gemm(8->5)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = (rng.standard_normal((FEATURES, 3, 3, 3)) * 0.4).astype(dtype)
    cb = (rng.standard_normal(FEATURES) * 0.1).astype(dtype)
    scale = (1 + 0.2 * rng.standard_normal(FEATURES)).astype(dtype)
    shift = (0.3 + 0.1 * rng.standard_normal(FEATURES)).astype(dtype)
    mean = (0.1 * rng.standard_normal(FEATURES)).astype(dtype)
    var = (0.5 + rng.random(FEATURES)).astype(dtype)
    fw = rng.standard_normal((CLASSES, FEATURES)).astype(dtype)
    fb = (0.1 * rng.standard_normal(CLASSES)).astype(dtype)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w, "conv.w"), (cb, "conv.b"), (scale, "bn.scale"), (shift, "bn.shift"),
              (mean, "bn.mean"), (var, "bn.var"), (fw, "fc.w"), (fb, "fc.b")]]
    nodes = []
    first = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        first = "x_nchw"
    nodes += [
        helper.make_node("Conv", [first, "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "bn.scale", "bn.shift", "bn.mean", "bn.var"],
                         ["bn"], epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    shape = [batch, SIZE, SIZE, 3] if nhwc else [batch, 3, SIZE, SIZE]
    return _model(nodes, [helper.make_tensor_value_info("x", elem, shape)],
                  [helper.make_tensor_value_info(out, elem, [batch, CLASSES])], inits, "tiny_cnn")


def not_image(rng: np.random.Generator) -> onnx.ModelProto:
    """A tabular model: input (N, 10), not an image."""
    w = rng.standard_normal((10, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["scores"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                  [numpy_helper.from_array(w, "W")], "tabular")


def build_all() -> dict[str, onnx.ModelProto]:
    def rng() -> np.random.Generator:
        return np.random.default_rng(0)

    return {
        "linear": linear(rng()),
        "tiny_cnn": tiny_cnn(rng()),
        "tiny_cnn_batch1": tiny_cnn(rng(), batch=1),
        "tiny_cnn_nhwc": tiny_cnn(rng(), nhwc=True),
        "tiny_cnn_softmax": tiny_cnn(rng(), softmax=True),
        "tiny_cnn_fp16": tiny_cnn(rng(), dtype=np.float16),
        "not_image": not_image(rng()),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, model in build_all().items():
        onnx.save(model, OUT / f"{name}.onnx")
        print(f"wrote {OUT / name}.onnx")


if __name__ == "__main__":
    main()
