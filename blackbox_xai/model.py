"""The model as a query function: one ONNX Runtime session, ``(N, C, H, W) -> (N, K)`` scores.

Every method only asks a :class:`Model` questions through :meth:`Model.run_batched`, the one place
where inputs are chunked into batches, cast to the model's dtype and layout, and counted.
Inputs are always given in NCHW float32; NHWC and fp16 models are adapted here.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from .errors import BlackboxError, DeviceError, ModelInputError, ModelLoadError, did_you_mean

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
ScoreKind = Literal["logit", "prob"]
Layout = Literal["NCHW", "NHWC"]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                     "tensor(double)": np.float64}
_MAX_AUTO_BATCH_BYTES = 512 * 2**20


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


def _cuda_plausible() -> tuple[bool, str]:
    """Whether a CUDA session is worth trying (ORT lists CUDA even on machines with no GPU)."""
    if CUDA not in ort.get_available_providers():
        return False, f"this onnxruntime build ({ort.__version__}) has no CUDA provider"
    if ctypes.util.find_library("cuda") is None and not os.path.exists("/dev/nvidiactl"):
        return False, "no NVIDIA driver found"
    return True, ""


def _preload_cuda_libraries() -> None:
    """Load the pip NVIDIA libraries (``blackbox-xai[cuda]``) when they are installed."""
    if hasattr(ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
        ort.preload_dlls(directory="")


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # Methods do numpy work between runs; spinning ORT threads would fight it for the cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def create_session(model: bytes | str, device: Device, threads: int | None
                   ) -> tuple[ort.InferenceSession, str]:
    """Create a session on the requested device; returns it and a note on the provider that runs."""
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device={device!r}: use 'auto', 'cpu' or 'cuda'")
    note = ""
    providers = [CPU]
    if device != "cpu":
        plausible, why = _cuda_plausible()
        if plausible:
            _preload_cuda_libraries()
            providers = [CUDA, CPU]
        elif device == "cuda":
            raise DeviceError(f"device='cuda' but the CUDA execution provider is not usable: {why}")
        else:
            note = f" (CUDA not tried: {why})"
    try:
        sess = ort.InferenceSession(model, sess_options=session_options(threads), providers=providers)
    except Exception as e:  # ORT raises several exception types for bad graphs
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from e
    active = sess.get_providers()[0]
    if device == "cuda" and active != CUDA:
        raise DeviceError("device='cuda' but ONNX Runtime fell back to the CPU (check the CUDA/cuDNN "
                          "libraries: pip install 'blackbox-xai[cuda]')")
    if CUDA in providers and active != CUDA:
        note = " (CUDA requested but unavailable: fell back to CPU)"
    return sess, active + note


def _output_is_softmax(proto: onnx.ModelProto, output: str) -> bool:
    producers = {o: n for n in proto.graph.node for o in n.output}
    node = producers.get(output)
    while node is not None and node.op_type in ("Identity", "Cast", "Reshape", "Flatten", "Squeeze"):
        node = producers.get(node.input[0])
    return node is not None and node.op_type in ("Softmax", "Sigmoid")


class Model:
    """An ONNX model as a batched query function ``(N, C, H, W) float32 -> (N, K) float32``.

    Args:
        path: the ``.onnx`` file (never modified).
        device: ``"auto"`` (CUDA when it really runs, else CPU), ``"cpu"`` or ``"cuda"`` (fails
            clearly when CUDA is not usable).
        score: ``"logit"`` returns the chosen output as is; ``"prob"`` applies a softmax unless the
            output already is a probability.
        output: name of the score output (default: the single 2-D output).
        batch_size: queries per session run, or ``"auto"`` to probe for the best throughput.
        layout: override the detected input layout.
        threads: ONNX Runtime intra-op threads (default: all cores).
        dynamic_batch: make a fixed batch axis dynamic (verified in ONNX Runtime, batch 1 vs 2)
            so queries run in full batches; when the graph does not allow it, inputs are fed
            one fixed-size chunk at a time.
    """

    def __init__(self, path: str | os.PathLike, *, device: Device = "auto",
                 score: ScoreKind = "logit", output: str | None = None,
                 batch_size: int | Literal["auto"] = "auto", layout: Layout | None = None,
                 threads: int | None = None, dynamic_batch: bool = True) -> None:
        if score not in ("logit", "prob"):
            raise ModelInputError(f"score={score!r}: use 'logit' or 'prob'")
        from .graph.io import load

        self.path = Path(path)
        self.proto = load(self.path)
        self.sha256 = sha256_of(self.path)
        self.device, self.threads = device, threads
        self.session, self.provider = create_session(str(self.path), device, threads)
        log.info("model %s: provider %s", self.path.name, self.provider)
        self.input = self._find_input(layout)
        if self.input.batch is not None and dynamic_batch:
            self._try_dynamic_batch(layout)
        self.output_name = self._find_output(output)
        self.output_is_probability = _output_is_softmax(self.proto, self.output_name)
        if self.output_is_probability and score == "logit":
            log.warning("output %r is already a probability (softmax/sigmoid); scores are "
                        "probabilities, not logits", self.output_name)
        self.score = score
        self._apply_softmax = score == "prob" and not self.output_is_probability
        self.n_queries = 0
        self._batch_size: int | None = None
        self.set_batch_size(batch_size)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self.memo: dict[str, object] = {}  # facts derived from the graph once (default layer...)
        self.num_classes = int(self(np.zeros((1, *self.example_chw()), np.float32)).shape[1])
        self.n_queries = 0

    @property
    def returns_probabilities(self) -> bool:
        """Whether ``model()`` returns class probabilities (``score="prob"`` or a softmax output)."""
        return self.output_is_probability or self.score == "prob"

    def probabilities(self, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities of scores this model returned (softmax unless they already are)."""
        return scores if self.returns_probabilities else softmax(scores)

    # ---- discovery -------------------------------------------------------------------------
    def _find_input(self, layout: Layout | None) -> InputSpec:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(f"{i.name}{i.shape}" for i in inputs)
            raise ModelInputError(f"model has {len(inputs)} inputs ({names}): an image model has one")
        inp = inputs[0]
        if len(inp.shape) != 4 or inp.type not in _ONNX_FLOAT_TYPES:
            raise ModelInputError(f"model input {inp.name!r} is {inp.type} {inp.shape}: not an image "
                                  "(expected a 4-D float NCHW or NHWC tensor)")
        shape = [_dim(d) for d in inp.shape]
        lay = _detect_layout(shape, inp.name, layout)
        n, c, h, w = shape if lay == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
        if c is None:
            raise ModelInputError(f"model input {inp.name!r} has a dynamic channel axis: not an image")
        return InputSpec(inp.name, lay, _ONNX_FLOAT_TYPES[inp.type], n, c, h, w)

    def _try_dynamic_batch(self, layout: Layout | None) -> None:
        from .graph.batch import make_batch_dynamic

        try:
            proto = make_batch_dynamic(self.proto)
            session, _ = create_session(proto.SerializeToString(), self.device, self.threads)
        except (BlackboxError, ValueError) as e:
            log.info("keeping the fixed batch of %d: %s", self.input.batch, e)
            return
        self.proto, self.session = proto, session
        self.input = self._find_input(layout)
        log.info("made the fixed batch axis of %s dynamic (verified)", self.path.name)

    def _find_output(self, output: str | None) -> str:
        outs = self.session.get_outputs()
        names = [o.name for o in outs]
        if output is not None:
            if output not in names:
                raise ModelInputError(did_you_mean(output, names, "output"))
            return output
        two_d = [o.name for o in outs if len(o.shape) == 2]
        if len(two_d) == 1:
            return two_d[0]
        if len(outs) == 1:
            return outs[0].name
        raise ModelInputError(f"model has several outputs ({', '.join(names)}): choose one with output=")

    def example_chw(self, default_size: int = 224) -> tuple[int, int, int]:
        c, h, w = self.input.chw
        return (c, h or default_size, w or default_size)

    # ---- sessions on rewritten graphs ------------------------------------------------------
    def session_for(self, key: str, proto: onnx.ModelProto) -> ort.InferenceSession:
        """A cached session for a rewritten graph of this model, on the same device."""
        if key not in self._sessions:
            self._sessions[key], _ = create_session(proto.SerializeToString(), self.device,
                                                    self.threads)
        return self._sessions[key]

    # ---- batching ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = self.probe_batch_size()
        return self._batch_size

    def set_batch_size(self, batch_size: int | Literal["auto"]) -> None:
        if batch_size == "auto":
            self._batch_size = self.input.batch  # a fixed-batch model has no choice
        elif isinstance(batch_size, int) and batch_size > 0:
            self._batch_size = self.input.batch or batch_size
        else:
            raise ModelInputError(f"batch_size={batch_size!r}: use a positive integer or 'auto'")

    def probe_batch_size(self, max_batch: int | None = None) -> int:
        """The batch size with the best measured throughput that fits in memory."""
        chw = self.example_chw()
        per_item = int(np.prod(chw)) * 4
        limit = max_batch or (256 if self.provider.startswith(CUDA) else 64)
        best, best_rate, b, worse = 1, 0.0, 1, 0
        while b <= limit and b * per_item <= _MAX_AUTO_BATCH_BYTES:
            x = np.random.default_rng(0).standard_normal((b, *chw), dtype=np.float32)
            feeds = {self.input.name: self._to_model_input(x)}
            try:
                self.session.run([self.output_name], feeds)  # warm-up
                runs, t0 = 0, time.perf_counter()
                while runs < 2 or time.perf_counter() - t0 < 0.05:
                    self.session.run([self.output_name], feeds)
                    runs += 1
                rate = b * runs / (time.perf_counter() - t0)
            except Exception:  # out of memory
                break
            if rate > best_rate * 1.05:
                best, best_rate, worse = b, rate, 0
            else:
                worse += 1
                if worse == 2:
                    break
            b *= 2
        log.info("batch size %d (%.1f inputs/s)", best, best_rate)
        return best

    def _to_model_input(self, x: npt.NDArray) -> npt.NDArray:
        if self.input.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x, dtype=self.input.dtype)

    def run_batched(self, session: ort.InferenceSession, feeds: Mapping[str, npt.NDArray],
                    output_names: Sequence[str], progress=None) -> list[npt.NDArray[np.float32]]:
        """Run ``session`` on per-sample ``feeds`` (each (N, ...)) in chunks; count N queries.

        The one batching point. A feed named like the model's image input is taken in NCHW
        float32 and converted to the model's layout and dtype; other feeds (a backward graph's
        seed, a head's activation) are cast to the session's declared dtype. Outputs are
        concatenated along axis 0 as float32. Fixed-batch sessions get their last chunk padded.
        """
        types = {i.name: _ONNX_FLOAT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
        fixed = _dim(session.get_inputs()[0].shape[0]) if session.get_inputs()[0].shape else None
        if self.input.name in feeds:
            self._check_shape(feeds[self.input.name])
        n = len(next(iter(feeds.values())))
        step = fixed or (self.batch_size if n > 1 or self._batch_size is not None else 1)
        chunks: list[list[npt.NDArray]] = [[] for _ in output_names]
        for start in range(0, n, step):
            part = {k: np.asarray(v[start:start + step]) for k, v in feeds.items()}
            m = len(next(iter(part.values())))
            if fixed is not None and m < fixed:
                part = {k: _pad(v, fixed) for k, v in part.items()}
            part = {k: self._to_model_input(v) if k == self.input.name
                    else np.ascontiguousarray(v, dtype=types.get(k, np.float32))
                    for k, v in part.items()}
            outs = session.run(list(output_names), part)
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
        """Scores (N, K) of the inputs (N, C, H, W); softmax applied when ``score='prob'``."""
        (scores,) = self.run_batched(self.session, {self.input.name: x}, [self.output_name],
                                     progress=progress)
        scores = scores.reshape(len(scores), -1)
        return softmax(scores) if self._apply_softmax else scores

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "provider": self.provider,
                "input": self.input.name, "layout": self.input.layout, "output": self.output_name,
                "score": self.score}


def _pad(v: npt.NDArray, size: int) -> npt.NDArray:
    pad = np.repeat(v[-1:], size - len(v), axis=0)
    return np.concatenate([v, pad])


def load_model(path: str | os.PathLike, device: Device = "auto", score: ScoreKind = "logit",
               **kwargs) -> Model:
    """Load an ONNX model as a query function; see :class:`Model` for the options."""
    return Model(path, device=device, score=score, **kwargs)
