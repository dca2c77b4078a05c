"""Every vector-Jacobian rule against central finite differences through ONNX Runtime.

Each case is a one- or two-op model. The gradient of f(x) = sum(seed * y) from the backward
graph is compared with central differences of the forward model: the directional derivative
along a random direction, and for small tensors every component.

Tolerances (|fd - grad| <= rtol * scale, scale = sum|grad * v| or max|grad|):
* float64 models, eps = 1e-6: truncation O(eps^2) ~ 1e-12 and rounding ~ 1e-16 / eps ~ 1e-10,
  so rtol = 1e-6 leaves a wide margin while any wrong term (a missing factor, a transposed
  kernel, a lost broadcast sum) is off by O(1).
* float32 linear ops (Conv, ConvTranspose, pools, Resize), eps = 1: exactly linear, so central
  differences are exact up to float32 rounding of sums of a few hundred terms (~1e-6): rtol 1e-4.
* float32 nonlinear ops (ORT has no float64 kernel for them: Erf, Gelu, HardSigmoid, HardSwish,
  LeakyRelu, PRelu), eps = 1e-2: truncation eps^2 |f'''| / 6 ~ 2e-5 for the smooth ones (exact
  for the piecewise linear/quadratic ones, whose inputs are kept 0.05 away from the kinks) and
  rounding ~ 6e-8 / eps ~ 6e-6 relative: rtol 2e-3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blackbox_xai.graph.autodiff import backward
from blackbox_xai.graph.vjp_rules import RULES, UnsupportedOpError
from blackbox_xai.runtime import evaluate

D, F, I64 = TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT64
TOL = {"f64": (1e-6, 1e-6), "f32lin": (1.0, 1e-4), "f32": (1e-2, 2e-3)}  # kind: (eps, rtol)
FULL_CHECK_MAX = 120  # elementwise check for tensors up to this size


@dataclass
class Case:
    """A one- or two-op model: nodes, graph inputs (values), constants, opset, wrt names."""

    nodes: list[onnx.NodeProto]
    inputs: dict[str, np.ndarray]
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    wrt: list[str] | None = None
    kind: str = "f64"
    symbolic: dict[str, list[int]] = field(default_factory=dict)  # input -> axes made symbolic


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def rand(
    *shape: int, dtype=np.float64, lo: float | None = None, away: tuple[float, ...] = ()
) -> np.ndarray:
    """Normal values (or uniform in [lo, lo + 2]) kept 0.05 away from the given kinks."""
    r = rng() if not shape else np.random.default_rng(sum(shape) * 7 + len(shape))
    x = r.uniform(lo, lo + 2, shape) if lo is not None else r.standard_normal(shape)
    for k in away:
        close = np.abs(x - k) < 0.05
        x[close] = k + np.where(x[close] >= k, 0.05, -0.05) * 2
    return x.astype(dtype)


def f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def node(op: str, inputs: list[str], outputs: list[str] | None = None, **kw) -> onnx.NodeProto:
    outputs = outputs or ["y"]
    return helper.make_node(op, inputs, outputs, name=f"{op}_{outputs[0]}", **kw)


_NP2ONNX = {
    np.dtype(np.float64): D,
    np.dtype(np.float32): F,
    np.dtype(np.int64): I64,
    np.dtype(bool): TensorProto.BOOL,
}


def build(case: Case) -> onnx.ModelProto:
    """The case's model with exact output shapes (read from one ORT run), checker-clean."""
    ins = []
    for k, v in case.inputs.items():
        dims = [f"d{k}{i}" if i in case.symbolic.get(k, []) else d for i, d in enumerate(v.shape)]
        ins.append(helper.make_tensor_value_info(k, _NP2ONNX[v.dtype], dims))
    out = case.nodes[-1].output[0]
    inits = [numpy_helper.from_array(v, k) for k, v in case.consts.items()]
    proto = lambda outs: helper.make_model(
        helper.make_graph(case.nodes, "case", ins, outs, inits),
        opset_imports=[helper.make_opsetid("", case.opset)],
        ir_version=8,
    )
    probe = proto([onnx.ValueInfoProto(name=out)])
    y = _session(probe).run(None, case.inputs)[0]
    model = proto([helper.make_tensor_value_info(out, _NP2ONNX[y.dtype], y.shape)])
    onnx.checker.check_model(model)
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A one-thread CPU session without ORT's fusions (LayerNorm, Gelu...: they apply to the
    forward model but not to the backward graph, which reads the intermediate tensors, so the
    two would compute the forward output with different roundings)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def check_case(case: Case) -> None:
    """Backward graph vs central differences (directional, and elementwise when small)."""
    model = build(case)
    wrt = case.wrt or [next(iter(case.inputs))]
    grad_model = backward(model, wrt, evaluate=evaluate)  # the runtime that runs the FD
    fwd, bwd = _session(model), _session(grad_model)
    y = fwd.run(None, case.inputs)[0]
    seed = rng().standard_normal(y.shape).astype(y.dtype)
    outs = bwd.run(None, {**case.inputs, "seed": seed})
    np.testing.assert_array_equal(outs[0], y)  # the original output is untouched
    eps, rtol = TOL[case.kind]

    def f(name: str, value: np.ndarray) -> float:
        out = fwd.run(None, {**case.inputs, name: value.astype(case.inputs[name].dtype)})[0]
        return float(np.sum(seed.astype(np.float64) * out))

    for name, g in zip(wrt, outs[1:]):
        x = case.inputs[name].astype(np.float64)
        assert g.shape == x.shape, (name, g.shape, x.shape)
        g = g.astype(np.float64)
        v = np.random.default_rng(1).standard_normal(x.shape)
        fd = (f(name, x + eps * v) - f(name, x - eps * v)) / (2 * eps)
        an = float(np.sum(g * v))
        assert abs(fd - an) <= rtol * max(np.sum(np.abs(g * v)), 1e-12), (name, fd, an)
        if x.size <= FULL_CHECK_MAX:
            num = np.zeros(x.size)
            for i in range(x.size):
                e = np.zeros(x.size)
                e[i] = eps
                e = e.reshape(x.shape)
                num[i] = (f(name, x + e) - f(name, x - e)) / (2 * eps)
            scale = max(np.abs(g).max(), 1e-12)
            np.testing.assert_allclose(
                num.reshape(x.shape), g, rtol=0, atol=rtol * scale, err_msg=name
            )


# ----------------------------------------------------------------------------- the cases


def conv_cases() -> dict[str, Case]:
    w = lambda *s: f32(rand(*s))
    x = lambda *s: f32(rand(*s))
    c = {"kind": "f32lin"}
    return {
        "conv_3x3_pad1": Case(
            [node("Conv", ["x", "W"], pads=[1, 1, 1, 1])],
            {"x": x(2, 3, 6, 6)},
            {"W": w(4, 3, 3, 3)},
            **c,
        ),
        "conv_bias_1x1": Case(
            [node("Conv", ["x", "W", "B"])],
            {"x": x(2, 3, 4, 5)},
            {"W": w(5, 3, 1, 1), "B": w(5)},
            **c,
        ),
        "conv_stride2_odd_asym_pads": Case(
            [node("Conv", ["x", "W"], strides=[2, 2], pads=[0, 1, 1, 0])],
            {"x": x(1, 2, 5, 7)},
            {"W": w(3, 2, 3, 3)},
            **c,
        ),
        "conv_dilation2": Case(
            [node("Conv", ["x", "W"], dilations=[2, 2], pads=[2, 1, 2, 1])],
            {"x": x(1, 2, 7, 6)},
            {"W": w(2, 2, 3, 3)},
            **c,
        ),
        "conv_groups2_stride2": Case(
            [node("Conv", ["x", "W"], group=2, strides=[2, 1], pads=[1, 1, 1, 1])],
            {"x": x(1, 4, 5, 5)},
            {"W": w(6, 2, 3, 3)},
            **c,
        ),
        "conv_depthwise_5x5_s2": Case(
            [node("Conv", ["x", "W"], group=4, strides=[2, 2], pads=[1, 1, 2, 2])],
            {"x": x(2, 4, 7, 8)},
            {"W": w(4, 1, 5, 5)},
            **c,
        ),
        "conv_depthwise_s1": Case(
            [node("Conv", ["x", "W"], group=3, pads=[1, 0, 1, 2])],
            {"x": x(1, 3, 5, 5)},
            {"W": w(3, 1, 3, 3)},
            **c,
        ),
        "conv_same_upper_s2": Case(
            [node("Conv", ["x", "W"], auto_pad="SAME_UPPER", strides=[2, 2])],
            {"x": x(1, 2, 5, 6)},
            {"W": w(3, 2, 3, 3)},
            **c,
        ),
        "conv_same_lower_even_kernel": Case(
            [node("Conv", ["x", "W"], auto_pad="SAME_LOWER")],
            {"x": x(1, 2, 5, 4)},
            {"W": w(2, 2, 2, 2)},
            **c,
        ),
        "conv1d_valid_s3": Case(
            [node("Conv", ["x", "W"], auto_pad="VALID", strides=[3])],
            {"x": x(2, 3, 11)},
            {"W": w(2, 3, 4)},
            **c,
        ),
        "conv_weight_is_input": Case(
            [node("Conv", ["x", "W"], pads=[1, 1, 1, 1])],
            {"x": x(1, 2, 4, 4), "W": w(3, 2, 3, 3)},
            wrt=["x"],
            **c,
        ),
        "conv_pads_beyond_kernel": Case(
            [node("Conv", ["x", "W"], pads=[3, 0, 2, 1])],
            {"x": x(1, 2, 4, 4)},
            {"W": w(2, 2, 3, 3)},
            **c,
        ),
        "conv_symbolic_spatial_s2": Case(
            [node("Conv", ["x", "W"], strides=[2, 2], pads=[1, 0, 0, 1])],
            {"x": x(1, 2, 7, 6)},
            {"W": w(3, 2, 3, 3)},
            symbolic={"x": [0, 2, 3]},
            **c,
        ),
        "convtranspose_s2_outpad": Case(
            [
                node(
                    "ConvTranspose",
                    ["x", "W"],
                    strides=[2, 2],
                    pads=[1, 0, 0, 1],
                    output_padding=[1, 1],
                )
            ],
            {"x": x(1, 3, 4, 5)},
            {"W": w(3, 2, 3, 3)},
            **c,
        ),
        "convtranspose_group_dilation": Case(
            [node("ConvTranspose", ["x", "W", "B"], group=2, dilations=[2, 2], pads=[1, 1, 0, 0])],
            {"x": x(1, 4, 3, 3)},
            {"W": w(4, 1, 2, 2), "B": w(2)},
            **c,
        ),
        "convtranspose_outpad_beyond_pad": Case(
            [node("ConvTranspose", ["x", "W"], strides=[3, 2], output_padding=[2, 1])],
            {"x": x(1, 2, 3, 3)},
            {"W": w(2, 2, 2, 3)},
            **c,
        ),
    }


def linalg_cases() -> dict[str, Case]:
    cases = {}
    for ta in (0, 1):
        for tb in (0, 1):
            a = rand(*((4, 3) if ta else (3, 4)))
            b = rand(*((5, 4) if tb else (4, 5)))
            cases[f"gemm_tA{ta}_tB{tb}"] = Case(
                [node("Gemm", ["a", "b", "c"], transA=ta, transB=tb, alpha=0.7, beta=1.3)],
                {"a": a, "b": b, "c": rand(5)},
                wrt=["a", "b", "c"],
            )
    cases["gemm_no_c_scalar_bias"] = Case(
        [node("Gemm", ["a", "b"])], {"a": rand(2, 3), "b": rand(3, 4)}, wrt=["a", "b"]
    )
    cases["gemm_c_column"] = Case(
        [node("Gemm", ["a", "b", "c"], beta=0.5)],
        {"a": rand(2, 3), "b": rand(3, 4), "c": rand(2, 1)},
        wrt=["c"],
    )
    for name, (sa, sb) in {
        "2d": ((3, 4), (4, 2)),
        "batched": ((2, 3, 4), (2, 4, 5)),
        "broadcast": ((2, 1, 3, 4), (5, 4, 2)),
        "vec_mat": ((4,), (2, 4, 3)),
        "mat_vec": ((2, 3, 4), (4,)),
        "vec_vec": ((4,), (4,)),
    }.items():
        cases[f"matmul_{name}"] = Case(
            [node("MatMul", ["a", "b"])], {"a": rand(*sa), "b": rand(*sb) + 0.1}, wrt=["a", "b"]
        )
    return cases


def symbolic_cases() -> dict[str, Case]:
    """Shapes only known at run time: broadcast axes and averaging counts found by Shape ops."""
    return {
        "add_symbolic_broadcast": Case(
            [node("Add", ["a", "b"])],
            {"a": rand(2, 3), "b": rand(1, 3)},
            opset=13,
            wrt=["a", "b"],
            symbolic={"a": [0], "b": [0]},
        ),
        "global_average_pool_symbolic": Case(
            [node("GlobalAveragePool", ["a"])],
            {"a": f32(rand(2, 3, 5, 4))},
            kind="f32lin",
            symbolic={"a": [0, 2, 3]},
        ),
        "mul_by_floor_is_constant": Case(  # Floor has no gradient: dy/da = floor(a)
            [node("Floor", ["a"], ["f"]), node("Mul", ["a", "f"])],
            {"a": rand(3, 4, away=(-2, -1, 0, 1, 2)) * 1.7},
        ),
    }


def test_symbolic_broadcast_needs_opset13() -> None:
    case = symbolic_cases()["add_symbolic_broadcast"]
    case.opset = 11
    with pytest.raises(UnsupportedOpError, match="broadcast"):
        backward(build(case), ["b"])


def elementwise_cases() -> dict[str, Case]:
    two = {"wrt": ["a", "b"]}
    cases = {
        "add_broadcast": Case(
            [node("Add", ["a", "b"])], {"a": rand(2, 3, 4), "b": rand(3, 1)}, **two
        ),
        "sub_both_broadcast": Case(
            [node("Sub", ["a", "b"])], {"a": rand(2, 1, 4), "b": rand(3, 1)}, **two
        ),
        "mul_broadcast": Case([node("Mul", ["a", "b"])], {"a": rand(2, 3, 4), "b": rand(4)}, **two),
        "mul_same_input": Case([node("Mul", ["a", "a"])], {"a": rand(3, 4)}),
        "div_broadcast": Case(
            [node("Div", ["a", "b"])], {"a": rand(2, 3, 4), "b": rand(1, 3, 1, lo=0.5)}, **two
        ),
        "pow_broadcast": Case(
            [node("Pow", ["a", "b"])], {"a": rand(2, 3, lo=0.5), "b": rand(3, lo=0.2)}, **two
        ),
        "pow_square_const": Case(
            [node("Pow", ["a", "p"])], {"a": rand(2, 3)}, {"p": np.array(2.0)}
        ),
        "sum_three_broadcast": Case(
            [node("Sum", ["a", "b", "c"])],
            {"a": rand(2, 3), "b": rand(3), "c": rand(1, 1)},
            wrt=["a", "b", "c"],
        ),
        "expand": Case([node("Expand", ["a", "s"])], {"a": rand(3, 1)}, {"s": np.array([2, 3, 4])}),
        "where_broadcast": Case(
            [node("Where", ["c", "a", "b"])],
            {"a": rand(2, 3, 4), "b": rand(4)},
            {"c": rand(3, 4) > 0},
            wrt=["a", "b"],
        ),
        "sqrt": Case([node("Sqrt", ["a"])], {"a": rand(3, 4, lo=0.5)}),
        "exp": Case([node("Exp", ["a"])], {"a": rand(3, 4)}),
        "log": Case([node("Log", ["a"])], {"a": rand(3, 4, lo=0.5)}),
        "neg": Case([node("Neg", ["a"])], {"a": rand(3, 4)}),
        "reciprocal": Case([node("Reciprocal", ["a"])], {"a": rand(3, 4, lo=0.5)}),
        "sigmoid": Case([node("Sigmoid", ["a"])], {"a": rand(3, 4)}),
        "tanh": Case([node("Tanh", ["a"])], {"a": rand(3, 4)}),
        "relu": Case([node("Relu", ["a"])], {"a": rand(3, 4, away=(0,))}),
        "clip_min_max": Case(
            [node("Clip", ["a", "lo", "hi"])],
            {"a": rand(4, 5, away=(-0.5, 0.7))},
            {"lo": np.array(-0.5), "hi": np.array(0.7)},
        ),
        "clip_max_only_opset11_f32": Case(
            [node("Clip", ["a", "", "hi"])],
            {"a": f32(rand(4, 5, away=(0.3,)))},
            {"hi": np.float32(0.3)},
            opset=11,
            kind="f32",
        ),
        "clip_relu6_f32": Case(
            [node("Clip", ["a", "lo", "hi"])],
            {"a": f32(rand(4, 5, away=(0, 1.5)) * 4)},
            {"lo": np.float32(0), "hi": np.float32(6)},
            kind="f32",
        ),
        "clip_runtime_bounds": Case(
            [node("Clip", ["a", "lo", "hi"])],
            {"a": rand(4, 5, away=(-0.5, 0.7)), "lo": np.array(-0.5), "hi": np.array(0.7)},
            wrt=["a"],
            opset=13,
        ),
        # float32 4-D: the NCHWc-friendly tanh masks (see test_fast_masks_are_exact)
        "relu_f32_4d": Case(
            [node("Relu", ["a"])], {"a": f32(rand(2, 3, 4, 5, away=(0,)))}, kind="f32"
        ),
        "clip_f32_4d_two_sided": Case(
            [node("Clip", ["a", "lo", "hi"])],
            {"a": f32(rand(2, 3, 4, 5, away=(-0.5, 0.7)))},
            {"lo": np.float32(-0.5), "hi": np.float32(0.7)},
            kind="f32",
        ),
        "clip_constant_node_bounds": Case(  # torch exports the bounds as Constant nodes
            [
                node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(0), "v")),
                node("Constant", [], ["hi"], value_float=6.0),
                node("Clip", ["a", "lo", "hi"]),
            ],
            {"a": f32(rand(2, 3, 4, 5, away=(0, 1.5)) * 4)},
            kind="f32",
        ),
        "clip_f32_4d_min_only": Case(
            [node("Clip", ["a", "lo"])],
            {"a": f32(rand(2, 3, 4, 5, away=(0.2,)))},
            {"lo": np.float32(0.2)},
            kind="f32",
        ),
        "clip_f32_4d_max_only": Case(
            [node("Clip", ["a", "", "hi"])],
            {"a": f32(rand(2, 3, 4, 5, away=(-0.1,)))},
            {"hi": np.float32(-0.1)},
            kind="f32",
        ),
        "identity": Case([node("Identity", ["a"])], {"a": rand(3, 4)}),
        "dropout_inference": Case(
            [node("Dropout", ["a", "r"], ["y", "mask"])],
            {"a": rand(3, 4)},
            {"r": np.array(0.5)},
            opset=12,
        ),
        "cast_f32_roundtrip": Case(
            [node("Cast", ["a"], ["t"], to=F), node("Cast", ["t"], to=D)],
            {"a": rand(3, 4)},
            kind="f32lin",
        ),  # linear through float32
        "cast_to_f32": Case([node("Cast", ["a"], to=F)], {"a": f32(rand(3, 4))}, kind="f32"),
    }
    f32_ops = {
        "leaky_relu": node("LeakyRelu", ["a"], alpha=0.1),
        "leaky_relu_negative_alpha": node("LeakyRelu", ["a"], alpha=-0.5),
        "hard_sigmoid": node("HardSigmoid", ["a"], alpha=0.3, beta=0.4),
        "hard_swish": node("HardSwish", ["a"]),
        "erf": node("Erf", ["a"]),
        "softplus": node("Softplus", ["a"]),
    }
    kinks = {
        "leaky_relu": (0,),
        "leaky_relu_negative_alpha": (0,),
        "hard_sigmoid": (-0.4 / 0.3, 0.6 / 0.3),
        "hard_swish": (-3, 3),
    }
    for name, n in f32_ops.items():
        away = tuple(k / 2.5 for k in kinks.get(name, ()))
        cases[name] = Case([n], {"a": f32(rand(5, 6, away=away) * 2.5)}, opset=14, kind="f32")
    for approx in ("none", "tanh"):
        cases[f"gelu_{approx}"] = Case(
            [node("Gelu", ["a"], approximate=approx)],
            {"a": f32(rand(4, 5) * 2)},
            opset=20,
            kind="f32",
        )
    cases["hard_sigmoid_4d"] = Case(
        [node("HardSigmoid", ["a"])], {"a": f32(rand(2, 3, 4, 5, away=(-1, 1)) * 2.5)}, kind="f32"
    )
    cases["prelu_channel_slope"] = Case(
        [node("PRelu", ["a", "s"])],
        {"a": f32(rand(2, 3, 2, 2, away=(0,)))},
        {"s": f32(rand(3, 1, 1))},
        kind="f32",
    )
    return cases


def norm_cases() -> dict[str, Case]:
    bn = lambda c: {"s": rand(c), "b": rand(c), "m": rand(c), "v": rand(c, lo=0.5)}
    cases = {
        "batchnorm_4d": Case(
            [node("BatchNormalization", ["a", "s", "b", "m", "v"], epsilon=1e-3)],
            {"a": rand(2, 3, 2, 3)},
            bn(3),
        ),
        "batchnorm_2d": Case(
            [node("BatchNormalization", ["a", "s", "b", "m", "v"])], {"a": rand(4, 3)}, bn(3)
        ),
        "layernorm_last": Case(
            [node("LayerNormalization", ["a", "s", "b"], epsilon=1e-3)],
            {"a": rand(2, 3, 4)},
            {"s": rand(4), "b": rand(4)},
        ),
        "layernorm_axis1": Case(
            [node("LayerNormalization", ["a", "s"], axis=1)],
            {"a": rand(2, 3, 4)},
            {"s": rand(3, 4)},
            opset=18,
        ),
    }
    for op in ("Softmax", "LogSoftmax"):
        cases[f"{op.lower()}_last"] = Case([node(op, ["a"])], {"a": rand(2, 3, 4)}, opset=13)
        cases[f"{op.lower()}_axis0"] = Case(
            [node(op, ["a"], axis=0)], {"a": rand(2, 3, 4)}, opset=13
        )
        cases[f"{op.lower()}_opset11_coerced"] = Case(
            [node(op, ["a"], axis=1)], {"a": rand(2, 3, 4)}, opset=11
        )
    return cases


def pool_cases() -> dict[str, Case]:
    x = lambda *s: f32(rand(*s))
    lin = {"kind": "f32lin"}
    avg = lambda **kw: node("AveragePool", ["a"], **kw)
    mx = lambda **kw: node("MaxPool", ["a"], **kw)
    return {
        "global_average_pool": Case(
            [node("GlobalAveragePool", ["a"])], {"a": x(2, 3, 5, 7)}, **lin
        ),
        "avgpool_pad_exclude": Case(
            [avg(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
            {"a": x(1, 2, 7, 6)},
            **lin,
        ),
        "avgpool_pad_include": Case(
            [avg(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1], count_include_pad=1)],
            {"a": x(1, 2, 7, 6)},
            **lin,
        ),
        "avgpool_ceil_mode": Case(
            [avg(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], {"a": x(1, 2, 6, 8)}, **lin
        ),
        "avgpool_1d": Case([avg(kernel_shape=[2], strides=[2])], {"a": x(2, 3, 9)}, **lin),
        "avgpool_dilation_opset19": Case(
            [avg(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 0, 0])],
            {"a": x(1, 2, 6, 5)},
            opset=19,
            **lin,
        ),
        "avgpool_same_upper": Case(
            [avg(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
            {"a": x(1, 1, 5, 6)},
            **lin,
        ),
        "maxpool_overlap_opset18": Case(
            [mx(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
            {"a": rand(2, 2, 7, 6)},
            opset=18,
        ),
        "maxpool_overlap_opset11": Case(
            [mx(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
            {"a": rand(2, 2, 7, 6)},
            opset=11,
        ),
        "maxpool_2x2_opset11": Case(
            [mx(kernel_shape=[2, 2], strides=[2, 2])], {"a": rand(1, 2, 6, 7)}, opset=11
        ),
        "maxpool_ceil_dilation_opset12": Case(
            [mx(kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 1], ceil_mode=1)],
            {"a": rand(1, 2, 7, 7)},
            opset=12,
        ),
        "maxpool_stride1_opset13": Case(
            [mx(kernel_shape=[2, 3], pads=[0, 1, 0, 1])], {"a": rand(1, 1, 4, 5)}, opset=13
        ),
    }


def reduce_cases() -> dict[str, Case]:
    a = rand(2, 3, 4)
    ax = lambda *v: {"axes": np.array(v, np.int64)}
    return {
        "reducemean_symbolic_dims": Case(
            [node("ReduceMean", ["a"], axes=[0, 2], keepdims=0)],
            {"a": a},
            opset=13,
            symbolic={"a": [0, 2]},
        ),
        "reducemean_attr_keepdims0": Case(
            [node("ReduceMean", ["a"], axes=[1], keepdims=0)], {"a": a}, opset=11
        ),
        "reducemean_input_opset18": Case(
            [node("ReduceMean", ["a", "axes"])], {"a": a}, ax(-1, 0), opset=18
        ),
        "reducemean_all_opset17": Case([node("ReduceMean", ["a"], keepdims=0)], {"a": a}),
        "reducesum_attr_opset11": Case([node("ReduceSum", ["a"], axes=[2])], {"a": a}, opset=11),
        "reducesum_input_keepdims0": Case(
            [node("ReduceSum", ["a", "axes"], keepdims=0)], {"a": a}, ax(0, 2), opset=13
        ),
        "reducesum_noop_empty_axes": Case(
            [node("ReduceSum", ["a"], noop_with_empty_axes=1)], {"a": a}, opset=13
        ),
    }


def shape_cases() -> dict[str, Case]:
    a = rand(2, 3, 4)
    i64 = lambda *v: np.array(v, np.int64)
    split3 = ["s0", "s1", "s2"]
    cat = node("Concat", ["s2", "s0"], axis=1)
    return {
        "flatten": Case([node("Flatten", ["a"], axis=2)], {"a": a}),
        "reshape": Case([node("Reshape", ["a", "s"])], {"a": a}, {"s": i64(4, -1)}),
        "transpose": Case([node("Transpose", ["a"], perm=[2, 0, 1])], {"a": a}),
        "transpose_default": Case([node("Transpose", ["a"])], {"a": a}),
        "squeeze_attr_opset11": Case(
            [node("Squeeze", ["a"], axes=[1])], {"a": rand(2, 1, 3)}, opset=11
        ),
        "squeeze_input_opset13": Case(
            [node("Squeeze", ["a", "ax"])], {"a": rand(2, 1, 3)}, {"ax": i64(1)}, opset=13
        ),
        "unsqueeze_attr_opset11": Case(
            [node("Unsqueeze", ["a"], axes=[0, 3])], {"a": rand(2, 3)}, opset=11
        ),
        "unsqueeze_input_opset13": Case(
            [node("Unsqueeze", ["a", "ax"])], {"a": rand(2, 3)}, {"ax": i64(-1)}, opset=13
        ),
        "concat": Case(
            [node("Concat", ["a", "b", "c"], axis=1)],
            {"a": rand(2, 1, 3), "b": rand(2, 2, 3), "c": rand(2, 3, 3)},
            wrt=["a", "c"],
        ),
        "concat_symbolic": Case(
            [node("Concat", ["a", "b"], axis=1)],
            {"a": rand(2, 2, 3), "b": rand(2, 3, 3)},
            wrt=["a", "b"],
            symbolic={"a": [1], "b": [1]},
        ),
        "split_attr_opset11": Case(
            [node("Split", ["a"], split3, axis=1, split=[1, 1, 1]), cat],
            {"a": rand(2, 3, 2)},
            opset=11,
        ),
        "split_input_opset13": Case(
            [node("Split", ["a", "sp"], split3, axis=1), cat],
            {"a": rand(2, 6, 2)},
            {"sp": i64(1, 2, 3)},
            opset=13,
        ),
        "split_num_outputs_opset18": Case(
            [node("Split", ["a"], split3, axis=1, num_outputs=3), cat],
            {"a": rand(2, 7, 2)},
            opset=18,
        ),
        "slice_steps_negative": Case(
            [node("Slice", ["a", "st", "en", "ax", "sp"])],
            {"a": rand(2, 6, 7)},
            {"st": i64(1, -1), "en": i64(6, -8), "ax": i64(1, 2), "sp": i64(2, -2)},
        ),
        "slice_no_axes_clamped": Case(
            [node("Slice", ["a", "st", "en"])],
            {"a": rand(3, 5)},
            {"st": i64(1, -3), "en": i64(1000, -1)},
        ),
        "slice_symbolic_batch": Case(
            [node("Slice", ["a", "st", "en", "ax"])],
            {"a": rand(2, 5)},
            {"st": i64(1), "en": i64(4), "ax": i64(1)},
            symbolic={"a": [0]},
        ),
        "gather_duplicates_axis1": Case(
            [node("Gather", ["a", "i"], axis=1)],
            {"a": rand(2, 4, 3)},
            {"i": i64(0, 2, 2, -1, 0, 1).reshape(2, 3)},
        ),
        "gather_scalar_negative": Case(
            [node("Gather", ["a", "i"], axis=-1)],
            {"a": rand(2, 4, 3)},
            {"i": np.array(-2, np.int64)},
        ),
        "pad_constant": Case(
            [node("Pad", ["a", "p"])], {"a": rand(2, 3, 4)}, {"p": i64(0, 1, 2, 1, 0, 1)}
        ),
        "pad_negative_crop": Case(
            [node("Pad", ["a", "p", "v"])],
            {"a": rand(2, 3, 4)},
            {"p": i64(0, -1, 2, 1, 0, -2), "v": np.array(1.5)},
        ),
        "pad_axes_opset18": Case(
            [node("Pad", ["a", "p", "", "ax"])],
            {"a": rand(2, 3, 4)},
            {"p": i64(1, 0, 2, 3), "ax": i64(-1, 1)},
            opset=18,
        ),
        "pad_runtime_pads": Case(
            [node("Pad", ["a", "p"])], {"a": rand(2, 3), "p": i64(1, -1, 0, 2)}, wrt=["a"]
        ),
    }


def resize_cases() -> dict[str, Case]:
    x = lambda *s: f32(rand(*s))
    sc = lambda *v: {"sc": np.array(v, np.float32)}
    lin = {"kind": "f32lin"}
    return {
        "resize_nearest_x2": Case(
            [node("Resize", ["a", "", "sc"], mode="nearest")],
            {"a": x(1, 2, 3, 4)},
            sc(1, 1, 2, 2),
            opset=13,
            **lin,
        ),
        "resize_nearest_down_sizes": Case(
            [node("Resize", ["a", "", "", "sz"], mode="nearest")],
            {"a": x(1, 2, 7, 6)},
            {"sz": np.array([1, 2, 3, 4])},
            opset=13,
            **lin,
        ),
        "resize_linear_half_pixel_5to7": Case(
            [node("Resize", ["a", "", "", "sz"], mode="linear")],
            {"a": x(2, 1, 5, 4)},
            {"sz": np.array([2, 1, 7, 9])},
            opset=13,
            **lin,
        ),
        "resize_linear_align_corners_opset11": Case(
            [
                node(
                    "Resize",
                    ["a", "roi", "sc"],
                    mode="linear",
                    coordinate_transformation_mode="align_corners",
                )
            ],
            {"a": x(1, 2, 3, 4)},
            {"roi": np.zeros(0, np.float32), **sc(1, 1, 2.5, 1.5)},
            opset=11,
            **lin,
        ),
        "resize_cubic": Case(
            [node("Resize", ["a", "", "sc"], mode="cubic")],
            {"a": x(1, 1, 4, 5)},
            sc(1, 1, 2, 2),
            opset=13,
            **lin,
        ),
    }


def transformer_cases() -> dict[str, Case]:
    """The op patterns of ViT/DeiT/Swin exports (torch legacy exporter opsets 14-17, dynamo 18),
    each as a small multi-op model; the whole exports are checked in test_transformers.py."""
    i64 = lambda *v: np.array(v, np.int64)
    n, t, c, heads = 2, 5, 4, 2
    dh = c // heads
    ln = [  # the legacy exporter's LayerNorm below opset 17
        node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        node("Sub", ["x", "mu"], ["xc"]),
        node("Pow", ["xc", "two"], ["sq"]),
        node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        node("Add", ["var", "eps"], ["ve"]),
        node("Sqrt", ["ve"], ["sd"]),
        node("Div", ["xc", "sd"], ["xh"]),
        node("Mul", ["xh", "gamma"], ["xg"]),
        node("Add", ["xg", "beta"]),
    ]
    attention = [  # softmax(q k^T * scale) v on (N, heads, T, d), both operands reached
        node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        node("MatMul", ["q", "kt"], ["s"]),
        node("Mul", ["s", "scale"], ["ss"]),
        node("Add", ["ss", "bias"], ["sb"]),
        node("Softmax", ["sb"], ["p"], axis=-1),
        node("MatMul", ["p", "v"]),
    ]
    dynamic_reshape = [  # (N, T, C) -> (N, T, heads, d) with N read at run time, -> (N, h, T, d)
        node("Shape", ["x"], ["shp"]),
        node("Gather", ["shp", "zero"], ["nb"], axis=0),
        node("Unsqueeze", ["nb", "ax0"], ["nb1"]),
        node("Concat", ["nb1", "rest"], ["target"], axis=0),
        node("Reshape", ["x", "target"], ["r"]),
        node("Transpose", ["r"], perm=[0, 2, 1, 3]),
    ]
    class_token = [  # cat(expand(cls, (N, 1, C)), patches) then read token 0 (the head's input)
        node("Shape", ["x"], ["shp"]),
        node("Gather", ["shp", "zero1"], ["nb"], axis=0),
        node("Concat", ["nb", "one_c"], ["ecs"], axis=0),
        node("Expand", ["cls", "ecs"], ["clsn"]),
        node("Concat", ["clsn", "x"], ["tok"], axis=1),
        node("Mul", ["tok", "tok"], ["sq"]),
        node("Gather", ["sq", "zero"], axis=1),
    ]
    mha_unflatten = [  # nn.MultiheadAttention's in-projection split, legacy export
        node("Reshape", ["x", "tnc3"], ["r"]),  # (T, N, 3 C) -> (T, N, 3, C)
        node("Unsqueeze", ["r", "ax0"], ["u"]),
        node("Transpose", ["u"], ["tr"], perm=[3, 1, 2, 0, 4]),
        node("Squeeze", ["tr", "axm2"], ["sq"]),  # (3, T, N, C)
        node("Gather", ["sq", "zero"], ["q"], axis=0),
        node("Gather", ["sq", "one"], ["k"], axis=0),
        node("Gather", ["sq", "two_i"], ["v"], axis=0),
        node("Mul", ["q", "k"], ["qk"]),
        node("Add", ["qk", "v"]),
    ]
    timm_unbind = [  # timm: qkv (3, N, h, T, d) split on axis 0 and squeezed
        node("Split", ["x"], ["s0", "s1", "s2"], axis=0, num_outputs=3),
        node("Squeeze", ["s0", "ax0"], ["q"]),
        node("Squeeze", ["s1", "ax0"], ["k"]),
        node("Squeeze", ["s2", "ax0"], ["v"]),
        node("Mul", ["q", "k"], ["qk"]),
        node("Sub", ["qk", "v"]),
    ]
    roll = [  # torch.roll(x, (-1, -2), (1, 2)) on (N, H, W, C): Slice + Concat per axis
        node("Slice", ["x", "s1", "e1", "a1"], ["h0"]),
        node("Slice", ["x", "s0", "s1", "a1"], ["h1"]),
        node("Concat", ["h0", "h1"], ["rh"], axis=1),
        node("Slice", ["rh", "s2", "e1", "a2"], ["w0"]),
        node("Slice", ["rh", "s0", "s2", "a2"], ["w1"]),
        node("Concat", ["w0", "w1"], ["rw"], axis=2),
        node("Mul", ["rw", "m"]),
    ]
    rel_pos_bias = [  # Swin: table[index] -> (T, T, heads) -> (heads, T, T) added to the logits
        node("Gather", ["table", "idx"], ["b"], axis=0),
        node("Reshape", ["b", "ttn"], ["b3"]),
        node("Transpose", ["b3"], ["bt"], perm=[2, 0, 1]),
        node("Unsqueeze", ["bt", "ax0"], ["bu"]),
        node("Add", ["s", "bu"]),
    ]
    window_pad = [  # Swin pads (N, H, W, C) to a multiple of the window, then crops back
        node("Pad", ["x", "pads"], ["xp"]),
        node("Mul", ["xp", "xp"], ["sq"]),
        node("Slice", ["sq", "s0", "hw", "a12"]),
    ]
    gelu_erf = [  # the legacy exporter's exact GELU: x * 0.5 * (1 + erf(x / sqrt 2))
        node("Div", ["x", "sqrt2"], ["xs"]),
        node("Erf", ["xs"], ["er"]),
        node("Add", ["er", "one_f"], ["e1"]),
        node("Mul", ["x", "e1"], ["xe"]),
        node("Mul", ["xe", "half"]),
    ]
    idx = np.random.default_rng(5).integers(0, 7, (t * t,))
    return {
        "vit_layernorm_decomposed_opset14": Case(
            ln, {"x": rand(n, t, c)},
            {"two": np.array(2.0), "eps": np.array(1e-5), "gamma": rand(c), "beta": rand(c)},
            opset=14),
        "vit_attention_4d_matmul_softmax": Case(
            attention,
            {"q": rand(n, heads, t, dh), "k": rand(n, heads, t, dh) * 1.3,
             "v": rand(n, heads, t, dh) - 0.2},
            {"scale": np.array(dh ** -0.5), "bias": rand(1, heads, t, t)},
            wrt=["q", "k", "v"]),
        "vit_reshape_runtime_shape": Case(
            dynamic_reshape, {"x": rand(n, t, c)},
            {"zero": np.array(0, np.int64), "ax0": i64(0), "rest": i64(t, heads, dh)},
            symbolic={"x": [0]}),
        "vit_class_token_expand_concat_gather": Case(
            class_token, {"x": rand(n, t - 1, c), "cls": rand(1, 1, c)},
            {"zero1": i64(0), "one_c": i64(1, c), "zero": np.array(0, np.int64)},
            wrt=["x", "cls"], symbolic={"x": [0]}),
        "vit_mha_in_projection_unflatten": Case(
            mha_unflatten, {"x": rand(t, n, 3 * c)},
            {"tnc3": i64(t, n, 3, c), "ax0": i64(0), "axm2": i64(-2),
             "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
             "two_i": np.array(2, np.int64)}),
        "deit_qkv_split_squeeze_opset18": Case(
            timm_unbind, {"x": rand(3, n, heads, t, dh)}, {"ax0": i64(0)}, opset=18),
        "swin_roll_slice_concat": Case(
            roll, {"x": rand(n, 4, 5, c)},
            {"s0": i64(0), "s1": i64(1), "s2": i64(2), "e1": i64(np.iinfo(np.int64).max),
             "a1": i64(1), "a2": i64(2), "m": rand(4, 5, c)}),
        "swin_relative_position_bias_gather": Case(
            rel_pos_bias, {"table": rand(7, heads), "s": rand(n, heads, t, t)},
            {"idx": idx.astype(np.int64), "ttn": i64(t, t, heads), "ax0": i64(0)},
            wrt=["table", "s"]),
        "swin_window_pad_crop": Case(
            window_pad, {"x": rand(n, 3, 3, c)},
            {"pads": i64(0, 0, 0, 0, 0, 1, 1, 0), "s0": i64(0, 0), "hw": i64(3, 3),
             "a12": i64(1, 2)}),
        "vit_gelu_erf_f32": Case(
            gelu_erf, {"x": f32(rand(n, t, c) * 2)},
            {"sqrt2": np.float32(np.sqrt(2)), "one_f": np.float32(1), "half": np.float32(0.5)},
            kind="f32"),
    }


ALL = {
    **symbolic_cases(),
    **conv_cases(),
    **linalg_cases(),
    **elementwise_cases(),
    **norm_cases(),
    **pool_cases(),
    **reduce_cases(),
    **shape_cases(),
    **resize_cases(),
    **transformer_cases(),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_rule_matches_finite_differences(name: str) -> None:
    check_case(ALL[name])


def test_every_rule_has_a_case() -> None:
    tested = {n.op_type for c in ALL.values() for n in c.nodes}
    tested |= {"QuantizeLinear", "DequantizeLinear",  # straight-through: see test_qdq.py and
               "DynamicQuantizeLinear"}  # test_qoperator.py
    assert set(RULES) <= tested, sorted(set(RULES) - tested)


def _mask_model(op: str, consts: dict[str, np.ndarray]) -> onnx.ModelProto:
    inputs = ["a", *consts] if op == "Clip" else ["a"]
    return build(Case([node(op, inputs)], {"a": np.zeros((1, 2, 1, 12), np.float32)}, consts))


@pytest.mark.parametrize(
    "op, consts, lo, hi",
    [
        ("Relu", {}, 0.0, np.inf),
        ("Clip", {"lo": np.float32(0), "hi": np.float32(6)}, 0.0, 6.0),
        ("Clip", {"lo": np.float32(-0.3), "hi": np.float32(0.3)}, -0.3, 0.3),
        ("Clip", {"lo": np.float32(1e-3)}, 1e-3, np.inf),
    ],
)
def test_fast_masks_are_exact(op: str, consts: dict, lo: float, hi: float) -> None:
    """The tanh mask is exactly 0 at and beyond the bounds and exactly 1 inside: one float32
    ulp inside a nonzero bound, 1e-35 above a zero bound (denormals just above 0 are the one
    documented exception)."""
    model = _mask_model(op, consts)
    g = backward(model, ["a"], evaluate=evaluate)
    assert {"Tanh", "BatchNormalization"} <= {n.op_type for n in g.graph.node}
    lo32, hi32 = np.float32(lo), np.float32(min(hi, 1e30))
    up = np.float32(1e-35) if lo == 0 else np.nextafter(lo32, np.float32(np.inf))  # see docstring
    inside = [
        up,
        np.float32(1e-30) + lo32,
        (lo32 + min(hi32, lo32 + 2)) / 2,
        np.nextafter(hi32, np.float32(-np.inf)) if np.isfinite(hi) else np.float32(3e38),
    ]
    outside = [
        lo32,
        lo32 - 1,
        lo32 - np.float32(1e-30),
        hi32 if np.isfinite(hi) else lo32 - 5,
        hi32 + 1 if np.isfinite(hi) else lo32 - 1e30,
        np.float32(-np.inf),
    ]
    a = np.array((inside + outside + [lo32] * 12)[:12], np.float32)
    x = np.stack([a, a])[None, :, None, :]
    seed = np.random.default_rng(0).uniform(1, 2, x.shape).astype(np.float32)
    grad = _session(g).run(["a_grad"], {"a": x, "seed": seed})[0]
    expected = np.where((x > lo32) & (x < hi32 if np.isfinite(hi) else True), seed, 0)
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize(
    "case, message",
    [
        (
            Case(
                [node("Pad", ["a", "p"], mode="reflect")],
                {"a": rand(2, 4)},
                {"p": np.array([0, 1, 0, 1], np.int64)},
            ),
            "mode='reflect'",
        ),
        (
            Case(
                [node("Resize", ["a", "", "s"], mode="nearest")],
                {"a": f32(rand(1, 1, 2, 3)), "s": np.array([1, 1, 2, 2], np.float32)},
                opset=13,
                wrt=["a"],
            ),
            "scales must be constant",
        ),
        (
            Case(
                [node("MaxPool", ["a"], ["y", "i"], kernel_shape=[2], storage_order=1)],
                {"a": rand(1, 1, 4)},
                opset=12,
            ),
            "storage_order",
        ),
    ],
    ids=["pad_reflect", "resize_runtime_scales", "maxpool_storage_order"],
)
def test_unsupported_variants_name_the_node(case: Case, message: str) -> None:
    model = build(case)
    with pytest.raises(UnsupportedOpError, match=message) as err:
        backward(model, case.wrt or ["a"])
    assert case.nodes[0].name in str(err.value)  # explain() adds the alternatives


def test_check_case_detects_a_wrong_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness can fail: a Sigmoid rule missing the (1 - y) factor is caught."""

    def wrong(e, node, gys, need):
        return [e.op("Mul", gys[0], e.fwd(node.output[0], e.gdtype(node.input[0])))]

    monkeypatch.setitem(RULES, "Sigmoid", wrong)
    with pytest.raises(AssertionError):
        check_case(elementwise_cases()["sigmoid"])
