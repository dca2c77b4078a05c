"""Summary statistics of a dataset run's per-image rows: means, quantiles, rates.

``distribution(values)`` gives the mean and the 5/25/50/75/95% quantiles (``numpy.quantile``,
linear interpolation between order statistics) of the finite values; :func:`compare_summary`
and :func:`evaluate_summary` apply it to the rows of ``compare.csv`` and ``evaluate.csv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: the quantiles every distribution reports
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: the compare.csv columns whose distributions the summary holds
COMPARE_STATS = ("spearman", "top_k_iou", "ssim", "max_logit_delta", "max_prob_delta")
#: the evaluate.csv columns whose distributions the summary holds, per method
EVALUATE_STATS = ("deletion_auc", "insertion_auc", "energy_pointing")


def _qname(q: float) -> str:
    return f"q{round(q * 100):02d}"


def distribution(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """``n`` (finite values), ``mean``, ``min``, ``max`` and the :data:`QUANTILES` (``q05``...
    ``q95``) of the finite ``values``; ``None`` for each statistic when there are none."""
    v = np.array([float(x) for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    out: dict[str, float | int | None] = {"n": int(v.size)}
    if not v.size:
        return out | {"mean": None, "min": None, **{_qname(q): None for q in QUANTILES},
                      "max": None}
    qs = np.quantile(v, QUANTILES)
    return out | {"mean": float(v.mean()), "min": float(v.min()),
                  **{_qname(q): float(x) for q, x in zip(QUANTILES, qs)}, "max": float(v.max())}


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def compare_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Top-1 agreement (share of images whose top-1 is the same), flip and drift rates, and the
    distribution of each of :data:`COMPARE_STATS` over the rows of ``compare.csv``."""
    flips = [bool(r["flipped"]) for r in rows]
    drifts = [bool(r["drifted"]) for r in rows]
    return {"images": len(rows), "flips": sum(flips), "drifted": sum(drifts),
            "top1_agreement": None if not rows else 1.0 - sum(flips) / len(rows),
            "flip_rate": _rate(flips), "drift_rate": _rate(drifts),
            **{k: distribution(r[k] for r in rows) for k in COMPARE_STATS}}


def evaluate_summary(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]
                     ) -> dict[str, dict[str, Any]]:
    """Per method: images, pointing accuracy (share of hits among the images with boxes) and
    the distribution of each of :data:`EVALUATE_STATS` over the rows of ``evaluate.csv``."""
    out = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        hits = [bool(r["pointing_hit"]) for r in mine if r["pointing_hit"] is not None]
        out[m] = {"images": len(mine), "pointing_accuracy": _rate(hits),
                  **{k: distribution(r[k] for r in mine) for k in EVALUATE_STATS}}
    return out


def worst(rows: Sequence[Mapping[str, Any]], key: str, k: int, *, high: bool = False
          ) -> list[Mapping[str, Any]]:
    """The ``k`` rows with the lowest ``key`` (the highest with ``high``), a missing or NaN value
    first, ties by image name."""
    def rank(r: Mapping[str, Any]) -> tuple[float, str]:
        v = r[key]
        bad = v is None or not np.isfinite(v)
        return (-np.inf if bad else -v if high else v, r["image"])

    return sorted(rows, key=rank)[:k]
