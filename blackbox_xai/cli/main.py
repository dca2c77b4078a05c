"""The top-level commands: ``methods``, ``inspect``, ``predict`` and ``explain METHOD`` (one
subcommand per registered method, its options from the method's signature)."""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import sys
from collections import Counter
from pathlib import Path

import click
import numpy as np

from ..errors import UnknownNameError, did_you_mean
from ..explanation import FILE_KINDS, parse_kinds
from ..outputs import OutputPlan, model_inputs
from .common import (
    FiniteFloatRange,
    OneLineErrors,
    UserError,
    _click_type,
    friendly_errors,
    image_arguments,
    model_options,
    open_model,
    preprocess_options,
    print_table,
    recipe,
    stream_images,
)

#: images per model call in ``predict`` (a dataset is never stacked whole)
PREDICT_CHUNK = 32


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(package_name="blackbox-xai")
def cli(quiet: bool, debug: bool) -> None:
    """Explain what an exported ONNX model looks at, with no training framework."""
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO
    logging.basicConfig(level=level, format="bbx: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("blackbox_xai").setLevel(level)


@cli.command("methods")
@click.option("--markdown", is_flag=True, help="Print the table the README shows.")
def methods_cmd(markdown: bool) -> None:
    """List the explanation methods, their options and defaults."""
    from ..methods import all_methods, methods_table

    if markdown:
        click.echo(methods_table(), nl=False)
        return
    rows = []
    for spec in all_methods().values():
        opts = ", ".join(f"{o.name}={o.default!r}" for o in spec.options) or "-"
        rows += [(spec.name, spec.family, spec.summary), ("", "", f"options: {opts}"),
                 ("", "", f"reference: {spec.reference}")]
    print_table(rows)


@cli.command("inspect")
@click.argument("model_path", metavar="MODEL")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@friendly_errors
def inspect_cmd(model_path: str, device: str) -> None:
    """Show a model's inputs, outputs, opsets, op histogram and execution provider."""
    from ..graph.io import load
    from ..model import create_session, readable_by_runtime, sha256_of
    from ..preprocess import Preprocessing, read_metadata

    proto = load(model_path)
    runnable = readable_by_runtime(proto, Path(model_path).name)
    sess, provider = create_session(model_path if runnable is proto else
                                    runnable.SerializeToString(), device, None)
    hist = Counter(n.op_type for n in proto.graph.node)
    print_table([
        ("model", (f"{model_path}  ({Path(model_path).stat().st_size / 2**20:.1f} MiB, "
                   f"sha256 {sha256_of(model_path)[:16]})")),
        ("provider", provider),
        ("ir", f"{proto.ir_version}  producer {proto.producer_name} {proto.producer_version}"),
        ("opsets", ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in proto.opset_import)),
        *((kind, f"{i.name}  {i.type}  {i.shape}")
          for kind, items in (("input", sess.get_inputs()), ("output", sess.get_outputs()))
          for i in items),
        ("nodes", f"{sum(hist.values())}: " + ", ".join(f"{k} {v}" for k, v in hist.most_common())),
    ])
    dims = [d if isinstance(d, int) and d > 0 else None for d in sess.get_inputs()[0].shape]
    if len(dims) == 4 and (dims[1] in (1, 3) or dims[3] in (1, 3)):  # an image input
        c, h, w = dims[1:] if dims[1] in (1, 3) else (dims[3], dims[1], dims[2])
        pre = Preprocessing.for_model(model_path, (h, w), channels=c, metadata=read_metadata(proto),
                                      warn_if_guessed=False)
        click.echo(f"preprocessing  {pre.summary(c)} (from {pre.origins()})")


@cli.command("predict")
@click.argument("model_path", metavar="MODEL")
@image_arguments
@click.option("--top", type=click.IntRange(1), default=5, show_default=True)
@model_options
@preprocess_options
@friendly_errors
def predict_cmd(model_path, images, top, device, score, output_name, batch_size, threads, layout,
                preprocess) -> None:
    """Top classes of each image (probabilities and logits)."""
    model = open_model(model_path, device, "logit", output_name, batch_size, threads, layout)
    pre, prepared = stream_images(model, images, preprocess)
    stream = iter(prepared)
    while chunk := list(itertools.islice(stream, PREDICT_CHUNK)):
        logits = model(np.stack([p.tensor for p in chunk]))
        for p, lg, pr in zip(chunk, logits, model.probabilities(logits)):
            click.echo(f"{p.path.name}:")
            # class, probability, logit, name; the empty first column indents the rows
            print_table([("", c, f"{pr[c]:.4f}", f"{lg[c]:.4f}", pre.labels[c] if pre.labels else "")
                         for c in np.argsort(-pr)[:top]], align="<>>><")


def detection_options(fn):
    """``--conf``, ``--iou``, ``--decoder``, ``--box-format`` and ``--normalized-boxes``: how a
    detector's outputs become detections."""
    from ..decode import BOX_FORMATS, DECODERS

    for opt in reversed([
        click.option("--conf", type=FiniteFloatRange(0, 1), default=0.25, show_default=True,
                     help="Confidence threshold (class score x objectness)."),
        click.option("--iou", type=FiniteFloatRange(0, 1), default=0.45, show_default=True,
                     help="NMS IoU threshold (per class)."),
        click.option("--decoder", type=click.Choice(DECODERS), default=None,
                     help="Output layout (default: chosen from the output shapes)."),
        click.option("--box-format", type=click.Choice(BOX_FORMATS), default=None,
                     help="The raw boxes' format (default: the layout's; cxcywh for YOLO "
                          "heads, xyxy for boxes + scores)."),
        click.option("--normalized-boxes/--pixel-boxes", "normalized_boxes", default=None,
                     help="Raw boxes in fractions of the input size, or in its pixels "
                          "(default: pixels for YOLO heads; for boxes + scores, normalised "
                          "when every coordinate is within 1.5)."),
    ]):
        fn = opt(fn)
    return fn


def _box_text(box) -> str:
    return ",".join(f"{v:.1f}" for v in box)


@cli.command("detect")
@click.argument("model_path", metavar="MODEL")
@image_arguments
@detection_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write IMAGE_detections.png per image here: the boxes with index, label, score.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@model_options
@preprocess_options
@friendly_errors
def detect_cmd(model_path, images, conf, iou, decoder, box_format, normalized_boxes, out_dir,
               overwrite, device, score, output_name, batch_size, threads, layout,
               preprocess) -> None:
    """List a detector's detections per image: index, class, label, score, box x0,y0,x1,y1 in
    the image's pixels (the index is what `explain METHOD ... --detection I` takes)."""
    from ..targets import Detector

    plan = OutputPlan(overwrite)
    if out_dir is not None:  # planned and checked before any computing, written at the end
        for img in images.paths:
            plan.add(Path(out_dir) / f"{Path(img).stem}_detections.png", source=img)
        plan.check({**model_inputs(model_path), **{img: "an input image" for img in images.paths}})
    model = open_model(model_path, device, score, output_name, batch_size, threads, layout,
                       task="detect")
    pre, prepared = stream_images(model, images, preprocess)
    detector = Detector(model, decoder, box_format=box_format, normalized=normalized_boxes)
    payloads: dict[Path, bytes] = {}
    for p in prepared:
        (dets,) = detector.detect(p.tensor[None], conf=conf, iou=iou)
        click.echo(f"{p.path.name}: {len(dets)} detection{'s' * (len(dets) != 1)} "
                   f"(decoder {detector.decoder.kind}, conf {conf:g}, iou {iou:g})")
        hw = p.tensor.shape[1:]
        boxes = [d.to_image(p.box, hw) for d in dets]
        print_table([("", i, d.label, _label(pre.labels, d.label), f"{d.score:.4f}",
                      _box_text(b)) for i, (d, b) in enumerate(zip(dets, boxes))],
                    align="<>><><")
        if out_dir is not None:
            payloads[Path(out_dir) / f"{p.path.stem}_detections.png"] = _detections_png(
                p.image, dets, boxes, pre.labels)
    if out_dir is not None:
        files = plan.commit(payloads)
        logging.getLogger("blackbox_xai").info("wrote %d files to %s", len(files), out_dir)


def _detections_png(image, dets, boxes, labels) -> bytes:
    """PNG bytes of the photo with the boxes (image pixels), captioned "index label score"."""
    import io

    from ..viz import detections_image

    captions = [" ".join(t for t in (str(i), _label(labels, d.label) or f"class {d.label}",
                                     f"{d.score:.2f}") if t) for i, d in enumerate(dets)]
    buf = io.BytesIO()
    detections_image(image, [(b, d.label, c) for b, d, c in zip(boxes, dets, captions)]
                     ).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _label(labels, k: int) -> str:
    return labels[k] if labels is not None and k < len(labels) else ""


def _detection_target(detector, p, detection, box, class_, conf, iou):
    """The Detection to explain on one prepared image: ``bbx detect``'s number ``detection``,
    or ``box`` (image pixels, "x0,y0,x1,y1") with class ``class_``."""
    from ..targets import Detection

    hw = p.tensor.shape[1:]
    if detection is not None:
        (dets,) = detector.detect(p.tensor[None], conf=conf, iou=iou)
        if detection >= len(dets):
            raise UserError(f"--detection {detection}: {p.path.name} has {len(dets)} detections at "
                            f"--conf {conf:g} (see `bbx detect`)")
        return dets[detection]
    try:
        values = [float(v) for v in box.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise UserError(f"--box {box!r}: give x0,y0,x1,y1 in image pixels")
    return Detection.from_image(values, class_, p.box, hw)


def _region_target(model, p, class_: int, region: str | None, mask: str | None):
    """The Region to explain on one prepared image: class ``class_`` over the output pixels
    whose centres fall in ``region`` ("x0,y0,x1,y1", image pixels) or on a nonzero pixel of the
    PNG ``mask`` (the image's size), else over the pixels predicted as ``class_``."""
    from PIL import Image

    from ..targets import Region

    if region is None and mask is None:
        return Region(class_, None)
    map_hw = model.logits(p.tensor[None]).shape[2:]
    if region is not None:
        try:
            values = [float(v) for v in region.split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
            raise UserError(f"--region {region!r}: give x0,y0,x1,y1 in image pixels, x1 > x0, "
                            "y1 > y0")
        return Region.from_image(class_, p.box, map_hw, box=values, source=f"--region {region}")
    try:
        with Image.open(mask) as img:
            pixels = np.asarray(img)
    except (OSError, ValueError) as e:
        raise UserError(f"--mask {mask}: not a readable image ({e})") from None
    if pixels.shape[:2] != (p.image.height, p.image.width):
        raise UserError(f"--mask {mask} is {pixels.shape[1]}x{pixels.shape[0]}; the image "
                        f"{p.path.name} is {p.image.width}x{p.image.height}")
    on = pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0
    return Region.from_image(class_, p.box, map_hw, image_mask=on, source=f"--mask {mask}")


class ExplainGroup(click.Group):
    """``explain METHOD``: one subcommand per registered method, options from its signature."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from ..methods import all_methods

        return list(all_methods())

    def get_command(self, ctx: click.Context, name: str) -> click.Command:
        from ..methods import all_methods

        methods = all_methods()
        if name not in methods:
            raise UserError(did_you_mean(name, methods, "method"))
        return make_explain_command(methods[name])


def make_explain_command(spec) -> click.Command:
    params: list[click.Parameter] = []
    for o in spec.options:
        ctype, flag = _click_type(o.annotation, o.default)
        flag_name = "--" + o.name.replace("_", "-")
        if flag:
            params.append(click.Option([f"{flag_name}/--no-{o.name.replace('_', '-')}", o.name],
                                       default=o.default, show_default=True, help=o.help))
        else:
            params.append(click.Option([flag_name, o.name], type=ctype, default=o.default,
                                       show_default=True, help=o.help))

    @click.argument("model_path", metavar="MODEL")
    @image_arguments
    @click.option("--target", type=int, default=None, help="Class to explain (default: top-1).")
    @click.option("--detection", type=click.IntRange(0), default=None,
                  help="A detector's detection to explain: its index in `bbx detect`'s list.")
    @click.option("--box", default=None, metavar="x0,y0,x1,y1",
                  help="A detector's box to explain, in image pixels (with --class).")
    @click.option("--class", "class_", type=click.IntRange(0), default=None,
                  help="The class of --box; alone or with --region/--mask: a segmentation "
                       "net's class over a region (default: the pixels predicted as it).")
    @click.option("--region", default=None, metavar="x0,y0,x1,y1",
                  help="A segmentation region, in image pixels (with --class).")
    @click.option("--mask", "mask_file", default=None, metavar="FILE",
                  help="A segmentation region: a PNG of the image's size, nonzero = in.")
    @detection_options
    @click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                  help="Write .npy/.json/.png per image here (default: write nothing).")
    @click.option("--save", "save", default=",".join(FILE_KINDS), show_default=True,
                  metavar="KINDS", help="The files written per image with --out: npy (the map), "
                  "json (the manifest), png (the map), overlay (the map over the image).")
    @click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
    @click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
    @executor_options
    @model_options
    @preprocess_options
    @friendly_errors
    def run(model_path, images, target, detection, box, class_, region, mask_file, conf, iou,
            decoder, box_format, normalized_boxes, seed, out_dir, save,
            overwrite, progress, device, score, output_name, batch_size, threads, layout,
            preprocess, executor, **options):
        from ..api import explain
        from ..explanation import plan_files
        from ..targets import Detector

        spec.validate(options)  # bad option values cost no model loading
        kinds = parse_kinds(save)
        detecting = detection is not None or box is not None
        segmenting = not detecting and (class_ is not None or region is not None
                                        or mask_file is not None)
        if detecting and (target is not None or (detection is not None) == (box is not None)
                          or (box is None) != (class_ is None) or region or mask_file):
            raise UserError("a detection target is --detection I, or --box x0,y0,x1,y1 with "
                            "--class k (not with --target, --region or --mask)")
        if segmenting and (target is not None or class_ is None
                           or (region is not None and mask_file is not None)):
            raise UserError("a region target is --class k, optionally with --region "
                            "x0,y0,x1,y1 or --mask FILE (not with --target)")
        if out_dir is not None and images.dataset:
            if detecting or segmenting:
                raise UserError("a dataset run explains classes (--target, or a list's target "
                                "column); explain detections and regions image by image")
            from ..dataset.executor import get_executor

            chosen = get_executor(executor["executor"], ray_address=executor["ray_address"],
                                  workers=executor["ray_workers"],
                                  gpus_per_worker=executor["gpus_per_worker"])
            model = open_model(model_path, device, score, output_name, batch_size, threads, layout)
            _explain_dataset(model, spec.name, images, options, out_dir, seed=seed, target=target,
                             overwrite=overwrite, progress=progress, flags=preprocess,
                             executor=chosen, kinds=kinds)
            return
        if executor != EXECUTOR_DEFAULTS:
            raise UserError("--executor, --ray-address, --ray-workers and --gpus-per-worker are "
                            "for dataset runs: a folder, glob or --images-from list with --out")
        # every image's files are planned and checked before any computing, written at the end
        plan = OutputPlan(overwrite)
        if out_dir is not None:
            for img in images.paths:
                plan_files(plan, out_dir, f"{Path(img).stem}_{spec.name}", overlay=True, source=img,
                           kinds=kinds)
            plan.check({**model_inputs(model_path), **{img: "an input image" for img in images.paths}})
        model = open_model(model_path, device, score, output_name, batch_size, threads, layout,
                           task="detect" if detecting else "segment" if segmenting else "classify")
        pre, prepared = stream_images(model, images, preprocess)
        show = sys.stderr.isatty() if progress is None else progress
        detector = Detector(model, decoder, box_format=box_format,
                            normalized=normalized_boxes) if detecting else None
        payloads: dict[Path, bytes] = {}
        for p in prepared:
            tgt = _region_target(model, p, class_, region, mask_file) if segmenting else \
                target if detector is None else _detection_target(detector, p, detection, box,
                                                                  class_, conf, iou)
            exp = explain(model, p.tensor, spec.name, target=tgt, seed=seed, progress=show,
                          labels=pre.labels, inputs=p.inputs,
                          decoder=(detector.decoder or decoder) if detector else None, **options)
            label = f" ({exp.label})" if exp.label else ""
            where = f" region {exp.extras['region']['pixels']} px" if segmenting else \
                "" if detector is None else \
                f" box {_box_text(tgt.to_image(p.box, p.tensor.shape[1:]))}"
            click.echo(f"{p.path.name}: {spec.name} target {exp.target}{label}{where} score "
                       f"{exp.score:.4g}, {exp.n_queries} queries, {exp.seconds:.2f} s")
            if out_dir is not None:
                payloads.update(exp.files(out_dir, f"{p.path.stem}_{spec.name}", image=p.image,
                                          box=p.box, kinds=kinds))
        if out_dir is not None:
            files = plan.commit(payloads)
            logging.getLogger("blackbox_xai").info("wrote %d files to %s", len(files), out_dir)

    doc = inspect.getdoc(spec.fn) or spec.name
    cmd = click.command(spec.name, help=f"{doc}\n\nReference: {spec.reference}",
                        short_help=spec.summary)(run)
    cmd.params.extend(params)
    return cmd


#: the executor options' defaults (a dataset run on the local executor)
EXECUTOR_DEFAULTS = {"executor": "local", "ray_address": None, "ray_workers": None,
                     "gpus_per_worker": 0.0}


def executor_options(fn):
    """``--executor``, ``--ray-address``, ``--ray-workers``, ``--gpus-per-worker``: who runs a
    dataset run, passed to the command as one dict ``executor``."""

    @functools.wraps(fn)
    def wrapper(*args, executor, ray_address, ray_workers, gpus_per_worker, **kwargs):
        chosen = {"executor": executor, "ray_address": ray_address, "ray_workers": ray_workers,
                  "gpus_per_worker": gpus_per_worker}
        return fn(*args, executor=chosen, **kwargs)

    for opt in reversed([
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True, help="Dataset runs: in this process, or on Ray "
                     "(pip install 'blackbox-xai[ray]')."),
        click.option("--ray-address", default=None, metavar="ADDRESS",
                     help="Ray cluster to use, e.g. ray://head:10001 (default: local Ray)."),
        click.option("--ray-workers", type=click.IntRange(1), default=None,
                     help="Ray actors, each loading the model once (default: one per CPU, or "
                     "per --gpus-per-worker GPUs)."),
        click.option("--gpus-per-worker", type=FiniteFloatRange(0, None), default=0.0,
                     show_default=True, help="GPUs per Ray actor (CUDA workers)."),
    ]):
        wrapper = opt(wrapper)
    return wrapper


def _explain_dataset(model, method: str, images, options: dict, out_dir: str, *, seed: int,
                     target: int | None, overwrite: bool, progress: bool | None, flags: dict,
                     executor=None, kinds: tuple[str, ...] = FILE_KINDS) -> None:
    """``explain METHOD MODEL DIR --out OUT``: one line per image explained, the index at OUT."""
    from ..dataset.run import run_dataset

    show = sys.stderr.isatty() if progress is None else progress
    done = skipped = 0
    for r in run_dataset(model, recipe(model, flags), images, method, options, out_dir=out_dir,
                         seed=seed, target=target, overwrite=overwrite, progress=show,
                         max_pixels=flags["max_pixels"], executor=executor, kinds=kinds):
        if r.explanation is None:
            skipped += 1
            continue
        done += 1
        label = f" ({r.row.label})" if r.row.label else ""
        click.echo(f"{r.row.name}: {method} target {r.row.target}{label} score {r.row.score:.4g}, "
                   f"{r.row.queries} queries, {r.row.seconds:.2f} s")
    logging.getLogger("blackbox_xai").info("%d images explained, %d already in %s", done,
                                           skipped, Path(out_dir) / "index.csv")


@cli.group("explain", cls=ExplainGroup)
def explain_cmd() -> None:
    """Explain MODEL's decision on IMAGE(s) with METHOD (see `blackbox-xai methods`)."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="blackbox-xai")
    except UnknownNameError as e:  # raised while resolving a subcommand
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
