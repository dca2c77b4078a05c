"""``bbx evaluate MODEL DIR --methods a,b --out OUT``: faithfulness metrics over a dataset.

One row per (image, method) in ``OUT/evaluate.csv`` (the columns of ``metrics.csv``, see
:class:`~blackbox_xai.metrics.evaluate.EvaluationRow`, plus path, sha256, seed and the
method's settings hash), appended as images finish and resumed like
:mod:`blackbox_xai.dataset.compare`: an image is redone for the methods whose row is missing,
has other settings or another sha256. Explanations use ``derive_seed(seed, sha256)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..metrics.evaluate import EvaluationRow, Target, evaluate_one
from ..metrics.pointing import TOLERANCE, Annotation
from ..model import Model, sha256_of
from ..preprocess import Prepared, Preprocessing
from ..progress import progress_bar
from .executor import Executor, LocalExecutor
from .run import ModelArgs, derive_seed, settings_hash
from .sources import Source
from .table import Row, RowTable, resume, unique_names

TABLE_NAME = "evaluate.csv"
#: evaluate.csv: the columns and their kinds (see :data:`blackbox_xai.dataset.table.KINDS`)
COLUMNS = {"image": "str", "path": "str", "sha256": "str", "method": "str", "target": "int",
           "label": "str", "prob": "float", "top1": "int", "top1_prob": "float",
           "deletion_auc": "float", "insertion_auc": "float", "pointing_hit": "bool?",
           "energy_pointing": "float?", "completeness_gap": "float?", "queries": "int",
           "eval_queries": "int", "seed": "int", "seconds": "float", "settings": "str"}


@dataclass(frozen=True)
class EvaluateJob:
    """Everything a worker needs, picklable."""

    model: ModelArgs
    pre: Preprocessing
    options: dict[str, dict[str, Any]]  # {method: options}, every method of the run
    seed: int = 0
    target: Target = "top1"
    pixels_per_step: int | None = None
    tolerance: float = TOLERANCE
    boxes: str = ""  # sha256 of the boxes file ("" without)
    max_pixels: int | None = None


@dataclass(frozen=True)
class Item:
    """One image to evaluate: the methods still to do and its annotation."""

    source: Source
    methods: tuple[str, ...]
    annotation: Annotation | None


def job_settings(job: EvaluateJob, model: Model) -> dict[str, str]:
    """{method: 16 hex digits}: :func:`settings_hash` of the method with the target mode, the
    deletion step, the pointing tolerance and the boxes file's sha256."""
    out = {}
    for m, opts in job.options.items():
        text = json.dumps([settings_hash(model, job.pre, m, opts, job.seed), job.target,
                           job.pixels_per_step, job.tolerance, job.boxes])
        out[m] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


class EvaluateWorker:
    """The model loaded once; ``worker(item)`` is the item's evaluate.csv rows."""

    def __init__(self, job: EvaluateJob, model: Model | None = None) -> None:
        self.job = job
        self.model = model or job.model.load()
        self.settings = job_settings(job, self.model)

    def evaluate(self, item: Item) -> tuple[list[Row], Prepared, list[EvaluationRow]]:
        """The rows, the prepared image and the evaluation rows (maps and curves)."""
        job, s = self.job, item.source
        p = job.pre.prepare(s.path, self.model.input.channels, job.max_pixels)
        seed = derive_seed(job.seed, p.inputs["sha256"])
        found = evaluate_one(self.model, p.tensor, item.methods, name=s.name,
                             annotation=item.annotation, target=job.target, seed=seed,
                             options=job.options, pixels_per_step=job.pixels_per_step,
                             tolerance=job.tolerance, labels=job.pre.labels)
        rows = [{**r.as_dict(), "top1": r.top1, "top1_prob": r.top1_prob, "path": str(s.path),
                 "sha256": p.inputs["sha256"], "seed": seed, "settings": self.settings[r.method]}
                for r in found]
        return [{k: _plain(row[k]) for k in COLUMNS} for row in rows], p, found

    def __call__(self, item: Item) -> list[Row]:
        return self.evaluate(item)[0]


def _plain(v: Any) -> Any:
    """numpy scalars as Python numbers (their CSV cells are then exact)."""
    return v.item() if hasattr(v, "item") else v


def make_evaluate_worker(job: EvaluateJob) -> EvaluateWorker:
    """The executor's ``make_worker`` (use ``functools.partial(make_evaluate_worker, job)``)."""
    return EvaluateWorker(job)


def evaluate_dataset(worker: EvaluateWorker, sources: Sequence[Source],
                     annotations: Sequence[Annotation | None], out: Path, *,
                     executor: Executor | None = None, overwrite: bool = False,
                     progress: bool = False) -> Iterator[tuple[list[Row], bool]]:
    """Evaluate every image of ``sources`` with every method into ``out/evaluate.csv``,
    resuming from it; yields (the image's rows, computed now) per image and rewrites the
    table sorted by image and method at the end (rows of other images are kept).

    ``worker`` (the caller's model) does the work in this process without ``executor``; an
    executor builds its own workers from ``worker.job``.
    """
    job, settings = worker.job, worker.settings
    table = RowTable(out / TABLE_NAME, COLUMNS)
    unique_names([s.name for s in sources], [s.path for s in sources])
    methods = list(job.options)
    done = {(r["image"], r["method"]): r for r in resume(table, settings, overwrite)}
    out.mkdir(parents=True, exist_ok=True)
    table.write(list(done.values()))
    todo = []
    for s, ann in zip(sources, annotations):
        sha = sha256_of(s.path)
        missing = tuple(m for m in methods
                        if (r := done.get((s.name, m))) is None or r["sha256"] != sha)
        if missing:
            todo.append(Item(s, missing, ann))
        else:
            yield [done[(s.name, m)] for m in methods], False
    make_worker: Callable[[], EvaluateWorker] = (
        (lambda: worker) if executor is None else functools.partial(make_evaluate_worker, job))
    with table.appending() as append, progress_bar(progress, "evaluate", total=len(todo)) as bar:
        if bar is not None:
            bar.unit = "img"
        for rows in (executor or LocalExecutor()).map(make_worker, todo):
            rows = [{**r, "settings": settings[r["method"]]} for r in rows]  # as in compare
            for row in rows:
                append(row)
                done[(row["image"], row["method"])] = row
            if bar is not None:
                bar.update(1)
            yield rows, True
    table.write(sorted(done.values(), key=lambda r: (r["image"], r["method"])))
