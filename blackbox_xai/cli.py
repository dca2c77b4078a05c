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

from .errors import BlackboxError, UnknownNameError, did_you_mean

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
            click.echo(f"internal error: {type(e).__name__}: {e} (rerun with --debug)", err=True)
            sys.exit(3)

    return wrapper


# ---- shared options ---------------------------------------------------------------------------
def model_options(fn: Callable) -> Callable:
    for opt in reversed([
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Execution provider; cuda fails if CUDA cannot run."),
        click.option("--score", type=click.Choice(["logit", "prob"]), default="logit",
                     show_default=True, help="Explain the logit or the softmax probability."),
        click.option("--output", "output_name", default=None, help="Score output name (default: the 2-D one)."),
        click.option("--batch-size", default="auto", show_default=True, help="Queries per run, or auto."),
        click.option("--threads", type=int, default=None, help="ONNX Runtime CPU threads (default: all cores)."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                     help="Override the detected input layout."),
    ]):
        fn = opt(fn)
    return fn


def preprocess_options(fn: Callable) -> Callable:
    for opt in reversed([
        click.option("--resize", type=int, default=None, help="Resize the shorter side to this first."),
        click.option("--crop", type=int, default=None, help="Centre-crop size (default: the model's input)."),
        click.option("--mean", type=float, nargs=3, default=None, help="Per-channel mean (after /scale)."),
        click.option("--std", type=float, nargs=3, default=None, help="Per-channel std (after /scale)."),
        click.option("--scale", type=float, default=None, help="Divide pixels by this (255 -> [0, 1])."),
        click.option("--bgr", is_flag=True, default=False, help="Feed BGR instead of RGB."),
    ]):
        fn = opt(fn)
    return fn


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


def prepare_images(model, images: tuple[str, ...], resize, crop, mean, std, scale, bgr):
    from .preprocess import Preprocessing

    pre = Preprocessing.for_model(
        model.path, model.input.chw[1:], resize=resize, crop=crop, mean=mean or None,
        std=std or None, scale=scale, channel_order="BGR" if bgr else None)
    return pre, [pre.prepare(p, model.input.channels) for p in images]


# ---- commands ---------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.command("predict")
@click.argument("model_path", metavar="MODEL")
@click.argument("images", nargs=-1, required=True)
@click.option("--top", type=click.IntRange(1), default=5, show_default=True)
@model_options
@preprocess_options
@friendly_errors
def predict_cmd(model_path, images, top, device, score, output_name, batch_size, threads, layout,
                resize, crop, mean, std, scale, bgr) -> None:
    """Top classes of each image (probabilities and logits)."""
    model = open_model(model_path, device, "logit", output_name, batch_size, threads, layout)
    pre, prepared = prepare_images(model, images, resize, crop, mean, std, scale, bgr)
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
                                       default=o.default, show_default=True))
        else:
            params.append(click.Option([flag_name, o.name], type=ctype, default=o.default,
                                       show_default=True))

    @click.argument("model_path", metavar="MODEL")
    @click.argument("images", nargs=-1, required=True)
    @click.option("--target", type=int, default=None, help="Class to explain (default: top-1).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                  help="Write .npy/.json/.png per image here (default: write nothing).")
    @click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
    @click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a TTY).")
    @model_options
    @preprocess_options
    @friendly_errors
    def run(model_path, images, target, seed, out_dir, overwrite, progress, device, score,
            output_name, batch_size, threads, layout, resize, crop, mean, std, scale, bgr,
            **options):
        from .api import explain

        model = open_model(model_path, device, score, output_name, batch_size, threads, layout)
        pre, prepared = prepare_images(model, images, resize, crop, mean, std, scale, bgr)
        show = sys.stderr.isatty() if progress is None else progress
        for p in prepared:
            exp = explain(model, p.tensor, spec.name, target=target, seed=seed, progress=show,
                          labels=pre.labels, **options)
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
