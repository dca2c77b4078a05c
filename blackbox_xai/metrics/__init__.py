"""Faithfulness metrics for attribution maps and similarity between maps.

* :func:`evaluate`: explain images with several methods and score every map -> :class:`EvaluationResult`
* :func:`deletion_insertion` (RISE protocol) -> :class:`CurveResult`
* :func:`pointing_hit`, :func:`energy_pointing`, :func:`load_boxes`
* :func:`randomization_check` (Adebayo 2018) -> :class:`RandomizationResult`
* :func:`completeness_gap` (Shapley efficiency, integrated-gradients completeness)
* :func:`spearman`, :func:`top_k_iou`, :func:`ssim`, :func:`similarity`
"""

from .completeness import completeness_gap
from .deletion import CurveResult, auc, deletion_insertion, rise_blur
from .evaluate import EvaluationResult, EvaluationRow, MethodSummary, evaluate, match_annotations
from .pointing import (
    Annotation,
    annotation_for,
    box_mask,
    energy_pointing,
    load_boxes,
    pointing_hit,
)
from .randomization import (
    RandomizationResult,
    RandomizationRow,
    parametrized_layers,
    randomization_check,
    randomize,
)
from .similarity import similarity, spearman, ssim, top_k_iou

__all__ = [
    "Annotation", "CurveResult", "EvaluationResult", "EvaluationRow", "MethodSummary",
    "RandomizationResult", "RandomizationRow", "annotation_for", "auc", "box_mask",
    "completeness_gap", "deletion_insertion", "energy_pointing", "evaluate", "load_boxes",
    "match_annotations", "parametrized_layers", "pointing_hit", "randomization_check",
    "randomize", "rise_blur", "similarity", "spearman", "ssim", "top_k_iou",
]
