"""The local executor of a dataset run: ``bbx explain METHOD MODEL DIR --out OUT``.

Images are read one at a time (nothing is loaded up front). Each image's files are written
through its own :class:`~blackbox_xai.outputs.OutputPlan` (all or none), then its row is
appended to ``OUT/index.csv``; every image's files are planned and checked for collisions
before any computing. Re-running the same command resumes: an image whose row has the same
settings hash, image sha256 and requested target and whose files all exist is skipped; any
other image (a missing or unreadable row, a missing file) is redone.

Seeds: image i is explained with :func:`derive_seed` (the run's seed, the image's sha256), so
a map does not depend on the order of the images or on which other images are in the run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import explain
from ..explanation import Explanation, plan_files
from ..methods import get_method
from ..model import Model, sha256_of
from ..outputs import OutputPlan, model_inputs
from ..preprocess import Preprocessing
from ..progress import progress_bar
from .index import INDEX_NAME, IndexRow, appending, read_index, write_index
from .sources import DatasetError, ImageSet, Source


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
class ImageResult:
    """One image of the run: its row, and its explanation (None when the index had it)."""

    source: Source
    row: IndexRow
    explanation: Explanation | None


def run_dataset(model: Model, pre: Preprocessing, images: ImageSet, method: str,
                options: dict[str, Any], *, out_dir: str | os.PathLike, seed: int = 0,
                target: int | None = None, overwrite: bool = False, progress: bool = False,
                max_pixels: int | None = None) -> Iterator[ImageResult]:
    """Explain every image of ``images`` with ``method`` into ``out_dir``, resuming from its
    index; yields each image's result in order, and rewrites the index sorted at the end.

    ``target`` is the class for images whose list gives none (default: top-1). Files not from
    this run's index are replaced only with ``overwrite``; rows of ``method`` with other
    settings are refused without it, and redone with it.
    """
    out = Path(out_dir)
    index_path = out / INDEX_NAME
    key = settings_hash(model, pre, method, options, seed)
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
        plan_files(plan, out, f"{s.name}_{method}", overlay=True, source=str(s.path))
    plan.add(index_path)
    plan.check(inputs)

    done = {r.key: r for r in rows if r not in other}
    write_index(index_path, list(done.values()))  # drops unreadable rows before appending
    with appending(index_path) as append, \
            progress_bar(progress, method, total=len(images.sources)) as bar:
        if bar is not None:
            bar.unit = "img"
        for s in images.sources:
            sha = sha256_of(s.path)
            want = s.target if s.target is not None else target
            row = done.get((s.name, method))
            if (row is not None and row.options_hash == key and row.sha256 == sha
                    and want in (None, row.target) and row.complete(out)):
                yield ImageResult(s, row, None)
            else:
                exp, row = _explain_one(model, pre, s, method, options, out, key, seed, want,
                                        max_pixels)
                append(row)
                done[row.key] = row
                yield ImageResult(s, row, exp)
            if bar is not None:
                bar.update(1)
    write_index(index_path, list(done.values()))


def _explain_one(model: Model, pre: Preprocessing, s: Source, method: str,
                 options: dict[str, Any], out: Path, key: str, seed: int, target: int | None,
                 max_pixels: int | None) -> tuple[Explanation, IndexRow]:
    """Explain one image, write its files (all or none) and return its index row."""
    p = pre.prepare(s.path, model.input.channels, max_pixels)
    image_seed = derive_seed(seed, p.inputs["sha256"])
    exp = explain(model, p.tensor, method, target=target, seed=image_seed, labels=pre.labels,
                  inputs=p.inputs, **options)
    stem = f"{s.name}_{method}"
    plan = OutputPlan(overwrite=True)  # checked with every other image's files up front
    plan_files(plan, out, stem, overlay=True, source=str(s.path))
    plan.check({**model_inputs(model.path), s.path: "an input image"})
    written = plan.commit(exp.files(out, stem, image=p.image, box=p.box))
    row = IndexRow(s.name, str(s.path), p.inputs["sha256"], int(exp.target), exp.label or "",
                   float(exp.score), method, key, image_seed, int(exp.n_queries),
                   float(exp.seconds), tuple(w.relative_to(out).as_posix() for w in written))
    return exp, row
