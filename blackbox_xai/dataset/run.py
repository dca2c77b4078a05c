"""Dataset runs: ``bbx explain METHOD MODEL DIR --out OUT``, on any executor.

Each image's files are written through its own :class:`~blackbox_xai.outputs.OutputPlan` (all
or none), then its row is appended to ``OUT/index.csv``; every image's files are planned and
checked for collisions before any computing. Re-running the same command resumes: an image
whose row has the same settings hash, image sha256 and requested target and whose files all
exist is skipped; any other image (a missing or unreadable row, a missing file) is redone.

The images still to do go to the executor (:mod:`blackbox_xai.dataset.executor`) in chunks of
:data:`IMAGES_PER_CALL` for a method with a batched form (the single-pass CAM and gradient
methods: many images per ONNX Runtime call, :func:`~blackbox_xai.api.explain_batch`), one
image per chunk otherwise. A worker (:class:`ExplainWorker`, built once per process: it loads
the model) reads and explains its chunk and returns each image's row and file contents; this
process writes them in the images' order, so every executor gives the same folder and index.

Seeds: image i is explained with :func:`derive_seed` (the run's seed, the image's sha256), so
a map does not depend on the order of the images or on which other images are in the run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import explain_batch
from ..explanation import FILE_KINDS, Explanation, plan_files
from ..methods import get_method
from ..model import Model, load_model, sha256_of
from ..outputs import OutputPlan, model_inputs
from ..preprocess import Preprocessing
from ..progress import progress_bar
from .executor import Executor, LocalExecutor
from .index import INDEX_NAME, IndexRow, appending, read_index, write_index
from .sources import DatasetError, ImageSet, Source

#: images per worker call (and per ONNX Runtime batch) for a method with a batched form
IMAGES_PER_CALL = 16
#: threads decoding and resizing a call's images (PIL releases the GIL while it does)
DECODE_THREADS = 2


def derive_seed(seed: int, sha256: str) -> int:
    """The seed of one image of a dataset run: the first 8 bytes of
    ``sha256(f"{seed}:{image sha256}")`` as a big-endian integer, top bit cleared (< 2**63)."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def settings_hash(model: Model, pre: Preprocessing, method: str, options: dict[str, Any],
                  seed: int) -> str:
    """16 hex digits identifying what decides a map besides the image: the model (sha256,
    explained tensor, score), the preprocessing recipe, the method, its options, the seed."""
    recipe = {k: v for k, v in pre.describe(model.input.channels).items() if k != "sources"}
    settings = {"model": model.sha256, "tensor": model.logits_name, "score": model.score,
                "recipe": recipe, "method": method,
                "options": get_method(method).validate(options), "seed": seed}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelArgs:
    """How to open the run's model again in another process: :func:`load_model`'s arguments."""

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Model, threads: int | None = None) -> ModelArgs:
        """``model``'s arguments; ``threads`` where the model was opened with no thread count."""
        return cls(str(model.path), {
            "device": model.device, "score": model.score, "output": model.output_name,
            "batch_size": model.batch_size_option, "layout": model.input.layout,
            "threads": model.threads or threads})

    def load(self) -> Model:
        return load_model(self.path, **self.kwargs)


@dataclass(frozen=True)
class ExplainJob:
    """Everything a worker needs, picklable: the model, recipe, method, options and seeds."""

    model: ModelArgs
    pre: Preprocessing
    method: str
    options: dict[str, Any]
    out: str
    key: str  # the settings hash
    seed: int
    max_pixels: int | None
    kinds: tuple[str, ...] = FILE_KINDS  # the files written per image (--save)


@dataclass(frozen=True)
class Task:
    """One image to explain, for ``target`` (None: top-1)."""

    source: Source
    target: int | None


@dataclass(frozen=True)
class Done:
    """One explained image: its source, row and explanation, and its files' contents by name
    (relative to the run's folder)."""

    source: Source
    row: IndexRow
    explanation: Explanation
    files: dict[str, bytes]
    kinds: tuple[str, ...] = FILE_KINDS


class ExplainWorker:
    """Explains chunks of :class:`Task`; built once per process (it holds the model)."""

    def __init__(self, job: ExplainJob, model: Model | None = None) -> None:
        self.job = job
        self.model = model if model is not None else job.model.load()

    def __call__(self, tasks: list[Task]) -> list[Done]:
        job, out = self.job, Path(self.job.out)
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:  # PIL decodes without the GIL
            prepared = list(pool.map(lambda t: job.pre.prepare(
                t.source.path, self.model.input.channels, job.max_pixels), tasks))
        seeds = [derive_seed(job.seed, p.inputs["sha256"]) for p in prepared]
        exps = explain_batch(self.model, [p.tensor for p in prepared], job.method,
                             targets=[t.target for t in tasks], seeds=seeds,
                             labels=job.pre.labels, inputs=[p.inputs for p in prepared],
                             **job.options)
        done = []
        for t, p, exp, seed in zip(tasks, prepared, exps, seeds):
            files = {path.relative_to(out).as_posix(): data for path, data in
                     exp.files(out, f"{t.source.name}_{job.method}", image=p.image,
                               box=p.box, kinds=job.kinds).items()}
            row = IndexRow(t.source.name, str(t.source.path), p.inputs["sha256"],
                           int(exp.target), exp.label or "", float(exp.score), job.method,
                           job.key, seed, int(exp.n_queries), float(exp.seconds),
                           tuple(files))
            done.append(Done(t.source, row, exp, files, job.kinds))
        return done


def make_explain_worker(job: ExplainJob) -> ExplainWorker:
    """A worker loading the job's model (the picklable ``make_worker`` of other processes)."""
    return ExplainWorker(job)


@dataclass(frozen=True)
class ImageResult:
    """One image of the run: its row, and its explanation (None when the index had it)."""

    source: Source
    row: IndexRow
    explanation: Explanation | None


def run_dataset(model: Model, pre: Preprocessing, images: ImageSet, method: str,
                options: dict[str, Any], *, out_dir: str | os.PathLike, seed: int = 0,
                target: int | None = None, overwrite: bool = False, progress: bool = False,
                max_pixels: int | None = None, executor: Executor | None = None,
                kinds: tuple[str, ...] = FILE_KINDS) -> Iterator[ImageResult]:
    """Explain every image of ``images`` with ``method`` into ``out_dir``, resuming from its
    index; yields the images the index already has, then each image explained now as it is
    written (in the images' order), and rewrites the index sorted at the end.

    ``target`` is the class for images whose list gives none (default: top-1). Files not from
    this run's index are replaced only with ``overwrite``; rows of ``method`` with other
    settings are refused without it, and redone with it. ``executor``: who runs the workers
    (default: :class:`LocalExecutor`, in this process with ``model``). ``kinds``: the files
    written per image (:data:`~blackbox_xai.explanation.FILE_KINDS`; ``("npy",)`` keeps only
    the maps, the index holding each image's target, score and seed); another choice is
    another setting.
    """
    executor = executor or LocalExecutor()
    out = Path(out_dir)
    index_path = out / INDEX_NAME
    key = settings_hash(model, pre, method, options, seed)
    if kinds != FILE_KINDS:
        key = hashlib.sha256(f"{key}:{','.join(kinds)}".encode()).hexdigest()[:16]
    try:
        rows = read_index(index_path)
    except DatasetError:
        if not overwrite:
            raise
        rows = []
    other = [r for r in rows if r.method == method and r.options_hash != key]
    if other and not overwrite:
        raise DatasetError(f"{index_path} holds {method} results with other settings (e.g. "
                           f"{other[0].name}); pass --overwrite to redo them or choose another --out")
    resuming = os.path.lexists(index_path)
    inputs = {**model_inputs(model.path), **{s.path: "an input image" for s in images.sources}}
    plan = OutputPlan(overwrite or resuming)  # an index's own files are this run's to replace
    for s in images.sources:
        plan_files(plan, out, f"{s.name}_{method}", overlay=True, source=str(s.path),
                   kinds=kinds)
    plan.add(index_path)
    plan.check(inputs)

    done = {r.key: r for r in rows if r not in other}
    write_index(index_path, list(done.values()))  # drops unreadable rows before appending
    todo = []
    for s in images.sources:
        want = s.target if s.target is not None else target
        row = done.get((s.name, method))
        if (row is not None and row.options_hash == key and row.sha256 == sha256_of(s.path)
                and want in (None, row.target) and row.complete(out)):
            yield ImageResult(s, row, None)
        else:
            todo.append(Task(s, want))
    per_call = IMAGES_PER_CALL if get_method(method).batch_fn is not None else 1
    chunks = [todo[i:i + per_call] for i in range(0, len(todo), per_call)]
    job = ExplainJob(ModelArgs.of(model, getattr(executor, "threads_per_worker", None)), pre,
                     method, get_method(method).validate(options), str(out), key, seed,
                     max_pixels, kinds)
    make_worker = functools.partial(ExplainWorker, job, model) \
        if isinstance(executor, LocalExecutor) else functools.partial(make_explain_worker, job)
    checked = model_inputs(model.path)
    with appending(index_path) as append, \
            progress_bar(progress, method, total=len(todo)) as bar:
        if bar is not None:
            bar.unit = "img"
        for results in executor.map(make_worker, chunks):
            for r in results:
                _write(out, r, checked)
                append(r.row)
                done[r.row.key] = r.row
                if bar is not None:
                    bar.update(1)
                yield ImageResult(r.source, r.row, r.explanation)
    write_index(index_path, list(done.values()))


def _write(out: Path, r: Done, inputs: dict[Path, str]) -> None:
    """Write one image's files, all or none (checked with every other image's up front)."""
    plan = OutputPlan(overwrite=True)
    plan_files(plan, out, f"{r.row.name}_{r.row.method}", overlay=True, source=r.row.path,
               kinds=r.kinds)
    plan.check({**inputs, Path(r.row.path): "an input image"})
    plan.commit({out / name: data for name, data in r.files.items()})
