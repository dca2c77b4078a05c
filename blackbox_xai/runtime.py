"""ONNX Runtime, in one leaf module: providers, session options, session creation, the one
guarded run, and the runtime checks of graph rewrites (same outputs before and after).

Nothing else in the package creates or runs a session; :mod:`blackbox_xai.graph` stays pure
``ModelProto -> ModelProto`` and :mod:`blackbox_xai.model` calls these functions.
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper

from .errors import BlackboxError, DeviceError, InternalError, ModelLoadError, ModelRunError

Device = Literal["auto", "cpu", "cuda"]
Feed = npt.NDArray | ort.OrtValue

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                    "tensor(double)": np.float64}
UNKNOWN_DIM = 32  # size used for probe runs along symbolic non-batch axes
DEVICE_ENV = "BLACKBOX_XAI_DEVICE"  # what device="auto" means: "cpu", "cuda" or "auto" (default)
#: "1": CUDA sessions use TF32 as ONNX Runtime does by default (a deployment's own math);
#: otherwise FP32, which matches the CPU (see create_session)
CUDA_TF32_ENV = "BLACKBOX_XAI_CUDA_TF32"
CPU_INPUT_BUDGET = 512 * 2**20  # bytes of inputs one run may take on the CPU
CUDA_INPUT_SHARE = 32  # on CUDA: 1/32 of the free device memory for inputs, the rest activations
MAX_PROBE_BATCH = {CPU: 32, CUDA: 4096}

# ONNX Runtime's C++ logger writes to stderr on its own (CUDA fallback, failed runs); every
# failure reaches the user as one line through the exceptions below instead.
ort.set_default_logger_severity(4)


def cuda_plausible() -> tuple[bool, str]:
    """Whether a CUDA session is worth trying (ORT lists CUDA even on machines with no GPU)."""
    if CUDA not in ort.get_available_providers():
        return False, f"this onnxruntime build ({ort.__version__}) has no CUDA provider"
    if not os.path.exists("/dev/nvidiactl") and not _loads("libcuda.so.1"):
        return False, "no NVIDIA driver found"
    return True, ""


def _loads(library: str) -> bool:
    """Whether the dynamic loader finds ``library`` (a dlopen: milliseconds, where
    ``ctypes.util.find_library`` runs ldconfig and gcc, 0.1-0.2 s of every CPU-only start)."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def _preload_cuda_libraries() -> None:
    """Load the pip NVIDIA libraries (``blackbox-xai[cuda]``) when they are installed."""
    if hasattr(ort, "preload_dlls") and importlib.util.find_spec("nvidia") is not None:
        ort.preload_dlls(directory="")


def session_options(threads: int | None, optimize: bool = True) -> ort.SessionOptions:
    """``optimize=False``: no graph optimisation, each op as written (a quantized graph's
    DequantizeLinear / QuantizeLinear pairs are not fused into integer kernels)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 4
    # ONNX Runtime's idle threads spin (its default): with NumPy's BLAS held to one thread
    # while methods run (api.explain), spinning made LIME 1000 samples 3% faster in fresh
    # processes on 2 cores (interleaved, 4 pairs) and cold starts 1.07-1.10x raw, not 1.10-1.25x.
    return opts


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    # "Non-zero status code returned while running Reshape node. Name:'r' Status Message:
    # /onnxruntime_src/...h:84 <C++ signature> <condition> was false. <the reason>"
    node = re.match(r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)'"
                    r" Status Message: (.*)$", line)
    if node:
        op, name, message = node.groups()
        message = re.sub(r"^\S*onnxruntime\S*:\d+ .*? was false\. ", "", message)
        message = re.sub(r"^\S*onnxruntime\S*:\d+ \S+ ", "", message)
        line = f"{op} node {name!r}: {message}"
    return line


def resolve_device(device: Device) -> Device:
    """``device``, with ``"auto"`` replaced by ``$BLACKBOX_XAI_DEVICE`` when it is set (how a
    whole test suite is moved to CUDA: ``BLACKBOX_XAI_DEVICE=cuda pytest``)."""
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device={device!r}: use 'auto', 'cpu' or 'cuda'")
    forced = os.environ.get(DEVICE_ENV, "auto")
    if forced not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"{DEVICE_ENV}={forced!r}: use 'auto', 'cpu' or 'cuda'")
    return forced if device == "auto" else device


@functools.cache
def max_ir_version() -> int | None:
    """The newest ONNX IR version this ONNX Runtime reads, or None when it does not say.

    ONNX Runtime has no API for it; its refusal of a one-node model declaring a far newer
    version states it ("Unsupported model IR version: 1000000, max supported IR version: 13"),
    which costs one failed session creation (about 1 ms) per process.
    """
    return _limit_in_refusal(ir_version=10**6, opset=13,
                             pattern=r"max supported IR version: (\d+)")


@functools.cache
def max_opset() -> int | None:
    """The newest ai.onnx opset this ONNX Runtime runs, or None when it does not say; read, like
    :func:`max_ir_version`, from its refusal of a far newer one ("... official support for
    domain ai.onnx is till opset 26")."""
    return _limit_in_refusal(ir_version=8, opset=10**3,
                             pattern=r"support for domain ai\.onnx is till opset (\d+)")


def _limit_in_refusal(ir_version: int, opset: int, pattern: str) -> int | None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                "limit_probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)])
    probe.ir_version = ir_version
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=[CPU])
    except Exception as e:  # noqa: BLE001 - ORT's load failures share no base class
        found = re.search(pattern, str(e))
        return int(found.group(1)) if found else None
    return None  # it read the far newer version: no limit worth knowing


def create_session(model: bytes | str, device: Device, threads: int | None, *,
                   generated: str | None = None, optimize: bool = True
                   ) -> tuple[ort.InferenceSession, str]:
    """Create a session on the requested device; returns it and a note on the provider that runs.

    ``generated`` names a graph this package wrote (a backward graph...): if ONNX Runtime
    cannot load it, that is our bug (:class:`InternalError`), not a fault of the user's model.
    ``optimize``: see :func:`session_options`.
    """
    device = resolve_device(device)
    note = ""
    providers = [CPU]
    if device != "cpu":
        plausible, why = cuda_plausible()
        if plausible:
            _preload_cuda_libraries()
            # TF32 off unless asked for: ORT's default TF32 convolutions moved the shipped
            # model's logits by 0.012 against the CPU and saliency maps to Spearman 0.988
            # (H200); in FP32 they agree to 1e-5 and 1.000, for 20% of the raw throughput
            tf32 = os.environ.get(CUDA_TF32_ENV, "0")
            if tf32 not in ("0", "1"):
                raise DeviceError(f"{CUDA_TF32_ENV}={tf32!r}: use 1 (TF32) or 0 (FP32)")
            providers = [(CUDA, {"use_tf32": tf32}), CPU]
            note = " (TF32)" if tf32 == "1" else ""
        elif device == "cuda":
            raise DeviceError(f"device='cuda' but the CUDA execution provider is not usable: {why}")
        else:
            note = f" (CUDA not tried: {why})"
    try:
        sess = ort.InferenceSession(model, sess_options=session_options(threads, optimize),
                                    providers=providers)
    except Exception as e:  # ORT raises several exception types for bad graphs
        if generated:
            raise InternalError(f"blackbox-xai built a {generated} that ONNX Runtime cannot load "
                                f"(a bug in blackbox-xai, not in your model): {_first_line(e)}") from e
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {_first_line(e)}") from e
    active = sess.get_providers()[0]
    if device == "cuda" and active != CUDA:
        raise DeviceError("device='cuda' but ONNX Runtime fell back to the CPU (check the CUDA/cuDNN "
                          "libraries: pip install 'blackbox-xai[cuda]')")
    if device != "cpu" and len(providers) > 1 and active != CUDA:
        note = " (CUDA requested but unavailable: fell back to CPU)"
    return sess, active + note


def session_device(session: ort.InferenceSession) -> Literal["cpu", "cuda"]:
    """Where ``session`` keeps its tensors: ``"cuda"`` when the CUDA provider runs it."""
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


def ort_value(array: npt.NDArray, session: ort.InferenceSession) -> ort.OrtValue:
    """``array`` as an OrtValue in the memory of ``session``'s device (copied there once; on
    the CPU it wraps the array without a copy), to bind to many runs."""
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), session_device(session), 0)


def _run_bound(session: ort.InferenceSession, outputs: Sequence[str] | None,
               feeds: Mapping[str, Feed]) -> list[npt.NDArray]:
    """One run through IO binding: inputs as OrtValues on the session's device, outputs
    allocated there and copied back once."""
    device = session_device(session)
    binding = session.io_binding()
    for name, value in feeds.items():
        if not isinstance(value, ort.OrtValue):
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0)
        binding.bind_ortvalue_input(name, value)
    for name in outputs if outputs is not None else [o.name for o in session.get_outputs()]:
        binding.bind_output(name, device)
    binding.synchronize_inputs()
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return binding.copy_outputs_to_cpu()


def _rows(value: Feed) -> int:
    shape = value.shape() if isinstance(value, ort.OrtValue) else np.shape(value)
    return int(shape[0]) if len(shape) else 1


def run(session: ort.InferenceSession, outputs: Sequence[str] | None,
        feeds: Mapping[str, Feed], what: str = "the model", *, io_binding: bool = False
        ) -> list[npt.NDArray]:
    """``session.run``, with ONNX Runtime's failures (a Reshape that fails at run time, an
    allocation that cannot be satisfied) turned into one-line :class:`ModelRunError`.

    ``io_binding`` (implied by an OrtValue feed) binds the inputs and outputs in the memory of
    the session's device (:func:`_run_bound`); same outputs as the plain run.
    """
    try:
        if io_binding or any(isinstance(v, ort.OrtValue) for v in feeds.values()):
            return _run_bound(session, outputs, feeds)
        return session.run(None if outputs is None else list(outputs), dict(feeds))
    except Exception as e:  # ORT's pybind exceptions share no useful base class
        rows = _rows(next(iter(feeds.values()))) if feeds else 0
        line = _first_line(e)
        memory = any(w in line.lower() for w in ("alloc", "memory", "bad_alloc"))
        hint = "; try a smaller --batch-size" if memory or rows > 1 else ""
        raise ModelRunError(f"ONNX Runtime failed running {what} on a batch of {rows}: {line}{hint}"
                            ) from e


# ---- memory budgets for batch sizes ------------------------------------------------------------
def cuda_free_memory() -> int | None:
    """Free bytes on the GPU that CUDA device 0 is (NVML, from the driver; honours a numeric or
    ``GPU-`` UUID first entry of ``CUDA_VISIBLE_DEVICES``), or None when it cannot be read."""
    name = ctypes.util.find_library("nvidia-ml") or "libnvidia-ml.so.1"
    try:
        nvml = ctypes.CDLL(name)
    except OSError:
        return None

    class Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                    ("used", ctypes.c_ulonglong)]

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    handle, memory = ctypes.c_void_p(), Memory()
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        if visible.startswith("GPU-"):
            found = nvml.nvmlDeviceGetHandleByUUID(visible.encode(), ctypes.byref(handle))
        elif visible.isdigit():
            found = nvml.nvmlDeviceGetHandleByIndex_v2(int(visible), ctypes.byref(handle))
        else:
            return None
        if found != 0 or nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
            return None
        return int(memory.free)
    finally:
        nvml.nvmlShutdown()


def input_budget(provider: str, free_device_bytes: int | None = None) -> int:
    """Bytes of model inputs one run may take: 512 MiB on the CPU; on CUDA 1/32 of the free
    device memory (the rest is left to activations and ONNX Runtime's arena), never below the
    CPU's 512 MiB; 512 MiB when the free memory is unknown."""
    if not provider.startswith(CUDA) or not free_device_bytes:
        return CPU_INPUT_BUDGET
    return max(CPU_INPUT_BUDGET, free_device_bytes // CUDA_INPUT_SHARE)


def batch_limit(provider: str, item_bytes: int, free_device_bytes: int | None = None) -> int:
    """The largest batch the probe tries: the provider's cap (32 on the CPU, 4096 on CUDA) and
    the :func:`input_budget` divided by one input's ``item_bytes``, at least 1."""
    cap = MAX_PROBE_BATCH[CUDA if provider.startswith(CUDA) else CPU]
    return max(1, min(cap, input_budget(provider, free_device_bytes) // max(item_bytes, 1)))


def evaluate(model: onnx.ModelProto, feeds: Mapping[str, npt.NDArray]) -> list[npt.NDArray]:
    """Run a small helper model once on the CPU (the backward builder's probes)."""
    return _session(model).run(None, dict(feeds))


# ---- runtime checks of graph rewrites ----------------------------------------------------------
def probe_feeds(model: onnx.ModelProto, rows: int, seed: int = 0) -> dict[str, npt.NDArray]:
    """Random inputs with ``rows`` samples; symbolic non-batch axes get ``UNKNOWN_DIM``."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        shape = [rows] + [d.dim_value or UNKNOWN_DIM for d in t.shape.dim[1:]]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[v.name] = np.zeros(shape, dtype)
    return feeds


def same_outputs(a: npt.NDArray, b: npt.NDArray) -> bool:
    """Equal up to float rounding (fp16 outputs get a looser tolerance)."""
    if a.shape != b.shape:
        return False
    if not np.issubdtype(a.dtype, np.floating):
        return bool(np.array_equal(a, b))
    tol = 1e-2 if a.dtype == np.float16 else 1e-4
    return bool(np.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0)))))


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    src = model if isinstance(model, str) else model.SerializeToString()
    return create_session(src, "cpu", None)[0]


def verify_batch_dynamic(original: onnx.ModelProto, dynamic: onnx.ModelProto, batch: int) -> None:
    """Batch 2 == two batch-1 runs, and batch ``batch`` == the original model, or raise."""
    x = probe_feeds(dynamic, max(batch, 2))

    def part(start: int, stop: int) -> dict[str, npt.NDArray]:
        return {k: v[start:stop] for k, v in x.items()}

    try:
        new, old = _session(dynamic), _session(original)
        singles = zip(*(new.run(None, part(i, i + 1)) for i in (0, 1)))
        checks = [("batch 2 vs two batch-1 runs", new.run(None, part(0, 2)),
                   [np.concatenate(o) for o in singles]),
                  (f"batch {batch} vs the original model", new.run(None, part(0, batch)),
                   old.run(None, part(0, batch)))]
    except Exception as e:  # ORT raises several exception types
        raise BlackboxError(f"cannot make the batch dynamic: ONNX Runtime fails on the rewritten "
                            f"model ({_first_line(e)})") from e
    names = [o.name for o in dynamic.graph.output]
    for what, got, want in checks:
        for name, a, b in zip(names, got, want):
            if not same_outputs(a, b):
                raise BlackboxError(
                    f"cannot make the batch dynamic: output {name!r} differs ({what}); the graph "
                    "hard-codes the batch size in an op other than Reshape (Expand, Tile...)")


def verify_same_function(original: onnx.ModelProto | str, rewritten: onnx.ModelProto,
                         reference: onnx.ModelProto, what: str) -> None:
    """Both models give the same outputs on one probe batch (``reference`` gives the input
    shapes), or raise :class:`BlackboxError` naming ``what`` was rewritten."""
    rows = next((d.dim_value for i in reference.graph.input[:1]
                 for d in i.type.tensor_type.shape.dim[:1] if d.dim_value > 0), 2)
    feeds = probe_feeds(reference, rows)
    try:
        want = _session(original).run(None, feeds)
        got = _session(rewritten).run(None, feeds)
    except Exception as e:  # ORT raises several exception types
        raise BlackboxError(f"{what}: ONNX Runtime fails on the result ({_first_line(e)})") from e
    for o, a, b in zip(rewritten.graph.output, got, want):
        if not same_outputs(np.asarray(a), np.asarray(b)):
            raise BlackboxError(f"{what}: output {o.name!r} changed")
