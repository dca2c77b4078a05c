"""The Ray executor (``--executor ray``): a dataset run's chunks on a Ray actor pool.

Ray Data: the items become a dataset of pickled rows, ``map_batches`` runs them one row per
call on an :class:`~ray.data.ActorPoolStrategy` pool of ``workers`` actors, each of which
builds its worker once (``make_worker()``: it loads the model), and the results stream back
in the items' order (``preserve_order``), so the caller writes the same folder and index as
with the local executor. A worker's :class:`~blackbox_xai.errors.BlackboxError` comes back as
that error (one line), not as a Ray traceback. When the caller stops reading, the rest of the
run is cancelled; the rows written so far stand and a rerun resumes after them.

Ray is imported here only, and only when this executor is used: it is the optional extra
``blackbox-xai[ray]``. Every node needs blackbox-xai installed and the model and images at
the same paths (a shared file system); the results travel back to this process, which writes
the output folder.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ..errors import BlackboxError

Item = TypeVar("Item")
Result = TypeVar("Result")
MISSING = "--executor ray needs the ray extra: pip install 'blackbox-xai[ray]'"


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise BlackboxError(MISSING) from None
    return ray


class _Actor:
    """One pool actor: builds the worker once, then maps it over pickled items."""

    def __init__(self, make_worker: Callable[[], Callable[[Any], Any]]) -> None:
        self.worker = make_worker()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = []
        for blob in batch["item"]:
            try:
                out.append(pickle.dumps((True, self.worker(pickle.loads(blob)))))
            except BlackboxError as e:  # the user's error, one line on the caller's side
                out.append(pickle.dumps((False, e)))
        return {"result": np.array(out, dtype=object)}


class RayExecutor:
    """Maps a worker over items on a Ray Data actor pool; results in the items' order.

    Args:
        address: the Ray cluster (``ray://head:10001``, ``auto``); default: a Ray already
            initialised in this process, else a new local instance.
        workers: actors in the pool (default: the cluster's CPUs, or GPUs / gpus_per_worker).
        gpus_per_worker: GPUs reserved by each actor (CUDA workers: ``--device cuda``).
        cpus_per_worker: CPUs reserved by each actor, and ONNX Runtime's threads in it.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float = 0, cpus_per_worker: int = 1) -> None:
        _ray()  # a missing extra fails before any model loading or output
        if workers is not None and workers < 1:
            raise BlackboxError(f"--ray-workers {workers}: use 1 or more")
        if gpus_per_worker < 0:
            raise BlackboxError(f"--gpus-per-worker {gpus_per_worker:g}: use 0 or more")
        self.address, self.workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.threads_per_worker = cpus_per_worker

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
            if self.address is None:
                ray.init(include_dashboard=False, **quiet)
            else:
                try:
                    ray.init(address=self.address, **quiet)
                except (ConnectionError, ValueError, RuntimeError) as e:
                    raise BlackboxError(f"--ray-address {self.address}: cannot connect to Ray "
                                        f"({' '.join(str(e).split())[:200]})") from None
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes are not the user's
        return ray

    def pool_size(self, ray: Any) -> int:
        """The actors to start: ``workers``, else as many as the cluster's resources allow."""
        if self.workers is not None:
            return self.workers
        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, int(res.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(res.get("CPU", 1) // self.cpus_per_worker))

    def map(self, make_worker: Callable[[], Callable[[Item], Result]],
            items: Iterable[Item]) -> Iterator[Result]:
        blobs = [{"item": pickle.dumps(item)} for item in items]
        if not blobs:
            return
        ray = self._connect()
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        size = min(self.pool_size(ray), len(blobs))
        ds = ray.data.from_items(blobs, override_num_blocks=len(blobs)).map_batches(
            _Actor, fn_constructor_args=(make_worker,), batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size), num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker)
        for row in ds.iter_rows():
            ok, value = pickle.loads(row["result"])
            if not ok:
                raise value
            yield value
