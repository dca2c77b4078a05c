"""Shared benchmark helpers: the shipped model, the cat photo, raw throughput, a table."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from blackbox_xai import Model, load_model
from blackbox_xai.preprocess import Preprocessing

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "efficientnet_lite0.onnx"
CAT = ROOT / "examples" / "cat.jpg"


#: the example photos the estimator and side-by-side benches run on
PHOTOS = ("cat", "coffee", "rocket")


def example_photo(model: Model, name: str) -> tuple[np.ndarray, int]:
    """``examples/NAME.jpg`` prepared for the shipped model (``bbx explain``'s recipe) and its
    top-1 class."""
    x = Preprocessing.for_model(SHIPPED, model.input.chw[1:]).prepare(
        ROOT / "examples" / f"{name}.jpg").tensor
    return x, int(np.argmax(model(x[None])[0]))


def shipped_model_and_cat(**kwargs) -> tuple[Model, np.ndarray]:
    model = load_model(SHIPPED, **kwargs)
    x = Preprocessing.for_model(SHIPPED, model.input.chw[1:]).prepare(CAT).tensor
    return model, x


def raw_throughput(model: Model, x: np.ndarray, n: int = 256) -> float:
    """Inputs per second of ``model`` on ``n`` copies of ``x`` at its (probed) batch size."""
    batch = np.repeat(x[None], n, axis=0)
    model(batch[: model.batch_size])  # warm-up
    t0 = time.perf_counter()
    model(batch)
    return n / (time.perf_counter() - t0)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(f"{r.get(c, '')}".ljust(w) for c, w in zip(columns, widths)))
