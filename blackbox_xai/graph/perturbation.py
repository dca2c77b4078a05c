"""Perturbations made inside the graph: the model's input computed from the image, a baseline
and small per-query mask parameters, so that only those parameters cross to the device.

:func:`perturbation_graph` wraps a model: its image input becomes an inner tensor
``baseline + (image - baseline) * M`` (the host's :func:`~blackbox_xai.perturb.blend`, op for
op), transposed to NHWC and cast to the model's dtype where the model wants it. The masks M
(N, H, W) come from one of three kinds of parameters:

* ``"boxes"`` (occlusion): ``bbx_boxes`` (N, 4) int64 rows ``y0, y1, x0, x1``; M is 0 where
  ``y0 <= i < y1`` and ``x0 <= j < x1``, else 1 (Less / Not / And on ``bbx_rows`` = arange(H)
  and ``bbx_cols`` = arange(W));
* ``"grids"`` (RISE): ``bbx_grids`` (N, s, s) bool and ``bbx_shifts`` (N, 2) int64 ``dy, dx``;
  M = Ry[dy + arange(H)] @ G @ Rx[dx + arange(W)]^T in float64, with the bilinear matrices
  ``bbx_row_weights`` (RH, s) and ``bbx_col_weights`` (RW, s) (Gather + MatMul: the host's
  separable upsampling and crop, exactly);
* ``"segments"`` (LIME, Shapley): ``bbx_keep`` (N, d) bool and the label map ``bbx_labels``
  (H, W) int64; M = keep[:, labels] (one Gather).

Inputs are ordered per-row parameters first, then ``bbx_image`` (C, H, W) and
``bbx_baseline`` (C, H, W) float32 in NCHW, then the kind's shared tensors.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .io import copy_model, finalize

Kind = Literal["boxes", "grids", "segments"]

IMAGE, BASELINE = "bbx_image", "bbx_baseline"
BOXES, ROWS, COLS = "bbx_boxes", "bbx_rows", "bbx_cols"
GRIDS, SHIFTS, ROW_WEIGHTS, COL_WEIGHTS = "bbx_grids", "bbx_shifts", "bbx_row_weights", "bbx_col_weights"
KEEP, LABELS = "bbx_keep", "bbx_labels"
PER_ROW: dict[str, tuple[str, ...]] = {"boxes": (BOXES,), "grids": (GRIDS, SHIFTS),
                                       "segments": (KEEP,)}
SHARED: dict[str, tuple[str, ...]] = {"boxes": (ROWS, COLS),
                                      "grids": (ROWS, COLS, ROW_WEIGHTS, COL_WEIGHTS),
                                      "segments": (LABELS,)}
_P = "bbx_pert_"  # prefix of every inner tensor this rewrite adds
_MIN_OPSET = 13  # Unsqueeze with axes as an input


def perturbation_graph(model: onnx.ModelProto, input_name: str, kind: Kind, *,
                       layout: Literal["NCHW", "NHWC"] = "NCHW") -> onnx.ModelProto:
    """A copy of ``model`` whose input ``input_name`` is made inside the graph from the image,
    a baseline and mask parameters of ``kind`` (see the module docstring).

    Args:
        model: an image model with a dynamic batch axis (the batch is the parameters' N).
        input_name: its image input, 4-D float, in ``layout``.
        kind: ``"boxes"``, ``"grids"`` or ``"segments"``.
        layout: the input's layout; the image and baseline inputs are NCHW either way.

    Raises:
        ValueError: an unknown kind or layout, an input that is not there, a default opset
            below 13, or a graph that already uses the names this rewrite adds.
    """
    if kind not in PER_ROW:
        raise ValueError(f"kind={kind!r}: use 'boxes', 'grids' or 'segments'")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout={layout!r}: use 'NCHW' or 'NHWC'")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _MIN_OPSET:
        raise ValueError(f"perturbation_graph needs a default opset >= {_MIN_OPSET}, not {opset}")
    out = copy_model(model)
    g = out.graph
    target = next((i for i in g.input if i.name == input_name), None)
    if target is None:
        raise ValueError(f"input_name={input_name!r} is not an input of the model")
    names = {n for node in g.node for n in (*node.input, *node.output)} | \
        {v.name for v in (*g.input, *g.initializer)}
    ours = {IMAGE, BASELINE, *PER_ROW[kind], *SHARED[kind]}
    clash = sorted(n for n in names if n.startswith(_P) or n in ours)
    if clash:
        raise ValueError(f"the model already has tensors named like this rewrite's: {clash[:3]}")

    dims = [d.dim_value or d.dim_param or f"{_P}d{i}" for i, d in
            enumerate(target.type.tensor_type.shape.dim)]
    n, c, h, w = dims if layout == "NCHW" else (dims[0], dims[3], dims[1], dims[2])
    n = n if isinstance(n, str) else "N"
    elem = target.type.tensor_type.elem_type
    inputs, nodes, inits = _mask(kind, n, h, w)
    inputs[len(PER_ROW[kind]):len(PER_ROW[kind])] = [
        helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, [c, h, w]),
        helper.make_tensor_value_info(BASELINE, TensorProto.FLOAT, [c, h, w])]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), f"{_P}axis1"))
    nodes += [helper.make_node("Sub", [IMAGE, BASELINE], [f"{_P}diff"]),
              helper.make_node("Unsqueeze", [f"{_P}mask", f"{_P}axis1"], [f"{_P}mask4"]),
              helper.make_node("Mul", [f"{_P}diff", f"{_P}mask4"], [f"{_P}scaled"]),
              helper.make_node("Add", [f"{_P}scaled", BASELINE], [f"{_P}nchw"])]
    last = f"{_P}nchw"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], [f"{_P}nhwc"], perm=[0, 2, 3, 1]))
        last = f"{_P}nhwc"
    if elem != TensorProto.FLOAT:
        # ONNX Runtime's CPU provider runs fp16 convolutions in float and then drops a Cast
        # pair float -> fp16 -> float, which would skip the rounding to fp16 that the host
        # path applies; a Reshape that copies the shape sits between the pair and keeps it.
        inits.append(numpy_helper.from_array(np.zeros(len(dims), np.int64), f"{_P}same_shape"))
        nodes += [helper.make_node("Cast", [last], [f"{_P}cast"], to=elem),
                  helper.make_node("Reshape", [f"{_P}cast", f"{_P}same_shape"], [input_name])]
    else:
        nodes.append(helper.make_node("Identity", [last], [input_name]))

    kept_inputs = [i for i in g.input if i.name != input_name]
    del g.input[:]
    g.input.extend([*inputs, *kept_inputs])
    g.initializer.extend(inits)
    model_nodes = list(g.node)
    del g.node[:]
    g.node.extend([*nodes, *model_nodes])
    return finalize(out)


def _mask(kind: Kind, n: str, h: int | str, w: int | str
          ) -> tuple[list[onnx.ValueInfoProto], list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(inputs, nodes, initializers) that compute ``bbx_pert_mask`` (N, H, W) float32."""
    info = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(np.array([k], np.int64), f"{_P}index{k}") for k in range(4)]
    if kind == "segments":
        inputs = [info(KEEP, TensorProto.BOOL, [n, f"{_P}segments"]),
                  info(LABELS, TensorProto.INT64, [h, w])]
        nodes = [helper.make_node("Gather", [KEEP, LABELS], [f"{_P}kept"], axis=1),
                 helper.make_node("Cast", [f"{_P}kept"], [f"{_P}mask"], to=TensorProto.FLOAT)]
        return inputs, nodes, []
    if kind == "boxes":
        inputs = [info(BOXES, TensorProto.INT64, [n, 4]), info(ROWS, TensorProto.INT64, [h]),
                  info(COLS, TensorProto.INT64, [w])]
        nodes = [helper.make_node("Gather", [BOXES, f"{_P}index{k}"], [f"{_P}b{k}"], axis=1)
                 for k in range(4)]
        for axis, (lo, hi, grid) in enumerate(((0, 1, ROWS), (2, 3, COLS))):
            # inside[i, t] = lo_i <= t < hi_i, unsqueezed to (N, H, 1) and (N, 1, W)
            nodes += [helper.make_node("Less", [grid, f"{_P}b{lo}"], [f"{_P}before{axis}"]),
                      helper.make_node("Not", [f"{_P}before{axis}"], [f"{_P}from{axis}"]),
                      helper.make_node("Less", [grid, f"{_P}b{hi}"], [f"{_P}until{axis}"]),
                      helper.make_node("And", [f"{_P}from{axis}", f"{_P}until{axis}"],
                                       [f"{_P}inside{axis}"]),
                      helper.make_node("Unsqueeze", [f"{_P}inside{axis}", f"{_P}index{2 - axis}"],
                                       [f"{_P}inside{axis}_3d"])]
        nodes += [helper.make_node("And", [f"{_P}inside0_3d", f"{_P}inside1_3d"], [f"{_P}hidden"]),
                  helper.make_node("Not", [f"{_P}hidden"], [f"{_P}kept"]),
                  helper.make_node("Cast", [f"{_P}kept"], [f"{_P}mask"], to=TensorProto.FLOAT)]
        return inputs, nodes, inits
    s = f"{_P}cells"
    inputs = [info(GRIDS, TensorProto.BOOL, [n, s, s]), info(SHIFTS, TensorProto.INT64, [n, 2]),
              info(ROWS, TensorProto.INT64, [h]), info(COLS, TensorProto.INT64, [w]),
              info(ROW_WEIGHTS, TensorProto.DOUBLE, [f"{_P}up_h", s]),
              info(COL_WEIGHTS, TensorProto.DOUBLE, [f"{_P}up_w", s])]
    nodes = [helper.make_node("Cast", [GRIDS], [f"{_P}grid"], to=TensorProto.DOUBLE),
             helper.make_node("Gather", [SHIFTS, f"{_P}index0"], [f"{_P}dy"], axis=1),
             helper.make_node("Gather", [SHIFTS, f"{_P}index1"], [f"{_P}dx"], axis=1),
             helper.make_node("Add", [f"{_P}dy", ROWS], [f"{_P}row_idx"]),
             helper.make_node("Add", [f"{_P}dx", COLS], [f"{_P}col_idx"]),
             helper.make_node("Gather", [ROW_WEIGHTS, f"{_P}row_idx"], [f"{_P}ry"], axis=0),
             helper.make_node("Gather", [COL_WEIGHTS, f"{_P}col_idx"], [f"{_P}rx"], axis=0),
             helper.make_node("Transpose", [f"{_P}rx"], [f"{_P}rx_t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", [f"{_P}ry", f"{_P}grid"], [f"{_P}half"]),
             helper.make_node("MatMul", [f"{_P}half", f"{_P}rx_t"], [f"{_P}mask64"]),
             helper.make_node("Cast", [f"{_P}mask64"], [f"{_P}mask"], to=TensorProto.FLOAT)]
    return inputs, nodes, inits[:2]
