"""Image file -> model tensor (NCHW float32), and where the tensor came from in the original photo.

Each field of the recipe comes from the most explicit source that states it: explicit options
(CLI flags or keyword arguments) > a named preset > the JSON sidecar next to the model
(``model.onnx.json``) > the model's ONNX metadata > a guess. The model's fixed input size sets
the crop unless an option overrides it. A sidecar::

    {"preprocess": {"resize": 256, "crop": 224, "interpolation": "bilinear", "scale": 255.0,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                    "channel_order": "RGB"},
     "labels": ["tench", ...]}

Steps: decode (EXIF orientation applied) -> geometry -> RGB/BGR (or grey) -> optional sRGB to
linear -> ``(pixel / scale - mean) / std`` -> (C, H, W). Geometry, by ``mode``:

* ``crop``: resize (``None``: the whole photo straight to the crop size; an int: the shorter side
  to it; ``(h, w)``: exactly), then take the centre ``crop``.
* ``letterbox``: fit the whole photo inside ``crop`` keeping its aspect, pad with ``pad`` (a pixel value).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import math
import os
import threading
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BlackboxError, ImageError, did_you_mean

log = logging.getLogger(__name__)

_INTERPOLATION = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
#: Resizing the whole photo first is exact to the historical output; above this size (and the
#: photo's own) only the crop's footprint is resampled (PIL box resize, within one grey level).
_MAX_RESIZED_PIXELS = 1 << 22
_PIL_LIMIT_LOCK = threading.Lock()

Box = tuple[float, float, float, float]

#: Named conventions: field values, with ``resize`` as a ratio of the crop's shorter side.
PRESETS: dict[str, dict[str, Any]] = {
    "torchvision": {"resize_ratio": 256 / 224, "mode": "crop", "scale": 255.0,
                    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                    "channel_order": "RGB"},
    "tf": {"scale": 255.0, "mean": (0.5,), "std": (0.5,), "channel_order": "RGB"},
    "caffe": {"scale": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0,),
              "channel_order": "BGR"},
    "zero-one": {"scale": 255.0, "mean": (0.0,), "std": (1.0,), "channel_order": "RGB"},
    "zero-255": {"scale": 1.0, "mean": (0.0,), "std": (1.0,), "channel_order": "RGB"},
}
_GUESS: dict[str, Any] = {"crop": (224, 224), "resize": None, "mode": "crop", "pad": 0,
                          "interpolation": "bilinear", "scale": 255.0, "mean": (0.0,),
                          "std": (1.0,), "channel_order": "RGB", "gamma": "sRGB"}
#: ONNX metadata_props (the Windows ML image convention) -> recipe fields.
_META_PIXEL_FORMAT = {"Bgr8": {"channel_order": "BGR"}, "Rgb8": {"channel_order": "RGB"},
                      "Gray8": {}}
_META_RANGE = {"NominalRange_0_255": {"scale": 1.0, "mean": (0.0,), "std": (1.0,)},
               "Normalized_0_1": {"scale": 255.0, "mean": (0.0,), "std": (1.0,)},
               "Normalized_1_1": {"scale": 255.0, "mean": (0.5,), "std": (0.5,)},
               "NominalRange_16_235": {"scale": 1.0, "mean": (-16 * 255 / 219,),
                                       "std": (255 / 219,)}}
_META_GAMMA = {"SRGB": {"gamma": "sRGB"}, "Linear": {"gamma": "linear"}}
_META_LABEL_KEYS = ("labels", "classes", "class_names", "names")
_CHOICES = {"mode": ("crop", "letterbox"), "interpolation": tuple(_INTERPOLATION),
            "channel_order": ("RGB", "BGR"), "gamma": ("sRGB", "linear")}


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _size(v: Any, where: str, pair: bool) -> int | tuple[int, int]:
    """A positive int or ``[height, width]``; ``pair`` makes an int square."""
    vals = list(v) if isinstance(v, (list, tuple)) else [v]
    if not 1 <= len(vals) <= 2 or not all(_is_int(x) and x > 0 for x in vals):
        raise BlackboxError(f"{where} = {v!r}: give a positive integer or [height, width]")
    vals = [int(x) for x in vals]
    if len(vals) == 2:
        return vals[0], vals[1]
    return (vals[0], vals[0]) if pair else vals[0]


def _per_channel(v: Any, where: str, channels: int | None, positive: bool) -> tuple[float, ...]:
    vals = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
    if not vals or not all(_is_number(x) for x in vals):
        raise BlackboxError(f"{where} = {v!r}: give a number or a list of numbers, one per channel")
    allowed = (1, 3) if channels is None else tuple(sorted({1, channels}))
    if len(vals) not in allowed:
        has = "" if channels is None else f" but the model has {channels} channel{'s' * (channels > 1)}"
        raise BlackboxError(f"{where} has {len(vals)} values{has}: give "
                            + " or ".join(map(str, allowed)))
    if not all(math.isfinite(x) for x in vals):
        raise BlackboxError(f"{where} = {v!r}: values must be finite")
    if positive and not all(x > 0 for x in vals):
        raise BlackboxError(f"{where} = {v!r}: values must be > 0")
    return tuple(float(x) for x in vals)


def _check(name: str, v: Any, where: str, channels: int | None = None) -> Any:
    """Validate and normalise one recipe field; errors name ``where``."""
    if name == "crop":
        return _size(v, where, pair=True)
    if name == "resize":
        return None if v is None else _size(v, where, pair=False)
    if name in ("mean", "std"):
        return _per_channel(v, where, channels, positive=name == "std")
    if name == "scale":
        if not _is_number(v) or not math.isfinite(v) or v <= 0:
            raise BlackboxError(f"{where} = {v!r}: give a finite number > 0 (255: [0, 1]; 1: 0-255)")
        return float(v)
    if name == "pad":
        if not _is_int(v) or not 0 <= v <= 255:
            raise BlackboxError(f"{where} = {v!r}: give an integer pixel value 0-255")
        return int(v)
    if name in _CHOICES:
        if v not in _CHOICES[name]:
            raise BlackboxError(f"{where} = {v!r}: use one of {', '.join(_CHOICES[name])}")
        return v
    raise BlackboxError(did_you_mean(name, _GUESS, "preprocessing field"))


@dataclass(frozen=True)
class Preprocessing:
    """How to turn a photo into the model's input; ``sources`` says where each field came from."""

    crop: tuple[int, int] = (224, 224)
    resize: int | tuple[int, int] | None = None
    mode: Literal["crop", "letterbox"] = "crop"
    pad: int = 0
    interpolation: str = "bilinear"
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    gamma: Literal["sRGB", "linear"] = "sRGB"
    labels: tuple[str, ...] | None = field(default=None, repr=False)
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _GUESS:
            object.__setattr__(self, name, _check(name, getattr(self, name), name))
        if self.mode == "letterbox" and self.resize is not None:
            raise BlackboxError(f"resize {self.resize} (from {self.sources.get('resize', 'argument')}) "
                                f"and letterbox (from {self.sources.get('mode', 'argument')}) "
                                "exclude each other: drop one (--no-letterbox)")

    @classmethod
    def for_model(cls, model_path: str | os.PathLike, input_hw: tuple[int | None, int | None], *,
                  channels: int = 3, num_classes: int | None = None, preset: str | None = None,
                  metadata: dict[str, Any] | None = None, flag_prefix: str = "",
                  warn_if_guessed: bool = True, **overrides: Any) -> Preprocessing:
        """The recipe for a model: options > ``preset`` > sidecar > ONNX metadata > guess.

        Args:
            model_path: the ``.onnx`` file; its sidecar is ``<model_path>.json``.
            input_hw: the model's fixed input (height, width), or ``None`` where dynamic.
            channels, num_classes: the model's; sidecar mean/std and labels are checked against them.
            preset: one of :data:`PRESETS`.
            metadata: :func:`read_metadata`'s result (read from ``model_path`` when ``None``).
            flag_prefix: ``"--"`` names options as CLI flags in errors and in ``sources``.
            **overrides: explicit field values (``None`` = not given).
        """
        explicit = "flag" if flag_prefix else "argument"
        layers: list[tuple[str, dict[str, Any]]] = [("guessed", _GUESS)]
        meta = read_metadata(model_path) if metadata is None else metadata
        layers.append(("metadata", {k: _check(k, v, f"model metadata {k}", channels)
                                    for k, v in meta.items() if k not in _NOT_RECIPE}))
        sidecar = Path(f"{model_path}.json")
        side: dict[str, Any] = read_sidecar(sidecar, channels, num_classes) if sidecar.is_file() else {}
        layers.append(("sidecar", {k: v for k, v in side.items() if k != "labels"}))
        given = {k: _check(k, v, f"{flag_prefix}{k}", channels)
                 for k, v in overrides.items() if v is not None}
        h, w = input_hw
        if h and w and "crop" in side and "crop" not in given and side["crop"] != (h, w):
            raise BlackboxError(f"{sidecar}: preprocess.crop {side['crop'][0]} x {side['crop'][1]} "
                                f"does not match the model's fixed input {h} x {w}")
        crop_layers = [*layers, ("model", {"crop": (h, w)} if h and w else {}), (explicit, given)]
        crop_src, crop = next((s, d["crop"]) for s, d in reversed(crop_layers) if "crop" in d)
        if h and w and crop != (h, w):
            raise BlackboxError(f"{flag_prefix}crop {crop[0]} {crop[1]} does not match the model's "
                                f"fixed input {h} x {w}")
        if preset is not None:
            layers.append((f"preset {preset}", preset_fields(preset, crop, channels)))
        layers.append((explicit, given))
        values, sources = {"crop": crop}, {"crop": crop_src}
        for name in list(_GUESS)[1:]:  # crop first, above
            sources[name], values[name] = next((s, d[name]) for s, d in reversed(layers) if name in d)
        if values["mode"] == "letterbox" and values["resize"] is not None:
            rank = [s for s, _ in layers]
            if rank.index(sources["resize"]) < rank.index(sources["mode"]):
                values["resize"], sources["resize"] = None, sources["mode"]
        if meta.get("integer_pixels") and not _raw_pixels(values):
            raise BlackboxError(
                f"{Path(model_path).name} takes {meta['integer_pixels']} pixels, 0-255 as they are, "
                f"but the recipe (scale from {sources['scale']}, mean from {sources['mean']}, std "
                f"from {sources['std']}) would feed it (pixel / {values['scale']:g} - mean) / std: "
                "drop those settings")
        labels = side.get("labels") or _metadata_labels(meta, num_classes)
        if labels:
            sources["labels"] = "sidecar" if side.get("labels") else "metadata"
        pre = cls(**values, labels=labels, sources=sources)
        guessed = [k for k in ("scale", "mean", "std", "channel_order") if sources[k] == "guessed"]
        if guessed and warn_if_guessed:
            log.warning("preprocessing of %s guessed (no sidecar %s, preset or image metadata): %s; "
                        "state it with --preset %s, the flags, or a sidecar",
                        Path(model_path).name, sidecar.name, pre.summary(channels), "|".join(PRESETS))
        return pre

    def summary(self, channels: int = 3) -> str:
        """One line: the geometry and the pixel formula."""
        ch, cw = self.crop
        if self.mode == "letterbox":
            geometry = f"letterbox into {ch} x {cw} (pad {self.pad})"
        elif self.resize is None:
            geometry = f"resize to {ch} x {cw}"
        else:
            r = (f"shorter side {self.resize}" if isinstance(self.resize, int)
                 else f"{self.resize[0]} x {self.resize[1]}")
            geometry = f"resize {r}, centre crop {ch} x {cw}"
        order = "grey" if channels == 1 else self.channel_order
        d = self.describe(channels)
        pixels = f"{order}{'' if self.gamma == 'sRGB' else ' linear'}, (pixel / {self.scale:g} - mean) / std, " \
                 f"mean {_fmt(d['mean'])}, std {_fmt(d['std'])}"
        return f"{geometry}, {self.interpolation}; {pixels}"

    def origins(self) -> str:
        """Where the fields came from, e.g. ``"sidecar: resize, mean, std; model: crop"``."""
        by: dict[str, list[str]] = {}
        for k, s in self.sources.items():
            by.setdefault(s, []).append(k)
        return "; ".join(f"{s}: {', '.join(ks)}" for s, ks in by.items()) or "arguments"

    def describe(self, channels: int = 3) -> dict[str, Any]:
        """The recipe as applied (mean and std per channel), with the source of each field."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("labels", "sources")}
        d["mean"] = [float(v) for v in np.broadcast_to(self.mean, channels)]
        d["std"] = [float(v) for v in np.broadcast_to(self.std, channels)]
        d["channels"] = channels
        d["sources"] = dict(self.sources)
        return d

    def prepare(self, path: str | os.PathLike, channels: int = 3,
                max_pixels: int | None = None) -> Prepared:
        """Read and preprocess one image file (see :func:`read_image` for ``max_pixels``)."""
        data = _read_bytes(Path(path))
        image = _decode(data, Path(path), max_pixels)
        tensor, box = self.to_tensor(image, channels)
        inputs = {"image": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                  "size": list(image.size), "box": list(box), "preprocessing": self.describe(channels)}
        return Prepared(Path(path), image, tensor, box, inputs)

    def to_tensor(self, image: Image.Image, channels: int = 3
                  ) -> tuple[npt.NDArray[np.float32], Box]:
        """(C, H, W) input and its footprint (x0, y0, x1, y1) in the photo's pixels."""
        img, box = self._geometry(image.convert("RGB"))
        if channels == 1:
            arr = np.asarray(img.convert("L"), np.float32)[..., None]
        else:
            arr = np.asarray(img, np.float32)
            if self.channel_order == "BGR":
                arr = arr[..., ::-1]
        if self.gamma == "linear":
            c = arr / 255
            arr = 255 * np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        pixels = arr
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            arr = (arr / self.scale - mean) / std
        out = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
        if not np.isfinite(out).all():  # finite fields whose ratios overflow float32
            big = np.abs((pixels.astype(np.float64) / self.scale - np.asarray(self.mean))
                         / np.asarray(self.std)).max()
            raise BlackboxError(
                f"preprocessing gives values beyond float32 (up to {big:.3g}): "
                f"(pixel / {self.scale:g} - mean {_fmt(list(np.broadcast_to(self.mean, channels)))}) / "
                f"std {_fmt(list(np.broadcast_to(self.std, channels)))}; check --scale and --std")
        return out, box

    def _geometry(self, image: Image.Image) -> tuple[Image.Image, Box]:
        ch, cw = self.crop
        w0, h0 = image.size
        resample = _INTERPOLATION[self.interpolation]
        if self.mode == "letterbox":
            s = min(ch / h0, cw / w0)
            w1, h1 = min(max(round(w0 * s), 1), cw), min(max(round(h0 * s), 1), ch)
            left, top = (cw - w1) // 2, (ch - h1) // 2
            canvas = Image.new("RGB", (cw, ch), (self.pad,) * 3)
            canvas.paste(image.resize((w1, h1), resample), (left, top))
            sx, sy = w1 / w0, h1 / h0
            return canvas, (-left / sx, -top / sy, (cw - left) / sx, (ch - top) / sy)
        if self.resize is None:
            return image.resize((cw, ch), resample), (0.0, 0.0, float(w0), float(h0))
        if isinstance(self.resize, int):
            s = max(self.resize / min(w0, h0), ch / h0, cw / w0)
            w1, h1 = max(round(w0 * s), cw), max(round(h0 * s), ch)
        else:
            h1, w1 = max(self.resize[0], ch), max(self.resize[1], cw)
        left, top = (w1 - cw) // 2, (h1 - ch) // 2
        sx, sy = w1 / w0, h1 / h0
        box = (left / sx, top / sy, (left + cw) / sx, (top + ch) / sy)
        if w1 * h1 <= max(w0 * h0, _MAX_RESIZED_PIXELS):
            return image.resize((w1, h1), resample).crop((left, top, left + cw, top + ch)), box
        return image.resize((cw, ch), resample, box=box), box  # only the crop's source region

    def to_pixels(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Invert the normalisation of a (C, H, W) input: -> (H, W, C) uint8 RGB."""
        c = x.shape[0]
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        arr = ((x * std + mean) * self.scale).transpose(1, 2, 0)
        if self.gamma == "linear":
            lin = np.clip(arr / 255, 0, 1)
            arr = 255 * np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
        if c == 3 and self.channel_order == "BGR":
            arr = arr[..., ::-1]
        return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def _fmt(values: list[float]) -> str:
    return f"{values[0]:.4g}" if len(set(values)) == 1 else "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def preset_fields(name: str, crop: tuple[int, int], channels: int = 3) -> dict[str, Any]:
    """A preset's field values for a model whose input is ``crop`` (h, w)."""
    if name not in PRESETS:
        raise BlackboxError(did_you_mean(name, PRESETS, "preset"))
    d = dict(PRESETS[name])
    ratio = d.pop("resize_ratio", None)
    if ratio is not None:
        d["resize"] = round(min(crop) * ratio)
    return {k: _check(k, v, f"preset {name}: {k}", channels) for k, v in d.items()}


@dataclass(frozen=True)
class Prepared:
    """A photo and its model tensor; ``box`` is the tensor's footprint in the photo (x0, y0, x1, y1);
    ``inputs`` (image path, sha256, size, box, the recipe applied) goes into the manifest."""

    path: Path
    image: Image.Image
    tensor: npt.NDArray[np.float32]
    box: Box
    inputs: dict[str, Any] = field(default_factory=dict)


# ---- sidecar and ONNX metadata ----------------------------------------------------------------
def read_sidecar(path: Path, channels: int | None = None, num_classes: int | None = None
                 ) -> dict[str, Any]:
    """A sidecar's recipe fields and ``labels``, validated; errors name the file and the field."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))  # a BOM (Notepad) is fine
    except UnicodeDecodeError as e:
        raise BlackboxError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                            f"{e.start})") from None
    except json.JSONDecodeError as e:
        raise BlackboxError(f"{path}: invalid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise BlackboxError(f"{path}: expected a JSON object with 'preprocess' and 'labels'")
    for key in data:
        if key not in ("preprocess", "labels"):
            raise BlackboxError(f"{path}: {did_you_mean(key, ['preprocess', 'labels'], 'key')}")
    pre = data.get("preprocess", {})
    if not isinstance(pre, dict):
        raise BlackboxError(f"{path}: preprocess must be an object, got {type(pre).__name__}")
    for key in pre:
        if key not in _GUESS:
            raise BlackboxError(f"{path}: {did_you_mean(key, _GUESS, 'preprocess field')}")
    out = {k: _check(k, v, f"{path}: preprocess.{k}", channels) for k, v in pre.items()}
    labels = data.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
            raise BlackboxError(f"{path}: labels must be a list of strings")
        if num_classes is not None and len(labels) != num_classes:
            raise BlackboxError(f"{path}: labels has {len(labels)} entries but the model has "
                                f"{num_classes} classes")
        out["labels"] = tuple(labels)
    return out


#: read_metadata's keys that are not recipe fields
_NOT_RECIPE = frozenset(("labels", "integer_pixels"))


def _raw_pixels(values: dict[str, Any]) -> bool:
    """Whether a recipe feeds pixel values as they are: scale 1, mean 0, std 1."""
    return bool(values["scale"] == 1 and np.allclose(values["mean"], 0)
                and np.allclose(values["std"], 1))


def read_metadata(model: str | os.PathLike | Any) -> dict[str, Any]:
    """What a model's ``metadata_props`` state about its input: recipe fields and ``labels``.

    Reads the Windows ML image keys (``Image.BitmapPixelFormat`` Bgr8/Rgb8/Gray8,
    ``Image.NominalPixelRange``, ``Image.ColorSpaceGamma``) and a label list under ``labels``,
    ``classes``, ``class_names`` or ``names`` (JSON or Python list or {index: name}, or comma /
    newline separated text); an image described by ``Image.BitmapPixelFormat`` without a
    ``Image.NominalPixelRange`` has Windows ML's default range, 0-255 (``LearningModelPixelRange``:
    ZeroTo255 when the value is not specified; Azure Custom Vision's exports are such files).
    ``model`` is a path or an ``onnx.ModelProto``; values it cannot
    read are logged and ignored (the metadata is the vendor's, not the user's). An input of
    integer pixels (uint8: :mod:`~blackbox_xai.graph.pixel_input`) states their range too: the
    pixels as they are, 0-255 (``integer_pixels`` names the type; :meth:`Preprocessing.
    for_model` refuses a recipe that would normalise them).
    """
    from onnx import helper

    from .graph.io import fed_inputs, load
    from .graph.pixel_input import PIXEL_TYPES
    from .graph.zipmap import zipmap_labels

    proto = load(model, load_external_data=False) if isinstance(model, (str, os.PathLike)) else model
    props = {p.key: p.value for p in proto.metadata_props}
    out: dict[str, Any] = {}
    inputs = fed_inputs(proto.graph)
    if len(inputs) == 1 and inputs[0].type.tensor_type.elem_type in PIXEL_TYPES:
        out.update(_META_RANGE["NominalRange_0_255"], integer_pixels=helper.tensor_dtype_to_np_dtype(
            inputs[0].type.tensor_type.elem_type).name)
    for key, table in (("Image.BitmapPixelFormat", _META_PIXEL_FORMAT),
                       ("Image.NominalPixelRange", _META_RANGE), ("Image.ColorSpaceGamma", _META_GAMMA)):
        if key in props:
            if props[key] in table:
                out.update(table[props[key]])
            else:
                log.warning("model metadata %s=%r not understood; ignored", key, props[key])
    if props.get("Image.BitmapPixelFormat") in _META_PIXEL_FORMAT and \
            "Image.NominalPixelRange" not in props:  # Windows ML's default range: 0-255
        out.update(_META_RANGE["NominalRange_0_255"])
    for key, value in props.items():
        if key.lower() in _META_LABEL_KEYS:
            labels = _parse_labels(value)
            if labels:
                out["labels"] = labels
                break
            log.warning("model metadata %s is not a list of class names; ignored", key)
    if "labels" not in out and (zipped := zipmap_labels(proto)):
        out["labels"] = zipped  # the class names of a final ZipMap (graph/zipmap.py)
    return out


def _parse_labels(text: str) -> tuple[str, ...] | None:
    s = text.strip()
    if s[:1] in "[{":
        try:
            v = json.loads(s)
        except json.JSONDecodeError:
            try:
                v = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                return None
        if isinstance(v, dict):
            keys = sorted(v, key=lambda k: int(k) if _is_int(k) or str(k).isdigit() else -1)
            if [str(k) for k in keys] != [str(i) for i in range(len(v))]:
                return None
            v = [v[k] for k in keys]
        return tuple(str(x) for x in v) if isinstance(v, list) and v else None
    parts = [p.strip() for p in s.splitlines()] if "\n" in s else [p.strip() for p in s.split(",")]
    return tuple(parts) if len(parts) > 1 and all(parts) else None


def _metadata_labels(meta: dict[str, Any], num_classes: int | None) -> tuple[str, ...] | None:
    labels = meta.get("labels")
    if labels and num_classes is not None and len(labels) != num_classes:
        log.warning("model metadata lists %d labels but the model has %d classes; labels ignored",
                    len(labels), num_classes)
        return None
    return labels


# ---- images -----------------------------------------------------------------------------------
def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file to RGB, upright as viewers show it (EXIF orientation applied).

    ``max_pixels`` bounds width x height (default: Pillow's decompression-bomb limit, twice
    ``Image.MAX_IMAGE_PIXELS``); any failure is a one-line :class:`ImageError`.
    """
    p = Path(path)
    return _decode(_read_bytes(p), p, max_pixels)


def _read_bytes(p: Path) -> bytes:
    if p.is_dir():
        raise ImageError(f"image {p} is a folder, not an image file")
    if not p.is_file():
        raise ImageError(f"image not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image {p}: {e.strerror or type(e).__name__}") from None
    if not data:
        raise ImageError(f"image {p} is an empty file")
    return data


def _decode(data: bytes, p: Path, max_pixels: int | None) -> Image.Image:
    # Pillow's own check would fire inside open(); ours replaces it, with the user's limit. The
    # global is read and restored under the lock: read outside it, a thread decoding at the same
    # time could read the None set here and restore None for good (no bomb check after that).
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        pil_limit = Image.MAX_IMAGE_PIXELS
        limit = max_pixels if max_pixels is not None else (2 * pil_limit if pil_limit else None)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if limit is not None and w * h > limit:
                    raise ImageError(f"image {p} has {w} x {h} = {w * h:,} pixels, over the limit of "
                                     f"{limit:,} (a decompression bomb?); raise it with --max-pixels")
                im.load()
                return ImageOps.exif_transpose(im).convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
            if isinstance(e, ImageError):
                raise
            if isinstance(e, UnidentifiedImageError):
                why = "not an image format Pillow can read"
            else:
                text = str(e).strip()
                why = text.splitlines()[0] if text else type(e).__name__
            raise ImageError(f"cannot decode image {p}: {why}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit
