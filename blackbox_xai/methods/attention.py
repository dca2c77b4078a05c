"""Attention rollout and gradient rollout: a vision transformer's class token, traced back
through every block's attention to the image patches.

Both read the attention probabilities A_b (heads, T, T) of the blocks b = 1..L in graph order
(the Softmax outputs, found in the bare graph: :func:`~blackbox_xai.graph.inspect.
attention_blocks`), fuse the heads into one T x T matrix per block, chain the blocks,

    R = M_L ... M_2 M_1,

and read the class token's row of R over the patch tokens, R[0, e:] with e the extra tokens
(class; DeiT's distillation token too), as the h x w patch grid; the map is that grid upsampled
bilinearly to the input size. They differ in M_b. Both need global attention with a class token
(ViT, DeiT): Swin's window attention attends within 4 x 4 windows, with no token whose row
summarises the image, and is refused with one line, as are models with no attention.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt

from ..errors import BlackboxError
from ..graph.expose import expose
from ..graph.inspect import AttentionBlocks, attention_blocks
from ..model import one_hot
from ..registry import Attribution, Context, Range, register, register_batch
from ..resample import upsample
from .gradients import batch_gradients

Array = npt.NDArray[np.float32]
HeadFusion = Literal["mean", "max", "min"]


def _blocks(ctx: Context) -> AttentionBlocks:
    """The model's attention tensors, found once per model (shape inference is not free)."""
    if ctx.model is None:
        raise BlackboxError("attention methods need a Model from load_model(), not a plain "
                            "function")
    return ctx.model.fact(("attention",), lambda: attention_blocks(ctx.model.graph()))


def _heads(a: Array, tokens: int) -> npt.NDArray[np.float64]:
    """One image's attention (1, heads, T, T) or (heads, T, T) (N * heads at N = 1) as
    (heads, T, T) in float64."""
    return a.reshape(-1, tokens, tokens).astype(np.float64)


def _attribution(x: Array, blocks: AttentionBlocks, rollout: npt.NDArray[np.float64]
                 ) -> Attribution:
    """The class token's row of ``rollout`` (T, T) over the patches, as the grid, upsampled."""
    grid = blocks.grid
    row = rollout[0, grid.extra:].reshape(grid.h, grid.w).astype(np.float32)
    return Attribution(upsample(row, x.shape[1:]),
                       {"rollout": row, "attention": list(blocks.names),
                        "extra_tokens": grid.extra})


def discard_lowest(fused: npt.NDArray[np.float64], ratio: float) -> npt.NDArray[np.float64]:
    """``fused`` (T, T) with its lowest ``floor(ratio * T^2)`` entries set to 0, except the
    class token's attention to itself (entry (0, 0)), as the reference code does."""
    flat = fused.reshape(-1).copy()
    lowest = np.argsort(flat, kind="stable")[:int(flat.size * ratio)]
    flat[lowest[lowest != 0]] = 0
    return flat.reshape(fused.shape)


@register("attention-rollout", family="attention", requires_graph=True,
          reference="Abnar & Zuidema 2020, arXiv:2005.00928")
def attention_rollout(query, x: Array, target: int, *, ctx: Context,
                      head_fusion: HeadFusion = "mean",
                      discard_ratio: Annotated[float, Range(0, 1, hi_open=True)] = 0.0
                      ) -> Attribution:
    """Attention rollout: R = prod_b norm(A_b + I), the class token's row over the patches.

    Per block, the heads are fused (mean, or max/min as in Gildenblat's vit-explain), the
    lowest ``discard_ratio`` of the T^2 entries optionally zeroed (never the class token's
    attention to itself), the residual connection added as the identity,
    M_b = (A_b + I) / 2, and each row renormalised to sum to 1 (the reference code divides
    columns by row sums; the paper renormalises rows). R = M_L ... M_1, the map R[0, e:] on the
    h x w grid. Class-agnostic: the target is not used. One forward pass with the Softmax
    outputs exposed. extras: rollout (h, w), attention (tensor names), extra_tokens.

    Args:
        head_fusion: how the heads of a block are fused: mean (the paper), max or min.
        discard_ratio: fraction of each fused attention's lowest entries set to 0 (0: none).
    """
    blocks = _blocks(ctx)
    _, attentions = _exposed_attention(ctx, blocks, x[None])
    return _attention_rollout(x, blocks, attentions, head_fusion, discard_ratio)


def _exposed_attention(ctx: Context, blocks: AttentionBlocks, xs: Array
                       ) -> tuple[Array, list[Array]]:
    """Scores (N, K) and every block's attention of ``xs``, in one pass of the model with the
    Softmax outputs exposed."""
    model, names = ctx.model, list(blocks.names)
    session = model.derived(("expose", model.score, tuple(names)),
                            lambda: expose(model.scores_graph()[0], names))
    scores, *attentions = model.run_batched(session, {model.input.name: xs},
                                            [model.scores_output(), *names])
    return scores.reshape(len(xs), -1), attentions


def _attention_rollout(x: Array, blocks: AttentionBlocks, attentions: list[Array],
                       head_fusion: HeadFusion, discard_ratio: float) -> Attribution:
    """The attention rollout of one input from its blocks' A_b."""
    tokens = blocks.grid.tokens
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    rollout = np.eye(tokens)
    for a in attentions:
        fused = discard_lowest(fuse(_heads(a, tokens), axis=0), discard_ratio)
        m = (fused + np.eye(tokens)) / 2
        rollout = (m / m.sum(axis=1, keepdims=True)) @ rollout
    return _attribution(x, blocks, rollout)


def _per_input(tensors: list[Array], n: int) -> list[list[Array]]:
    """Batched tensors whose first axis is N or N * heads (batch-major), split per input."""
    split = [t.reshape(n, -1, *t.shape[1:]) for t in tensors]
    return [[t[i] for t in split] for i in range(n)]


@register_batch("attention-rollout")
def _attention_rollout_batch(xs: Array, targets: list[int | None], *, ctx: Context,
                             head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0
                             ) -> tuple[Array, list[int], list[Attribution]]:
    """One pass with the attention exposed; its own scores give the top-1 targets."""
    blocks = _blocks(ctx)
    scores, attentions = _exposed_attention(ctx, blocks, xs)
    resolved = [int(t) if t is not None else int(np.argmax(s)) for t, s in zip(targets, scores)]
    return scores, resolved, [_attention_rollout(x, blocks, a, head_fusion, discard_ratio)
                              for x, a in zip(xs, _per_input(attentions, len(xs)))]


@register("gradient-rollout", family="attention", requires_graph=True, needs_gradient=True,
          reference="Chefer, Gur & Wolf 2021, arXiv:2103.15679")
def gradient_rollout(query, x: Array, target: int, *, ctx: Context) -> Attribution:
    """Gradient rollout: R = prod_b (I + E_h[(dy_c/dA_b * A_b)^+]), class row over patches.

    Chefer, Gur & Wolf's rule for self-attention ("Generic Attention-model Explainability"):
    R starts at the identity and each block, first to last, adds A-bar_b R with
    A-bar_b = mean over heads of ReLU(grad_b * A_b), grad_b = dy_c/dA_b the gradient of the
    target score at the block's attention probabilities; so R = (I + A-bar_L) ... (I + A-bar_1),
    rows not renormalised, and the map is R[0, e:] on the h x w grid. All A_b and grad_b come
    from one forward+backward pass of the backward graph to the Softmax outputs.
    extras: rollout (h, w), attention (tensor names), extra_tokens.
    """
    blocks = _blocks(ctx)
    seed = one_hot(1, ctx.model.num_classes, target)
    _, attentions, grads = ctx.model.gradients(x[None], seed, list(blocks.names),
                                               progress=ctx.progress)
    return _gradient_rollout(x, blocks, attentions, grads)


def _gradient_rollout(x: Array, blocks: AttentionBlocks, attentions: list[Array],
                      grads: list[Array]) -> Attribution:
    """The gradient rollout of one input from its blocks' A_b and dy/dA_b."""
    tokens = blocks.grid.tokens
    rollout = np.eye(tokens)
    for a, g in zip(attentions, grads):
        fused = np.maximum(_heads(g, tokens) * _heads(a, tokens), 0).mean(axis=0)
        rollout = rollout + fused @ rollout
    return _attribution(x, blocks, rollout)


@register_batch("gradient-rollout")
def _gradient_rollout_batch(xs: Array, targets: list[int | None], *, ctx: Context
                            ) -> tuple[Array, list[int], list[Attribution]]:
    """Every input's A_b and dy/dA_b in one batch of backward-graph passes, each seeded in
    the graph with its target or its own top-1 (no forward pass first)."""
    blocks = _blocks(ctx)
    scores, resolved, attentions, grads = batch_gradients(ctx.model, xs, targets,
                                                          list(blocks.names))
    n = len(xs)
    return scores, resolved, [_gradient_rollout(x, blocks, a, g) for x, a, g in
                              zip(xs, _per_input(attentions, n), _per_input(grads, n))]
