"""The result of ``explain``: a map plus the metadata to reproduce it, saved atomically."""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import BlackboxError

SCHEMA_VERSION = 1
_INLINE_LIMIT = 4096  # extras arrays larger than this go to the .npz


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from . import __version__

    return {"blackbox_xai": __version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _jsonable(v: Any) -> Any:
    """Plain JSON values: arrays to lists, NaN/inf to null (JSON has no NaN)."""
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


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
        d["extras"] = {k: _jsonable(v) for k, v in self.extras.items()
                       if not (isinstance(v, np.ndarray) and v.size > _INLINE_LIMIT)}
        return _jsonable(d)

    def save(self, out_dir: str | os.PathLike, stem: str, *, image=None, box=None,
             overwrite: bool = False) -> list[Path]:
        """Write ``stem.npy`` (raw map), ``stem.json`` (manifest), ``stem.png`` (heatmap),
        ``stem_overlay.png`` (when the original ``image`` is given; ``box`` places the map on it)
        and ``stem.extras.npz`` (large extras). All files appear together or not at all."""
        from .viz import heatmap_image, is_signed_method, overlay_image

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        payloads: dict[Path, bytes] = {}
        buf = io.BytesIO()
        np.save(buf, self.map)
        payloads[out / f"{stem}.npy"] = buf.getvalue()
        payloads[out / f"{stem}.json"] = json.dumps(self.manifest(), indent=2).encode()
        signed = is_signed_method(self.method)
        payloads[out / f"{stem}.png"] = _png(heatmap_image(self.map, signed=signed))
        if image is not None:
            payloads[out / f"{stem}_overlay.png"] = _png(overlay_image(image, self.map, box=box,
                                                                       signed=signed))
        big = {k: v for k, v in self.extras.items()
               if isinstance(v, np.ndarray) and v.size > _INLINE_LIMIT}
        if big:
            buf = io.BytesIO()
            np.savez_compressed(buf, **big)
            payloads[out / f"{stem}.extras.npz"] = buf.getvalue()
        existing = [p for p in payloads if p.exists()]
        if existing and not overwrite:
            raise BlackboxError(f"{existing[0]} exists; pass --overwrite to replace it")
        write_all_atomically(payloads)
        return list(payloads)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanation:
        """Read an explanation back from its ``.json`` manifest (and the ``.npy`` beside it)."""
        p = Path(path)
        d = json.loads(p.read_text())
        m = np.load(p.with_suffix(".npy"))
        extras = d.pop("extras")
        npz = p.with_suffix(".extras.npz")
        if npz.exists():
            extras.update(dict(np.load(npz)))
        for k in ("schema_version", "map_shape"):
            d.pop(k)
        return cls(map=m, extras=extras, **d)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_all_atomically(payloads: dict[Path, bytes]) -> None:
    """Write every file to a temporary name first, then rename them all into place."""
    temps: list[tuple[str, Path]] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, data in payloads.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~umask)
            temps.append((tmp, path))
    except BaseException:
        for tmp, _ in temps:
            os.unlink(tmp)
        raise
    for tmp, path in temps:
        os.replace(tmp, path)
