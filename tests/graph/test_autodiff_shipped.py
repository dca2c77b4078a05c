"""The backward graph of the shipped EfficientNet-Lite0 against finite differences.

The network (Conv, Clip = ReLU6, Add, GlobalAveragePool, Gemm) is piecewise linear: plain
central differences along a direction cross thousands of ReLU6 kinks for any eps float32 can
resolve, so their error against the exact directional derivative is ~1e-3 of sum|grad * v| and
10% or more of the derivative itself. The exact check therefore freezes every Clip at the
linear piece that contains x (Clip(z) -> z * mask + 6 * [z >= 6], masks read at x): that model
agrees with the network at x, is affine, and has the same gradient at x, so central
differences with eps = 1 are exact up to float32 rounding (measured <= 6e-5 relative).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, SHIPPED
from onnx import helper, numpy_helper, shape_inference
from PIL import Image

from blackbox_xai.graph.autodiff import backward


def session(model: onnx.ModelProto | str, optimize: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(SHIPPED))


@pytest.fixture(scope="module")
def cam_layer(model: onnx.ModelProto) -> str:
    """The output of the Clip feeding GlobalAveragePool, found by walking the graph."""
    producer = {o: n for n in model.graph.node for o in n.output}
    gap = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    clip = producer[gap.input[0]]
    assert clip.op_type == "Clip"
    return clip.output[0]


@pytest.fixture(scope="module")
def grad_session(model: onnx.ModelProto, cam_layer: str) -> ort.InferenceSession:
    return session(backward(model, ["input", cam_layer]))


@pytest.fixture(scope="module")
def forward(model: onnx.ModelProto) -> ort.InferenceSession:
    return session(str(SHIPPED))


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    """examples/cat.jpg preprocessed with the sidecar's recipe, (1, 3, 224, 224)."""
    pre = json.loads(SHIPPED.with_suffix(".onnx.json").read_text())["preprocess"]
    img = Image.open(EXAMPLES / "cat.jpg").convert("RGB")
    s = pre["resize"] / min(img.size)
    img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
    left, top = (img.width - pre["crop"]) // 2, (img.height - pre["crop"]) // 2
    img = img.crop((left, top, left + pre["crop"], top + pre["crop"]))
    a = (np.asarray(img, np.float32) / pre["scale"] - pre["mean"]) / pre["std"]
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32)


def one_hot(c: int, n: int = 1) -> np.ndarray:
    seed = np.zeros((n, 1000), np.float32)
    seed[:, c] = 1
    return seed


def frozen_clips(model: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """The model with every Clip replaced by its linear piece at ``x``: z * mask + offset."""
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    typed = {v.name: v for v in shape_inference.infer_shapes(model).graph.value_info}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(typed[n.input[0]] for n in clips)
    zs = session(probe, optimize=False).run([n.input[0] for n in clips], {"input": x})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for n in out.graph.node:
        if n.op_type != "Clip":
            nodes.append(n)
            continue
        z = zs[clips.index(next(c for c in clips if c.name == n.name))]
        lo, hi = (
            float(numpy_helper.to_array(t))
            for t in model.graph.initializer
            if t.name in n.input[1:3]
        )
        mask = ((z > lo) & (z < hi)).astype(np.float32)
        offset = np.where(z >= hi, hi, np.where(z <= lo, lo, 0)).astype(np.float32)
        out.graph.initializer.extend(
            [
                numpy_helper.from_array(mask, n.name + "/mask"),
                numpy_helper.from_array(offset, n.name + "/offset"),
            ]
        )
        nodes += [
            helper.make_node("Mul", [n.input[0], n.name + "/mask"], [n.name + "/zm"]),
            helper.make_node("Add", [n.name + "/zm", n.name + "/offset"], [n.output[0]]),
        ]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def test_input_gradient_is_exact_on_the_linear_piece(model, grad_session, forward, x) -> None:
    c = int(forward.run(None, {"input": x})[0].argmax())
    gx = grad_session.run(["input_grad"], {"input": x, "seed": one_hot(c)})[0]
    frozen = session(frozen_clips(model, x))
    f = lambda v: float(frozen.run(None, {"input": v})[0][0, c])
    assert f(x) == pytest.approx(float(forward.run(None, {"input": x})[0][0, c]), rel=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(x.shape).astype(np.float32)
        fd = (f(x + v) - f(x - v)) / 2  # eps = 1: the frozen model is affine
        an = float(np.sum(gx.astype(np.float64) * v))
        assert fd == pytest.approx(an, rel=1e-3, abs=1e-4 * float(np.sum(np.abs(gx * v))))


def test_input_gradient_vs_plain_finite_differences(grad_session, forward, x) -> None:
    """Sanity check on the real network along smooth directions (8x8 noise upsampled): the
    kink-crossing error is ~1e-3 of sum|grad * v| (see the module docstring); 1e-2 is allowed."""
    c = int(forward.run(None, {"input": x})[0].argmax())
    gx = grad_session.run(["input_grad"], {"input": x, "seed": one_hot(c)})[0]
    f = lambda v: float(forward.run(None, {"input": v})[0][0, c])
    rng = np.random.default_rng(1)
    for _ in range(2):
        low = rng.standard_normal((3, 8, 8)).astype(np.float32)
        v = np.stack(
            [np.asarray(Image.fromarray(ch).resize((224, 224), Image.BILINEAR)) for ch in low]
        )[None]
        eps = 1e-3
        fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
        an = float(np.sum(gx.astype(np.float64) * v))
        assert abs(fd - an) <= 1e-2 * np.sum(np.abs(gx * v)), (fd, an)


def test_cam_layer_gradient_and_activation(model, grad_session, forward, cam_layer, x) -> None:
    """After the CAM layer the head is GAP -> Flatten -> Gemm, so d logit_c / dA = W_c / (h w)."""
    c = int(forward.run(None, {"input": x})[0].argmax())
    logits, grad, act = grad_session.run(
        ["logits", f"{cam_layer}_grad", cam_layer], {"input": x, "seed": one_hot(c)}
    )
    np.testing.assert_array_equal(logits, forward.run(None, {"input": x})[0])
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == gemm.input[1])
    h, wd = act.shape[2:]
    np.testing.assert_allclose(
        grad[0],
        np.broadcast_to(w[c][:, None, None] / (h * wd), act.shape[1:]),
        rtol=1e-6,
        atol=1e-9,
    )
    # central differences through the real head, which is linear in A: eps = 1 is exact
    producer = {o: n for n in model.graph.node for o in n.output}
    head_nodes = [
        n for n in model.graph.node if n.op_type in ("GlobalAveragePool", "Flatten", "Gemm")
    ]
    assert producer[head_nodes[0].input[0]].output[0] == cam_layer
    head = helper.make_model(
        helper.make_graph(
            head_nodes,
            "head",
            [helper.make_tensor_value_info(cam_layer, onnx.TensorProto.FLOAT, act.shape)],
            list(model.graph.output),
            [t for t in model.graph.initializer if t.name in gemm.input],
        ),
        opset_imports=model.opset_import,
        ir_version=model.ir_version,
    )
    hs = session(head)
    v = np.random.default_rng(2).standard_normal(act.shape).astype(np.float32)
    fd = (
        hs.run(None, {cam_layer: act + v})[0][0, c] - hs.run(None, {cam_layer: act - v})[0][0, c]
    ) / 2
    assert float(fd) == pytest.approx(float(np.sum(grad * v)), rel=1e-4, abs=1e-6)


def test_batch_axis_stays_dynamic(grad_session, x) -> None:
    x2 = np.concatenate([x, x[:, :, ::-1]])
    seed = np.zeros((2, 1000), np.float32)
    seed[0, 281], seed[1, 285] = 1.0, -0.5
    both = grad_session.run(["input_grad"], {"input": x2, "seed": seed})[0]
    second = grad_session.run(["input_grad"], {"input": x2[1:], "seed": seed[1:]})[0]
    np.testing.assert_allclose(both[1:], second, rtol=1e-4, atol=1e-7 * np.abs(second).max())
