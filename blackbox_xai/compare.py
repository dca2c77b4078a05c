"""Deployment-stack validation: do two deployments of a model decide alike, and for the same reasons?

Compare model A (the reference, e.g. FP32 on CPU) with model B (an FP16/INT8 artifact, or the
same file on another execution provider) on a set of inputs: prediction agreement, top-1 flips,
score deltas, and the similarity of the two explanations of the *same* class (A's top-1) with
the same method and seed. An image whose explanation's Spearman correlation falls below
``threshold`` has *drifted*.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import BlackboxError
from .explanation import Explanation
from .metrics.similarity import similarity
from .model import Model


@dataclass(frozen=True)
class ImageComparison:
    """One input: both predictions, score deltas, and how alike the two explanations are."""

    image: str
    top1_a: int
    top1_b: int
    flipped: bool
    target: int            # the class both explanations explain (A's top-1)
    max_logit_delta: float  # max |score_A - score_B| over classes (raw model outputs)
    max_prob_delta: float   # same on softmax probabilities
    target_prob_a: float
    target_prob_b: float
    spearman: float
    top_k_iou: float
    ssim: float
    drifted: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return not (self.flipped or self.drifted)


@dataclass
class Comparison:
    """Per-image rows plus the settings; ``ok`` is False when any image flipped or drifted."""

    method: str
    threshold: float
    top_k: float
    seed: int | None
    model_a: dict[str, Any]
    model_b: dict[str, Any]
    rows: list[ImageComparison]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_flips(self) -> int:
        return sum(r.flipped for r in self.rows)

    @property
    def n_drifted(self) -> int:
        return sum(r.drifted for r in self.rows)

    @property
    def agreement(self) -> float:
        return 1.0 - self.n_flips / len(self.rows) if self.rows else float("nan")

    @property
    def ok(self) -> bool:
        return self.n_flips == 0 and self.n_drifted == 0

    def summary(self) -> dict[str, Any]:
        rows = self.rows
        return {"images": len(rows), "top1_agreement": self.agreement, "flips": self.n_flips,
                "drifted": self.n_drifted, "ok": self.ok,
                "min_spearman": min((r.spearman for r in rows), default=float("nan")),
                "mean_spearman": float(np.mean([r.spearman for r in rows])) if rows else float("nan"),
                "max_logit_delta": max((r.max_logit_delta for r in rows), default=float("nan")),
                "max_prob_delta": max((r.max_prob_delta for r in rows), default=float("nan"))}

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "options": self.options, "seed": self.seed,
                "threshold": self.threshold, "top_k": self.top_k, "model_a": self.model_a,
                "model_b": self.model_b, "summary": self.summary(),
                "images": [asdict(r) for r in self.rows]}


def compare_models(model_a: Model, model_b: Model, inputs: Sequence[npt.ArrayLike], method: str,
                   *, names: Sequence[str] | None = None, seed: int | None = 0,
                   threshold: float = 0.8, top_k: float = 0.1, **options: Any) -> Comparison:
    """Compare two deployments on ``inputs`` (each one preprocessed (C, H, W) tensor).

    Args:
        model_a: the reference deployment.
        model_b: the deployment under test (another artifact, or the same file on another device).
        inputs: preprocessed inputs; both models must take the same input shape.
        method: the registered method used for both explanations (same seed, same options).
        names: a name per input for the report (default: ``"0"``, ``"1"``...).
        threshold: an image *drifts* when the maps' Spearman correlation is below this.
        top_k: region fraction for the top-k IoU (default 10% of the pixels).
        **options: the method's options.

    Both explanations explain model A's top-1 class, so a flip does not change the question.
    """
    if not 0 <= threshold <= 1:
        raise BlackboxError(f"threshold={threshold!r}: use a Spearman correlation in [0, 1]")
    if model_a.input.chw != model_b.input.chw and None not in model_a.input.chw + model_b.input.chw:
        raise BlackboxError(f"the models take different inputs: {model_a.input.chw} vs {model_b.input.chw}")
    names = [str(i) for i in range(len(inputs))] if names is None else list(names)
    if len(names) != len(inputs):
        raise BlackboxError(f"{len(names)} names for {len(inputs)} inputs")
    rows, used = [], {}
    for name, x in zip(names, inputs):
        row, ea, _ = compare_one(model_a, model_b, x, method, name=name, seed=seed,
                                 threshold=threshold, top_k=top_k, **options)
        rows.append(row)
        used = ea.options
    return Comparison(method, threshold, top_k, seed, model_a.describe(), model_b.describe(), rows,
                      dict(used))


def compare_one(model_a: Model, model_b: Model, x: npt.ArrayLike, method: str, *, name: str,
                seed: int | None = 0, threshold: float = 0.8, top_k: float = 0.1,
                **options: Any) -> tuple[ImageComparison, Explanation, Explanation]:
    """One input's :class:`ImageComparison` and the two explanations, A's and B's (see
    :func:`compare_models`, which checks the arguments)."""
    from .api import explain

    t0 = time.perf_counter()
    x = np.asarray(x, np.float32)
    sa, sb = model_a(x[None])[0], model_b(x[None])[0]
    if sa.shape != sb.shape:
        raise BlackboxError(f"the models score {sa.shape[0]} and {sb.shape[0]} classes: not the same model")
    pa, pb = model_a.probabilities(sa), model_b.probabilities(sb)
    ta, tb = int(np.argmax(sa)), int(np.argmax(sb))
    ea = explain(model_a, x, method, target=ta, seed=seed, **options)
    eb = explain(model_b, x, method, target=ta, seed=seed, **options)
    sim = similarity(ea.map, eb.map, top_k)
    row = ImageComparison(
        image=name, top1_a=ta, top1_b=tb, flipped=ta != tb, target=ta,
        max_logit_delta=float(np.max(np.abs(sa - sb))),
        max_prob_delta=float(np.max(np.abs(pa - pb))),
        target_prob_a=float(pa[ta]), target_prob_b=float(pb[ta]),
        spearman=sim["spearman"], top_k_iou=sim["top_k_iou"], ssim=sim["ssim"],
        drifted=sim["spearman"] < threshold, seconds=time.perf_counter() - t0)
    return row, ea, eb
