"""Executors of a dataset run: who calls the per-image work, in this process or on Ray.

An executor maps a *worker* over items: ``make_worker()`` builds the worker once per process
(it loads the model there), then ``worker(item)`` returns one picklable result per item. Results
come back in the items' order whatever the executor, so the caller writes the same index.
``make_worker`` must be picklable (a module-level function or a ``functools.partial`` of one)
for executors that run it elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Executor(Protocol):
    """Maps a worker built by ``make_worker`` over ``items``; results in the items' order."""

    name: str

    def map(self, make_worker: Callable[[], Callable[[Item], Result]],
            items: Iterable[Item]) -> Iterator[Result]: ...


class LocalExecutor:
    """The embedded default: one worker, in this process, one item at a time."""

    name = "local"

    def map(self, make_worker: Callable[[], Callable[[Item], Result]],
            items: Iterable[Item]) -> Iterator[Result]:
        worker = make_worker()
        for item in items:
            yield worker(item)


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
