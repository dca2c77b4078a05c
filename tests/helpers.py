"""Paths and small helpers shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models"
SHIPPED = ROOT / "models" / "efficientnet_lite0.onnx"
EXAMPLES = ROOT / "examples"


def model_path(name: str) -> str:
    return str(TEST_MODELS / f"{name}.onnx")
