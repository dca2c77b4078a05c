"""The result of ``explain``: a map plus the metadata to reproduce it, saved all-or-nothing."""

from __future__ import annotations

import io
import json
import math
import os
import platform
import re
import secrets
from collections.abc import Collection
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import BlackboxError
from .outputs import OutputPlan, model_inputs

SCHEMA_VERSION = 2  # 2: extras_arrays (dtype and shape of array extras)
_INLINE_LIMIT = 4096  # extras arrays larger than this go to the .npz
#: the files of an explanation (``--save``): the raw map, the manifest (with the .extras.npz of
#: large extras), the map as a picture with its legend, the map over the image
FILE_KINDS = ("npy", "json", "png", "overlay")


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from ._version import __version__

    return {"blackbox_xai": __version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__, "python": platform.python_version()}


_PLAIN = (int, bool, str, type(None))


def _jsonable(v: Any) -> Any:
    """Plain JSON values: arrays to lists, NaN/inf to null (JSON has no NaN)."""
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            v = np.where(np.isfinite(v), v, None)
        return _jsonable(v.tolist()) if v.dtype.kind == "O" else v.tolist()
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if all(type(x) in _PLAIN or (type(x) is float and math.isfinite(x)) for x in v):
            return list(v)  # the common case, a list of numbers: no call per element
        return [_jsonable(x) for x in v]
    return v


def _dumps(value: Any) -> bytes:
    """JSON indented by two spaces with every list on one line: a 1,280-number array of extras
    is one line, not 1,280, and json's C encoder writes it (its indenting encoder is pure
    Python, 10x slower, which showed in dataset runs)."""
    lists: list[str] = []
    token = secrets.token_hex(8)  # no string of the manifest can be mistaken for a placeholder

    def fold(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fold(x) for k, x in v.items()}
        if isinstance(v, list):
            lists.append(json.dumps(v))
            return f"{token}:{len(lists) - 1}"
        return v

    text = json.dumps(fold(value), indent=2)
    return re.sub(f'"{token}:(\\d+)"', lambda m: lists[int(m.group(1))], text).encode()


@dataclass(frozen=True)
class Explanation:
    """An attribution map (H, W) at the model's input resolution and how it was made."""

    map: npt.NDArray[np.float32]
    method: str
    target: int
    score: float
    n_queries: int
    seconds: float
    seed: int | None
    options: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    model: dict[str, Any] | None = None
    #: the image and its preprocessing (path, sha256, size, box, recipe): ``Prepared.inputs``
    inputs: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=versions)

    def manifest(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("map", "extras")}
        d["options"] = {k: f"<array {v.shape}>" if isinstance(v, np.ndarray) else v
                        for k, v in self.options.items()}
        d["schema_version"] = SCHEMA_VERSION
        d["map_shape"] = list(self.map.shape)
        d["extras"] = {k: _jsonable(v) for k, v in self.extras.items() if not _in_npz(v)}
        d["extras_arrays"] = {k: {"dtype": v.dtype.str, "shape": list(v.shape), "file": _in_npz(v)}
                              for k, v in self.extras.items() if isinstance(v, np.ndarray)}
        return _jsonable(d)

    def files(self, out_dir: str | os.PathLike, stem: str, *, image=None, box=None,
              kinds: Collection[str] = FILE_KINDS) -> dict[Path, bytes]:
        """The contents of the files :meth:`save` writes (see :func:`plan_files`), by path;
        only those of ``kinds`` (:data:`FILE_KINDS`)."""
        from .viz import heatmap_image, is_signed_method, overlay_image

        out = Path(out_dir)
        payloads: dict[Path, bytes] = {}
        if "npy" in kinds:
            buf = io.BytesIO()
            np.save(buf, self.map)
            payloads[out / f"{stem}.npy"] = buf.getvalue()
        if "json" in kinds:
            payloads[out / f"{stem}.json"] = _dumps(self.manifest())
        signed = is_signed_method(self.method)
        if "png" in kinds:
            payloads[out / f"{stem}.png"] = _png(heatmap_image(self.map, signed=signed))
        if image is not None and "overlay" in kinds:
            payloads[out / f"{stem}_overlay.png"] = _png(overlay_image(image, self.map, box=box,
                                                                       signed=signed))
        big = {k: v for k, v in self.extras.items() if _in_npz(v)}
        if big and "json" in kinds:
            buf = io.BytesIO()
            np.savez_compressed(buf, **big)
            payloads[out / f"{stem}.extras.npz"] = buf.getvalue()
        return payloads

    def save(self, out_dir: str | os.PathLike, stem: str, *, image=None, box=None,
             overwrite: bool = False) -> list[Path]:
        """Write ``stem.npy`` (raw map), ``stem.json`` (manifest), ``stem.png`` (heatmap),
        ``stem_overlay.png`` (when the original ``image`` is given; ``box`` places the map on it)
        and ``stem.extras.npz`` (large extras), all together or none; the model, its sidecar and
        the image recorded in the explanation are never overwritten."""
        plan = OutputPlan(overwrite)
        plan_files(plan, out_dir, stem, overlay=image is not None)
        plan.check(self.input_files())
        return plan.commit(self.files(out_dir, stem, image=image, box=box))

    def input_files(self) -> dict[Path, str]:
        """The files this explanation was computed from (model, sidecar, image) that are known."""
        found = model_inputs(self.model["path"]) if self.model and self.model.get("path") else {}
        if self.inputs and self.inputs.get("image"):
            found[Path(self.inputs["image"])] = "an input image"
        return found

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanation:
        """Read an explanation back from its ``.json`` manifest, the ``.npy`` map beside it and
        the ``.extras.npz`` of large extras; array extras come back as arrays of their dtype."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BlackboxError(f"cannot read manifest {p}: {_one_line(e)}") from None
        version = d.get("schema_version") if isinstance(d, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BlackboxError(f"{p} has no schema_version: not a blackbox-xai manifest")
        if version > SCHEMA_VERSION:
            raise BlackboxError(f"{p} has schema_version {version}, newer than this blackbox-xai "
                                f"reads ({SCHEMA_VERSION}): upgrade blackbox-xai")
        npy, npz = p.with_suffix(".npy"), p.with_suffix(".extras.npz")
        try:
            amap = np.load(npy, allow_pickle=False)
            extras = dict(d.get("extras") or {})
            arrays = d.get("extras_arrays", {})
            in_file = [k for k, a in arrays.items() if a["file"]]
            if in_file or (version == 1 and npz.exists()):  # v1: no list, the whole .npz
                with np.load(npz, allow_pickle=False) as z:
                    extras.update({k: z[k] for k in in_file or z.files})
            for k, a in arrays.items():
                if not a["file"]:
                    extras[k] = np.asarray(extras[k], dtype=a["dtype"]).reshape(a["shape"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BlackboxError(f"cannot read the arrays of {p}: {_one_line(e)}") from None
        names = {f.name for f in fields(cls)} - {"map", "extras"}
        missing = {f.name for f in fields(cls) if f.default is MISSING and
                   f.default_factory is MISSING} - {"map", "extras"} - d.keys()
        if missing:
            raise BlackboxError(f"{p} lacks {', '.join(sorted(missing))}")
        return cls(map=amap, extras=extras, **{k: v for k, v in d.items() if k in names})


def plan_files(plan: OutputPlan, out_dir: str | os.PathLike, stem: str, *, overlay: bool,
               source: str | None = None, kinds: Collection[str] = FILE_KINDS) -> None:
    """Add to ``plan`` every file :meth:`Explanation.save` may write for ``stem`` (of ``kinds``)."""
    out = Path(out_dir)
    for kind, name in (("npy", f"{stem}.npy"), ("json", f"{stem}.json"), ("png", f"{stem}.png")):
        if kind in kinds:
            plan.add(out / name, source=source)
    if overlay and "overlay" in kinds:
        plan.add(out / f"{stem}_overlay.png", source=source)
    if "json" in kinds:
        plan.add(out / f"{stem}.extras.npz", source=source, optional=True)  # large extras only


def parse_kinds(text: str) -> tuple[str, ...]:
    """``--save``'s comma-separated file kinds, checked, in :data:`FILE_KINDS` order."""
    asked = {k.strip() for k in text.split(",") if k.strip()}
    unknown = sorted(asked - set(FILE_KINDS))
    if unknown or not asked:
        raise BlackboxError(f"--save {text!r}: use a comma-separated subset of "
                            f"{','.join(FILE_KINDS)}")
    return tuple(k for k in FILE_KINDS if k in asked)


def _in_npz(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.size > _INLINE_LIMIT


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _png(img) -> bytes:
    """PNG bytes at zlib level 1: 4x faster to encode than PIL's default 6, 12% larger."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
