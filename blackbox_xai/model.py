"""The model as a query function: one ONNX Runtime session, ``(N, C, H, W) -> (N, K)`` scores.

Every method only asks a :class:`Model` questions through :meth:`Model.run_batched`, the one place
where inputs are chunked into batches, cast to the model's dtype and layout, and counted.
Inputs are always given in NCHW float32; NHWC and fp16 models are adapted here.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from .cache import cache_dir, recall, remember
from .errors import (
    BlackboxError,
    GraphUnavailableError,
    ModelInputError,
    ModelLoadError,
    did_you_mean,
)
from .gradient_check import (
    GradientCheck,
    check_layer_gradient,
    check_steepest,
    is_quantized,
    why_unchecked,
)
from .graph.autodiff import backward_cached
from .graph.batch import make_batch_dynamic
from .graph.expose import expose, expose_for_session
from .graph.inspect import FLOAT_TYPES, separates, value_infos
from .graph.io import copy_model, fed_inputs, infer_shapes, load, node_attrs
from .graph.normalize import (
    declare_output_shapes,
    declare_shapes,
    default_opset,
    fix_input_size,
    incomplete_shapes,
    normalize,
    without_unread_inputs,
)
from .graph.perturbation import Kind, perturbation_graph
from .graph.pixel_input import PIXEL_TYPES, float_pixel_input, why_no_float_view
from .graph.runtime_versions import declare_ir, declare_opset
from .graph.split import split
from .graph.surrogate import Pair, frozen_surrogate, frozen_values
from .graph.zipmap import unzipped_outputs, without_string_outputs
from .runtime import (
    CPU,
    CUDA,
    ONNX_FLOAT_TYPES,
    Device,
    batch_limit,
    create_session,
    cuda_free_memory,
    evaluate,
    input_budget,
    max_ir_version,
    max_opset,
    ort_value,
    run,
    session_device,
    verify_batch_dynamic,
    verify_same_function,
)

log = logging.getLogger(__name__)

__all__ = ["CPU", "CUDA", "Device", "InputSpec", "Model", "ScoreKind", "load_model", "one_hot",
           "sha256_of", "softmax"]

T = TypeVar("T")
ScoreKind = Literal["logit", "prob", "logprob"]
Layout = Literal["NCHW", "NHWC"]
SCORES = "bbx_scores"  # the (N, K) scores output that derived graphs add
REGION = "bbx_region"  # the (N, 1) score output of a region view (Model.region_view)
CHECKED_ROWS = 3  # rows of a batch tried until the gradient check is conclusive
SIZED_SESSIONS = 4  # sessions kept per derived graph specialised to image sizes (Model.sized)
DETECTION = "bbx_detection"  # the (N, 1) score output of a detection view (Model.detection_view)
# Ops that pass scores through unchanged on the way to a graph output.
_PASS_THROUGH = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze")
_ACTIVATIONS = ("Softmax", "LogSoftmax", "Sigmoid")
_NON_NUMERIC_ELEM_TYPES = frozenset((onnx.TensorProto.STRING, onnx.TensorProto.BOOL))
_INTEGER_ELEM_TYPES = frozenset(getattr(onnx.TensorProto, t) for t in (
    "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"))


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: name, layout and canonical NCHW size (None = dynamic)."""

    name: str
    layout: Layout
    dtype: type
    batch: int | None
    channels: int
    height: int | None
    width: int | None

    @property
    def chw(self) -> tuple[int, int | None, int | None]:
        return (self.channels, self.height, self.width)


def readable_by_runtime(source: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``source``, or a copy declaring the newest IR version and ai.onnx opset this ONNX Runtime
    reads, when the file declares newer ones and uses nothing that came after them
    (:mod:`~blackbox_xai.graph.runtime_versions`; a one-line error when it does)."""
    runtime = f"ONNX Runtime {ort.__version__}"
    out = source
    ir_limit, opset_limit = max_ir_version(), max_opset()
    if ir_limit is not None and out.ir_version > ir_limit:
        out = declare_ir(out, ir_limit, runtime)
        log.info("%s declares ONNX IR version %d; %s reads up to %d: running a copy declared "
                 "%d (the model uses nothing newer)", name, source.ir_version, runtime,
                 ir_limit, ir_limit)
    if opset_limit is not None:
        declared = declare_opset(out, opset_limit, runtime)
        if declared is not out:
            log.info("%s imports opset %d; %s runs up to %d: running a copy importing %d (none "
                     "of its ops changed in between)", name, default_opset(out), runtime,
                     opset_limit, opset_limit)
            out = declared
    return out


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dim(d: object) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _detect_layout(shape: Sequence[int | None], name: str, layout: Layout | None) -> Layout:
    if layout is not None:
        if layout not in ("NCHW", "NHWC"):
            raise ModelInputError(f"layout={layout!r}: use 'NCHW' or 'NHWC'")
        channels = shape[1] if layout == "NCHW" else shape[3]
        other = shape[3] if layout == "NCHW" else shape[1]
        if channels not in (None, 1, 2, 3, 4) and other in (1, 3, 4):
            raise ModelInputError(
                f"--layout {layout}: input {name!r} is {list(shape)}; its "
                f"{'second' if layout == 'NCHW' else 'last'} axis ({channels}) is not a channel "
                "count")
        return layout
    c_first, c_last = shape[1] in (1, 3, 4), shape[3] in (1, 3, 4)
    if c_last and not c_first:
        return "NHWC"
    if c_first or shape[1] is None and shape[3] is None:
        return "NCHW"
    raise ModelInputError(
        f"input {name!r} has shape {list(shape)}: cannot tell its channel axis; pass layout='NCHW' or 'NHWC'"
    )


def softmax(z: npt.NDArray[np.floating], axis: int = -1) -> npt.NDArray[np.float32]:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def one_hot(n: int, k: int, target: int, weight: float = 1.0) -> npt.NDArray[np.float32]:
    """A backward graph's seed (n, k) that selects class ``target``."""
    seed = np.zeros((n, k), np.float32)
    seed[:, target] = weight
    return seed


def log_softmax(z: npt.NDArray[np.floating], axis: int = -1) -> npt.NDArray[np.float32]:
    z = z - z.max(axis=axis, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=axis, keepdims=True))).astype(np.float32)


def final_activation(proto: onnx.ModelProto, output: str) -> tuple[str, str | None]:
    """(logits tensor, activation): the input of a Softmax/LogSoftmax/Sigmoid that ends the
    graph at ``output`` (through Identity/Cast/Reshape/Flatten/Squeeze), else (output, None).

    Raises:
        ModelInputError: the activation is fused into an ONNX Runtime op that the graph still
            has (normalisation, which unfuses it, failed): no logits tensor exists, and the
            probabilities must not be explained as logits.
    """
    producers = {o: n for n in proto.graph.node for o in n.output}
    node = producers.get(output)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is not None and node.op_type in _ACTIVATIONS:
        return node.input[0], node.op_type
    fused = node_attrs(node).get("activation", "") \
        if node is not None and node.domain == "com.microsoft" else ""
    if fused in _ACTIVATIONS:
        raise ModelInputError(f"the scores' final {fused} is fused into ONNX Runtime's "
                              f"{node.op_type} {node.name or node.output[0]!r} and the graph "
                              "could not be rewritten to separate it, so there are no logits "
                              "to explain: use the original export")
    return output, None


#: seconds of timed runs per batch size in the batch-size probe (at least two runs each)
PROBE_SECONDS = 0.1
#: the probe's finalists: the fastest batches of the climb within 15% of the best
FINALISTS = 3
#: finalists this close to the fastest count as tied, and the largest of them wins: 0.1 s
#: timings favour small batches (on the 2-core VM batch 1 read 10% above its 1 s rate, batch
#: 32 8% below), and a larger batch spreads each run's fixed cost over more inputs
TIE = 0.9
#: rounds in which the probe times its finalists again, in turn
CONFIRM_ROUNDS = 2
#: part of a remembered batch size's key: a changed probe measures again
PROBE_VERSION = 5


class Cut(NamedTuple):
    """A model cut at a layer (:meth:`Model.cut`): the features session (input ->
    ``names`` = ``[layer, *crossing]``), the head session (those tensors -> scores), and the
    first crossing tensor without a batch axis (shape arithmetic), if any."""

    features: ort.InferenceSession
    head: ort.InferenceSession
    names: list[str]
    unbatched: str | None


class Model:
    """An ONNX model as a batched query function ``(N, C, H, W) float32 -> (N, K) float32``.

    Loading is one straight pipeline: read the file -> :func:`~blackbox_xai.graph.normalize.
    normalize` (IR and opset upgrade, verified in ONNX Runtime; ranks completed) -> make a fixed
    batch axis dynamic (verified) -> one session. Rewritten graphs (backward graphs, exposed
    layers, heads) are built from that normalised graph and cached per model (:meth:`derived`).

    Args:
        path: the ``.onnx`` file (never modified).
        device: ``"auto"`` (CUDA when it really runs, else CPU), ``"cpu"`` or ``"cuda"`` (fails
            clearly when CUDA is not usable).
        score: what is explained. ``"logit"``: the class scores before a final
            Softmax/LogSoftmax/Sigmoid (the graph is cut there) or the output as is;
            ``"prob"``: softmax of the logits (sigmoid for a sigmoid output); ``"logprob"``:
            their logarithm.
        output: name of the score output (default: the only output, or the only 2-D one).
        batch_size: queries per session run, or ``"auto"`` to probe for the best throughput.
        layout: override the detected input layout.
        threads: ONNX Runtime intra-op threads (default: all cores).
        dynamic_batch: make a fixed batch axis dynamic (verified in ONNX Runtime, batch 1 vs 2)
            so queries run in full batches; when the graph does not allow it, inputs are fed
            one fixed-size chunk at a time.
        io_binding: run through ONNX Runtime's IO binding, inputs and outputs as OrtValues in
            the device's memory (same outputs as plain runs); None: on CUDA only.
        perturb_in_graph: let occlusion, RISE, LIME and Shapley send mask parameters and apply
            them inside a rewritten graph (:meth:`perturbed_scores`; same inputs to the model
            as the host path); None: on CUDA only, where the graph allows it. Needs a dynamic
            batch axis and a graph that can be rewritten.
        task: ``"classify"`` (class scores, refused otherwise) or ``"detect"``: a detector,
            whose raw outputs (every graph output, or ``output``) are kept as they are for
            :mod:`blackbox_xai.targets` to decode (:meth:`raw_outputs`); nothing is cut; or
            ``"segment"``: a segmentation net whose output (or ``output``) is a map (N, K, H, W),
            cut before a final Softmax/Sigmoid like class scores (:meth:`logits`), explained for
            a :class:`~blackbox_xai.targets.Region` (``score="logit"`` only).
    """

    def __init__(self, path: str | os.PathLike, *, device: Device = "auto",
                 score: ScoreKind = "logit", output: str | None = None,
                 batch_size: int | Literal["auto"] = "auto", layout: Layout | None = None,
                 threads: int | None = None, dynamic_batch: bool = True,
                 io_binding: bool | None = None, perturb_in_graph: bool | None = None,
                 task: Literal["classify", "detect", "segment"] = "classify") -> None:
        if task not in ("classify", "detect", "segment"):
            raise ModelInputError(f"task={task!r}: use 'classify', 'detect' or 'segment'")
        if task == "segment" and score != "logit":
            raise ModelInputError(f"score={score!r}: a region's score is the sum of its class "
                                  "logits; use score='logit' with task='segment'")
        if score not in ("logit", "prob", "logprob"):
            raise ModelInputError(f"score={score!r}: use 'logit', 'prob' or 'logprob'")
        if threads is not None and not (isinstance(threads, int) and threads >= 1):
            raise ModelInputError(f"threads={threads!r}: use a positive integer (--threads N)")
        self.path = Path(path)
        original = load(self.path)
        source = readable_by_runtime(original, self.path.name)
        #: the versions the file was re-declared at to run here (graph/runtime_versions.py)
        self.declared_as = {k: new for k, old, new in (
            ("ir_version", original.ir_version, source.ir_version),
            ("opset", default_opset(original), default_opset(source))) if new != old}
        self.sha256 = sha256_of(self.path)
        self.device, self.threads, self.score, self.task = device, threads, score, task
        self.proto, self.graph_problem = self._normalized(source)
        self.proto, self.pixel_type = self._float_pixels(self.proto)
        self.proto, unzipped = unzipped_outputs(self.proto)
        self.zipped_outputs = unzipped  # {a ZipMap's output: the scores it zips}
        for zipped, scores in unzipped.items():
            log.info("output %r is a ZipMap's list of {label: score} maps: its input %r holds "
                     "the scores", zipped, scores)
        output = unzipped.get(output, output) if output is not None else None
        # a detector keeps every raw output for its decoder, strings included
        self.proto, strings = without_string_outputs(self.proto) if task != "detect" \
            else (self.proto, [])
        if output in strings:
            raise ModelInputError(f"output {output!r} holds strings, not class scores: choose "
                                  "them with --output NAME")
        self.proto, _ = without_unread_inputs(self.proto)
        unread = without_unread_inputs(source)[1]  # the file asks for them: run the rewrite
        if unread:
            log.info("dropped inputs that nothing reads (ONNX Runtime would ask for them): %s",
                     ", ".join(unread))
        self.input = self._find_input(self.proto, layout)
        # The file itself runs unless the batch was made dynamic or the logits are exposed:
        # the normalised graph computes the same function.
        changed = self.input.batch is not None and dynamic_batch and self._try_dynamic_batch(layout)
        # the file declares too new an IR or opset, takes integer pixels or zips its scores
        changed = (changed or source is not original or self.pixel_type is not None
                   or bool(unzipped) or bool(strings) or bool(unread))
        self.output_names = [self._find_output(output)] if output is not None or task != "detect" \
            else [o.name for o in self.proto.graph.output]
        self.output_integer = [o.type.tensor_type.elem_type in _INTEGER_ELEM_TYPES
                               for o in self.proto.graph.output if o.name in self.output_names]
        self.output_name = self.output_names[0]
        self.logits_name, self.activation = final_activation(self.proto, self.output_name) \
            if task != "detect" else (self.output_name, None)
        forward = self.proto
        if self.logits_name != self.output_name:
            forward, changed = expose_for_session(self.proto, [self.logits_name]), True
        try:
            self.session, self.provider = create_session(
                forward.SerializeToString() if changed else str(self.path), device, threads)
        except ModelLoadError:
            # A file ONNX Runtime saved for the CPU can hold fused kernels the CUDA provider
            # cannot build (FusedConv with its CPU-only activations): run the standard-op
            # form, checked on the CPU against the file in _normalized, instead.
            if changed or not self._rewrite_checked:
                raise
            self.session, self.provider = create_session(forward.SerializeToString(), device,
                                                         threads)
            log.info("the file does not load on %s: running its checked standard-op form",
                     self.provider)
        log.info("model %s: provider %s", self.path.name, self.provider)
        on_cuda = self.provider.startswith(CUDA)
        self.io_binding = on_cuda if io_binding is None else bool(io_binding)
        why_not = self.graph_problem or (self.input.batch is not None and
                                         f"its batch axis is fixed at {self.input.batch}")
        if perturb_in_graph and why_not:
            raise ModelInputError(f"perturb_in_graph=True: the model cannot take perturbations "
                                  f"inside its graph ({why_not})")
        self.perturb_in_graph = (on_cuda and not why_not) if perturb_in_graph is None \
            else bool(perturb_in_graph)
        self.n_queries = 0
        self._batch_size: int | None = None
        self.set_batch_size(batch_size)
        self._sessions: dict[Hashable, ort.InferenceSession] = {}
        self._cuda_rows: dict[int, int] = {}  # id(session): its rows per run on CUDA
        self._facts: dict[Hashable, object] = {}
        #: the finite-difference check of each backward graph (to the input or one layer)
        self.gradient_checks: dict[Hashable, GradientCheck] = {}
        self._shapes_measured = False
        self.num_classes = self._check_scores()
        self.n_queries = 0
        if self.logits_name != self.output_name:
            log.info("explaining %s scores of %r (the input of the final %s)", score,
                     self.logits_name, self.activation)

    # ---- loading ----------------------------------------------------------------------------
    def _normalized(self, source: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
        """(graph to rewrite, why graph rewrites cannot run on this model or None).

        The normalised graph computes what the file computes (an opset conversion or unfused
        ONNX Runtime ops are checked in ONNX Runtime on a probe batch); when it does not, graph
        methods refuse and the black-box methods run on the file as it is.
        """
        norm = normalize(source)
        if norm.changes:
            log.info("normalised %s: %s", self.path.name, ", ".join(norm.changes))
        self._rewrite_checked = False
        if not norm.rewritten:
            return norm.model, norm.problem
        try:  # against the file as ONNX Runtime runs it, fed only what the graph reads
            verify_same_function(without_unread_inputs(source)[0], norm.model, norm.model,
                                 norm.rewritten)
        except BlackboxError as e:
            problem = f"the model cannot be rewritten for graph methods ({e})"
            log.info("%s; running the file as it is", problem)
            return source, problem
        self._rewrite_checked = True  # the rewrite computes what the file computes
        return norm.model, norm.problem

    def graph(self) -> onnx.ModelProto:
        """The normalised graph that rewrites start from, or a one-line error saying why the
        graph methods cannot run on this model."""
        if self.graph_problem:
            raise GraphUnavailableError(self.graph_problem)
        if not self._shapes_measured:
            self.proto, self._shapes_measured = self._measured_shapes(self.proto), True
        return self.proto

    def _measured_shapes(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """``proto`` with the shapes inference left unknown measured in two runs (batch 1 and
        2, zeros; axes that differ between them stay unknown), or ``proto`` when none are or
        the input's height and width are not fixed."""
        names = incomplete_shapes(proto)
        if not names or self.input.height is None or self.input.width is None:
            return proto  # with a dynamic image size, shapes measured at one size are not facts
        seen = []
        try:
            session, _ = create_session(expose(proto, names).SerializeToString(), "cpu",
                                        self.threads)
            for n in (1, 2) if self.input.batch is None else (self.input.batch,):
                x = self._to_model_input(np.zeros((n, *self.example_chw()), np.float32))
                seen.append(run(session, names, {self.input.name: x}))
        except BlackboxError as e:  # best effort: the rules that need a shape say so
            log.info("could not measure %d tensor shapes: %s", len(names), e)
            return proto
        shapes, types = {}, {}
        for i, name in enumerate(names):
            runs = [s[i].shape for s in seen]
            if len({len(r) for r in runs}) == 1:
                shapes[name] = tuple(d if all(r[a] == d for r in runs) else None
                                     for a, d in enumerate(runs[0]))
                types[name] = helper.np_dtype_to_tensor_dtype(seen[0][i].dtype)
        log.info("measured the shapes of %d tensors that inference left unknown", len(shapes))
        return declare_shapes(proto, shapes, types)

    @property
    def returns_probabilities(self) -> bool:
        """Whether ``model()`` returns class probabilities (``score="prob"``)."""
        return self.score == "prob"

    def probabilities(self, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities of scores this model returned (a one-class view's score as is:
        :meth:`region_view`, :meth:`detection_view`; its softmax would be 1)."""
        if self.score == "prob" or self.output_name in (REGION, DETECTION):
            return scores
        if self.score == "logprob":
            return np.exp(scores).astype(np.float32)
        if self.activation == "Sigmoid":
            return (1 / (1 + np.exp(-scores))).astype(np.float32)
        return softmax(scores)

    def _float_pixels(self, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
        """``proto`` and None, or, when the image input arrives as integer pixels that the graph
        only casts to float, its float view and the integer type (:mod:`~blackbox_xai.graph.
        pixel_input`; a one-line error when the graph uses the integers otherwise)."""
        inputs = fed_inputs(proto.graph)
        if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type not in PIXEL_TYPES:
            return proto, None
        inp = inputs[0]
        kind = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
        why = why_no_float_view(proto, inp.name)
        if why:
            raise ModelInputError(f"model input {inp.name!r} is tensor({kind}) {_shape_of(inp)} "
                                  f"and {why}: integer pixels are taken only when the graph casts "
                                  "them to float (a float image tensor is expected)")
        log.info("model input %r takes %s pixels that the graph only casts to float: running a "
                 "copy that takes them as floats", inp.name, kind)
        return float_pixel_input(proto, inp.name), kind

    def _find_input(self, proto: onnx.ModelProto, layout: Layout | None) -> InputSpec:
        inputs = fed_inputs(proto.graph)
        if len(inputs) != 1:
            names = ", ".join(f"{i.name}{_shape_of(i)}" for i in inputs)
            raise ModelInputError(f"model has {len(inputs)} inputs ({names}): an image model has one")
        inp = inputs[0]
        kind = f"tensor({helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)})" \
            if inp.type.HasField("tensor_type") else "not a tensor"
        kind = {"tensor(float32)": "tensor(float)", "tensor(float64)": "tensor(double)"}.get(kind, kind)
        shape = _shape_of(inp)
        if shape is None or len(shape) != 4 or kind not in ONNX_FLOAT_TYPES:
            raise ModelInputError(f"model input {inp.name!r} is {kind} {shape}: not an image "
                                  "(expected a 4-D float NCHW or NHWC tensor)")
        dims = [_dim(d) for d in shape]
        lay = _detect_layout(dims, inp.name, layout)
        n, c, h, w = dims if lay == "NCHW" else (dims[0], dims[3], dims[1], dims[2])
        if c is None:
            raise ModelInputError(f"model input {inp.name!r} has a dynamic channel axis: not an image")
        return InputSpec(inp.name, lay, ONNX_FLOAT_TYPES[kind], n, c, h, w)

    def _try_dynamic_batch(self, layout: Layout | None) -> bool:
        try:
            proto = make_batch_dynamic(self.proto)
            verify_batch_dynamic(self.proto, proto, self.input.batch)
        except BlackboxError as e:
            log.info("keeping the fixed batch of %d: %s", self.input.batch, e)
            return False
        self.proto = proto
        self.input = self._find_input(proto, layout)
        log.info("made the fixed batch axis of %s dynamic (verified)", self.path.name)
        return True

    def _find_output(self, output: str | None) -> str:
        outs = {o.name: _shape_of(o) for o in self.proto.graph.output}
        if output is not None:
            if output not in outs:
                raise ModelInputError(did_you_mean(output, outs, "output"))
            return output
        if len(outs) == 1:
            return next(iter(outs))
        if len(self.zipped_outputs) == 1:  # a ZipMap's scores, beside its label output
            return next(iter(self.zipped_outputs.values()))
        numeric = {o.name for o in self.proto.graph.output
                   if o.type.tensor_type.elem_type not in _NON_NUMERIC_ELEM_TYPES}
        two_d = [name for name, shape in outs.items()
                 if name in numeric and shape is not None and len(shape) == 2]
        if len(two_d) == 1:
            return two_d[0]
        listed = ", ".join(f"{n} {list(s) if s is not None else '?'}" for n, s in outs.items())
        raise ModelInputError(f"the model has {len(outs)} outputs ({listed}): choose the class "
                              "scores with --output NAME")

    def _check_scores(self) -> int | None:
        """Run one input; refuse outputs that are not class scores; return the class count.

        Class scores are (N, K) or (N, K, 1, ..., 1) (Caffe2's 1x1-conv heads); a spatial map
        (N, C, H, W) or a box tensor (N, A, D) is a detector's or a segmentation net's output.
        The declared shapes of the outputs are corrected from this run (exporters write rank
        0 or nothing), so that rewritten graphs get the true ranks.
        """
        x = np.zeros((1, *self.example_chw()), np.float32)
        feeds = {self.input.name: self._to_model_input(_pad(x, self.input.batch or 1))}
        names = [o.name for o in self.proto.graph.output]
        outs = dict(zip(names, run(self.session, names, feeds)))
        raw = outs[self.output_name]
        if not np.issubdtype(raw.dtype, np.number):
            held = "strings" if raw.dtype.kind in "OSU" else str(raw.dtype)
            raise ModelInputError(f"output {self.output_name!r} holds {held}, not class scores: "
                                  "choose them with --output NAME")
        if raw.ndim == 0 or (raw.shape[0] != (self.input.batch or 1)):
            raise ModelInputError(f"output {self.output_name!r} has shape {list(raw.shape)}: it has "
                                  "no batch axis, so it cannot be class scores")
        if raw.size == 0:
            raise ModelInputError(f"output {self.output_name!r} has shape {list(raw.shape)}: "
                                  "no class scores")
        wide = [d for d in raw.shape[1:] if d != 1]
        if len(wide) > 1 and self.task == "classify":
            raise ModelInputError(
                f"output {self.output_name!r} has shape {list(raw.shape)}: a spatial map or a box "
                "tensor, not class scores; for a detector use `bbx detect` and `bbx explain METHOD "
                "... --detection I` (load_model(path, task='detect')); for a segmentation net "
                "`bbx explain METHOD ... --class k` (load_model(path, task='segment'))")
        if self.task == "segment" and raw.ndim != 4:
            raise ModelInputError(f"output {self.output_name!r} has shape {list(raw.shape)}: not "
                                  "a segmentation map (N, K, H, W); --class/--region/--mask (a "
                                  "Region target) need a segmentation net")
        self.proto = declare_output_shapes(self.proto, {n: o.shape for n, o in outs.items()})
        if self.task == "detect":
            return None  # classes are counted by the decoder
        if self.task == "segment":
            return int(raw.shape[1])
        return int(np.prod(raw.shape[1:], dtype=np.int64))

    def example_chw(self, default_size: int = 224) -> tuple[int, int, int]:
        c, h, w = self.input.chw
        return (c, h or default_size, w or default_size)

    # ---- derived graphs ---------------------------------------------------------------------
    def scores_graph(self, kind: ScoreKind | None = None) -> tuple[onnx.ModelProto, str]:
        """The normalised graph with an output of (N, K) scores of ``kind`` (default: the
        model's ``score``), and that output's name: the logits flattened to (N, K), then
        Softmax/Sigmoid for ``prob``, LogSoftmax (log-sigmoid) for ``logprob``."""
        kind = kind or self.score
        proto = self.graph()
        if self.scores_output(kind) == self.output_name:  # the output itself: (N, K) logits
            return proto, self.output_name
        out = copy_model(proto)
        nodes = [helper.make_node("Flatten", [self.logits_name], [f"{SCORES}_logit"], axis=1)]
        last = f"{SCORES}_logit"
        sigmoid = self.activation == "Sigmoid"
        if kind == "prob":
            nodes.append(helper.make_node("Sigmoid" if sigmoid else "Softmax", [last], [SCORES],
                                          **({} if sigmoid else {"axis": -1})))
        elif kind == "logprob" and sigmoid:  # log sigmoid(z) = -softplus(-z)
            nodes += [helper.make_node("Neg", [last], [f"{SCORES}_neg"]),
                      helper.make_node("Softplus", [f"{SCORES}_neg"], [f"{SCORES}_sp"]),
                      helper.make_node("Neg", [f"{SCORES}_sp"], [SCORES])]
        elif kind == "logprob":
            nodes.append(helper.make_node("LogSoftmax", [last], [SCORES], axis=-1))
        else:
            nodes.append(helper.make_node("Identity", [last], [SCORES]))
        out.graph.node.extend(nodes)
        elem = self._elem_type(self.logits_name)
        out.graph.output.append(helper.make_tensor_value_info(SCORES, elem, ["N", self.num_classes]))
        return out, SCORES

    def scores_output(self, kind: ScoreKind | None = None) -> str:
        """The name :meth:`scores_graph` gives the scores output, without building the graph."""
        kind = kind or self.score
        if kind == "logit" and self.logits_name == self.output_name and self._scores_are_2d():
            return self.output_name
        return SCORES

    def _scores_are_2d(self) -> bool:
        o = next(o for o in self.proto.graph.output if o.name == self.output_name)
        return len(_shape_of(o) or ()) == 2

    # ---- backward graphs ----------------------------------------------------------------------
    def gradients(self, x: npt.NDArray[np.float32], seed: npt.NDArray[np.float32],
                  wrt: Sequence[str], *, kind: ScoreKind | None = None, progress=None
                  ) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[np.float32]],
                             list[npt.NDArray[np.float32]]]:
        """Scores (N, K), the forward values and ``d sum_k(seed_k * score_k) / d t`` of the
        ``wrt`` tensors, in one pass of the backward graph (a one-hot seed gives one class's
        gradient). The scores are :meth:`scores_graph`'s of ``kind`` (default: the model's).

        The backward graph is built once per (hash of the graph differentiated, wrt) and kept in
        the user cache folder (:mod:`blackbox_xai.cache`). Values and gradients of
        the model's own input are in NCHW, like ``x``. Each graph is checked against the model
        at its first call, through the input's gradient or else the first ``wrt`` tensor's
        (:meth:`check_input_gradient`, :meth:`check_layer_gradient`).
        """
        kind = kind or self.score
        out_name = self.scores_output(kind)
        size = self.dynamic_size(x)
        key = ("backward", kind, tuple(wrt))
        session = self.sized(key, size, lambda: self.backward_graph(wrt, kind, size))
        grads = [f"{w}_grad" for w in wrt]
        values = [w for w in wrt if w != self.input.name]
        outs = self.run_batched(session, {self.input.name: x, "seed": seed},
                                [out_name, *values, *grads], progress=progress)
        scores, rest = outs[0].reshape(len(x), -1), outs[1:]
        forward = dict(zip(values, rest[:len(values)]))
        forward[self.input.name] = x
        gradients = rest[len(values):]
        if self.input.layout == "NHWC":
            gradients = [g.transpose(0, 3, 1, 2) if w == self.input.name else g
                         for w, g in zip(wrt, gradients)]
        if self.input.name in wrt and len(x):
            grad = gradients[list(wrt).index(self.input.name)]
            self.check_input_gradient((key, size), x, seed, grad, kind)
        elif wrt and len(x):  # a layer, or the first of several (gradient rollout's blocks)
            def run_at(batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
                zeros = np.zeros((len(batch), *seed.shape[1:]), np.float32)
                return self.run_batched(session, {self.input.name: batch, "seed": zeros},
                                        [out_name, wrt[0]])

            self.check_layer_gradient((key, size), wrt[0], run_at, x, seed, gradients[0], kind)
        return scores, [forward[w] for w in wrt], gradients

    def check_input_gradient(self, key: Hashable, xs: npt.NDArray[np.float32],
                             seeds: npt.NDArray[np.float32], grads: npt.NDArray[np.float32],
                             kind: ScoreKind | None = None) -> GradientCheck:
        """Check a backward graph's input gradients ``grads`` = d sum(seed * scores) / dx of a
        batch ``xs`` (N, C, H, W) against the model's own scores of ``kind``, once per ``key``
        (the graph's): :func:`~blackbox_xai.gradient_check.check_steepest`, rows as in
        :meth:`_check_rows`. Raises :class:`InternalError` when they disagree."""
        proto = self.graph()
        why, quantized = why_unchecked(proto, surrogate=True), is_quantized(proto)
        if why is None and quantized and self._surrogate(kind) is None:
            why = "a quantized graph with no frozen surrogate (dynamic quantization)"

        def check_row(x, seed, grad):
            scores_at = self._surrogate_scores(x, kind) if quantized else (
                lambda b: self._scores(self.logits(b).reshape(len(b), -1), kind))
            return check_steepest(lambda b: scores_at(b) @ seed, x, grad)

        return self._check_rows(key, why, check_row, xs, seeds, grads)

    def _surrogate(self, kind: ScoreKind | None) -> tuple[onnx.ModelProto, list[Pair]] | None:
        """The frozen surrogate of :meth:`scores_graph` (``kind``), built once
        (:func:`~blackbox_xai.graph.surrogate.frozen_surrogate`)."""
        kind = kind or self.score
        return self.fact(("surrogate", kind), lambda: frozen_surrogate(self.scores_graph(kind)[0]))

    def _surrogate_scores(self, x: npt.NDArray[np.float32], kind: ScoreKind | None
                          ) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
        """Scores (n, K) of ``kind`` from the quantized graph's surrogate frozen at ``x``
        (C, H, W): the function whose gradient at ``x`` the straight-through rules take. Both
        sessions run unoptimised: fused integer kernels round some values one code apart from
        the float ops the backward graph runs (a 99% disagreement on a small QDQ CNN)."""
        kind = kind or self.score
        graph, pairs = typing.cast(tuple[onnx.ModelProto, list[Pair]], self._surrogate(kind))
        names = list(dict.fromkeys(n for p in pairs for n in (p.x, p.y)))
        exposed = self.derived(("surrogate-values", kind),
                               lambda: expose(self.scores_graph(kind)[0], names), optimize=False)
        values = self.run_batched(exposed, {self.input.name: x[None]}, names)
        frozen = frozen_values(pairs, dict(zip(names, values)))
        session = self.derived(("surrogate-session", kind), lambda: graph, optimize=False)
        out_name = self.scores_output(kind)
        return lambda b: self.run_batched(session, {self.input.name: b}, [out_name],
                                          constants=frozen)[0].reshape(len(b), -1)

    def check_layer_gradient(self, key: Hashable, layer: str,
                             run: Callable[[npt.NDArray[np.float32]],
                                           list[npt.NDArray[np.float32]]],
                             xs: npt.NDArray[np.float32], seeds: npt.NDArray[np.float32],
                             grads: npt.NDArray[np.float32], kind: ScoreKind | None = None
                             ) -> GradientCheck:
        """Check a backward graph's gradients ``grads`` = d sum(seed * scores) / dA at a layer
        A of a batch ``xs`` (scores of ``kind``), once per ``key``, rows as in
        :meth:`_check_rows`. Where every path from the input to the scores crosses A:
        :func:`~blackbox_xai.gradient_check.check_layer_gradient` with ``run`` (a batch -> its
        scores (n, K) and A, from the graph differentiated). Otherwise (a skip connection goes
        around A): :func:`~blackbox_xai.gradient_check.check_steepest` on the head of
        :meth:`cut`, the other tensors it reads held at their values (reverse mode's dF/dA
        holds them too: they are computed before A). Raises :class:`InternalError` when they
        disagree."""
        def scaled_check(x, seed, grad):
            def f_and_layer(b):
                scores, act = run(b)
                return scores.reshape(len(b), -1) @ seed, act

            return check_layer_gradient(f_and_layer, x, grad)

        proto = self.graph()
        why, check_row = why_unchecked(proto), None
        if why is None and separates(proto.graph, layer, self.input.name, self.logits_name):
            check_row = scaled_check
        elif why is None:
            try:
                check_row = self._head_check(layer, kind)
            except BlackboxError as e:
                why = f"the model cannot be cut at {layer!r}: {e}"
        return self._check_rows(key, why, check_row, xs, seeds, grads)

    def _head_check(self, layer: str, kind: ScoreKind | None) -> Callable[..., GradientCheck]:
        """The row check of :meth:`check_layer_gradient` through :meth:`cut`'s head, its other
        inputs held at their values for ``x`` (one activation per run where one of them is
        shape arithmetic, which has no batch axis)."""
        cut, out_name = self.cut(layer, kind, batched=False), self.scores_output(kind)

        def check_row(x, seed, grad):
            values = run(cut.features, cut.names, {self.input.name: self._to_model_input(x[None])},
                         io_binding=self.io_binding)
            held = dict(zip(cut.names[1:], values[1:]))
            one_at_a_time = cut.unbatched is not None

            def head_score(acts):
                rows = np.split(acts, len(acts)) if one_at_a_time else [acts]
                scores = [run(cut.head, [out_name], {
                    **{k: v if one_at_a_time else np.repeat(v, len(a), axis=0)
                       for k, v in held.items()},
                    layer: np.ascontiguousarray(a, np.float32)}, io_binding=self.io_binding)[0]
                    for a in rows]
                return np.concatenate([np.reshape(v, (len(a), -1)) for v, a in
                                       zip(scores, rows)]) @ seed

            return check_steepest(head_score, np.asarray(values[0][0], np.float32), grad,
                                  "layer gradient")

        return check_row

    def _check_rows(self, key: Hashable, why: str | None,
                    check_row: Callable[..., GradientCheck] | None, xs: npt.NDArray[np.float32],
                    seeds: npt.NDArray[np.float32], grads: npt.NDArray[np.float32]
                    ) -> GradientCheck:
        """``check_row(x, seed, grad)`` once per ``key`` (remembered in
        :attr:`gradient_checks`; ``why``: why it cannot be checked), at the row of largest
        norm, then the next, up to :data:`CHECKED_ROWS`, until one is conclusive (an
        integrated-gradients batch starts near its baseline, where kinks cross every step);
        its queries are not counted in :attr:`n_queries`."""
        if key in self.gradient_checks:
            return self.gradient_checks[key]
        result = GradientCheck(float(np.linalg.norm(grads[0])), skipped=why)
        queries = self.n_queries
        try:
            norms = np.linalg.norm(xs.reshape(len(xs), -1).astype(np.float64), axis=1)
            for i in ([] if why or check_row is None else np.argsort(-norms)[:CHECKED_ROWS]):
                result = check_row(xs[i], np.asarray(seeds[i], np.float32).reshape(-1), grads[i])
                if result.skipped is None:
                    break
        finally:
            self.n_queries = queries
        self.gradient_checks[key] = result
        return result

    def dynamic_size(self, x: npt.NDArray) -> tuple[int, int] | None:
        """(H, W) of the NCHW batch ``x`` where the model's image size is dynamic, else None:
        backward graphs are specialised to it (:meth:`backward_graph`)."""
        if self.input.height is not None and self.input.width is not None:
            return None
        return int(x.shape[2]), int(x.shape[3])

    def backward_graph(self, wrt: Sequence[str], kind: ScoreKind | None = None,
                       size: tuple[int, int] | None = None) -> onnx.ModelProto:
        """The backward graph of :meth:`scores_graph` (``kind``) to the ``wrt`` tensors
        (:func:`~blackbox_xai.graph.autodiff.backward`, cached per graph), of the graph with its
        image size fixed at ``size`` (H, W) when given: Resize and pooling rules need static
        sizes, which a model exported for any image size does not have."""
        kind = kind or self.score
        graph = self.scores_graph(kind)[0]
        if size is not None:
            axes = (2, 3) if self.input.layout == "NCHW" else (1, 2)
            graph = fix_input_size(graph, self.input.name, axes, size)
        return backward_cached(graph, list(wrt), output=self.scores_output(kind),
                               cache_dir=cache_dir(), evaluate=evaluate)

    def input_gradient(self, x: npt.NDArray[np.float32], seed: npt.NDArray[np.float32], *,
                       kind: ScoreKind | None = None, progress=None
                       ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Scores (N, K) and ``d sum(seed * scores) / dx`` (N, C, H, W)."""
        scores, _, (grad,) = self.gradients(x, seed, [self.input.name], kind=kind,
                                            progress=progress)
        return scores, grad

    def layer_gradient(self, x: npt.NDArray[np.float32], target: int, layer: str, progress=None
                       ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32],
                                  npt.NDArray[np.float32]]:
        """Scores (N, K), the layer's activation A and dy_target/dA, as the graph lays them out."""
        seed = one_hot(len(x), self.num_classes, target)
        scores, (act,), (grad,) = self.gradients(x, seed, [layer], progress=progress)
        return scores, act, grad

    def layer_activation(self, x: npt.NDArray[np.float32], layer: str
                         ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Scores (N, K) and the layer's activation, from the model with ``layer`` exposed."""
        out_name = self.scores_output()
        session = self.derived(("expose", self.score, layer),
                               lambda: expose(self.scores_graph()[0], [layer]))
        scores, act = self.run_batched(session, {self.input.name: x}, [out_name, layer])
        return scores.reshape(len(x), -1), act

    def cut(self, layer: str, kind: ScoreKind | None = None, *, batched: bool = True) -> Cut:
        """Sessions of :meth:`scores_graph` (``kind``) cut at ``layer``
        (:func:`~blackbox_xai.graph.split.split`), built once per layer. ``batched``: refuse a
        head that also reads a tensor without a batch axis from before the cut (shape
        arithmetic), which runs only one input's activations at a time (refused before any
        session is built, when nothing built them yet)."""
        kind = kind or self.score
        key = ("cut", self.scores_output(kind), layer)

        def refuse(name: str) -> BlackboxError:
            return BlackboxError(
                f"the head after layer {layer!r} also reads {name!r}, computed before the cut "
                "without a batch axis (shape arithmetic), so it cannot run on ablated "
                "activations alone; choose a later --layer (see `bbx layers`)")

        def build() -> Cut:
            features, head = split(self.scores_graph(kind)[0], layer)
            unbatched = None
            for o in features.graph.output[1:]:
                t = o.type.tensor_type
                dims = t.shape.dim if t.HasField("shape") else []
                has_batch = bool(dims) and (self.input.batch is not None
                                            or not dims[0].HasField("dim_value"))
                if t.elem_type not in FLOAT_TYPES or not has_batch:
                    unbatched = unbatched or o.name
            if batched and unbatched is not None:
                raise refuse(unbatched)
            return Cut(self.derived((*key, "features"), lambda: features),
                       self.derived((*key, "head"), lambda: head),
                       [o.name for o in features.graph.output], unbatched)

        cut = self.fact(key, build)
        if batched and cut.unbatched is not None:
            raise refuse(cut.unbatched)
        return cut

    def derived(self, key: Hashable, build, optimize: bool = True) -> ort.InferenceSession:
        """A session for a graph rewritten from this model, built once by ``build()`` and
        cached under ``key``; it must load in ONNX Runtime (if not, that is our bug).
        ``optimize=False``: no graph optimisation (:func:`~blackbox_xai.runtime.session_options`)."""
        if key not in self._sessions:
            self._sessions[key], _ = create_session(build().SerializeToString(), self.device,
                                                    self.threads, generated="rewritten graph",
                                                    optimize=optimize)
        return self._sessions[key]

    def sized(self, key: tuple, size: tuple[int, int] | None, build) -> ort.InferenceSession:
        """:meth:`derived` for a graph specialised to an image ``size`` (None: not
        specialised); the :data:`SIZED_SESSIONS` most recent sizes are kept per ``key``, so a
        dataset of many image sizes does not grow memory without bound."""
        full = (*key, size)
        if size is not None and full not in self._sessions:
            others = [k for k in self._sessions
                      if isinstance(k, tuple) and len(k) == len(full) and k[:-1] == key]
            for k in others[:max(0, len(others) - SIZED_SESSIONS + 1)]:  # oldest first
                del self._sessions[k]
        return self.derived(full, build)

    def perturbed_scores(self, kind: Kind, feeds: Mapping[str, npt.NDArray],
                         constants: Mapping[str, npt.NDArray], progress=None
                         ) -> npt.NDArray[np.float32]:
        """Scores (n, K) of inputs perturbed inside the graph: ``feeds`` holds per-row mask
        parameters of ``kind``, ``constants`` the image, the baseline and the kind's shared
        tensors (sent once per run; see :func:`~blackbox_xai.graph.perturbation.
        perturbation_graph`). Same scores as ``self(blend(...))`` on the same masks."""
        def build() -> onnx.ModelProto:
            proto = self.graph()
            if self.logits_name != self.output_name:
                proto = expose(proto, [self.logits_name])
            return perturbation_graph(proto, self.input.name, kind, layout=self.input.layout)

        session = self.derived(("perturb", kind), build)
        (logits,) = self.run_batched(session, feeds, [self.logits_name], progress=progress,
                                     constants=constants)
        return self._scores(logits.reshape(len(logits), -1))

    def fact(self, key: Hashable, compute: Callable[[], T]) -> T:
        """A fact derived from this model's graph (a resolved layer, the attention blocks),
        computed once by ``compute()`` and cached under ``key`` (a tuple naming the kind)."""
        if key not in self._facts:
            self._facts[key] = compute()
        return self._facts[key]  # type: ignore[return-value]

    # ---- batching ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Queries per run: the one given, else the best measured for this model on this
        machine, probed once and remembered in the user cache (no probing tax per process)."""
        if self._batch_size is None:
            key = ":".join(map(str, (self.sha256, self.provider.split()[0], os.cpu_count(),
                                     self.threads, ort.__version__, self.example_chw(),
                                     PROBE_VERSION)))
            remembered = recall("batch_sizes", key)
            if isinstance(remembered, int) and remembered > 0:
                log.info("batch size %d (measured before on this machine)", remembered)
                self._batch_size = remembered
            else:
                self._batch_size = self.probe_batch_size()
                remember("batch_sizes", key, self._batch_size)
        return self._batch_size

    @property
    def batch_size_option(self) -> int | Literal["auto"]:
        """The batch size as it was asked for (``load_model``'s ``batch_size``; a model's
        fixed batch counts as asked), or "auto" when it is probed: what opens this model again
        in another process."""
        return self._batch_size_asked

    def set_batch_size(self, batch_size: int | Literal["auto"]) -> None:
        if batch_size == "auto":
            self._batch_size = self.input.batch  # a fixed-batch model has no choice
            self._batch_size_asked = "auto" if self.input.batch is None else self.input.batch
        elif isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
            item = int(np.prod(self.example_chw())) * 4
            limit = max(1, input_budget(self.provider, self._free_device_memory()) // item)
            if batch_size > limit and self.input.batch is None:
                log.warning("batch size %d would hold %.1f GB of inputs per run: using %d",
                            batch_size, batch_size * item / 2**30, limit)
                batch_size = limit
            self._batch_size = self._batch_size_asked = self.input.batch or batch_size
        else:
            raise ModelInputError(f"batch_size={batch_size!r}: use a positive integer or 'auto'")

    def _free_device_memory(self) -> int | None:
        return cuda_free_memory() if self.provider.startswith(CUDA) else None

    def probe_batch_size(self, max_batch: int | None = None) -> int:
        """The batch size with the best measured throughput that fits in memory (on CUDA, the
        input budget comes from the device's free memory: :func:`~blackbox_xai.runtime.batch_limit`).

        Powers of two from 1, each timed after a warm-up run by the median of at least two runs
        lasting :data:`PROBE_SECONDS` in all (a small batch runs many times, so one noisy run of
        a few milliseconds does not decide). A batch becomes the best when it is 5% faster than
        the best so far. The climb goes on through batches within 10% of the best, because CPU
        throughput is often flat and then rises (EfficientNet-Lite0 on 2 cores: 125, 110, 128,
        129, 157 inputs/s at batch 1 to 16, where a climb that stopped at the first two batches
        without a gain settled at 1 or 4), and stops at the second batch in a row that is
        slower than that. The :data:`FINALISTS` fastest batches within 15% of the best are then
        timed again, in turn, :data:`CONFIRM_ROUNDS` times (after a warm-up run on CUDA, where a
        new shape rebuilds the cuDNN plans), and of those whose median timing (the climb's
        included) is within :data:`TIE` of the fastest the largest wins. The choice is
        remembered for good: one short noisy timing had picked batch 1 at 90 inputs/s where
        batch 2 ran at 140 (1 of 5 fresh caches on the 2-core machine), and with two finalists
        within 10% a dip while batch 32 was timed kept it out, so batch 2 or 8 won, 15-20%
        slower than 32 (2 of 3 fresh caches, ninth session).
        """
        chw = self.example_chw()
        limit = max_batch or batch_limit(self.provider, int(np.prod(chw)) * 4,
                                          self._free_device_memory())

        def inputs(b: int) -> dict[str, npt.NDArray]:
            x = np.random.default_rng(0).standard_normal((b, *chw), dtype=np.float32)
            return {self.input.name: self._to_model_input(x)}

        def throughput(feeds: dict[str, npt.NDArray], warm: bool) -> float:
            b = len(feeds[self.input.name])
            if not warm:
                self.session.run([self.logits_name], feeds)
            times: list[float] = []
            while len(times) < 2 or (sum(times) < PROBE_SECONDS and len(times) < 20):
                t0 = time.perf_counter()
                self.session.run([self.logits_name], feeds)
                times.append(time.perf_counter() - t0)
            return b / max(float(np.median(times)), 1e-9)

        rates: dict[int, float] = {}
        best, best_rate, b, slower = 1, 0.0, 1, 0
        while b <= limit:
            try:
                rate = rates[b] = throughput(inputs(b), warm=False)
            except Exception:  # noqa: BLE001 - ORT's allocation failures share no base class
                break
            if rate > best_rate * 1.05:
                best, best_rate = b, rate
            slower = slower + 1 if rate < best_rate * 0.9 else 0
            if slower == 2:
                break
            b *= 2
        near = sorted((b for b in rates if rates[b] >= best_rate * 0.85), key=lambda b: -rates[b])
        if len(near) > 1:
            again: dict[int, list[float]] = {b: [rates[b]] for b in near[:FINALISTS]}
            finals = {b: inputs(b) for b in again}  # made once: 84 ms a batch of 32 images
            # on CUDA the first run at a shape other than the last one rebuilds the cuDNN plans
            switch_costs = self.provider.startswith(CUDA)
            for _ in range(CONFIRM_ROUNDS):
                for b, timed in again.items():
                    timed.append(throughput(finals[b], warm=not switch_costs))
            medians = {b: float(np.median(timed)) for b, timed in again.items()}
            fastest = max(medians.values())
            best = max(b for b, rate in medians.items() if rate >= fastest * TIE)
            best_rate = medians[best]
        log.info("batch size %d (%.1f inputs/s)", best, best_rate)
        return best

    def _to_model_input(self, x: npt.NDArray) -> npt.NDArray:
        if self.input.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x, dtype=self.input.dtype)

    def run_batched(self, session: ort.InferenceSession, feeds: Mapping[str, npt.NDArray],
                    output_names: Sequence[str], progress=None,
                    constants: Mapping[str, npt.NDArray] | None = None,
                    rows_per_run: int | None = None) -> list[npt.NDArray[np.float32]]:
        """Run ``session`` on per-sample ``feeds`` (each (N, ...)) in chunks; count N queries.

        The one batching point. A feed named like the model's image input is taken in NCHW
        float32 and converted to the model's layout and dtype; other feeds (a backward graph's
        seed, a head's activation) are cast to the session's declared float dtype (integer and
        bool feeds are kept). ``constants`` go whole to every run (with IO binding, copied to
        the device once). Outputs are concatenated along axis 0 as float32. Fixed-batch
        sessions get their last chunk padded. ``rows_per_run``: the chunk size where the
        caller knows better than the probed :attr:`batch_size` (a fixed batch still wins).
        """
        types = {i.name: ONNX_FLOAT_TYPES.get(i.type) for i in session.get_inputs()}
        fixed_feeds = {k: np.ascontiguousarray(v, dtype=types.get(k))
                       for k, v in (constants or {}).items()}
        if self.io_binding:
            fixed_feeds = {k: ort_value(v, session) for k, v in fixed_feeds.items()}
        fixed = _dim(session.get_inputs()[0].shape[0]) if session.get_inputs()[0].shape else None
        if self.input.name in feeds:
            self._check_shape(feeds[self.input.name])
        n = len(next(iter(feeds.values())))
        step = fixed or rows_per_run or (self.batch_size if n > 1 or self._batch_size is not None
                                         else 1)
        one_shape = fixed is not None or session_device(session) == "cuda"
        if one_shape and fixed is None:
            # On CUDA a session keeps the largest number of rows it has run with: a new batch
            # shape rebuilds the cuDNN plans of every Conv (0.1-1.1 s a switch on an H200 with
            # ORT 1.31, against 25 ms for a run at batch 128), so short chunks and single
            # queries are padded to it; a session only ever asked one row at a time stays at 1.
            step = max(self._cuda_rows.get(id(session), 0), min(step, n))
            self._cuda_rows[id(session)] = step
        chunks: list[list[npt.NDArray]] = [[] for _ in output_names]
        for start in range(0, n, step):
            part = {k: np.asarray(v[start:start + step]) for k, v in feeds.items()}
            m = len(next(iter(part.values())))
            if one_shape and m < step:
                part = {k: _pad(v, step) for k, v in part.items()}
            part = {k: self._to_model_input(v) if k == self.input.name
                    else np.ascontiguousarray(v, dtype=types.get(k))
                    for k, v in part.items()}
            outs = run(session, output_names, {**part, **fixed_feeds}, io_binding=self.io_binding)
            for acc, o in zip(chunks, outs):
                acc.append(np.asarray(o[:m], dtype=np.float32))
            self.n_queries += m
            if progress is not None:
                progress.update(m)
        return [np.concatenate(c) if c else np.zeros((0,), np.float32) for c in chunks]

    def _check_shape(self, x: npt.NDArray) -> None:
        expected = self.input.chw
        if x.ndim != 4 or any(e is not None and e != a for e, a in zip(expected, x.shape[1:])):
            raise ModelInputError(f"input batch has shape {x.shape}; the model takes (N, "
                                  f"{', '.join(str(e or '?') for e in expected)}) in NCHW")

    def __call__(self, x: npt.NDArray[np.float32], progress=None) -> npt.NDArray[np.float32]:
        """Scores (N, K) of the inputs (N, C, H, W), of the model's ``score`` kind."""
        if self.task != "classify":
            what = ("a detector: its outputs are proposals" if self.task == "detect" else
                    "a segmentation net: its output is a map")
            raise ModelInputError(f"{self.path.name} is loaded as {what}, not class scores; "
                                  f"explain a {'Detection' if self.task == 'detect' else 'Region'}"
                                  " target")
        logits = self.logits(x, progress)
        return self._scores(logits.reshape(len(logits), -1))

    def logits(self, x: npt.NDArray[np.float32], progress=None) -> npt.NDArray[np.float32]:
        """The explained tensor :attr:`logits_name` of the inputs (N, C, H, W), as the graph
        lays it out (a segmentation net's (N, K, H, W) logits)."""
        (logits,) = self.run_batched(self.session, {self.input.name: x}, [self.logits_name],
                                     progress=progress)
        return logits

    def region_view(self, weights: npt.NDArray[np.float32]) -> Model:
        """This model as a one-class classifier whose score is linear in the logits z
        (N, K, H, W): s = sum_{k,i,j} w_kij z_kij (N, 1), ``weights`` w (K, H, W) (a
        :class:`~blackbox_xai.targets.Region`: its mask on its class). Every method, gradient
        and CAM ones included, explains class 0 of the view; a backward pass from s seeds z
        with w. The graph computes Flatten(z) @ w.reshape(-1, 1); inputs must give z of w's
        shape."""
        elem = self._output_elem(self.output_name)
        w = weights.reshape(-1, 1).astype(helper.tensor_dtype_to_np_dtype(elem))
        return self._score_view(
            [helper.make_node("Flatten", [self.logits_name], [f"{REGION}_flat"], axis=1),
             helper.make_node("MatMul", [f"{REGION}_flat", f"{REGION}_weights"], [REGION])],
            [numpy_helper.from_array(w, f"{REGION}_weights")], REGION, elem)

    def detection_view(self, output: str, entries: Sequence[int]) -> Model:
        """This detector as a one-class classifier whose score is the product of the raw
        ``output``'s ``entries`` (flat indices into one input's output): s = prod_j t_flat[e_j]
        (N, 1), e.g. a YOLOv8 anchor's class score, or a YOLOv5 anchor's objectness x class
        probability (:class:`~blackbox_xai.targets.DetectionRawScore`). Every method, gradient
        and CAM ones included, explains class 0 of the view. Built once per (output, entries)."""
        def build() -> Model:
            elem = self._output_elem(output)
            nodes = [helper.make_node("Flatten", [output], [f"{DETECTION}_flat"], axis=1)]
            inits = []
            for j, e in enumerate(entries):
                inits.append(numpy_helper.from_array(np.array([e], np.int64), f"{DETECTION}_e{j}"))
                nodes.append(helper.make_node("Gather", [f"{DETECTION}_flat", f"{DETECTION}_e{j}"],
                                              [f"{DETECTION}_v{j}"], axis=1))
            last = f"{DETECTION}_v0"
            for j in range(1, len(entries)):
                nodes.append(helper.make_node("Mul", [last, f"{DETECTION}_v{j}"], [f"{DETECTION}_p{j}"]))
                last = f"{DETECTION}_p{j}"
            nodes.append(helper.make_node("Identity", [last], [DETECTION]))
            return self._score_view(nodes, inits, DETECTION, elem)

        return self.fact(("detection_view", output, tuple(int(e) for e in entries)), build)

    def _elem_type(self, name: str) -> int:
        """The element type of tensor ``name`` of the normalised graph, from shape inference
        when no ``value_info`` declares it (a dynamic batch drops them), else the score output's.
        The logits need not have the output's type: ONNX Runtime's CPU optimisation computes an
        fp16 model in float and casts to fp16 after the final Softmax."""
        def inferred() -> int:
            for proto in (self.graph, lambda: infer_shapes(self.graph())):  # inference if need be
                known = value_infos(proto()).get(name)
                if known is not None and known.type.tensor_type.elem_type:
                    return known.type.tensor_type.elem_type
            return self._output_elem(self.output_name)

        return self.fact(("elem_type", name), inferred)

    def _output_elem(self, name: str) -> int:
        return next(o.type.tensor_type.elem_type for o in self.proto.graph.output if o.name == name)

    def _score_view(self, nodes: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto],
                    out: str, elem: int) -> Model:
        """A copy of this model whose graph ends in ``nodes`` with the one output ``out`` (N, 1):
        a one-class classifier (:meth:`region_view`, :meth:`detection_view`)."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.graph())
        proto.graph.initializer.extend(inits)
        proto.graph.node.extend(nodes)
        del proto.graph.output[:]
        proto.graph.output.append(helper.make_tensor_value_info(out, elem, ["N", 1]))
        view = copy.copy(self)
        view.session, _ = create_session(proto.SerializeToString(), self.device, self.threads,
                                         generated="rewritten graph")
        view.proto, view.task, view.num_classes, view.n_queries = proto, "classify", 1, 0
        view.output_names, view.output_integer = [out], [False]
        view.output_name = view.logits_name = out
        view.activation = None
        view._sessions, view._facts = {}, {}
        return view

    def raw_outputs(self, x: npt.NDArray[np.float32], progress=None) -> list[npt.NDArray[np.float32]]:
        """The outputs :attr:`output_names` of the inputs (N, C, H, W), as the graph gives them."""
        return self.run_batched(self.session, {self.input.name: x}, self.output_names,
                                progress=progress)

    def _scores(self, logits: npt.NDArray[np.float32], kind: ScoreKind | None = None
                ) -> npt.NDArray[np.float32]:
        """Scores of ``kind`` (default: the model's ``score``) from logits (N, K)."""
        kind = kind or self.score
        if kind == "logit":
            return logits
        if self.activation == "Sigmoid":
            log_p = -np.logaddexp(0, -logits)
            return (np.exp(log_p) if kind == "prob" else log_p).astype(np.float32)
        return softmax(logits) if kind == "prob" else log_softmax(logits)

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "provider": self.provider,
                "input": self.input.name, "layout": self.input.layout, "output": self.output_name,
                "explained_tensor": self.logits_name, "final_activation": self.activation,
                "score": self.score, "task": self.task,
                **({"input_pixels": self.pixel_type} if self.pixel_type else {}),
                **({"declared_as": self.declared_as} if self.declared_as else {})}


def _shape_of(v: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Declared dims (int, symbolic name or None), or None when the rank is unknown."""
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _pad(v: npt.NDArray, size: int) -> npt.NDArray:
    pad = np.repeat(v[-1:], size - len(v), axis=0)
    return np.concatenate([v, pad])


def load_model(path: str | os.PathLike, device: Device = "auto", score: ScoreKind = "logit",
               **kwargs) -> Model:
    """Load an ONNX model as a query function; see :class:`Model` for the options."""
    return Model(path, device=device, score=score, **kwargs)
