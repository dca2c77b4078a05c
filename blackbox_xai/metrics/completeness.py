"""Completeness gap: how far the attributions' sum is from the score difference they explain.

For Shapley values (efficiency) and integrated gradients (completeness) the attributions must
sum to ``f_c(x0) - f_c(x')``; the gap ``|sum(attr) - (f_c(x0) - f_c(x'))|`` measures sampling or
integration error. Methods with no such axiom (occlusion, LIME, CAMs...) have no gap: ``None``.
"""

from __future__ import annotations

import numpy as np

from ..explanation import Explanation

#: extras keys, in order of preference, holding the signed gap reported by the method itself
GAP_KEYS = ("completeness_gap", "efficiency_gap")


def completeness_gap(explanation: Explanation, relative: bool = False) -> float | None:
    """``|sum(attr) - (f(x0) - f(x'))|`` for methods that satisfy completeness, else ``None``.

    Reads the gap the method reported (``extras["completeness_gap"]`` for integrated gradients,
    ``extras["efficiency_gap"]`` for Shapley); failing that, recomputes it from
    ``extras["attributions"]`` and the baseline score (``extras["baseline_score"]`` or
    ``extras["score_difference"]``). ``relative=True`` divides by ``|f(x0) - f(x')|``.
    """
    ex = explanation.extras or {}
    gap = next((float(ex[k]) for k in GAP_KEYS if ex.get(k) is not None), None)
    diff = _score_difference(explanation)
    if gap is None and diff is not None and ex.get("attributions") is not None:
        gap = float(np.sum(np.asarray(ex["attributions"], np.float64))) - diff
    if gap is None:
        return None
    gap = abs(gap)
    if relative:
        return gap / abs(diff) if diff else float("nan")
    return gap


def _score_difference(explanation: Explanation) -> float | None:
    ex = explanation.extras or {}
    if ex.get("score_difference") is not None:
        return float(ex["score_difference"])
    if ex.get("baseline_score") is not None:
        return float(explanation.score) - float(ex["baseline_score"])
    return None
