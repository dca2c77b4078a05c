"""Graph commands: ``layers``, ``expose``, ``backward``."""

from __future__ import annotations

import logging

import click

from ..outputs import OutputPlan, model_inputs
from .common import friendly_errors, print_table


def _plan_model_output(model_path: str, out: str, overwrite: bool) -> OutputPlan:
    """The plan of ``-o OUT`` (and its external data), checked before any computing: never the
    input model or its sidecar, an existing file only with --overwrite."""
    from ..graph.io import external_data_path

    plan = OutputPlan(overwrite)
    plan.add(out)
    plan.add(external_data_path(out), optional=True)
    plan.check(model_inputs(model_path))
    return plan


def _shape(shape: tuple) -> str:
    """``Nx3x224x224``; an unknown axis is ?: no value, shape inference's made-up ``unk__k``
    names, or a negative value (paddle2onnx writes -1 for a dynamic axis)."""
    return "x".join("?" if d is None or str(d).startswith("unk__") or isinstance(d, int) and d < 0
                    else str(d) for d in shape)


@click.command("layers")
@click.argument("model_path", metavar="MODEL")
@click.option("--output", "output_name", default=None,
              help="Only the layers this output depends on (a model with several outputs).")
@friendly_errors
def layers_cmd(model_path: str, output_name: str | None) -> None:
    """List the feature maps and token layers a CAM can use; * marks the default layer.

    Read from the normalised graph (the one the CAM methods use), so old opsets and exports
    with undeclared shapes show their layers too, with the shapes that inference leaves unknown
    measured in a run where the model takes images of a fixed size. A transformer's token
    layer shows its grid: ``tokens 1+4x4`` is a class token then a 4 x 4 grid of patch tokens.
    """
    from ..errors import BlackboxError
    from ..graph import candidate_layers, default_layer, load
    from ..graph.expose import keep_output
    from ..graph.inspect import describe_layout
    from ..graph.normalize import normalize
    from ..model import load_model

    model = None
    package_log = logging.getLogger("blackbox_xai")
    level = package_log.level
    package_log.setLevel(logging.WARNING)  # loading notes are not this listing's
    try:
        for task in ("classify", "segment", "detect"):  # its own task measures its shapes
            try:
                loaded = load_model(model_path, device="cpu", task=task)
                model = loaded.graph()
                output_name = loaded.zipped_outputs.get(output_name, output_name)
                break
            except BlackboxError:
                continue
    finally:
        package_log.setLevel(level)
    problem = None
    if model is None:  # not a model of images, or no graph rewrites: the shapes inferred
        norm = normalize(load(model_path))
        model, problem = norm.model, norm.problem
    if output_name is not None:
        model = keep_output(model, output_name)
    if problem:  # no layer of this graph can be read (e.g. ONNX Runtime's NCHWc): say why
        raise BlackboxError(problem)
    layers = candidate_layers(model)
    default = default_layer(model)
    print_table([(f"{'*' if c.name == default else ' '} {c.name}", _shape(c.shape),
                  describe_layout(c), c.op, "yes" if c.feeds_pooling else "no") for c in layers],
                header=("  tensor", "shape", "layout", "op", "feeds pooling"))


@click.command("expose")
@click.argument("model_path", metavar="MODEL")
@click.argument("tensors", metavar="TENSOR", nargs=-1, required=True)
@click.option("-o", "--out", required=True, help="The .onnx file to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@friendly_errors
def expose_cmd(model_path: str, tensors: tuple[str, ...], out: str, overwrite: bool) -> None:
    """Write a copy of MODEL that also outputs TENSOR(s) (open it in Netron)."""
    from ..graph import expose, load, save

    plan = _plan_model_output(model_path, out, overwrite)
    dest = save(expose(load(model_path), tensors), out, plan=plan)
    click.echo(f"wrote {dest}: outputs {', '.join(tensors)} added")


@click.command("backward")
@click.argument("model_path", metavar="MODEL")
@click.option("--wrt", multiple=True, required=True,
              help="Tensor or input to differentiate with respect to (repeatable).")
@click.option("-o", "--out", required=True, help="The .onnx file to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--output", "output_name", default=None,
              help="The class-score output (default: the only one, or the only 2-D one).")
@click.option("--score", type=click.Choice(["logit", "prob", "logprob"]), default="logit",
              show_default=True, help="Differentiate the logits (before a final softmax), the "
                                      "softmax probabilities, or their log.")
@friendly_errors
def backward_cmd(model_path: str, wrt: tuple[str, ...], out: str, overwrite: bool,
                 output_name: str | None, score: str) -> None:
    """Write MODEL's backward graph: extra input seed (N, K), outputs d(seed . scores)/d(wrt).

    The graph is built from the normalised model (IR and opset upgraded where needed) and is
    loaded in ONNX Runtime before it is written.
    """
    from ..graph import load, resolve_tensor, save
    from ..graph.autodiff import backward
    from ..model import load_model
    from ..runtime import create_session, evaluate

    plan = _plan_model_output(model_path, out, overwrite)
    source = load(model_path)
    for name in wrt:  # names first: a typo costs no model loading
        resolve_tensor(source, name)
    model = load_model(model_path, device="cpu", score=score, output=output_name)
    proto, scores = model.scores_graph()
    graph = backward(proto, wrt=list(wrt), output=scores, evaluate=evaluate)
    create_session(graph.SerializeToString(), "cpu", 1, generated="backward graph")
    dest = save(graph, out, plan=plan)
    click.echo(f"wrote {dest}: gradients of seed . {scores} (seed: N x {model.num_classes}) with "
               f"respect to {', '.join(wrt)}")
