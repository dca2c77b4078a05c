"""Backward graphs of whole small networks (built with onnx.helper) against finite differences.

Every network is float32 (ONNX Runtime has no float64 Conv). The directional derivative of
f = sum(seed * logits) along a random direction v is compared with central differences,
eps = 3e-4 per element: float32 rounding of f (~1e-7 relative, summed in float64 here) gives
~2e-4 relative error after dividing by 2 eps, truncation of the smooth parts is O(eps^2), and the
few ReLU/ReLU6/MaxPool kinks crossed within +-eps add O(eps). Measured errors are <= 1e-3 of
sum|grad * v| on every network, so the tolerance is 5e-3; a wrong rule is off by O(1).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import model_path
from onnx import TensorProto, helper, numpy_helper, shape_inference

from blackbox_xai.errors import UnknownNameError
from blackbox_xai.graph.autodiff import UnsupportedOpError, backward, backward_cached

F = TensorProto.FLOAT
K = 5  # classes
EPS, RTOL = 3e-4, 5e-3


class Net:
    """A tiny graph builder: random He-initialised weights, unique tensor names."""

    def __init__(self, opset: int = 17, seed: int = 0) -> None:
        self.opset, self.nodes, self.inits = opset, [], []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def w(self, *shape: int, fan_in: int | None = None) -> str:
        fan = fan_in or int(np.prod(shape[1:])) or 1
        return self.const(
            (self.rng.standard_normal(shape) * np.sqrt(2 / fan)).astype(np.float32), "w"
        )

    def ints(self, *v: int) -> str:
        return self.const(np.array(v, np.int64), "i")

    def op(
        self, op_type: str, *inputs: str, n_out: int = 1, out: str | None = None, **kw
    ) -> str | list[str]:
        outs = [out] if out else [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=outs[0] + "_node", **kw)
        )
        return outs[0] if n_out == 1 else outs

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        group: int = 1,
        stride: int = 1,
        bias: bool = True,
    ) -> str:
        p = k // 2
        ins = [x, self.w(cout, cin // group, k, k)] + (
            [self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b")]
            if bias
            else []
        )
        return self.op(
            "Conv", *ins, pads=[p] * 4, group=group, strides=[stride] * 2, kernel_shape=[k, k]
        )

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.op(
            "BatchNormalization",
            x,
            *[
                self.const(v.astype(np.float32), "bn")
                for v in (
                    1 + 0.2 * r.standard_normal(c),
                    0.1 * r.standard_normal(c),
                    0.1 * r.standard_normal(c),
                    r.uniform(0.5, 1.5, c),
                )
            ],
        )

    def relu6(self, x: str) -> str:
        return self.op("Clip", x, self.const(np.float32(0)), self.const(np.float32(6)))

    def mean_hw(self, x: str) -> str:
        """Global average over H, W -> (N, C): GAP + Flatten, or ReduceMean (axes attr/input)."""
        if self.opset == 17:
            return self.op("Flatten", self.op("GlobalAveragePool", x))
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(2, 3), keepdims=0)
        return self.op("ReduceMean", x, axes=[2, 3], keepdims=0)

    def head(self, x: str, c: int) -> str:
        return self.op(
            "Gemm", x, self.w(K, c), self.const(np.zeros(K, np.float32)), transB=1, out="logits"
        )

    def model(self, logits: str, x_shape: list) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes,
            "net",
            [helper.make_tensor_value_info("x", F, x_shape)],
            [helper.make_tensor_value_info(logits, F, [x_shape[0], K])],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)
        onnx.checker.check_model(m, full_check=True)
        return m


# ----------------------------------------------------------------------------- networks


def residual(opset: int) -> tuple[onnx.ModelProto, str]:
    n = Net(opset)
    a = n.op("Relu", n.bn(n.conv("x", 3, 8), 8))
    b = n.bn(n.conv(a, 8, 8), 8)
    r = n.op("Relu", n.op("Add", b, a))
    return n.model(n.head(n.mean_hw(r), 8), ["N", 3, 8, 8]), r


def depthwise_separable(act: str) -> tuple[onnx.ModelProto, str]:
    n = Net()
    e = n.relu6(n.conv("x", 3, 16, k=1))
    d = n.conv(e, 16, 16, k=3, group=16, stride=2)
    d = n.op("HardSwish", d) if act == "hardswish" else n.relu6(d)
    p = n.conv(d, 16, 8, k=1)
    return n.model(n.head(n.mean_hw(p), 8), ["N", 3, 9, 9]), d


def squeeze_excitation(gate: str, via: str) -> tuple[onnx.ModelProto, str]:
    n = Net()
    f = n.op("Relu", n.conv("x", 3, 8))
    if via == "conv":
        s = n.conv(n.op("Relu", n.conv(n.op("GlobalAveragePool", f), 8, 4, k=1)), 4, 8, k=1)
    else:
        s = n.op("Flatten", n.op("GlobalAveragePool", f))
        s = n.op("Gemm", n.op("Relu", n.op("Gemm", s, n.w(4, 8), transB=1)), n.w(8, 4), transB=1)
        s = n.op("Unsqueeze", s, n.ints(2, 3))
    g = n.op(gate, s) if gate == "Sigmoid" else n.op(gate, s, alpha=1 / 6, beta=0.5)
    y = n.op("Mul", f, g)
    return n.model(n.head(n.mean_hw(y), 8), ["N", 3, 6, 6]), f


def transformer(opset: int) -> tuple[onnx.ModelProto, str]:
    """cls token + pre-norm attention (2 heads) + Erf-GELU MLP, shapes computed from Shape ops."""
    n, t, d, h = Net(opset), 4, 8, 2
    batch = n.op("Slice", n.op("Shape", "x"), n.ints(0), n.ints(1))
    cls = n.op(
        "Expand",
        n.const(n.rng.standard_normal((1, 1, d)).astype(np.float32), "cls"),
        n.op("Concat", batch, n.ints(1, d), axis=0),
    )
    x = n.op("Add", n.op("Concat", cls, "x", axis=1), n.w(1, t + 1, d))
    ln = lambda v: n.op(
        "LayerNormalization",
        v,
        n.const((1 + 0.1 * n.rng.standard_normal(d)).astype(np.float32)),
        n.w(d),
        axis=-1,
    )
    qkv = n.op("MatMul", ln(x), n.w(d, 3 * d, fan_in=d))
    if opset >= 18:
        q, k, v = (
            n.op("Slice", qkv, n.ints(i * d), n.ints((i + 1) * d), n.ints(-1)) for i in range(3)
        )
    else:
        q, k, v = n.op("Split", qkv, n.ints(d, d, d), axis=-1, n_out=3)
    heads = n.op("Concat", batch, n.ints(-1, h, d // h), axis=0)
    split = lambda u, perm: n.op("Transpose", n.op("Reshape", u, heads), perm=perm)
    att = n.op(
        "Softmax",
        n.op(
            "Div",
            n.op("MatMul", split(q, [0, 2, 1, 3]), split(k, [0, 2, 3, 1])),
            n.const(np.float32(np.sqrt(d // h))),
        ),
        axis=-1,
    )
    o = n.op("Transpose", n.op("MatMul", att, split(v, [0, 2, 1, 3])), perm=[0, 2, 1, 3])
    o = n.op("Reshape", o, n.op("Concat", batch, n.ints(-1, d), axis=0))
    r1 = n.op("Add", x, n.op("MatMul", o, n.w(d, d)))
    u = n.op("Add", n.op("MatMul", ln(r1), n.w(d, 2 * d, fan_in=d)), n.w(2 * d))
    gelu = n.op(
        "Mul",
        n.op("Mul", u, n.const(np.float32(0.5))),
        n.op(
            "Add",
            n.op("Erf", n.op("Div", u, n.const(np.float32(np.sqrt(2))))),
            n.const(np.float32(1)),
        ),
    )
    r2 = n.op("Add", r1, n.op("MatMul", gelu, n.w(2 * d, d, fan_in=2 * d)))
    pooled = n.op("Gather", ln(r2), n.const(np.array(0, np.int64)), axis=1)
    return n.model(n.head(pooled, d), ["N", t, d]), r1


def vgg(opset: int) -> tuple[onnx.ModelProto, str]:
    n = Net(opset)
    a = n.op("Relu", n.conv(n.op("Relu", n.conv("x", 3, 8)), 8, 8))
    a = n.op("MaxPool", a, kernel_shape=[2, 2], strides=[2, 2])
    a = n.op("Relu", n.conv(a, 8, 16))
    a = n.op("MaxPool", a, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    f = n.op("Relu", n.op("Gemm", n.op("Flatten", a), n.w(12, 64), transB=1))
    return n.model(n.op("Gemm", f, n.w(K, 12), transB=1, out="logits"), ["N", 3, 8, 8]), a


def dense_inception() -> tuple[onnx.ModelProto, str]:
    n = Net()
    y0 = n.conv("x", 3, 8)
    y1 = n.conv(n.op("Relu", n.bn(y0, 8)), 8, 4)
    cat = n.op("Concat", y0, y1, axis=1)
    t = n.op(
        "AveragePool",
        n.conv(n.op("Relu", n.bn(cat, 12)), 12, 8, k=1),
        kernel_shape=[2, 2],
        strides=[2, 2],
    )
    b1, b2 = n.conv(t, 8, 4, k=1), n.conv(t, 8, 4, k=3)
    b3 = n.op("MaxPool", t, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    inc = n.op("Relu", n.op("Concat", b1, b2, b3, axis=1))
    return n.model(n.head(n.mean_hw(inc), 16), ["N", 3, 8, 8]), cat


def channel_shuffle() -> tuple[onnx.ModelProto, str]:
    n = Net()
    a = n.op("Relu", n.conv(n.op("Relu", n.conv("x", 3, 8)), 8, 8, group=2))
    shp = n.op("Shape", a)
    five = n.op(
        "Concat",
        n.op("Slice", shp, n.ints(0), n.ints(1)),
        n.ints(2, 4),
        n.op("Slice", shp, n.ints(2), n.ints(4)),
        axis=0,
    )
    s = n.op("Reshape", n.op("Transpose", n.op("Reshape", a, five), perm=[0, 2, 1, 3, 4]), shp)
    left, right = n.op("Split", s, n.ints(4, 4), axis=1, n_out=2)
    out = n.op("Concat", left, n.op("Relu", n.conv(right, 4, 4, group=4)), axis=1)
    return n.model(n.head(n.mean_hw(out), 8), ["N", 3, 6, 6]), s


NETWORKS = {
    "residual_opset17": lambda: residual(17),
    "residual_opset11_reducemean_attr": lambda: residual(11),
    "residual_opset18_reducemean_input": lambda: residual(18),
    "residual_opset21": lambda: residual(21),
    "depthwise_separable_relu6": lambda: depthwise_separable("relu6"),
    "depthwise_separable_hardswish": lambda: depthwise_separable("hardswish"),
    "se_conv_sigmoid": lambda: squeeze_excitation("Sigmoid", "conv"),
    "se_gemm_hardsigmoid": lambda: squeeze_excitation("HardSigmoid", "gemm"),
    "transformer_opset17_split": lambda: transformer(17),
    "transformer_opset18_slice": lambda: transformer(18),
    "vgg_maxpool_opset11": lambda: vgg(11),
    "vgg_maxpool_opset18": lambda: vgg(18),
    "dense_and_inception_concat": dense_inception,
    "channel_shuffle": channel_shuffle,
}


# ----------------------------------------------------------------------------- finite differences


def session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    """A 1-thread CPU session; ``optimize=False`` disables graph rewrites. ORT's fusions and
    layout choices depend on which nodes read a tensor, so only unoptimised sessions are
    guaranteed to compute the forward part of a backward graph with the very same kernels."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def head_model(model: onnx.ModelProto, tensor: str) -> tuple[onnx.ModelProto, list[str]]:
    """The subgraph from ``tensor`` to the first output; other tensors it reads become inputs."""
    typed = shape_inference.infer_shapes(model)
    vis = {v.name: v for v in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    reach, nodes = {tensor}, []
    for nd in model.graph.node:
        if any(i in reach for i in nd.input):
            nodes.append(nd)
            reach.update(nd.output)
    made, used = {o for nd in nodes for o in nd.output}, {i for nd in nodes for i in nd.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    extra = sorted(used - made - {t.name for t in inits} - {tensor, ""})
    g = helper.make_graph(
        nodes, "head", [vis[tensor]] + [vis[e] for e in extra], [model.graph.output[0]], inits
    )
    return helper.make_model(
        g, opset_imports=model.opset_import, ir_version=model.ir_version
    ), extra


def forward_values(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """Values of intermediate tensors (exposed as extra outputs, unoptimised session)."""
    typed = shape_inference.infer_shapes(model)
    vis = {v.name: v for v in typed.graph.value_info}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(vis[n] for n in names if n not in {o.name for o in m.graph.output})
    return session(m, optimize=False).run(names, {m.graph.input[0].name: x})


def check_directional(
    model: onnx.ModelProto,
    x: np.ndarray,
    seed: np.ndarray,
    wrt: str,
    grad: np.ndarray,
    eps: float = EPS,
    rtol: float = RTOL,
) -> None:
    """<grad, v> vs <seed, f(t + eps v) - f(t - eps v)> / (2 eps) for a random direction v."""
    v = np.random.default_rng(7).standard_normal(grad.shape)
    inp = model.graph.input[0].name
    if wrt == inp:
        run, t = (lambda val: session(model).run(None, {inp: val})[0]), x
    else:
        head, extra = head_model(model, wrt)
        t, *vals = forward_values(model, x, [wrt, *extra])
        feeds = dict(zip(extra, vals))
        sess = session(head)
        run = lambda val: sess.run(None, {wrt: val, **feeds})[0]
    f = lambda val: float(np.sum(seed.astype(np.float64) * run(val.astype(t.dtype))))
    fd = (f(t + eps * v) - f(t - eps * v)) / (2 * eps)
    an = float(np.sum(grad.astype(np.float64) * v))
    assert abs(fd - an) <= rtol * np.sum(np.abs(grad * v)), (wrt, fd, an)


def x_for(model: onnx.ModelProto, n: int, seed: int = 0) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_gradients_match_finite_differences(name: str) -> None:
    model, inner = NETWORKS[name]()
    g = backward(model, ["x", inner])
    assert [o.name for o in g.graph.output] == ["logits", "x_grad", f"{inner}_grad", inner]
    x = x_for(model, 3)
    seed = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)  # weighted targets
    scores, gx, ginner, act = session(g).run(None, {"x": x, "seed": seed})
    plain = session(g, optimize=False).run(["logits", inner], {"x": x, "seed": seed})
    np.testing.assert_array_equal(plain[0], session(model, optimize=False).run(None, {"x": x})[0])
    np.testing.assert_array_equal(plain[1], forward_values(model, x, [inner])[0])
    np.testing.assert_allclose(
        scores, plain[0], rtol=1e-5, atol=1e-6
    )  # optimised: same up to rounding
    assert gx.shape == x.shape and ginner.shape == act.shape
    assert np.abs(gx).max() > 0 and np.abs(ginner).max() > 0
    check_directional(model, x, seed, "x", gx)
    check_directional(model, x, seed, inner, ginner)
    # the batch axis is dynamic and rows are independent: batch 1 gives the first row
    one = session(g).run(None, {"x": x[:1], "seed": seed[:1]})
    np.testing.assert_allclose(one[1], gx[:1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(one[2], ginner[:1], rtol=1e-4, atol=1e-6)


def test_seed_one_hot_and_weighted_targets() -> None:
    model, _ = residual(17)
    sess = session(backward(model, ["x"]))
    x = x_for(model, 2)
    eye = np.eye(K, dtype=np.float32)
    per_class = [
        sess.run(None, {"x": x, "seed": np.repeat(eye[c : c + 1], 2, 0)})[1] for c in range(K)
    ]
    weights = np.array([0.5, -2.0, 0.0, 1.5, 3.0], np.float32)
    mixed = sess.run(None, {"x": x, "seed": np.tile(weights, (2, 1))})[1]
    np.testing.assert_allclose(
        mixed, np.tensordot(weights, per_class, axes=1), rtol=1e-4, atol=1e-6
    )
    check_directional(model, x, np.repeat(eye[3:4], 2, 0), "x", per_class[3])


def test_fp16_model_differentiates_in_float32() -> None:
    m16, m32 = onnx.load(model_path("tiny_cnn_fp16")), onnx.load(model_path("tiny_cnn"))
    g16 = backward(m16, ["x"])
    seed_in = next(i for i in g16.graph.input if i.name == "seed")
    grad_out = next(o for o in g16.graph.output if o.name == "x_grad")
    assert seed_in.type.tensor_type.elem_type == F and grad_out.type.tensor_type.elem_type == F
    x = x_for(m32, 2)
    seed = np.random.default_rng(2).standard_normal((2, K)).astype(np.float32)
    s16 = session(g16)
    scores16, gx16 = s16.run(None, {"x": x.astype(np.float16), "seed": seed})
    assert gx16.dtype == np.float32
    # ORT's CPU runs most fp16 ops in fp32 behind inserted Casts and drops Cast pairs between
    # them, so where the backward reads an fp16 activation the forward rounds it to fp16 once
    # more: the scores agree to fp16 precision (2^-10 relative), not bit for bit.
    ref16 = session(m16).run(None, {"x": x.astype(np.float16)})[0].astype(np.float32)
    np.testing.assert_allclose(scores16, ref16, rtol=0, atol=4 * 2**-10 * np.abs(ref16).max())
    gx32 = session(backward(m32, ["x"])).run(None, {"x": x, "seed": seed})[1]
    # fp16 weights and activations carry ~3 digits, and a few ReLU masks flip where an activation
    # is within fp16 rounding of 0: the gradients agree in norm to a few percent (measured 1e-2)
    assert np.linalg.norm(gx16 - gx32) < 5e-2 * np.linalg.norm(gx32)
    # no underflow: a 1e-6 seed gives 1e-6 times the gradient (fp16 would flush most of it to 0)
    tiny = s16.run(None, {"x": x.astype(np.float16), "seed": seed * 1e-6})[1]
    np.testing.assert_allclose(tiny, gx16 * 1e-6, rtol=1e-3, atol=1e-12)


def test_fixed_batch_model_keeps_its_batch() -> None:
    model = onnx.load(model_path("tiny_cnn_batch1"))
    g = backward(model, ["x"])
    seed_in = next(i for i in g.graph.input if i.name == "seed")
    assert [d.dim_value for d in seed_in.type.tensor_type.shape.dim] == [1, K]
    x = x_for(model, 1)
    seed = np.eye(K, dtype=np.float32)[1:2]
    check_directional(model, x, seed, "x", session(g).run(None, {"x": x, "seed": seed})[1])


@pytest.mark.parametrize("name", ["tiny_cnn_nhwc", "tiny_cnn_softmax"])
def test_shipped_test_models(name: str) -> None:
    model = onnx.load(model_path(name))
    out = model.graph.output[0].name
    g = backward(model, ["x"])
    x = x_for(model, 2)
    seed = np.random.default_rng(3).standard_normal((2, K)).astype(np.float32)
    scores, gx = session(g).run([out, "x_grad"], {"x": x, "seed": seed})
    np.testing.assert_array_equal(scores, session(model).run(None, {"x": x})[0])
    check_directional(model, x, seed, "x", gx)


def test_symbolic_batch_of_seed_matches_scores() -> None:
    g = backward(residual(17)[0], ["x"])
    seed_in = next(i for i in g.graph.input if i.name == "seed")
    assert [d.dim_param or d.dim_value for d in seed_in.type.tensor_type.shape.dim] == ["N", K]
    grad = next(o for o in g.graph.output if o.name == "x_grad")
    assert [d.dim_param or d.dim_value for d in grad.type.tensor_type.shape.dim] == ["N", 3, 8, 8]


def _with_op_on_path(op: str) -> onnx.ModelProto:
    n = Net(17)
    f = n.op("Relu", n.conv("x", 3, 8))
    if op == "Einsum":
        p = n.op("Einsum", n.mean_hw(f), equation="nc->nc")
    else:
        p = n.op("TopK", n.mean_hw(f), n.ints(8), n_out=2)[0]
    return n.model(n.head(p, 8), ["N", 3, 6, 6])


@pytest.mark.parametrize("op", ["Einsum", "TopK"])
def test_unsupported_op_on_path_names_op_node_and_alternatives(op: str, tmp_path) -> None:
    model = _with_op_on_path(op)
    node = next(nd for nd in model.graph.node if nd.op_type == op)
    with pytest.raises(UnsupportedOpError) as err:
        backward(model, ["x"])
    msg = str(err.value)
    assert op in msg and node.name in msg
    assert isinstance(err.value, ValueError)
    # explain() adds the methods that still work, from the registry
    from blackbox_xai import explain, load_model

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    loaded = load_model(path)
    x = np.zeros((loaded.input.channels, *loaded.example_chw()[1:]), np.float32)
    with pytest.raises(UnsupportedOpError) as err:
        explain(loaded, x, "saliency")
    msg = str(err.value)
    assert op in msg and node.name in msg
    assert all(m in msg for m in ("occlusion", "scorecam", "ablationcam", "eigencam", "--grad fd"))


def test_unsupported_op_behind_the_wrt_tensor_is_not_needed() -> None:
    """d logits / d (tensor after the TopK) needs no rule for TopK."""
    model = _with_op_on_path("TopK")
    after = next(nd for nd in model.graph.node if nd.op_type == "TopK").output[0]
    g = backward(model, [after])
    x = x_for(model, 2)
    seed = np.eye(K, dtype=np.float32)[[0, 2]]
    grad = session(g).run([f"{after}_grad"], {"x": x, "seed": seed})[0]
    check_directional(model, x, seed, after, grad)


def test_op_off_the_path_is_ignored() -> None:
    """A side output computed with TopK (no rule) does not block d logits / dx."""
    n = Net(17)
    f = n.op("Relu", n.conv("x", 3, 8))
    pooled = n.mean_hw(f)
    top = n.op("TopK", pooled, n.ints(2), n_out=2)[0]
    m = n.model(n.head(pooled, 8), ["N", 3, 6, 6])
    m.graph.output.append(helper.make_tensor_value_info(top, F, ["N", 2]))
    g = backward(m, ["x"], output="logits")
    x = x_for(m, 2)
    seed = np.ones((2, K), np.float32)
    outs = session(g).run(None, {"x": x, "seed": seed})
    assert [o.name for o in g.graph.output] == ["logits", top, "x_grad"]
    check_directional(m, x, seed, "x", outs[2])


def test_unknown_tensor_name_suggests_close_matches() -> None:
    model, inner = residual(17)
    with pytest.raises(UnknownNameError, match=f"did you mean: .*{inner}"):
        backward(model, [inner + "x"])
    with pytest.raises(UnknownNameError, match="did you mean: logits"):
        backward(model, ["x"], output="logit")


def test_wrt_the_scores_do_not_depend_on_is_an_error() -> None:
    model, _ = residual(17)
    model.graph.node.append(helper.make_node("Neg", ["x"], ["side"]))
    model.graph.output.append(helper.make_tensor_value_info("side", F, ["N", 3, 8, 8]))
    with pytest.raises(ValueError, match="do not depend"):
        backward(model, ["side"], output="logits")


def test_weights_get_no_gradient() -> None:
    model, _ = residual(17)
    conv = next(nd for nd in model.graph.node if nd.op_type == "Conv")
    with pytest.raises(UnsupportedOpError, match="with respect to input 1"):
        backward(model, [conv.input[1]])


def test_score_output_choice() -> None:
    """Default: the only 2-D output; several 2-D outputs need output=."""
    model, feat = residual(17)
    model.graph.output.append(
        next(v for v in shape_inference.infer_shapes(model).graph.value_info if v.name == feat)
    )
    assert [o.name for o in backward(model, ["x"]).graph.output][:3] == ["logits", feat, "x_grad"]
    model.graph.node.append(helper.make_node("Neg", ["logits"], ["minus"]))
    model.graph.output.append(helper.make_tensor_value_info("minus", F, ["N", K]))
    with pytest.raises(ValueError, match="several outputs"):
        backward(model, ["x"])
    x, seed = x_for(model, 1), np.ones((1, K), np.float32)
    plus = session(backward(model, ["x"], output="logits")).run(["x_grad"], {"x": x, "seed": seed})
    minus = session(backward(model, ["x"], output="minus")).run(["x_grad"], {"x": x, "seed": seed})
    np.testing.assert_allclose(minus[0], -plus[0], rtol=1e-6)


def test_input_model_untouched_versions_kept() -> None:
    model, inner = vgg(11)
    model.ir_version = 7
    before = model.SerializeToString()
    g = backward(model, ["x", inner])
    assert model.SerializeToString() == before
    assert g.ir_version == 7
    assert [(o.domain, o.version) for o in g.opset_import] == [("", 11)]
    onnx.checker.check_model(g, full_check=True)


def test_name_collisions_are_refused() -> None:
    model, _ = residual(17)
    with pytest.raises(ValueError, match="already used"):
        backward(model, ["x"], seed_name="x")
    with pytest.raises(ValueError, match="already used"):
        backward(model, ["x"], grad_suffix="")


def test_backward_cached_memory_and_disk(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blackbox_xai.graph import autodiff

    model, inner = residual(17)
    calls = []
    real = autodiff.backward
    monkeypatch.setattr(autodiff, "backward", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(autodiff, "_memory_cache", type(autodiff._memory_cache)())
    first = backward_cached(model, ["x"], cache_dir=tmp_path)
    again = backward_cached(model, ["x"], cache_dir=tmp_path)
    assert len(calls) == 1 and first.SerializeToString() == again.SerializeToString()
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    autodiff._memory_cache.clear()
    from_disk = backward_cached(model.SerializeToString(), ["x"], cache_dir=tmp_path)
    assert len(calls) == 1 and from_disk.SerializeToString() == first.SerializeToString()
    backward_cached(model, ["x", inner], cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.onnx"))) == 2


def test_an_if_whose_branch_reads_an_outer_tensor_is_named_as_unsupported():
    """The If node lists only its condition as input; its branches read ``h`` from the outer
    scope. Path finding must see that and name the op, not claim the scores do not depend on x."""
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Mul", ["x", "two"], ["h"]),
             helper.make_node("If", ["cond"], ["scores"], then_branch=then_graph,
                              else_branch=else_graph)]
    graph = helper.make_graph(
        nodes, "if_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(True), "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="cannot differentiate If node"):
        backward(model, ["x"])
