"""The ``blackbox-xai`` / ``bbx`` command line; ``explain METHOD`` subcommands come from the registry."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import types
import typing
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from .errors import BlackboxError, InternalError, UnknownNameError, did_you_mean

log = logging.getLogger("blackbox_xai")


class UserError(click.ClickException):
    """A bad input: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def friendly_errors(fn: Callable) -> Callable:
    """Turn library errors into one line and exit code 2 (internal errors: one line, exit 3)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BlackboxError as e:
            raise UserError(str(e)) from None
        except MemoryError:
            raise UserError("out of memory: try a smaller --batch-size") from None
        except Exception as e:  # never a traceback for the user; --debug shows it
            if logging.getLogger("blackbox_xai").isEnabledFor(logging.DEBUG):
                raise
            text = " ".join(str(e).split())  # one line, whatever the exception holds
            what = "" if isinstance(e, InternalError) else f"{type(e).__name__}: "
            click.echo(f"internal error: {what}{text} (rerun with --debug)", err=True)
            sys.exit(3)

    return wrapper


# ---- shared options ---------------------------------------------------------------------------
def model_options(fn: Callable) -> Callable:
    for opt in reversed([
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Execution provider; cuda fails if CUDA cannot run."),
        click.option("--score", type=click.Choice(["logit", "prob", "logprob"]), default="logit",
                     show_default=True,
                     help="Explain the logit (before a final softmax, which is cut off), the "
                          "softmax probability, or its log."),
        click.option("--output", "output_name", default=None,
                     help="The class-score output (default: the only one, or the only 2-D one)."),
        click.option("--batch-size", default="auto", show_default=True, help="Queries per run, or auto."),
        click.option("--threads", type=int, default=None, help="ONNX Runtime CPU threads (default: all cores)."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                     help="Override the detected input layout."),
    ]):
        fn = opt(fn)
    return fn


class _Numbers(click.Option):
    """An option taking 1 to ``most`` numbers (``--mean 0.5`` or ``--mean 0.485 0.456 0.406``),
    delivered as one space-separated string."""

    def __init__(self, *args: Any, most: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.most = most

    def add_to_parser(self, parser, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        opt = getattr(parser, "_long_opt", {}).get(self.opts[0])  # click's (private) parser
        if opt is None:  # a click without it: one value, or a comma-separated list
            return
        store = opt.process

        def process(value: str, state) -> None:
            values = [value]
            while state.rargs and len(values) < self.most and _is_number(state.rargs[0]):
                values.append(state.rargs.pop(0))
            store(" ".join(values), state)

        opt.process = process


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_PREPROCESS_FLAGS = ("preset", "resize", "crop", "letterbox", "pad", "mean", "std", "scale",
                     "bgr", "max_pixels")


def preprocess_options(fn: Callable) -> Callable:
    """The preprocessing flags, passed to the command as one dict ``preprocess``."""
    from .preprocess import PRESETS

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, preprocess={k: kwargs.pop(k) for k in _PREPROCESS_FLAGS}, **kwargs)

    for opt in reversed([
        click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                     help="torchvision: ImageNet mean/std, resize 256/224 of the input, centre crop; "
                          "tf: [-1, 1]; caffe: BGR 0-255 minus the ImageNet mean; zero-one; zero-255."),
        click.option("--resize", cls=_Numbers, most=2, default=None, metavar="H [W]",
                     help="One value: the shorter side to H; two: exactly H x W; then the centre crop."),
        click.option("--crop", cls=_Numbers, most=2, default=None, metavar="H [W]",
                     help="Centre-crop size (default: the model's input)."),
        click.option("--letterbox/--no-letterbox", default=None,
                     help="Fit the whole image inside the input keeping its aspect, padded with --pad."),
        click.option("--pad", type=int, default=None, help="Letterbox padding pixel value 0-255 (default 0)."),
        click.option("--mean", cls=_Numbers, most=3, default=None, metavar="M [M M]",
                     help="Mean after /scale: one value for all channels, or one per channel."),
        click.option("--std", cls=_Numbers, most=3, default=None, metavar="S [S S]",
                     help="Std after /scale: one value for all channels, or one per channel."),
        click.option("--scale", type=float, default=None, help="Divide pixels by this (255 -> [0, 1]; 1: 0-255)."),
        click.option("--bgr/--rgb", "bgr", default=None, help="Channel order fed to the model."),
        click.option("--max-pixels", type=click.IntRange(1), default=None,
                     help="Largest image (width x height) to decode (default: Pillow's bomb limit)."),
    ]):
        wrapper = opt(wrapper)
    return wrapper


def open_model(model_path: str, device: str, score: str, output_name: str | None,
               batch_size: str, threads: int | None, layout: str | None):
    from .model import load_model

    if batch_size != "auto":
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise BlackboxError(f"--batch-size {batch_size!r}: use a positive integer or auto") from None
    return load_model(model_path, device=device, score=score, output=output_name,
                      batch_size=batch_size, threads=threads, layout=layout)


def prepare_images(model, images: tuple[str, ...], flags: dict[str, Any]):
    """The recipe (flags > preset > sidecar > metadata > guess) and each image prepared with it."""
    from .preprocess import Preprocessing

    numbers = {}
    for k in ("resize", "crop", "mean", "std"):
        if flags[k] is not None:
            try:
                numbers[k] = tuple(float(v) for v in flags[k].replace(",", " ").split())
            except ValueError:
                raise BlackboxError(f"--{k} {flags[k]!r}: give numbers") from None
    order = {True: "BGR", False: "RGB", None: None}[flags["bgr"]]
    mode = {True: "letterbox", False: "crop", None: None}[flags["letterbox"]]
    pre = Preprocessing.for_model(
        model.path, model.input.chw[1:], channels=model.input.channels,
        num_classes=model.num_classes, preset=flags["preset"], flag_prefix="--", **numbers,
        scale=flags["scale"], pad=flags["pad"], channel_order=order, mode=mode)
    return pre, [pre.prepare(p, model.input.channels, flags["max_pixels"]) for p in images]


# ---- commands ---------------------------------------------------------------------------------
class OneLineErrors(click.Group):
    """A click group whose usage errors (a missing argument, a bad option value) are one line
    on stderr with exit code 2, like every other error of the CLI."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)  # ctx.exit(code) returns the code here


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
def methods_cmd() -> None:
    """List the explanation methods, their options and defaults."""
    from .registry import all_methods

    for spec in all_methods().values():
        opts = ", ".join(f"{o.name}={o.default!r}" for o in spec.options) or "-"
        click.echo(f"{spec.name:24s} {spec.family:10s} {spec.summary}")
        click.echo(f"{'':24s} options: {opts}")
        click.echo(f"{'':24s} reference: {spec.reference}")


@cli.command("inspect")
@click.argument("model_path", metavar="MODEL")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@friendly_errors
def inspect_cmd(model_path: str, device: str) -> None:
    """Show a model's inputs, outputs, opsets, op histogram and execution provider."""
    from .graph.io import load
    from .model import create_session, sha256_of
    from .preprocess import Preprocessing, read_metadata

    proto = load(model_path)
    sess, provider = create_session(model_path, device, None)
    click.echo(f"model     {model_path}  ({Path(model_path).stat().st_size / 2**20:.1f} MiB, "
               f"sha256 {sha256_of(model_path)[:16]})")
    click.echo(f"provider  {provider}")
    click.echo(f"ir        {proto.ir_version}  producer {proto.producer_name} {proto.producer_version}")
    click.echo("opsets    " + ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in proto.opset_import))
    for kind, items in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        for i in items:
            click.echo(f"{kind:9s} {i.name}  {i.type}  {i.shape}")
    hist = Counter(n.op_type for n in proto.graph.node)
    click.echo(f"nodes     {sum(hist.values())}: " + ", ".join(f"{k} {v}" for k, v in hist.most_common()))
    dims = [d if isinstance(d, int) and d > 0 else None for d in sess.get_inputs()[0].shape]
    if len(dims) == 4 and (dims[1] in (1, 3) or dims[3] in (1, 3)):  # an image input
        c, h, w = dims[1:] if dims[1] in (1, 3) else (dims[3], dims[1], dims[2])
        pre = Preprocessing.for_model(model_path, (h, w), channels=c, metadata=read_metadata(proto),
                                      warn_if_guessed=False)
        click.echo(f"preprocessing  {pre.summary(c)} (from {pre.origins()})")


@cli.command("predict")
@click.argument("model_path", metavar="MODEL")
@click.argument("images", nargs=-1, required=True)
@click.option("--top", type=click.IntRange(1), default=5, show_default=True)
@model_options
@preprocess_options
@friendly_errors
def predict_cmd(model_path, images, top, device, score, output_name, batch_size, threads, layout,
                preprocess) -> None:
    """Top classes of each image (probabilities and logits)."""
    model = open_model(model_path, device, "logit", output_name, batch_size, threads, layout)
    pre, prepared = prepare_images(model, images, preprocess)
    logits = model(np.stack([p.tensor for p in prepared]))
    probs = model.probabilities(logits)
    for p, lg, pr in zip(prepared, logits, probs):
        click.echo(f"{p.path.name}:")
        for c in np.argsort(-pr)[:top]:
            name = pre.labels[c] if pre.labels else ""
            click.echo(f"  {c:5d}  {pr[c]:.4f}  {lg[c]:9.4f}  {name}")


class ExplainGroup(click.Group):
    """``explain METHOD``: one subcommand per registered method, options from its signature."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .registry import all_methods

        return list(all_methods())

    def get_command(self, ctx: click.Context, name: str) -> click.Command:
        from .registry import all_methods

        methods = all_methods()
        if name not in methods:
            raise UserError(did_you_mean(name, methods, "method"))
        return make_explain_command(methods[name])


def _click_type(annotation: Any, default: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a method option's annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if origin in (typing.Union, types.UnionType):
        if len(args) == 1:
            return _click_type(args[0], default)
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        if literals and all(typing.get_origin(a) is typing.Literal for a in args):
            return click.Choice([str(v) for a in literals for v in typing.get_args(a)]), False
        return str, False  # mixed (e.g. "zero" or a number): parsed by the method
    if annotation is bool:
        return bool, True
    if annotation in (int, float, str):
        return annotation, False
    return str, False


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
    @click.argument("images", nargs=-1, required=True)
    @click.option("--target", type=int, default=None, help="Class to explain (default: top-1).")
    @click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                  help="Write .npy/.json/.png per image here (default: write nothing).")
    @click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
    @click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
    @model_options
    @preprocess_options
    @friendly_errors
    def run(model_path, images, target, seed, out_dir, overwrite, progress, device, score,
            output_name, batch_size, threads, layout, preprocess, **options):
        from .api import explain

        spec.validate(options)  # bad option values cost no model loading
        model = open_model(model_path, device, score, output_name, batch_size, threads, layout)
        pre, prepared = prepare_images(model, images, preprocess)
        show = sys.stderr.isatty() if progress is None else progress
        for p in prepared:
            exp = explain(model, p.tensor, spec.name, target=target, seed=seed, progress=show,
                          labels=pre.labels, inputs=p.inputs, **options)
            label = f" ({exp.label})" if exp.label else ""
            line = (f"{p.path.name}: {spec.name} target {exp.target}{label} score {exp.score:.4g}, "
                    f"{exp.n_queries} queries, {exp.seconds:.2f} s")
            if out_dir is not None:
                stem = f"{p.path.stem}_{spec.name}"
                files = exp.save(out_dir, stem, image=p.image, box=p.box, overwrite=overwrite)
                line += f" -> {', '.join(str(f) for f in files if f.suffix == '.png')}"
            click.echo(line)

    doc = inspect.getdoc(spec.fn) or spec.name
    cmd = click.command(spec.name, help=f"{doc}\n\nReference: {spec.reference}",
                        short_help=spec.summary)(run)
    cmd.params.extend(params)
    return cmd


@cli.group("explain", cls=ExplainGroup)
def explain_cmd() -> None:
    """Explain MODEL's decision on IMAGE(s) with METHOD (see `blackbox-xai methods`)."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="blackbox-xai")
    except UnknownNameError as e:  # raised while resolving a subcommand
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def _attach_subcommands() -> None:
    from .cli_eval import compare_cmd, evaluate_cmd, sanity_cmd
    from .cli_graph import backward_cmd, expose_cmd, layers_cmd

    for command in (layers_cmd, expose_cmd, backward_cmd, evaluate_cmd, compare_cmd, sanity_cmd):
        cli.add_command(command)


_attach_subcommands()
