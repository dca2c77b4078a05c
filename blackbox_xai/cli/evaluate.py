"""``blackbox-xai evaluate`` and ``blackbox-xai compare``: faithfulness metrics and deployment checks.

``sanity`` runs the model-randomization check. The group in :mod:`.` attaches them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from ..errors import BlackboxError
from ..outputs import OutputPlan, model_inputs
from .common import (
    FiniteFloatRange,
    UserError,
    _click_type,
    friendly_errors,
    image_arguments,
    model_options,
    open_model,
    prepare_images,
    preprocess_options,
    print_table,
    recipe,
    tf32_option,
)
from .main import EXECUTOR_DEFAULTS, _detection_target, detection_options, executor_options

if TYPE_CHECKING:
    from PIL import Image

    from ..compare import ImageComparison
    from ..metrics import Annotation, EvaluationResult
    from ..metrics.pointing import Box
    from ..preprocess import Prepared
    from ..report import Section

log = logging.getLogger("blackbox_xai")

# ---- method options ---------------------------------------------------------------------------
def _coerce(spec, key: str, value: str) -> Any:
    opt = next(o for o in spec.options if o.name == key)
    ctype, flag = _click_type(opt.annotation, opt.default)
    ptype = click.BOOL if flag else click.types.convert_type(ctype)
    try:
        return ptype.convert(value, None, None)
    except click.BadParameter as e:
        raise BlackboxError(f"option {spec.name}.{key}={value!r}: {e.format_message()}") from None


def method_options(methods: Sequence[str], pairs: Sequence[str], fast: bool = False
                   ) -> dict[str, dict[str, Any]]:
    """``[METHOD.]KEY=VALUE`` strings -> {method: {option: typed value}} (validated).

    A bare ``KEY=VALUE`` applies to every listed method that has the option (hyphens in KEY
    are fine: ``n-masks`` = ``n_masks``). ``fast`` starts from each method's registered
    ``fast`` budget.
    """
    from ..methods import get_method

    specs = {m: get_method(m) for m in methods}
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    if fast:
        for m, spec in specs.items():
            out[m].update(spec.fast)
    for pair in pairs:
        if "=" not in pair:
            raise BlackboxError(f"--option {pair!r}: use [METHOD.]KEY=VALUE, e.g. occlusion.window=32")
        key, value = pair.split("=", 1)
        key = key.strip()
        scope = list(methods)
        for m in methods:  # the longest method-name prefix wins ("smooth-gradcampp." vs ...)
            if key.startswith(m + "."):
                scope, key = [m], key[len(m) + 1:]
                break
        else:
            if "." in key:
                raise BlackboxError(f"--option {pair!r}: {key.split('.')[0]!r} is not one of "
                                    f"the methods given ({', '.join(methods)})")
        key = key.replace("-", "_")
        targets = [m for m in scope if key in {o.name for o in specs[m].options}]
        if not targets:
            specs[scope[0]].validate({key: None})  # raises the did-you-mean error
        for m in targets:
            out[m][key] = _coerce(specs[m], key, value)
    for m, spec in specs.items():
        spec.validate(out[m])
    return out


def _parse_methods(text: str) -> list[str]:
    from ..methods import get_method

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise BlackboxError("--methods is empty: give e.g. --methods occlusion,rise")
    for m in names:
        get_method(m)  # did-you-mean on a typo
    return list(dict.fromkeys(names))


# ---- files ------------------------------------------------------------------------------------
def _csv_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v)
                        for k, v in r.items()})
    return buf.getvalue().encode()


def _json_bytes(obj: Any) -> bytes:
    from ..explanation import _jsonable

    return (json.dumps(_jsonable(obj), indent=2) + "\n").encode()


def _input_files(model_paths: Sequence[str], images: Sequence[str],
                 boxes_path: str | None = None) -> dict[Path, str]:
    """The files a command reads, which its outputs must never replace."""
    found: dict[Path, str] = {}
    for m in model_paths:
        found.update(model_inputs(m))
    found.update({Path(i): "an input image" for i in images})
    if boxes_path:
        found[Path(boxes_path)] = "the boxes file"
    return found


def _planned(paths: Sequence[Path], overwrite: bool, inputs: dict[Path, str]) -> OutputPlan:
    """A checked plan of ``paths``: run before any computing."""
    plan = OutputPlan(overwrite)
    for p in paths:
        plan.add(p)
    plan.check(inputs)
    return plan


def _executor(options: dict[str, Any], dataset: bool):
    """The executor of ``--executor`` & co. for a dataset run (None: this process, reusing the
    models already open); refused for a run over a few images."""
    from ..dataset.executor import get_executor

    if not dataset:
        if options != EXECUTOR_DEFAULTS:
            raise UserError("--executor, --ray-address, --ray-workers and --gpus-per-worker are "
                            "for dataset runs (a folder, glob or --images-from list, and --out)")
        return None
    if options["executor"] == "local":
        return None
    return get_executor(options["executor"], ray_address=options["ray_address"],
                        workers=options["ray_workers"], gpus_per_worker=options["gpus_per_worker"])


# ---- evaluate ---------------------------------------------------------------------------------
#: (key, header) of the printed tables: the rows, and the per-method means
EVAL_COLUMNS = [("image", "image"), ("method", "method"), ("target", "target"), ("prob", "prob"),
                ("deletion_auc", "deletion"), ("insertion_auc", "insertion"),
                ("pointing_hit", "hit"), ("energy_pointing", "energy"),
                ("completeness_gap", "compl.gap"), ("queries", "queries"), ("seconds", "seconds")]
SUMMARY_COLUMNS = [("method", "method"), ("images", "images"), ("deletion_auc", "deletion"),
                   ("insertion_auc", "insertion"), ("pointing_accuracy", "pointing"),
                   ("energy_pointing", "energy"), ("queries", "queries"), ("seconds", "seconds")]


def _cell(v: Any) -> str:
    """A metric as the tables show it: 3 decimals, yes/no, ``-`` for none."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _print_metrics(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Dict rows under ``columns``' headers: the first column left-aligned, numbers right."""
    print_table([[_cell(r[k]) for k, _ in columns] for r in rows], [h for _, h in columns],
                "<" + ">" * (len(columns) - 1))


def _stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = seen[p.stem] = seen.get(p.stem, 0) + 1
        out.append(p.stem if n == 1 else f"{p.stem}_{n}")
    return out


def _annotated_overlay(prepared: Prepared, amap: np.ndarray, boxes: Sequence[Box],
                       point: tuple[int, int]) -> Image.Image:
    """viz.overlay_image plus the annotation boxes (green) and the map's maximum (cyan cross)."""
    from PIL import ImageDraw

    from ..viz import overlay_image

    img = overlay_image(prepared.image, amap, box=prepared.box)
    bx0, by0, bx1, by1 = prepared.box
    h, w = amap.shape
    sx, sy = (bx1 - bx0) / w, (by1 - by0) / h
    d = ImageDraw.Draw(img)
    lw = max(2, round(img.width / 200))
    for x0, y0, x1, y1 in boxes:
        d.rectangle([bx0 + x0 * sx, by0 + y0 * sy, bx0 + x1 * sx - 1, by0 + y1 * sy - 1],
                    outline=(40, 220, 60), width=lw)
    r, c = point
    cx, cy, s = bx0 + (c + 0.5) * sx, by0 + (r + 0.5) * sy, 6 * lw
    d.line([(cx - s, cy), (cx + s, cy)], fill=(0, 230, 255), width=lw)
    d.line([(cx, cy - s), (cx, cy + s)], fill=(0, 230, 255), width=lw)
    return img


def _figures(result: EvaluationResult, prepared: Sequence[Prepared], stems: Sequence[str],
             annotations: Sequence[Annotation | None], labels: Sequence[str] | None
             ) -> tuple[dict[str, Image.Image], list[Section]]:
    """The curve and overlay PNGs by file name, and the report's section of each image."""
    from ..metrics.pointing import max_location
    from ..report import Figure, Section, plot_curves, thumbnail

    figures: dict[str, Image.Image] = {}
    sections = []
    n = len(result.methods)
    for k, (p, stem, ann) in enumerate(zip(prepared, stems, annotations)):
        rows = result.rows[k * n:(k + 1) * n]
        top1 = rows[0].top1
        top1_name = f" {labels[top1]}" if top1 < len(labels or ()) else ""
        figs = [Figure(thumbnail(p.image),
                       f"{p.path.name}: top-1 {top1}{top1_name} ({rows[0].top1_prob:.1%})")]
        for r in rows:
            amap = r.explanation.map
            overlay = _annotated_overlay(p, amap, ann.boxes if ann else (), max_location(amap))
            curves = plot_curves(r.curves, f"{p.path.name} - {r.method}")
            figures[f"{stem}_{r.method}_curves.png"] = curves
            figures[f"{stem}_{r.method}_overlay.png"] = overlay
            hit = "" if r.pointing_hit is None else f", pointing {'hit' if r.pointing_hit else 'miss'}"
            figs.append(Figure(thumbnail(overlay), f"{r.method}: deletion {r.deletion_auc:.3f}, "
                               f"insertion {r.insertion_auc:.3f}{hit}, {r.n_queries} queries, "
                               f"{r.seconds:.2f} s"))
            figs.append(Figure(curves, f"{r.method}: deletion (red) and insertion (blue) curves"))
        label = f" {rows[0].label}" if rows[0].label else ""
        sections.append(Section(f"{p.path.name} (explaining class {rows[0].target}{label})", figs))
    return figures, sections


@click.command("evaluate")
@click.argument("model_path", metavar="MODEL")
@image_arguments
@click.option("--methods", "methods_text", default="occlusion", show_default=True,
              help="Comma-separated method names (see `blackbox-xai methods`).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="A method option, e.g. -o rise.n_masks=2000 or -o window=32 (repeatable).")
@click.option("--fast", is_flag=True, help="Cheap method settings (fewer masks/samples, coarser windows).")
@click.option("--boxes", "boxes_path", type=click.Path(dir_okay=False), default=None,
              help="Object boxes (JSON or CSV, model-input pixels) for the pointing game.")
@click.option("--target", "target_mode", type=click.Choice(["top1", "label"]), default="top1",
              show_default=True, help="Explain the predicted class or the box file's label.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--pixels-per-step", type=click.IntRange(1), default=None,
              help="Deletion/insertion step (default: H*W/28, 1792 at 224x224).")
@click.option("--tolerance", type=FiniteFloatRange(0), default=15.0, show_default=True,
              help="Pointing-game tolerance in pixels.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write metrics.csv, metrics.json, curve and overlay PNGs here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Write one self-contained HTML report here.")
@click.option("--worst", "worst_k", type=click.IntRange(0), default=8, show_default=True,
              help="Over a dataset: images per method shown in the report (lowest insertion - "
                   "deletion AUC).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a TTY).")
@click.option("--detection", type=click.IntRange(0), default=None,
              help="A detector: explain and score each image's detection number I (`bbx "
                   "detect`'s list); the curves track its matched score, the pointing game "
                   "uses its box unless --boxes gives one.")
@detection_options
@model_options
@executor_options
@preprocess_options
@friendly_errors
def evaluate_cmd(model_path, images, methods_text, option_pairs, fast, boxes_path, target_mode, seed,
                 pixels_per_step, tolerance, out_dir, worst_k, report_path, overwrite, progress,
                 detection, conf, iou, decoder, box_format, normalized_boxes,
                 device, score, output_name, batch_size, threads, layout, executor,
                 preprocess) -> None:
    """Explain IMAGES with each method and score the maps' faithfulness.

    Per image and method: deletion and insertion AUC (RISE protocol: pixels in map order set to
    0, or inserted onto a blurred copy; softmax of the target; lower deletion and higher
    insertion are better), the pointing game and energy pointing (with --boxes), the
    completeness gap (Shapley, integrated gradients), queries and seconds. Prints a table and
    per-method means; --out writes CSV/JSON and PNG curves; --report one HTML page.

    Over a dataset (a folder, glob or --images-from list) --out OUT streams the images and
    writes OUT/evaluate.csv (one row per image and method, appended as images finish;
    re-running resumes), OUT/summary.json (per method: mean and 5/25/50/75/95% quantiles of
    each metric, pointing accuracy) and OUT/report.html (histograms, the --worst images); each
    image's seed is derived from --seed and the image's sha256.

    \b
    Example:
      blackbox-xai evaluate models/efficientnet_lite0.onnx examples/*.jpg \\
          --methods occlusion,rise --boxes examples/boxes.json --fast \\
          --out eval/ --report eval/report.html
    """
    from ..metrics import evaluate, load_boxes, match_annotations
    from ..report import png_bytes, render_report

    image_set, images = images, images.paths
    methods = _parse_methods(methods_text)
    opts = method_options(methods, option_pairs, fast)
    if detection is not None and (target_mode == "label" or (out_dir is not None
                                                             and image_set.dataset)):
        raise UserError("--detection explains each image's own detection: not with --target "
                        "label, and image by image (not a dataset run with --out)")
    boxes = load_boxes(boxes_path) if boxes_path else None
    annotations = match_annotations(boxes, images, target_mode)  # bad labels cost no model
    chosen = _executor(executor, out_dir is not None and image_set.dataset)
    if out_dir is not None and image_set.dataset:
        _evaluate_dataset(model_path, image_set, Path(out_dir), opts, annotations, boxes_path,
                          target_mode, seed, pixels_per_step, tolerance, worst_k, report_path,
                          overwrite, progress, (device, score, output_name, batch_size, threads,
                                                layout), preprocess, chosen)
        return
    # metrics and figures of a few images need every image at once
    stems = _stems([Path(i) for i in images])
    out = Path(out_dir) if out_dir else None
    planned = []
    if out is not None:
        planned += [out / "metrics.csv", out / "metrics.json"]
        planned += [out / f"{s}_{m}_{kind}.png" for s in stems for m in methods
                    for kind in ("curves", "overlay")]
    if report_path:
        planned.append(Path(report_path))
    plan = _planned(planned, overwrite, _input_files([model_path], images, boxes_path))

    model = open_model(model_path, device, score, output_name, batch_size, threads, layout,
                       task="classify" if detection is None else "detect")
    pre, prepared = prepare_images(model, images, preprocess)
    detections, found_by = None, decoder
    if detection is not None:
        from ..targets import Detector

        detector = Detector(model, decoder, box_format=box_format, normalized=normalized_boxes)
        detections = [_detection_target(detector, p, detection, None, None, conf, iou)
                      for p in prepared]
        found_by = detector.decoder or decoder
    result = evaluate(model, [p.tensor for p in prepared], methods,
                      names=[p.path.name for p in prepared], boxes=annotations,
                      target=target_mode, seed=seed, options=opts,
                      pixels_per_step=pixels_per_step, tolerance=tolerance, labels=pre.labels,
                      progress=sys.stderr.isatty() if progress is None else progress,
                      detections=detections, decoder=found_by)
    rows = [r.as_dict() for r in result.rows]
    summary = [asdict(s) for s in result.summary()]
    _print_metrics(rows, EVAL_COLUMNS)
    click.echo("")
    _print_metrics(summary, SUMMARY_COLUMNS)
    if out is None and not report_path:
        return

    figures, sections = _figures(result, prepared, stems, annotations, pre.labels)
    payloads: dict[Path, bytes] = {}
    if out is not None:
        payloads[out / "metrics.csv"] = _csv_bytes(rows)
        doc = {"model": model.describe(), "methods": {m: opts[m] for m in methods},
               "boxes": boxes_path, **result.as_dict()}
        payloads[out / "metrics.json"] = _json_bytes(doc)
        for fname, fig in figures.items():
            payloads[out / fname] = png_bytes(fig)
    if report_path:
        from ..explanation import versions

        v = versions()
        method_text = "; ".join(f"{m} {opts[m] or 'defaults'}" for m in methods)
        head = (f"model {model.path.name} (sha256 {model.sha256[:16]}), provider "
                f"{model.provider}, score {model.score}, seed {seed}")
        how = ("deletion: pixels in map order set to 0; insertion: pixels copied onto a blurred "
               "copy; curves of the target's softmax probability; lower deletion and higher "
               "insertion AUC are better. Pointing: map maximum (cyan cross) within "
               f"{tolerance:g} px of the box (green).")
        meta = [head, f"methods: {method_text}", how,
                "versions: " + ", ".join(f"{k} {val}" for k, val in v.items())]
        cols = ["image", "method", "target", "label", "prob", "deletion_auc", "insertion_auc",
                "pointing_hit", "energy_pointing", "completeness_gap", "queries", "seconds"]
        page = render_report("blackbox-xai evaluation", sections, meta=meta,
                             tables=[("Per-method means", summary, None), ("Metrics", rows, cols)])
        payloads[Path(report_path)] = page.encode()
    plan.commit(payloads)
    where = [str(out)] if out is not None else []
    where += [str(report_path)] if report_path else []
    log.info("wrote %d files (%s)", len(payloads), ", ".join(where))


def _evaluate_dataset(model_path, image_set, out: Path, opts, annotations, boxes_path, target_mode,
                      seed, pixels_per_step, tolerance, worst_k, report_path, overwrite, progress,
                      model_args, preprocess, executor) -> None:
    """``evaluate MODEL DIR --out OUT``: see :func:`.aggregate.evaluate_over_dataset`."""
    from ..dataset.run import ModelArgs
    from ..model import sha256_of
    from .aggregate import evaluate_over_dataset, plan_outputs

    if report_path:
        raise UserError("over a dataset the report goes to OUT/report.html; drop --report")
    extra = {Path(boxes_path): "the boxes file"} if boxes_path else {}
    plan = plan_outputs(out, "evaluate.csv", overwrite, [model_path], image_set, extra)
    device, score, output_name, batch_size, threads, layout = model_args
    model = open_model(model_path, device, score, output_name, batch_size, threads, layout)
    kw = {"output": output_name, "threads": threads, "layout": layout,
          "batch_size": batch_size if batch_size == "auto" else int(batch_size)}
    evaluate_over_dataset(
        model, recipe(model, preprocess), image_set, out, plan, options=opts,
        annotations=annotations, seed=seed, target=target_mode, pixels_per_step=pixels_per_step,
        tolerance=tolerance, boxes_sha=sha256_of(boxes_path) if boxes_path else "",
        worst_k=worst_k, spec=ModelArgs(model_path, {"device": device, "score": score, **kw}),
        max_pixels=preprocess["max_pixels"], overwrite=overwrite,
        progress=sys.stderr.isatty() if progress is None else progress, executor=executor)


# ---- compare ----------------------------------------------------------------------------------
COMPARE_HELP = """Compare two deployments of a model: same predictions, same explanations?

\b
  compare MODEL_A IMAGES... --against MODEL_B      two artifacts (FP32 vs FP16/INT8)
  compare MODEL IMAGES... --device-b cuda          one artifact on two providers
  compare MODEL_A IMAGES... --against MODEL_B --device-b cuda   both at once

MODEL_A is the reference. For each image: top-1 of A and B (a flip when they differ), the max
|score difference| over classes (logits and softmax probabilities), and the similarity of the
two explanations of A's top-1 class with --method (same seed and options): Spearman rank
correlation, top-k% region IoU and SSIM. An image DRIFTS when the Spearman correlation is below
--threshold.

Exit status (a deployment gate): 0 when the share of images that drifted is at most
--max-drift-rate and the share that flipped at most --max-flip-rate (both 0 by default: no image
may flip or drift), 1 otherwise, 2 on bad input. Preprocessing comes from MODEL_A's sidecar
(or the flags).

Over a dataset, --out OUT streams the images and writes OUT/compare.csv (one row per image,
appended as images finish; re-running the command resumes, skipping the images done with the
same settings), OUT/summary.json (top-1 agreement, flip and drift rates, mean and 5/25/50/75/95%
quantiles of Spearman, IoU, SSIM and the score deltas) and OUT/report.html (histograms, the
--worst images by Spearman: the image, A's map, B's map). Each image's seed is derived from
--seed and the image's sha256, so rows do not depend on the order of the images.

\b
Example:
  blackbox-xai compare models/efficientnet_lite0.onnx examples/*.jpg \\
      --against models/efficientnet_lite0_int8.onnx --method occlusion \\
      -o window=32 -o stride=32 --threshold 0.8 --json cmp.json
  blackbox-xai compare models/efficientnet_lite0.onnx val_images/ \\
      --against models/efficientnet_lite0_int8.onnx --method gradcam \\
      --out cmp/ --max-drift-rate 0.05
"""


def _status(row: ImageComparison) -> str:
    """ok, FLIP (top-1 changed), DRIFT (explanation moved) or FLIP+DRIFT."""
    return "+".join(w for w, bad in (("FLIP", row.flipped), ("DRIFT", row.drifted)) if bad) or "ok"


@click.command("compare", help=COMPARE_HELP, short_help="Compare two deployments (artifacts or providers).")
@click.argument("model_path", metavar="MODEL_A")
@image_arguments
@click.option("--against", "model_b_path", default=None, metavar="MODEL_B",
              help="The second artifact (default: MODEL_A again, e.g. on --device-b).")
@click.option("--device-a", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--device-b", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Provider for B (default: --device-a).")
@click.option("--method", default="occlusion", show_default=True, help="Explanation method for both.")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A method option, e.g. -o window=32 (repeatable).")
@click.option("--threshold", type=FiniteFloatRange(0, 1), default=0.8, show_default=True,
              help="An image drifts when Spearman(map A, map B) is below this.")
@click.option("--top-k", type=FiniteFloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="Region fraction for the top-k IoU.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the comparison (settings, summary, per-image rows) as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the per-image rows as CSV.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="A dataset run: compare.csv (resumable), summary.json and report.html here.")
@click.option("--max-drift-rate", type=FiniteFloatRange(0, 1), default=0.0, show_default=True,
              help="Exit 1 when a larger share of the images drifted.")
@click.option("--max-flip-rate", type=FiniteFloatRange(0, 1), default=0.0, show_default=True,
              help="Exit 1 when a larger share of the images changed top-1.")
@click.option("--worst", "worst_k", type=click.IntRange(0), default=8, show_default=True,
              help="With --out: images with the lowest Spearman shown in the report.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--score", type=click.Choice(["logit", "prob", "logprob"]), default="logit",
              show_default=True, help="Explain the logit, the softmax probability, or its log.")
@click.option("--output", "output_name", default=None,
              help="The class-score output (default: the only one, or the only 2-D one).")
@click.option("--batch-size", default="auto", show_default=True, help="Queries per run, or auto.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="ONNX Runtime CPU threads (default: all cores).")
@tf32_option
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
              help="Override the detected input layout.")
@executor_options
@preprocess_options
@friendly_errors
def compare_cmd(model_path, images, model_b_path, device_a, device_b, method, option_pairs,
                threshold, top_k, seed, json_path, csv_path, out_dir, max_drift_rate,
                max_flip_rate, worst_k, progress, overwrite, score, output_name, batch_size,
                threads, layout, executor, preprocess) -> None:
    from ..compare import compare_models

    image_set, images = images, images.paths
    device_b = device_b or device_a
    opts = method_options([method], option_pairs)[method]
    b_path = model_b_path or model_path
    if out_dir is not None and (json_path or csv_path):
        raise UserError("with --out the rows go to OUT/compare.csv and the summary to "
                        "OUT/summary.json; drop --json/--csv")
    chosen = _executor(executor, out_dir is not None)
    if out_dir is not None:
        from .aggregate import plan_outputs

        plan = plan_outputs(Path(out_dir), "compare.csv", overwrite, [model_path, b_path],
                            image_set)
    else:
        plan = _planned([Path(p) for p in (json_path, csv_path) if p], overwrite,
                        _input_files([model_path, b_path], images))
    if model_b_path is None and device_a == device_b:
        log.warning("comparing %s with itself on %s (a determinism check); use --against or "
                    "--device-b", Path(model_path).name, device_a)
    model_a = open_model(model_path, device_a, score, output_name, batch_size, threads, layout)
    model_b = open_model(b_path, device_b, score, output_name, batch_size, threads, layout)
    if out_dir is not None:
        from ..dataset.run import ModelArgs
        from .aggregate import compare_over_dataset

        chw = (model_a.input.chw, model_b.input.chw)
        if chw[0] != chw[1] and None not in chw[0] + chw[1]:
            raise BlackboxError(f"the models take different inputs: {chw[0]} vs {chw[1]}")
        kw = {"output": output_name, "threads": threads, "layout": layout,
              "batch_size": batch_size if batch_size == "auto" else int(batch_size)}
        specs = (ModelArgs(model_path, {"device": device_a, "score": score, **kw}),
                 ModelArgs(b_path, {"device": device_b, "score": score, **kw}))
        ok = compare_over_dataset(
            model_a, model_b, recipe(model_a, preprocess), image_set, Path(out_dir), plan,
            method=method, options=opts, seed=seed, threshold=threshold, top_k=top_k,
            max_drift_rate=max_drift_rate, max_flip_rate=max_flip_rate, worst_k=worst_k,
            specs=specs, max_pixels=preprocess["max_pixels"], overwrite=overwrite,
            progress=sys.stderr.isatty() if progress is None else progress, executor=chosen)
        if not ok:
            click.echo(f"FAIL: drift rate or flip rate above --max-drift-rate {max_drift_rate} / "
                       f"--max-flip-rate {max_flip_rate}", err=True)
            click.get_current_context().exit(1)
        return
    _, prepared = prepare_images(model_a, images, preprocess)
    result = compare_models(model_a, model_b, [p.tensor for p in prepared], method,
                            names=[p.path.name for p in prepared], seed=seed,
                            threshold=threshold, top_k=top_k, **opts)
    click.echo(f"A: {Path(model_path).name} on {model_a.provider}")
    click.echo(f"B: {Path(b_path).name} on {model_b.provider}")
    click.echo(f"method {method} {opts or '(defaults)'}, seed {seed}")
    print_table([(r.image, r.top1_a, r.top1_b, "yes" if r.flipped else "no",
                  f"{r.max_logit_delta:.4f}", f"{r.max_prob_delta:.4f}", f"{r.spearman:.3f}",
                  f"{r.top_k_iou:.3f}", f"{r.ssim:.3f}", _status(r)) for r in result.rows],
                ("image", "top1 A", "top1 B", "flip", "dlogit", "dprob", "spearman", "iou", "ssim",
                 "status"), "<>>>>>>>><")
    s = result.summary()
    click.echo(f"top-1 agreement {s['top1_agreement']:.0%} ({s['flips']} flips), "
               f"{s['drifted']} drifted (spearman < {threshold}), "
               f"max |dlogit| {s['max_logit_delta']:.4g}, min spearman {s['min_spearman']:.3f}")
    payloads = {}
    if json_path:
        payloads[Path(json_path)] = _json_bytes(result.as_dict())
    if csv_path:
        payloads[Path(csv_path)] = _csv_bytes([asdict(r) for r in result.rows])
    if payloads:
        plan.commit(payloads)
    n = len(result.rows)
    if result.n_drifted / n > max_drift_rate or result.n_flips / n > max_flip_rate:
        click.echo(f"FAIL: {result.n_flips} top-1 flips, {result.n_drifted} drifted explanations",
                   err=True)
        click.get_current_context().exit(1)


@click.command("sanity")
@click.argument("model_path", metavar="MODEL")
@click.argument("image")
@click.option("--method", default="gradcam", show_default=True, help="Explanation method to check.")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A method option, e.g. -o n_masks=500 (repeatable).")
@click.option("--mode", "modes", type=click.Choice(["cascading", "independent"]), multiple=True,
              default=("cascading",), show_default=True, help="Repeat for both.")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Cascade points to evaluate (default: every layer).")
@click.option("--target", type=int, default=None, help="Class (default: top-1).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the table as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace an existing JSON file.")
@model_options
@preprocess_options
@friendly_errors
def sanity_cmd(model_path, image, method, option_pairs, modes, steps, target, seed, json_path,
               overwrite, device, score, output_name, batch_size, threads, layout, preprocess) -> None:
    """Model-randomization sanity check (Adebayo et al. 2018) of METHOD on one IMAGE.

    Re-initialises the model's weights layer by layer from the output backwards (cascading) or
    one layer at a time (independent), explains again, and prints the Spearman rank correlation,
    SSIM and top-10% IoU of each map with the original. A faithful method decorrelates.
    """
    from ..metrics import randomization_check

    opts = method_options([method], option_pairs)[method]
    plan = _planned([Path(json_path)] if json_path else [], overwrite,
                    _input_files([model_path], [image]))
    model = open_model(model_path, device, score, output_name, batch_size, threads, layout)
    _, (prepared,) = prepare_images(model, (image,), preprocess)
    result = randomization_check(model, prepared.tensor, method, target=target, seed=seed,
                                 modes=modes, steps=steps, **opts)
    click.echo(f"{prepared.path.name}: {method}, target {result.target}")
    print_table([(r.mode, r.layer, r.n_randomized, f"{r.spearman:.3f}", f"{r.ssim:.3f}",
                  f"{r.top_k_iou:.3f}", f"{r.score_change:.3g}") for r in result.rows],
                ("mode", "layer", "n", "spearman", "ssim", "iou", "score_chg"), "<<>>>>>")
    if json_path is not None:
        plan.commit({Path(json_path): _json_bytes(result.table())})
