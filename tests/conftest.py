"""Shared fixtures: the committed test models and closed-form helpers."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import model_path
from onnx import numpy_helper


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Backward graphs and batch sizes are cached in a folder of this test run, never in the
    user's cache (tests that study the cache set their own). The xdist workers share it (the
    cache writes atomically), so each model is probed and differentiated once per run, not
    once per worker."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "shared-cache"
    folder.mkdir(exist_ok=True)
    os.environ["BLACKBOX_XAI_CACHE"] = str(folder)
    yield
    os.environ.pop("BLACKBOX_XAI_CACHE", None)


#: the probe's settings in tests (short_batch_probe), and the product's, kept for product_probe
SHORT_PROBE = {"PROBE_SECONDS": 0.0, "CONFIRM_ROUNDS": 1}
PRODUCT_PROBE: dict[str, float] = {}


@pytest.fixture(scope="session", autouse=True)
def short_batch_probe():
    """The batch-size probe tries CPU batches up to 8, not 64, each timed by two runs, and
    re-times its finalists once, not three times: every model a run loads is probed once
    (9.4 s of the suite's CPU at the product's settings, where on EfficientNet-Lite0 the climb
    to 64 alone took seconds). No test needs a batch above 8 or the fastest batch; the tests
    of the probe itself run it on a fake clock at the product's settings."""
    from blackbox_xai import model

    limit = model.batch_limit
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "batch_limit", lambda *args: min(8, limit(*args)))
        for name, value in SHORT_PROBE.items():
            PRODUCT_PROBE[name] = getattr(model, name)
            patch.setattr(model, name, value)
        yield


@pytest.fixture
def product_probe(monkeypatch):
    """The batch-size probe at the product's settings (short_batch_probe shortens it)."""
    from blackbox_xai import model

    for name, value in PRODUCT_PROBE.items():
        monkeypatch.setattr(model, name, value)


@pytest.fixture(scope="session", autouse=True)
def one_onnx_runtime_thread():
    """Sessions run ONNX Runtime on one intra-op thread (unless a test asks for threads):
    pytest-xdist already runs one worker per core, and two threads per session on top of that
    only wait for each other (the suite on 2 cores: 109 s of CPU against 120 s, 72 s against
    76 s of wall time)."""
    from blackbox_xai import runtime

    options = runtime.session_options
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "session_options",
                      lambda threads, optimize=True: options(threads or 1, optimize))
        yield


@pytest.fixture(scope="session", autouse=True)
def shared_sessions():
    """One ONNX Runtime session per (graph, device, threads) in a test process: hundreds of
    tests load the same few models (of the 1944 sessions a run created, 7 ms of CPU each, about
    half were a graph that the process had loaded before). The first creation of each runs the
    real code path; an ONNX Runtime error is never cached. Sessions are never changed after
    creation, so the models that share one cannot see each other. Keyed by the graph's bytes,
    or a file's path, size and modification time, the optimisation switch and the TF32
    variable (both change what a session computes)."""
    import hashlib

    from blackbox_xai import model, runtime

    create, made = runtime.create_session, {}

    def key(source: bytes | str) -> tuple:
        if isinstance(source, bytes):
            return ("bytes", hashlib.sha256(source).digest())
        stat = os.stat(source)
        return ("file", os.path.abspath(source), stat.st_size, stat.st_mtime_ns)

    def cached(source, device, threads, *, generated=None, optimize=True):
        k = (key(source), runtime.resolve_device(device), threads, generated, optimize,
             os.environ.get(runtime.CUDA_TF32_ENV))
        if k not in made:
            made[k] = create(source, device, threads, generated=generated, optimize=optimize)
        return made[k]

    cached.uncached = create  # for tests that fake ONNX Runtime's session: never cached
    with pytest.MonkeyPatch.context() as patch:
        for module in (runtime, model):
            patch.setattr(module, "create_session", cached)
        yield


@pytest.fixture(scope="session", autouse=True)
def no_fsync():
    """``os.fsync`` does nothing: a test never simulates a power loss, which is all that the
    writers' fsync calls guard against, and they waited 3 s of the suite's time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    """NumPy's BLAS on one thread: pytest-xdist already runs one worker per core, and BLAS
    threads on top of them (and of ONNX Runtime's) only wait for each other. On the 2-core
    machine under load a (64, 1024) @ (1024, 16) product took 11 ms and 2.9 CPU-ms with two
    threads, 1.1 ms and 0.15 CPU-ms with one."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance (2 CPUs) for a Ray test module, shut down after it so that its
    processes leave the cores to the rest of the run. The Ray test modules (``*_ray.py``) are
    one work unit of the xdist scheduler below, so one worker runs them, one module at a time."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.hookimpl(optionalhook=True)  # runs without xdist too (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """xdist's per-test load balancing, except that the Ray test modules (``*_ray.py``) are one
    work unit, sent first: one worker runs them all on one Ray instance, and they start while
    the other workers take the rest. (``--dist loadgroup`` would do this with the
    ``xdist_group`` mark, but with pytest 9.2 xdist 3.8 can no longer rename the items it
    groups, and the Ray tests silently ran on two workers with two Ray instances.)"""
    from xdist.scheduler import LoadScopeScheduling

    class RayTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if nodeid.split("::")[0].endswith("_ray.py") else nodeid

    return RayTestsTogether(config, log)


@pytest.fixture(scope="session")
def linear_weights() -> tuple[np.ndarray, np.ndarray]:
    """(W (3*32*32, 10), b (10,)) of tests/models/linear.onnx: scores = flatten(x) @ W + b."""
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(model_path("linear")).graph.initializer}
    return inits["W"], inits["b"]


@pytest.fixture(scope="session")
def linear_query(linear_weights):
    w, b = linear_weights
    return lambda x: x.reshape(len(x), -1) @ w + b


@pytest.fixture
def x32() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)


@pytest.fixture
def run():
    """Invoke the CLI with string-converted arguments; exceptions propagate."""
    from blackbox_xai.cli import cli

    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke
