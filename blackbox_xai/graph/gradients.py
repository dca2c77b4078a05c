"""Run a model's backward graph: scores, chosen activations and their gradients in one pass.

``seed`` (N, K) selects what is differentiated: the gradient returned is
``d sum_k(seed_k * score_k) / d tensor`` (a one-hot seed gives one class's gradient).
The differentiated scores are the model's (:meth:`Model.scores_graph`): logits, or with
``score="prob"``/``"logprob"`` the softmax (its log) is part of the differentiated graph.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from ..model import Model, ScoreKind
from ..runtime import evaluate
from .autodiff import backward_cached

CACHE_ENV = "BLACKBOX_XAI_CACHE"  # a folder: backward graphs are kept there between runs


def _kind(model: Model, softmax: bool | None) -> ScoreKind:
    return model.score if softmax is None else "prob" if softmax else "logit"


def scores_graph(model: Model, softmax: bool | None = None) -> tuple[onnx.ModelProto, str]:
    """The model's graph and the name of its (N, K) scores output: those ``model()`` returns,
    or with ``softmax=True`` class probabilities, ``softmax=False`` logits."""
    return model.scores_graph(_kind(model, softmax))


def scores_output(model: Model, softmax: bool | None = None) -> str:
    """The name :func:`scores_graph` gives the scores output, without building the graph."""
    return model.scores_output(_kind(model, softmax))


def forward_backward(model: Model, x: npt.NDArray[np.float32], seed: npt.NDArray[np.float32],
                     wrt: Sequence[str], progress=None, softmax: bool | None = None
                     ) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[np.float32]],
                                list[npt.NDArray[np.float32]]]:
    """Scores (N, K), the forward values and the gradients of the ``wrt`` tensors.

    The backward graph is built once per (hash of the graph differentiated, wrt) (kept on disk
    in the folder named by ``$BLACKBOX_XAI_CACHE`` when set) and its session cached on the model. Values of the
    model's own input are returned in NCHW, like the input ``x``. ``softmax`` as in
    :func:`scores_graph`.
    """
    kind = _kind(model, softmax)
    out_name = model.scores_output(kind)

    def build() -> onnx.ModelProto:
        cache = os.environ.get(CACHE_ENV)
        return backward_cached(model.scores_graph(kind)[0], list(wrt), output=out_name,
                               cache_dir=Path(cache) if cache else None, evaluate=evaluate)

    session = model.derived(("backward", kind, tuple(wrt)), build)
    grads = [f"{w}_grad" for w in wrt]
    values = [w for w in wrt if w != model.input.name]
    outs = model.run_batched(session, {model.input.name: x, "seed": seed},
                             [out_name, *values, *grads], progress=progress)
    scores, rest = outs[0].reshape(len(x), -1), outs[1:]
    forward = dict(zip(values, rest[:len(values)]))
    forward[model.input.name] = x
    gradients = rest[len(values):]
    if model.input.layout == "NHWC":
        gradients = [g.transpose(0, 3, 1, 2) if w == model.input.name else g
                     for w, g in zip(wrt, gradients)]
    return scores, [forward[w] for w in wrt], gradients


def one_hot(n: int, k: int, target: int, weight: float = 1.0) -> npt.NDArray[np.float32]:
    seed = np.zeros((n, k), np.float32)
    seed[:, target] = weight
    return seed


def input_gradient(model: Model, x: npt.NDArray[np.float32], seed: npt.NDArray[np.float32],
                   progress=None, softmax: bool | None = None
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scores (N, K) and ``d sum(seed * scores) / dx`` (N, C, H, W); ``softmax=True``
    differentiates class probabilities whatever the model's ``score``."""
    scores, _, (grad,) = forward_backward(model, x, seed, [model.input.name], progress, softmax)
    return scores, grad


def layer_gradient(model: Model, x: npt.NDArray[np.float32], target: int, layer: str,
                   progress=None
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scores (N, K), the layer's activation A and dy_target/dA, both (N, k, h, w)."""
    seed = one_hot(len(x), model.num_classes, target)
    scores, (act,), (grad,) = forward_backward(model, x, seed, [layer], progress)
    return scores, act, grad


def layer_activation(model: Model, x: npt.NDArray[np.float32], layer: str
                     ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scores (N, K) and the layer's activation, from the model with ``layer`` exposed."""
    from .expose import expose

    out_name = model.scores_output()
    session = model.derived(("expose", model.score, layer),
                            lambda: expose(model.scores_graph()[0], [layer]))
    scores, act = model.run_batched(session, {model.input.name: x}, [out_name, layer])
    return scores.reshape(len(x), -1), act
