"""Image file -> model tensor (NCHW float32), and where the tensor came from in the original photo.

The recipe comes from a JSON sidecar next to the model (``model.onnx.json``)::

    {"preprocess": {"resize": 256, "crop": 224, "interpolation": "bilinear", "scale": 255.0,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                    "channel_order": "RGB"},
     "labels": ["tench", ...]}

or from CLI flags. Steps: decode -> RGB/BGR (or grey) -> resize the shorter side to ``resize``
-> centre-crop ``crop`` -> ``(pixel / scale - mean) / std`` -> (C, H, W).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from .errors import BlackboxError, ImageError

log = logging.getLogger(__name__)

_INTERPOLATION = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """How to turn a photo into the model's input."""

    crop: tuple[int, int] = (224, 224)
    resize: int | None = None
    interpolation: str = "bilinear"
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    labels: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise BlackboxError(f"interpolation={self.interpolation!r}: use one of {sorted(_INTERPOLATION)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise BlackboxError(f"channel_order={self.channel_order!r}: use 'RGB' or 'BGR'")
        if any(s == 0 for s in self.std) or self.scale == 0:
            raise BlackboxError("std and scale must be non-zero")

    @classmethod
    def from_dict(cls, d: dict[str, Any], labels: list[str] | None = None) -> Preprocessing:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise BlackboxError(f"unknown preprocessing keys {unknown}")
        if "crop" in known:
            c = known["crop"]
            known["crop"] = (int(c), int(c)) if isinstance(c, (int, float)) else tuple(c)
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known, labels=tuple(labels) if labels else None)

    @classmethod
    def for_model(cls, model_path: str | os.PathLike, input_hw: tuple[int | None, int | None],
                  **overrides: Any) -> Preprocessing:
        """The sidecar's recipe (if any) with the model's input size and the given overrides."""
        sidecar = Path(f"{model_path}.json")
        base = cls()
        if sidecar.is_file():
            try:
                data = json.loads(sidecar.read_text())
                base = cls.from_dict(data.get("preprocess", {}), data.get("labels"))
            except (json.JSONDecodeError, TypeError, AttributeError) as e:
                raise BlackboxError(f"cannot read the sidecar {sidecar}: {e}") from e
        else:
            log.warning("no sidecar %s: scaling pixels to [0, 1] with no mean/std", sidecar.name)
        h, w = input_hw
        if h and w:
            base = replace(base, crop=(h, w))
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "crop" in overrides and isinstance(overrides["crop"], int):
            overrides["crop"] = (overrides["crop"], overrides["crop"])
        return replace(base, **overrides)

    def prepare(self, path: str | os.PathLike, channels: int = 3) -> Prepared:
        """Read and preprocess one image file."""
        image = read_image(path)
        tensor, box = self.to_tensor(image, channels)
        return Prepared(Path(path), image, tensor, box)

    def to_tensor(self, image: Image.Image, channels: int = 3
                  ) -> tuple[npt.NDArray[np.float32], Box]:
        ch, cw = self.crop
        w0, h0 = image.size
        resample = _INTERPOLATION[self.interpolation]
        if self.resize is None:
            img, box = image.resize((cw, ch), resample), (0.0, 0.0, float(w0), float(h0))
        else:
            s = max(self.resize / min(w0, h0), ch / h0, cw / w0)
            w1, h1 = max(round(w0 * s), cw), max(round(h0 * s), ch)
            left, top = (w1 - cw) // 2, (h1 - ch) // 2
            img = image.resize((w1, h1), resample).crop((left, top, left + cw, top + ch))
            sx, sy = w1 / w0, h1 / h0
            box = (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)
        if channels == 1:
            arr = np.asarray(img.convert("L"), np.float32)[..., None]
        else:
            arr = np.asarray(img, np.float32)
            if self.channel_order == "BGR":
                arr = arr[..., ::-1]
        mean = np.asarray(self.mean[:channels], np.float32)
        std = np.asarray(self.std[:channels], np.float32)
        arr = (arr / self.scale - mean) / std
        return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32), box

    def to_pixels(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Invert the normalisation of a (C, H, W) input: -> (H, W, C) uint8 RGB."""
        c = x.shape[0]
        mean = np.asarray(self.mean[:c], np.float32)[:, None, None]
        std = np.asarray(self.std[:c], np.float32)[:, None, None]
        arr = ((x * std + mean) * self.scale).transpose(1, 2, 0)
        if c == 3 and self.channel_order == "BGR":
            arr = arr[..., ::-1]
        return np.clip(np.round(arr), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Prepared:
    """A photo and its model tensor; ``box`` is the tensor's footprint in the photo (x0, y0, x1, y1)."""

    path: Path
    image: Image.Image
    tensor: npt.NDArray[np.float32]
    box: Box


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB, or raise a one-line :class:`ImageError`."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"cannot decode image {p}: {type(e).__name__}") from e
