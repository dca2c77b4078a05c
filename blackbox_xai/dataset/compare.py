"""``bbx compare MODEL_A DIR --against MODEL_B --out OUT``: a deployment check over a dataset.

One row per image in ``OUT/compare.csv`` (the columns of
:class:`~blackbox_xai.compare.ImageComparison` plus path, sha256, seed and the settings hash),
appended as images finish and resumed like an explain run's index
(:mod:`blackbox_xai.dataset.run`): an image whose row has the current settings and the image's
sha256 is skipped, any other is redone. Image i is explained by both models with
``derive_seed(seed, sha256)``, so rows do not depend on the order of the images.

The per-image work is a worker (:class:`CompareWorker`, built once per process by
:func:`make_compare_worker` from a picklable :class:`CompareJob`: it loads both models) mapped
over the images by an executor (:mod:`blackbox_xai.dataset.executor`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..compare import compare_one
from ..explanation import Explanation
from ..model import Model, sha256_of
from ..preprocess import Prepared, Preprocessing
from ..progress import progress_bar
from .executor import Executor, LocalExecutor
from .run import ModelArgs, derive_seed, settings_hash
from .sources import Source
from .table import Row, RowTable, resume, unique_names

TABLE_NAME = "compare.csv"
#: compare.csv: the columns and their kinds (see :data:`blackbox_xai.dataset.table.KINDS`)
COLUMNS = {"image": "str", "path": "str", "sha256": "str", "top1_a": "int", "top1_b": "int",
           "flipped": "bool", "target": "int", "max_logit_delta": "float",
           "max_prob_delta": "float", "target_prob_a": "float", "target_prob_b": "float",
           "spearman": "float", "top_k_iou": "float", "ssim": "float", "drifted": "bool",
           "seed": "int", "seconds": "float", "settings": "str"}


@dataclass(frozen=True)
class CompareJob:
    """Everything a worker needs, picklable: both models, the recipe, the method and the gate."""

    a: ModelArgs
    b: ModelArgs
    pre: Preprocessing
    method: str
    options: dict[str, Any]
    seed: int = 0
    threshold: float = 0.8
    top_k: float = 0.1
    max_pixels: int | None = None


def job_settings(job: CompareJob, model_a: Model, model_b: Model) -> str:
    """16 hex digits of what decides a row besides the image: A's :func:`settings_hash`, B's
    sha256, tensor and provider, A's provider, the threshold and the top-k fraction."""
    text = json.dumps([settings_hash(model_a, job.pre, job.method, job.options, job.seed),
                       model_b.sha256, model_b.logits_name, model_b.score, model_b.provider,
                       model_a.provider, job.threshold, job.top_k])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CompareWorker:
    """Both models loaded once; ``worker(source)`` is the image's compare.csv row."""

    def __init__(self, job: CompareJob, models: tuple[Model, Model] | None = None) -> None:
        self.job = job
        self.a, self.b = models or (job.a.load(), job.b.load())
        self.settings = job_settings(job, self.a, self.b)

    def explain(self, source: Source) -> tuple[Row, Prepared, Explanation, Explanation]:
        """The row, the prepared image and both explanations of A's top-1."""
        job = self.job
        p = job.pre.prepare(source.path, self.a.input.channels, job.max_pixels)
        seed = derive_seed(job.seed, p.inputs["sha256"])
        r, ea, eb = compare_one(self.a, self.b, p.tensor, job.method, name=source.name, seed=seed,
                                threshold=job.threshold, top_k=job.top_k, **job.options)
        row = {**asdict(r), "path": str(source.path), "sha256": p.inputs["sha256"], "seed": seed,
               "settings": self.settings}
        return {k: row[k] for k in COLUMNS}, p, ea, eb

    def __call__(self, source: Source) -> Row:
        return self.explain(source)[0]


def make_compare_worker(job: CompareJob) -> CompareWorker:
    """The executor's ``make_worker`` (use ``functools.partial(make_compare_worker, job)``)."""
    return CompareWorker(job)


def compare_dataset(worker: CompareWorker, sources: Sequence[Source], out: Path, *,
                    executor: Executor | None = None, overwrite: bool = False,
                    progress: bool = False) -> Iterator[tuple[Row, bool]]:
    """Compare every image of ``sources`` into ``out/compare.csv``, resuming from it; yields
    (row, computed now) per image, computed ones as they finish, and rewrites the table sorted
    by image name at the end (rows of other images already in it are kept).

    ``worker`` (the caller's models) does the work in this process without ``executor``; an
    executor builds its own workers from ``worker.job``.
    """
    settings = worker.settings
    table = RowTable(out / TABLE_NAME, COLUMNS)
    unique_names([s.name for s in sources], [s.path for s in sources])
    done = {r["image"]: r for r in resume(table, {"": settings}, overwrite)}
    out.mkdir(parents=True, exist_ok=True)
    table.write(list(done.values()))  # unreadable and cut-short rows go before appending
    todo = []
    for s in sources:
        row = done.get(s.name)
        if row is not None and row["sha256"] == sha256_of(s.path):
            yield row, False
        else:
            todo.append(s)
    make_worker: Callable[[], CompareWorker] = (
        (lambda: worker) if executor is None
        else functools.partial(make_compare_worker, worker.job))
    with table.appending() as append, progress_bar(progress, "compare", total=len(todo)) as bar:
        if bar is not None:
            bar.unit = "img"
        for row in (executor or LocalExecutor()).map(make_worker, todo):
            row = {**row, "settings": settings}  # this process's (a remote worker's may differ)
            append(row)
            done[row["image"]] = row
            if bar is not None:
                bar.update(1)
            yield row, True
    table.write(sorted(done.values(), key=lambda r: r["image"]))
