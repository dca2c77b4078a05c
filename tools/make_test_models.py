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


def _model(nodes, inputs, outputs, inits, name: str, *, opset: int = OPSET,
           ir_version: int = IR_VERSION, full_check: bool = True) -> onnx.ModelProto:
    """A checked model at ``opset`` and ``ir_version`` (IR < 4: initializers are also inputs)."""
    if ir_version < 4:
        inputs = [*inputs, *(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in inits)]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="blackbox-xai tools/make_test_models.py")
    m.ir_version = ir_version
    onnx.checker.check_model(m, full_check=full_check)
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


def tiny_nonlinear(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv(3->6, 3x3) - Relu ('act1') - Conv(6->4, 3x3) - Relu ('act2') - GlobalAveragePool -
    Flatten - Gemm(4->5): the head after 'act1' is not linear, so dy/dA at 'act1' varies over
    space and with the input (on tiny_cnn it is the constant W_ck / (h w))."""
    w1 = (rng.standard_normal((6, 3, 3, 3)) * 0.4).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(6)).astype(np.float32)
    w2 = (rng.standard_normal((4, 6, 3, 3)) * 0.3).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(4)).astype(np.float32)
    fw = rng.standard_normal((CLASSES, 4)).astype(np.float32)
    fb = (0.1 * rng.standard_normal(CLASSES)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "conv1.w"), (b1, "conv1.b"), (w2, "conv2.w"), (b2, "conv2.b"), (fw, "fc.w"),
              (fb, "fc.b")]]
    nodes = [helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["conv1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv1"], ["act1"]),
             helper.make_node("Conv", ["act1", "conv2.w", "conv2.b"], ["conv2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv2"], ["act2"]),
             helper.make_node("GlobalAveragePool", ["act2"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])
    return _model(nodes, [x], [logits], inits, "tiny_nonlinear")


def not_image(rng: np.random.Generator) -> onnx.ModelProto:
    """A tabular model: input (N, 10), not an image."""
    w = rng.standard_normal((10, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["scores"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                  [numpy_helper.from_array(w, "W")], "tabular")


# ---- exporter idioms (issue 9): one tiny model per way real exporters write a classifier -------
IDIOM_FEATURES = 4
vi = helper.make_tensor_value_info


def _arrays(rng: np.random.Generator, dtype: type = np.float32, bias_shape: tuple = (IDIOM_FEATURES,)
            ) -> dict[str, np.ndarray]:
    """Weights of Conv(3->4, 3x3) and a linear head 4->5: conv_w, conv_b, fc_w (4, 5), fc_b."""
    return {"conv_w": (rng.standard_normal((IDIOM_FEATURES, 3, 3, 3)) * 0.4).astype(dtype),
            "conv_b": (0.1 * rng.standard_normal(bias_shape)).astype(dtype),
            "fc_w": rng.standard_normal((IDIOM_FEATURES, CLASSES)).astype(dtype),
            "fc_b": (0.1 * rng.standard_normal(CLASSES)).astype(dtype)}


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _cnn(x: str, features: str, logits: str, a: dict[str, np.ndarray]
         ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """x -> Conv 3x3 pad 1 -> Relu ``features`` -> GlobalAveragePool -> Flatten -> Gemm ``logits``."""
    nodes = [helper.make_node("Conv", [x, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], [features]),
             helper.make_node("GlobalAveragePool", [features], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [logits])]
    return nodes, [numpy_helper.from_array(v, k) for k, v in a.items()]


def idiom_ir3_opset7_fp16(rng: np.random.Generator) -> onnx.ModelProto:
    """Caffe2 SqueezeNet converted to ONNX and then to fp16: IR 3 (initializers repeated as graph
    inputs), opset 7, fixed batch 1, fp16 input and output, a 1x1 Conv classifier after
    GlobalAveragePool and a Softmax over scores shaped (N, K, 1, 1)."""
    a = _arrays(rng, np.float16)
    a["fc_w"] = a["fc_w"].T.reshape(CLASSES, IDIOM_FEATURES, 1, 1).copy()
    nodes = [helper.make_node("Conv", ["data_0", "conv_w", "conv_b"], ["conv1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv1"], ["relu1"]),
             helper.make_node("GlobalAveragePool", ["relu1"], ["pool"]),
             helper.make_node("Conv", ["pool", "fc_w", "fc_b"], ["conv10"]),
             helper.make_node("Softmax", ["conv10"], ["softmaxout_1"], axis=1)]
    return _model(nodes, [vi("data_0", TensorProto.FLOAT16, [1, 3, SIZE, SIZE])],
                  [vi("softmaxout_1", TensorProto.FLOAT16, [1, CLASSES, 1, 1])],
                  [numpy_helper.from_array(v, k) for k, v in a.items()], "squeezenet_fp16",
                  opset=7, ir_version=3)


def idiom_tf2onnx_nhwc(rng: np.random.Generator) -> onnx.ModelProto:
    """tf2onnx on a Keras CNN: NHWC input with a symbolic batch ``unk__6``, Transposes around the
    Conv, the feature map transposed back to NHWC and pooled by ReduceMean over axes [1, 2],
    then MatMul + Add (Dense); TF-style tensor names; opset 13."""
    a = _arrays(rng)
    nodes = [helper.make_node("Transpose", ["input_1"], ["model/conv2d/Conv2D__5:0"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["model/conv2d/Conv2D__5:0", "conv_w", "conv_b"],
                              ["model/conv2d/BiasAdd:0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["model/conv2d/BiasAdd:0"], ["model/conv2d/Relu:0"]),
             helper.make_node("Transpose", ["model/conv2d/Relu:0"], ["model/conv2d/Relu__7:0"],
                              perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMean", ["model/conv2d/Relu__7:0"],
                              ["model/global_average_pooling2d/Mean:0"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["model/global_average_pooling2d/Mean:0", "fc_w"],
                              ["model/dense/MatMul:0"]),
             helper.make_node("Add", ["model/dense/MatMul:0", "fc_b"], ["dense"])]
    return _model(nodes, [vi("input_1", TensorProto.FLOAT, ["unk__6", SIZE, SIZE, 3])],
                  [vi("dense", TensorProto.FLOAT, ["unk__6", CLASSES])],
                  [numpy_helper.from_array(v, k) for k, v in a.items()], "tf2onnx",
                  opset=13, ir_version=7)


def idiom_keras2onnx_prelu(rng: np.random.Generator) -> onnx.ModelProto:
    """keras2onnx on a Keras CNN with a PReLU layer: NHWC input, Transpose to NCHW for the Conv
    and back, PRelu with an NHWC slope (1, 1, C), ReduceMean over axes [1, 2]
    (GlobalAveragePooling2D), MatMul + Add and a Softmax output (Dense(activation='softmax'));
    opset 10, IR 5."""
    a = _arrays(rng)
    slope = (0.25 + 0.05 * rng.standard_normal((1, 1, IDIOM_FEATURES))).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["input_1"], ["adjusted_input1"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["adjusted_input1", "conv_w", "conv_b"], ["convolution_output1"],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["convolution_output1"], ["conv2d_1/BiasAdd:0"],
                              perm=[0, 2, 3, 1]),
             helper.make_node("PRelu", ["conv2d_1/BiasAdd:0", "p_re_lu_1/alpha"],
                              ["p_re_lu_1/add:0"]),
             helper.make_node("ReduceMean", ["p_re_lu_1/add:0"],
                              ["global_average_pooling2d_1/Mean:0"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["global_average_pooling2d_1/Mean:0", "fc_w"],
                              ["dense_1/MatMul:0"]),
             helper.make_node("Add", ["dense_1/MatMul:0", "fc_b"], ["dense_1/BiasAdd:0"]),
             helper.make_node("Softmax", ["dense_1/BiasAdd:0"], ["dense_1"], axis=1)]
    inits = [numpy_helper.from_array(v, k) for k, v in a.items()]
    inits.append(numpy_helper.from_array(slope, "p_re_lu_1/alpha"))
    return _model(nodes, [vi("input_1", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
                  [vi("dense_1", TensorProto.FLOAT, ["N", CLASSES])], inits, "keras2onnx",
                  opset=10, ir_version=5)


def idiom_torch1_flatten(rng: np.random.Generator) -> onnx.ModelProto:
    """PyTorch 1.x ``x.view(x.size(0), -1)``: Shape -> Gather(0) -> Unsqueeze -> Concat with -1
    -> Reshape between GlobalAveragePool and Gemm, Constant nodes, numeric tensor names, no
    value_info, the output declared with symbolic dims only; opset 11, IR 6."""
    a = _arrays(rng)
    w = {"conv.weight": a["conv_w"], "conv.bias": a["conv_b"], "fc.weight": a["fc_w"].T.copy(),
         "fc.bias": a["fc_b"]}
    nodes = [helper.make_node("Conv", ["input.1", "conv.weight", "conv.bias"], ["9"],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["9"], ["10"]),
             helper.make_node("GlobalAveragePool", ["10"], ["11"]),
             helper.make_node("Shape", ["11"], ["12"]),
             _const("13", np.array(0, np.int64)),
             helper.make_node("Gather", ["12", "13"], ["14"], axis=0),
             helper.make_node("Unsqueeze", ["14"], ["15"], axes=[0]),
             _const("16", np.array([-1], np.int64)),
             helper.make_node("Concat", ["15", "16"], ["17"], axis=0),
             helper.make_node("Reshape", ["11", "17"], ["18"]),
             helper.make_node("Gemm", ["18", "fc.weight", "fc.bias"], ["19"], alpha=1.0, beta=1.0,
                              transB=1)]
    return _model(nodes, [vi("input.1", TensorProto.FLOAT, ["batch_size", 3, SIZE, SIZE])],
                  [vi("19", TensorProto.FLOAT, ["batch_size", "19_dim_1"])],
                  [numpy_helper.from_array(v, k) for k, v in w.items()], "torch-jit-export",
                  opset=11, ir_version=6)


def idiom_paddle_reshape(rng: np.random.Generator) -> onnx.ModelProto:
    """paddle2onnx: Conv without bias + elementwise Add of a (1, C, 1, 1) bias, adaptive average
    pooling as GlobalAveragePool, a dynamic Reshape whose shape is Concat(Slice(Shape(x), 0:1),
    [C]), MatMul + Add, the output through a ``scale`` (Identity); paddle tensor names and
    ``p2o.DynamicDimension`` dims; opset 11, IR 6."""
    a = _arrays(rng, bias_shape=(1, IDIOM_FEATURES, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["conv2d_0.tmp_0"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["conv2d_0.tmp_0", "conv_b"], ["conv2d_0.tmp_1"]),
             helper.make_node("Relu", ["conv2d_0.tmp_1"], ["relu_0.tmp_0"]),
             helper.make_node("GlobalAveragePool", ["relu_0.tmp_0"], ["pool2d_0.tmp_0"]),
             helper.make_node("Shape", ["pool2d_0.tmp_0"], ["shape_0.tmp_0"]),
             _const("starts_0", np.array([0], np.int64)),
             _const("ends_0", np.array([1], np.int64)),
             _const("axes_0", np.array([0], np.int64)),
             helper.make_node("Slice", ["shape_0.tmp_0", "starts_0", "ends_0", "axes_0"],
                              ["slice_0.tmp_0"]),
             _const("channels_0", np.array([IDIOM_FEATURES], np.int64)),
             helper.make_node("Concat", ["slice_0.tmp_0", "channels_0"], ["concat_0.tmp_0"], axis=0),
             helper.make_node("Reshape", ["pool2d_0.tmp_0", "concat_0.tmp_0"], ["flatten_0.tmp_0"]),
             helper.make_node("MatMul", ["flatten_0.tmp_0", "fc_w"], ["linear_0.tmp_0"]),
             helper.make_node("Add", ["linear_0.tmp_0", "fc_b"], ["linear_0.tmp_1"]),
             helper.make_node("Identity", ["linear_0.tmp_1"], ["save_infer_model/scale_0.tmp_0"])]
    return _model(nodes, [vi("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3, SIZE, SIZE])],
                  [vi("save_infer_model/scale_0.tmp_0", TensorProto.FLOAT,
                      ["p2o.DynamicDimension.1", CLASSES])],
                  [numpy_helper.from_array(v, k) for k, v in a.items()], "paddle",
                  opset=11, ir_version=6)


def idiom_logsoftmax(rng: np.random.Generator) -> onnx.ModelProto:
    """A PyTorch classifier ending in ``F.log_softmax`` (the MNIST-example style): the output
    is LogSoftmax of the logits; opset 13."""
    a = _arrays(rng)
    nodes, inits = _cnn("x", "features", "logits", a)
    nodes.append(helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=1))
    return _model(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                  [vi("log_probs", TensorProto.FLOAT, ["N", CLASSES])], inits, "logsoftmax",
                  opset=13, ir_version=7)


def idiom_rank0_output(rng: np.random.Generator) -> onnx.ModelProto:
    """An output whose ValueInfo has an empty shape (rank 0) although it is (N, K), as converters
    write when they could not infer it; the file passes onnx.checker without strict shape
    inference only (as such files do); opset 13."""
    nodes, inits = _cnn("x", "features", "scores", _arrays(rng))
    return _model(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                  [vi("scores", TensorProto.FLOAT, [])], inits, "rank0",
                  opset=13, ir_version=7, full_check=False)


def idiom_three_outputs(rng: np.random.Generator) -> onnx.ModelProto:
    """Several outputs, as multi-output Keras models and PyTorch exports returning a tuple:
    ``logits`` (N, K), ``probs`` = Softmax(logits) (N, K) and the feature map ``features``
    (N, C, H, W); opset 13."""
    nodes, inits = _cnn("x", "features", "logits", _arrays(rng))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    return _model(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                  [vi("logits", TensorProto.FLOAT, ["N", CLASSES]),
                   vi("probs", TensorProto.FLOAT, ["N", CLASSES]),
                   vi("features", TensorProto.FLOAT, ["N", IDIOM_FEATURES, SIZE, SIZE])],
                  inits, "three_outputs", opset=13, ir_version=7)


def idiom_spatial_output(rng: np.random.Generator) -> onnx.ModelProto:
    """A segmentation-style net (U-Net, saliency/matting models): Conv-Relu, a 1x1 Conv to one
    channel and a Sigmoid, output ``mask`` (N, 1, H, W) — pixel scores, not class scores."""
    a = _arrays(rng)
    head = (rng.standard_normal((1, IDIOM_FEATURES, 1, 1)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["features"]),
             helper.make_node("Conv", ["features", "head_w"], ["mask_logits"]),
             helper.make_node("Sigmoid", ["mask_logits"], ["mask"])]
    inits = [numpy_helper.from_array(a["conv_w"], "conv_w"),
             numpy_helper.from_array(a["conv_b"], "conv_b"), numpy_helper.from_array(head, "head_w")]
    return _model(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                  [vi("mask", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])], inits, "segmentation",
                  opset=13, ir_version=7)


DET_CLASSES, DET_CELL = 2, 4  # tiny detectors: classes, pixels per grid cell (stride)


def tiny_yolo(rng: np.random.Generator, layout: str = "yolov8") -> onnx.ModelProto:
    """A tiny one-stage detector with exact receptive fields: Conv(3->8, 4x4, stride 4) - Relu
    ('features', an 8 x 8 grid of cells) - 1x1 Conv - Sigmoid class scores (K = 2) per cell
    (anchor a = 8 i + j); every anchor's box is its own cell, (cx, cy, w, h) = (4 j + 2, 4 i + 2,
    4, 4), so anchor a's scores read only the pixels of its box. ``layout``: ``yolov8`` output
    (N, 4 + K, 64); ``yolov5`` (N, 64, 5 + K) with a sigmoid objectness (a second 1x1 conv);
    ``boxes``: boxes (N, 64, 4) xyxy normalised to [0, 1] and scores (N, 64, K)."""
    g = SIZE // DET_CELL
    w = (rng.standard_normal((FEATURES, 3, DET_CELL, DET_CELL)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(FEATURES) * 0.1).astype(np.float32)
    cw = rng.standard_normal((DET_CLASSES, FEATURES, 1, 1)).astype(np.float32)
    cb = (rng.standard_normal(DET_CLASSES) - 1).astype(np.float32)
    ow = rng.standard_normal((1, FEATURES, 1, 1)).astype(np.float32)
    ii, jj = np.divmod(np.arange(g * g), g)
    cxcywh = np.stack([DET_CELL * jj + 2, DET_CELL * ii + 2, np.full(g * g, 4), np.full(g * g, 4)])
    xyxy = np.stack([DET_CELL * jj, DET_CELL * ii, DET_CELL * jj + 4, DET_CELL * ii + 4]) / SIZE
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w, "conv_w"), (b, "conv_b"), (cw, "cls_w"), (cb, "cls_b"), (ow, "obj_w"),
        (np.array([DET_CLASSES, g * g], np.int64), "cls_shape"),
        (np.array([1, g * g], np.int64), "obj_shape"),
        (np.array([4, g * g], np.int64), "box_dims"),
        ((xyxy if layout == "boxes" else cxcywh).astype(np.float32)[None], "grid")]]
    nodes = [helper.make_node("Conv", ["images", "conv_w", "conv_b"], ["conv"],
                              kernel_shape=[DET_CELL, DET_CELL], strides=[DET_CELL, DET_CELL]),
             helper.make_node("Relu", ["conv"], ["features"]),
             helper.make_node("Conv", ["features", "cls_w", "cls_b"], ["cls_logit"]),
             helper.make_node("Sigmoid", ["cls_logit"], ["cls_map"]),
             helper.make_node("Shape", ["images"], ["n"], end=1),
             helper.make_node("Concat", ["n", "cls_shape"], ["cls_dims"], axis=0),
             helper.make_node("Reshape", ["cls_map", "cls_dims"], ["cls"]),
             helper.make_node("Concat", ["n", "box_dims"], ["grid_dims"], axis=0),
             helper.make_node("Expand", ["grid", "grid_dims"], ["box"])]
    vi = helper.make_tensor_value_info
    x = vi("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    if layout == "yolov8":
        nodes.append(helper.make_node("Concat", ["box", "cls"], ["output0"], axis=1))
        outs = [vi("output0", TensorProto.FLOAT, ["N", 4 + DET_CLASSES, g * g])]
    elif layout == "yolov5":
        nodes += [helper.make_node("Conv", ["features", "obj_w"], ["obj_logit"]),
                  helper.make_node("Sigmoid", ["obj_logit"], ["obj_map"]),
                  helper.make_node("Concat", ["n", "obj_shape"], ["obj_dims"], axis=0),
                  helper.make_node("Reshape", ["obj_map", "obj_dims"], ["obj"]),
                  helper.make_node("Concat", ["box", "obj", "cls"], ["head"], axis=1),
                  helper.make_node("Transpose", ["head"], ["output"], perm=[0, 2, 1])]
        outs = [vi("output", TensorProto.FLOAT, ["N", g * g, 5 + DET_CLASSES])]
    else:
        nodes += [helper.make_node("Transpose", ["box"], ["boxes"], perm=[0, 2, 1]),
                  helper.make_node("Transpose", ["cls"], ["scores"], perm=[0, 2, 1])]
        outs = [vi("boxes", TensorProto.FLOAT, ["N", g * g, 4]),
                vi("scores", TensorProto.FLOAT, ["N", g * g, DET_CLASSES])]
    if layout != "yolov5":
        inits = [t for t in inits if t.name not in ("obj_w", "obj_shape")]
    return _model(nodes, [x], outs, inits, f"tiny_{layout}")


IDIOMS = (idiom_ir3_opset7_fp16, idiom_tf2onnx_nhwc, idiom_keras2onnx_prelu, idiom_torch1_flatten,
          idiom_paddle_reshape, idiom_logsoftmax, idiom_rank0_output, idiom_three_outputs,
          idiom_spatial_output)


def build_all() -> dict[str, onnx.ModelProto]:
    """Every test model by file stem, each from its own generator seeded with 0."""

    def rng() -> np.random.Generator:
        return np.random.default_rng(0)

    return {
        "linear": linear(rng()),
        "tiny_cnn": tiny_cnn(rng()),
        "tiny_cnn_batch1": tiny_cnn(rng(), batch=1),
        "tiny_cnn_nhwc": tiny_cnn(rng(), nhwc=True),
        "tiny_cnn_softmax": tiny_cnn(rng(), softmax=True),
        "tiny_cnn_fp16": tiny_cnn(rng(), dtype=np.float16),
        "tiny_nonlinear": tiny_nonlinear(rng()),
        "not_image": not_image(rng()),
        **{f.__name__: f(rng()) for f in IDIOMS},
        **{f"tiny_{k}": tiny_yolo(rng(), k) for k in ("yolov8", "yolov5", "boxes")},
    }


def main(out: Path = OUT) -> None:
    """Write every model of :func:`build_all` to ``out`` as ``NAME.onnx``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, model in build_all().items():
        onnx.save(model, out / f"{name}.onnx")
        print(f"wrote {out / name}.onnx")


if __name__ == "__main__":
    main()
