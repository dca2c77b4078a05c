"""The user cache folder: backward graphs and remembered batch sizes, kept between runs.

``$BLACKBOX_XAI_CACHE`` names the folder (``off`` disables caching); the default is
``$XDG_CACHE_HOME/blackbox-xai`` (``~/.cache/blackbox-xai``). A folder that cannot be created
means no cache, never an error.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "BLACKBOX_XAI_CACHE"


def cache_dir() -> Path | None:
    """The cache folder (created), or None when caching is off or the folder is unusable."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("", "off", "0", "none"):
        return None
    if value:
        folder = Path(value)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "blackbox-xai"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("cache folder %s is not usable (%s): running without a cache", folder,
                    e.strerror or e)
        return None
    return folder


def recall(table: str, key: str) -> object | None:
    """The value stored under ``key`` in the JSON ``table`` of the cache, or None."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        return json.loads((folder / f"{table}.json").read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def remember(table: str, key: str, value: object) -> None:
    """Store ``value`` under ``key`` in the JSON ``table`` (atomic; failures only logged)."""
    folder = cache_dir()
    if folder is None:
        return
    path = folder / f"{table}.json"
    try:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            entries = entries if isinstance(entries, dict) else {}
        except (OSError, ValueError):
            entries = {}
        entries[key] = value
        write_cache_file(path, json.dumps(entries, indent=1, sort_keys=True).encode())
    except OSError as e:
        log.warning("cannot write the cache %s (%s)", path, e.strerror or e)


def write_cache_file(path: Path, data: bytes) -> None:
    """Replace a cache file atomically (a temporary file beside it, then a rename), so that a
    concurrent reader sees the old or the new entry, never half of one. User-facing outputs go
    through :class:`blackbox_xai.outputs.OutputPlan` instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
