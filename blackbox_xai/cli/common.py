"""What every command shares: errors as one line, the model and preprocessing options, opening
the model and preparing the images, and the table printer."""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from ..errors import BlackboxError, InternalError

if TYPE_CHECKING:
    from ..dataset.sources import ImageSet

log = logging.getLogger("blackbox_xai")


class UserError(click.ClickException):
    """A bad input: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {' '.join(self.format_message().split())}", err=True)


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
def _tf32(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--tf32``: every CUDA session of this process in TF32 (runtime.CUDA_TF32_ENV)."""
    if value:
        from ..runtime import CUDA_TF32_ENV

        os.environ[CUDA_TF32_ENV] = "1"


#: ``--tf32``, with the model options and on ``compare``
tf32_option = click.option(
    "--tf32", is_flag=True, expose_value=False, callback=_tf32,
    help="CUDA: TF32 convolutions and products, ONNX Runtime's default (a deployment's own "
         "math); FP32, the CPU's, without it.")


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
        click.option("--threads", type=click.IntRange(1), default=None,
                     help="ONNX Runtime CPU threads (default: all cores)."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                     help="Override the detected input layout."),
        tf32_option,
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
    from ..preprocess import PRESETS

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
               batch_size: str, threads: int | None, layout: str | None, task: str = "classify"):
    from ..model import load_model

    if batch_size != "auto":
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise BlackboxError(f"--batch-size {batch_size!r}: use a positive integer or auto") from None
    return load_model(model_path, device=device, score=score, output=output_name,
                      batch_size=batch_size, threads=threads, layout=layout, task=task)


def image_arguments(fn: Callable) -> Callable:
    """The ``IMAGES...`` argument (files, folders, globs) and ``--images-from FILE``, passed to
    the command as one :class:`~blackbox_xai.dataset.sources.ImageSet` ``images``."""
    from ..dataset.sources import expand

    @functools.wraps(fn)
    def wrapper(*args, images: tuple[str, ...], images_from: str | None, **kwargs):
        try:
            image_set = expand(images, images_from)
        except BlackboxError as e:
            raise UserError(str(e)) from None
        return fn(*args, images=image_set, **kwargs)

    wrapper = click.option(
        "--images-from", type=click.Path(dir_okay=False), default=None, metavar="FILE",
        help="More images: one path a line, or a CSV with a path column (and target).")(wrapper)
    return click.argument("images", nargs=-1)(wrapper)


def recipe(model, flags: dict[str, Any]):
    """The preprocessing recipe from the flags (flags > preset > sidecar > metadata > guess)."""
    from ..preprocess import Preprocessing

    numbers = {}
    for k in ("resize", "crop", "mean", "std"):
        if flags[k] is not None:
            try:
                numbers[k] = tuple(float(v) for v in flags[k].replace(",", " ").split())
            except ValueError:
                raise BlackboxError(f"--{k} {flags[k]!r}: give numbers") from None
    order = {True: "BGR", False: "RGB", None: None}[flags["bgr"]]
    mode = {True: "letterbox", False: "crop", None: None}[flags["letterbox"]]
    return Preprocessing.for_model(
        model.path, model.input.chw[1:], channels=model.input.channels,
        num_classes=model.num_classes, preset=flags["preset"], flag_prefix="--", **numbers,
        scale=flags["scale"], pad=flags["pad"], channel_order=order, mode=mode)


def stream_images(model, images: ImageSet, flags: dict[str, Any]):
    """The recipe and the prepared images: a list for a few files (a bad one fails before any
    computing), an iterator preparing each image when it is reached for a dataset."""
    pre = recipe(model, flags)
    prepared = (pre.prepare(p, model.input.channels, flags["max_pixels"]) for p in images.paths)
    return pre, prepared if images.dataset else list(prepared)


def prepare_images(model, images: Sequence[str], flags: dict[str, Any]):
    """The recipe and every image prepared with it (a list)."""
    pre = recipe(model, flags)
    return pre, [pre.prepare(p, model.input.channels, flags["max_pixels"]) for p in images]


# ---- tables -----------------------------------------------------------------------------------
def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None,
                align: str = "") -> None:
    """Echo ``rows`` (and ``header`` above them) as columns two spaces apart.

    Each column is as wide as its widest cell; ``align`` holds one ``<`` (left, the default) or
    ``>`` (right) per column. Cells are shown with ``str``; lines carry no trailing spaces.
    """
    table = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    widths = [max(len(r[i]) for r in table if i < len(r))
              for i in range(max(map(len, table), default=0))]
    for row in table:
        cells = (f"{c:{align[i:i + 1] or '<'}{widths[i]}}" for i, c in enumerate(row))
        click.echo("  ".join(cells).rstrip())


# ---- commands ---------------------------------------------------------------------------------


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN (which passes every comparison)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


class OneLineErrors(click.Group):
    """A click group whose usage errors (a missing argument, a bad option value) are one line
    on stderr with exit code 2, like every other error of the CLI."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # click puts the whole --help in it
                e.message = f"missing {'COMMAND' if e.ctx is None else e.ctx.command.name} argument"
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
