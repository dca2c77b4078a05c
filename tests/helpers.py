"""Paths and small helpers shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models"
SHIPPED = ROOT / "models" / "efficientnet_lite0.onnx"
EXAMPLES = ROOT / "examples"
THIRD_PARTY = ROOT / "tests" / "third_party"


def model_path(name: str) -> str:
    return str(TEST_MODELS / f"{name}.onnx")


class Recorder:
    """A query function that remembers every input it is asked about (and the batch sizes)."""

    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, x):
        self.inputs.append(np.array(x))
        return self.fn(x)

    @property
    def seen(self) -> np.ndarray:
        return np.concatenate(self.inputs)
