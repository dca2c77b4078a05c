"""Graph surgery on ONNX models: pure ``ModelProto -> ModelProto`` functions that copy their input.

Every rewrite keeps the source ``ir_version`` and opsets and passes ``onnx.checker`` and shape
inference; the user's file is never modified.
"""

from .batch import make_batch_dynamic
from .expose import expose
from .inspect import (
    CandidateLayer,
    TensorInfo,
    candidate_layers,
    default_layer,
    op_histogram,
    resolve_tensor,
    tensor_info,
)
from .io import copy_model, finalize, infer_shapes, load, save
from .split import split

__all__ = ["CandidateLayer", "TensorInfo", "candidate_layers", "copy_model", "default_layer",
           "expose", "finalize", "infer_shapes", "load", "make_batch_dynamic", "op_histogram",
           "resolve_tensor", "save", "split", "tensor_info"]
