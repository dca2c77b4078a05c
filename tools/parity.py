"""The numbers the parity checks against torch report (tools/check_against_torch.py and
tools/check_transformers_against_torch.py): Pearson r, pytorch-grad-cam's min-max scaling and the
largest difference relative to the reference's scale."""

from __future__ import annotations

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def minmax(a: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` scaling: (a - min) / (max - min + 1e-7)."""
    a = np.asarray(a, np.float64) - np.min(a)
    return a / (np.max(a) + 1e-7)


def rel_maxdiff(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (the reference's scale; 1 when it is all zero)."""
    scale = float(np.abs(ref).max())
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / (scale if scale > 0 else 1.0))


def versions(names: tuple[str, ...]) -> str:
    """``versions: name X.Y, ...`` of the installed distributions ``names`` (a table's header)."""
    from importlib.metadata import version

    return "versions: " + ", ".join(f"{n} {version(n)}" for n in names)
