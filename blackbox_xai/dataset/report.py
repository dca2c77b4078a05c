"""The HTML report of a dataset compare or evaluate run: the summary tables, histograms of the
per-image measures, and the worst images side by side (one self-contained page, see
:func:`blackbox_xai.report.render_report`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from ..explanation import Explanation
from ..metrics.deletion import CurveResult
from ..preprocess import Prepared
from ..report import Figure, Section, plot_curves, plot_histogram, render_report, thumbnail
from ..viz import overlay_image
from .aggregate import COMPARE_STATS, EVALUATE_STATS

#: the histograms' fixed ranges (the others, Spearman and SSIM too, span the values: a good
#: deployment's correlations all lie near 1)
RANGES = {"top_k_iou": (0.0, 1.0), "deletion_auc": (0.0, 1.0), "insertion_auc": (0.0, 1.0),
          "energy_pointing": (0.0, 1.0)}


def _overlay(p: Prepared, e: Explanation) -> Image.Image:
    return thumbnail(overlay_image(p.image, e.map, box=p.box))


def _distribution_rows(stats: Mapping[str, Any], keys: Sequence[str], **first: Any
                       ) -> list[dict[str, Any]]:
    return [{**first, "measure": k, **stats[k]} for k in keys]


def compare_report(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                   worst: Sequence[tuple[Mapping[str, Any], Prepared, Explanation, Explanation]],
                   meta: Sequence[str]) -> str:
    """The page of ``bbx compare ... --out``: ``worst`` holds (row, image, A's explanation,
    B's) of the images with the lowest Spearman correlation."""
    rates = [{k: summary[k] for k in ("images", "top1_agreement", "flips", "flip_rate",
                                      "drifted", "drift_rate")}]
    hist = Section("Distributions over the images", [
        Figure(plot_histogram([r[k] for r in rows], k, value_range=RANGES.get(k)))
        for k in COMPARE_STATS])
    sections = [hist]
    for row, p, ea, eb in worst:
        caption = (f"spearman {row['spearman']:.3f}, IoU {row['top_k_iou']:.3f}, "
                   f"SSIM {row['ssim']:.3f}; top-1 {row['top1_a']} / {row['top1_b']}")
        sections.append(Section(f"{row['image']}", [
            Figure(thumbnail(p.image), row["path"]),
            Figure(_overlay(p, ea), f"A: class {row['target']} ({row['target_prob_a']:.1%})"),
            Figure(_overlay(p, eb), f"B: class {row['target']} ({row['target_prob_b']:.1%})")],
            caption))
    return render_report("blackbox-xai compare over a dataset", sections, meta=meta, tables=[
        ("Agreement", rates, None),
        ("Distributions", _distribution_rows(summary, COMPARE_STATS), None)])


def evaluate_report(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]],
                    worst: Sequence[tuple[Mapping[str, Any], Prepared, Explanation, CurveResult]],
                    meta: Sequence[str]) -> str:
    """The page of ``bbx evaluate ... --out`` over a dataset: ``worst`` holds (row, image,
    explanation, curves) of each method's images with the lowest insertion - deletion AUC."""
    means = [{"method": m, "images": s["images"], "pointing_accuracy": s["pointing_accuracy"]}
             for m, s in summary.items()]
    dist = [d for m, s in summary.items() for d in _distribution_rows(s, EVALUATE_STATS, method=m)
            if d["n"]]
    sections = [Section(f"{m}: distributions over the images", [
        Figure(plot_histogram([r[k] for r in rows if r["method"] == m], k,
                              value_range=RANGES.get(k)))
        for k in EVALUATE_STATS if summary[m][k]["n"]]) for m in summary]
    for row, p, exp, curves in worst:
        sections.append(Section(f"{row['image']} - {row['method']}", [
            Figure(thumbnail(p.image), row["path"]),
            Figure(_overlay(p, exp), f"class {row['target']} ({row['prob']:.1%})"),
            Figure(plot_curves(curves, f"{row['image']} - {row['method']}"))],
            f"deletion AUC {row['deletion_auc']:.3f}, insertion AUC {row['insertion_auc']:.3f}"))
    return render_report("blackbox-xai evaluation over a dataset", sections, meta=meta, tables=[
        ("Per method", means, None), ("Distributions", dist, None)])
