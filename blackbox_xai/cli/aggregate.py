"""``compare`` and ``evaluate`` over a dataset (``--out OUT``): the resumable per-image table,
the summary (printed and ``OUT/summary.json``) and ``OUT/report.html``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ..dataset.aggregate import (
    COMPARE_STATS,
    EVALUATE_STATS,
    compare_summary,
    evaluate_summary,
    worst,
)
from ..dataset.executor import Executor
from ..dataset.sources import ImageSet, Source
from ..outputs import OutputPlan, model_inputs
from .common import print_table

log = logging.getLogger("blackbox_xai")

SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.html"


def plan_outputs(out: Path, table: str, overwrite: bool, model_paths: Sequence[str],
                 images: ImageSet, extra_inputs: Mapping[Path, str] | None = None) -> OutputPlan:
    """The checked plan of summary.json and report.html, checked with the table (which is
    written row by row); a run's own files are replaced when its table exists: it resumes."""
    inputs = {p: "an input image" for p in (s.path for s in images.sources)}
    for m in model_paths:
        inputs.update(model_inputs(m))
    inputs.update(extra_inputs or {})
    resuming = overwrite or (out / table).is_file()
    check = OutputPlan(resuming)
    check.add(out / table)
    plan = OutputPlan(resuming)
    for name in (SUMMARY_NAME, REPORT_NAME):
        check.add(out / name)
        plan.add(out / name)
    check.check(inputs)
    plan.check(inputs)
    return plan


def _stat_rows(stats: Mapping[str, Any], keys: Sequence[str], first: Sequence[str] = ()
               ) -> list[list[str]]:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    return [[*first, k, *(cell(stats[k][c]) for c in ("n", "mean", "q05", "q25", "q50", "q75",
                                                        "q95"))] for k in keys if stats[k]["n"]]


STAT_HEADER = ("n", "mean", "5%", "25%", "50%", "75%", "95%")


def _json(obj: Any) -> bytes:
    from ..explanation import _jsonable

    return (json.dumps(_jsonable(obj), indent=2) + "\n").encode()


def compare_over_dataset(model_a, model_b, pre, images: ImageSet, out: Path, plan: OutputPlan, *,
                         method: str, options: dict[str, Any], seed: int, threshold: float,
                         top_k: float, max_drift_rate: float, max_flip_rate: float, worst_k: int,
                         specs: tuple, max_pixels: int | None, overwrite: bool, progress: bool,
                         executor: Executor | None = None) -> bool:
    """Run the comparison, print and write the summary and the report; True when the gate
    passes (drift rate <= ``max_drift_rate`` and flip rate <= ``max_flip_rate``)."""
    from ..dataset.compare import COLUMNS as TABLE_COLUMNS
    from ..dataset.compare import TABLE_NAME, CompareJob, CompareWorker, compare_dataset
    from ..dataset.report import compare_report
    from ..dataset.table import RowTable

    job = CompareJob(specs[0], specs[1], pre, method, options, seed, threshold, top_k, max_pixels)
    worker = CompareWorker(job, (model_a, model_b))
    settings = worker.settings
    t0 = time.perf_counter()
    computed = kept = 0
    for row, now in compare_dataset(worker, images.sources, out, executor=executor,
                                    overwrite=overwrite, progress=progress):
        if not now:
            kept += 1
            continue
        computed += 1
        status = "+".join(w for w, bad in (("FLIP", row["flipped"]), ("DRIFT", row["drifted"]))
                          if bad) or "ok"
        click.echo(f"{row['image']}: top-1 {row['top1_a']}/{row['top1_b']}, spearman "
                   f"{row['spearman']:.3f}, IoU {row['top_k_iou']:.3f}, SSIM {row['ssim']:.3f} "
                   f"{status}")
    wall = time.perf_counter() - t0
    rows = [r for r in RowTable(out / TABLE_NAME, TABLE_COLUMNS).read()
            if r["settings"] == settings]
    summary = compare_summary(rows)
    ok = _rate_ok(summary["drift_rate"], max_drift_rate) and _rate_ok(summary["flip_rate"],
                                                                      max_flip_rate)
    worst_maps = [(r, *worker.explain(Source(Path(r["path"]), r["image"]))[1:])
                  for r in worst(rows, "spearman", worst_k)]
    doc = {"model_a": model_a.describe(), "model_b": model_b.describe(), "method": method,
           "options": options, "seed": seed, "threshold": threshold, "top_k": top_k,
           "settings": settings, "summary": summary,
           "gate": {"max_drift_rate": max_drift_rate, "max_flip_rate": max_flip_rate, "ok": ok}}
    meta = [f"A: {model_a.path.name} (sha256 {model_a.sha256[:16]}) on {model_a.provider}",
            f"B: {model_b.path.name} (sha256 {model_b.sha256[:16]}) on {model_b.provider}",
            (f"method {method} {options or '(defaults)'}, seed {seed} (per image: derived from "
            f"the image's sha256); an image drifts when spearman < {threshold}; top-k IoU over "
            f"the top {top_k:.0%} pixels"),
            (f"gate: drift rate <= {max_drift_rate}, flip rate <= {max_flip_rate}: "
            f"{'pass' if ok else 'FAIL'}"),
            f"worst {len(worst_maps)} images by Spearman below: the image, A's map, B's map"]
    page = compare_report(rows, summary, worst_maps, meta)
    plan.commit({out / SUMMARY_NAME: _json(doc), out / REPORT_NAME: page.encode()})
    click.echo(f"{summary['images']} images ({computed} compared now in {wall:.1f} s, {kept} "
               f"already in {out / TABLE_NAME})")
    click.echo(f"top-1 agreement {_pct(summary['top1_agreement'])} ({summary['flips']} flips), "
               f"drift rate {_pct(summary['drift_rate'])} ({summary['drifted']} with spearman < "
               f"{threshold})")
    print_table(_stat_rows(summary, COMPARE_STATS), ("measure", *STAT_HEADER), "<" + ">" * 7)
    log.info("wrote %s, %s, %s", out / TABLE_NAME, out / SUMMARY_NAME, out / REPORT_NAME)
    return ok


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _rate_ok(rate: float | None, limit: float) -> bool:
    return rate is None or rate <= limit


def evaluate_over_dataset(model, pre, images: ImageSet, out: Path, plan: OutputPlan, *,
                          options: dict[str, dict[str, Any]], annotations: Sequence, seed: int,
                          target: str, pixels_per_step: int | None, tolerance: float,
                          boxes_sha: str, worst_k: int, spec, max_pixels: int | None,
                          overwrite: bool, progress: bool, executor: Executor | None = None
                          ) -> None:
    """Run the evaluation over ``images``, print and write the summary and the report."""
    from ..dataset.evaluate import COLUMNS as TABLE_COLUMNS
    from ..dataset.evaluate import (
        TABLE_NAME,
        EvaluateJob,
        EvaluateWorker,
        Item,
        evaluate_dataset,
    )
    from ..dataset.report import evaluate_report
    from ..dataset.table import RowTable

    job = EvaluateJob(spec, pre, options, seed, target, pixels_per_step, tolerance, boxes_sha,
                      max_pixels)
    worker = EvaluateWorker(job, model)
    settings = worker.settings
    methods = list(options)
    t0 = time.perf_counter()
    computed = kept = 0
    for rows, now in evaluate_dataset(worker, images.sources, annotations, out,
                                      executor=executor, overwrite=overwrite, progress=progress):
        if not now:
            kept += 1
            continue
        computed += 1
        click.echo(f"{rows[0]['image']}: " + ", ".join(
            f"{r['method']} deletion {r['deletion_auc']:.3f} insertion {r['insertion_auc']:.3f}"
            for r in rows))
    wall = time.perf_counter() - t0
    rows = [r for r in RowTable(out / TABLE_NAME, TABLE_COLUMNS).read()
            if settings.get(r["method"]) == r["settings"]]
    summary = evaluate_summary(rows, methods)
    ann_of = {s.name: a for s, a in zip(images.sources, annotations)}
    worst_figs = []
    for m in methods:
        mine = [dict(r, gain=r["insertion_auc"] - r["deletion_auc"]) for r in rows
                if r["method"] == m]
        for r in worst(mine, "gain", worst_k):
            _, p, (found,) = worker.evaluate(Item(Source(Path(r["path"]), r["image"]), (m,),
                                                  ann_of.get(r["image"])))
            worst_figs.append((r, p, found.explanation, found.curves))
    doc = {"model": model.describe(), "methods": options, "seed": seed, "target": target,
           "pixels_per_step": pixels_per_step, "tolerance": tolerance, "settings": settings,
           "summary": summary}
    meta = [(f"model {model.path.name} (sha256 {model.sha256[:16]}) on {model.provider}, seed "
            f"{seed} (per image: derived from the image's sha256)"),
            "methods: " + "; ".join(f"{m} {options[m] or '(defaults)'}" for m in methods),
            ("deletion: pixels in map order set to 0; insertion: pixels copied onto a blurred "
            "copy; lower deletion and higher insertion AUC are better"),
            f"worst {worst_k} images per method below, by insertion - deletion AUC"]
    page = evaluate_report(rows, summary, worst_figs, meta)
    plan.commit({out / SUMMARY_NAME: _json(doc), out / REPORT_NAME: page.encode()})
    click.echo(f"{len({r['image'] for r in rows})} images ({computed} evaluated now in "
               f"{wall:.1f} s, {kept} already in {out / TABLE_NAME})")
    print_table([r for m in methods for r in _stat_rows(summary[m], EVALUATE_STATS, (m,))],
                ("method", "measure", *STAT_HEADER), "<<" + ">" * 7)
    for m in methods:
        if summary[m]["pointing_accuracy"] is not None:
            click.echo(f"{m}: pointing accuracy {_pct(summary[m]['pointing_accuracy'])}")
    log.info("wrote %s, %s, %s", out / TABLE_NAME, out / SUMMARY_NAME, out / REPORT_NAME)

