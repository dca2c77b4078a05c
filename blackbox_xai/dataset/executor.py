"""Executors of a dataset run: who calls the per-image work, in this process or on Ray.

An executor maps a *worker* over items: ``make_worker()`` builds the worker once per process
(it loads the model there), then ``worker(item)`` returns one picklable result per item. Results
come back in the items' order whatever the executor, so the caller writes the same index.
``make_worker`` must be picklable (a module-level function or a ``functools.partial`` of one)
for executors that run it elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Executor(Protocol):
    """Maps a worker built by ``make_worker`` over ``items``; results in the items' order."""

    name: str

    def map(self, make_worker: Callable[[], Callable[[Item], Result]],
            items: Iterable[Item]) -> Iterator[Result]: ...


class LocalExecutor:
    """The embedded default: one worker, in this process, one item ahead.

    While the caller handles item k's result (writing its files), item k+1 is worked on in a
    background thread: ONNX Runtime, PIL and zlib release the GIL, so the model's run overlaps
    the file writing (and its fsyncs). The worker is only ever called from that one thread, one
    item at a time, and results come back in the items' order; when the caller stops reading,
    the item in progress is finished and nothing more is started.
    """

    name = "local"

    def map(self, make_worker: Callable[[], Callable[[Item], Result]],
            items: Iterable[Item]) -> Iterator[Result]:
        worker = make_worker()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbx-worker") as pool:
            pending: Future[Result] | None = None
            try:
                for item in items:
                    ahead = pool.submit(worker, item)
                    if pending is not None:
                        yield pending.result()
                    pending = ahead
                if pending is not None:
                    yield pending.result()
            finally:
                if pending is not None:
                    pending.cancel()


def get_executor(name: str, *, ray_address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float = 0) -> Executor:
    """The executor called ``name``: ``"local"`` or ``"ray"`` (Ray at ``ray_address``, default
    a local instance, with ``workers`` actors of ``gpus_per_worker`` GPUs each)."""
    from ..errors import BlackboxError

    if name == "local":
        if ray_address is not None or workers is not None or gpus_per_worker:
            raise BlackboxError("--ray-address, --ray-workers and --gpus-per-worker are for "
                                "--executor ray")
        return LocalExecutor()
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    raise BlackboxError(f"--executor {name!r}: use local or ray")
