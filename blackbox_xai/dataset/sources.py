"""Where the images of a command come from: files, folders (recursive), globs and list files.

Every command that takes images expands its arguments here into :class:`Source` entries: paths
only, so a dataset is never loaded up front. Folders and globs keep the files whose extension is
an image's (:data:`IMAGE_EXTENSIONS`), sorted; a file named on the command line or in a list is
taken whatever its extension. ``--images-from FILE`` is one path a line (blank lines and
``#`` comments skipped), or a CSV whose header has a ``path`` column and optionally ``target``;
relative paths in it are relative to the list file's folder.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BlackboxError, ImageError

#: the file extensions a folder or a glob is searched for (lower case)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm"})
#: more images than this on the command line make a dataset run (as a folder, glob or list does)
DATASET_MIN_IMAGES = 100


class DatasetError(BlackboxError):
    """An image source that gives no usable images: an empty folder, an unmatched glob, a
    missing or malformed list file."""


@dataclass(frozen=True)
class Source:
    """One image: its ``path``, its ``name`` (the output stem: the path below the folder it was
    found in, without extension, or the file's stem) and its ``target`` class (from a list)."""

    path: Path
    name: str
    target: int | None = None


@dataclass(frozen=True)
class ImageSet:
    """The expanded images of a command; ``dataset`` when a folder, glob or list named them or
    they are more than :data:`DATASET_MIN_IMAGES`."""

    sources: list[Source]
    dataset: bool

    @property
    def paths(self) -> list[str]:
        """The image paths as strings."""
        return [str(s.path) for s in self.sources]


def expand(args: Sequence[str], images_from: str | os.PathLike | None = None) -> ImageSet:
    """The images named by ``args`` (files, folders, globs) and the list file ``images_from``."""
    sources: list[Source] = []
    grouped = images_from is not None
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            sources += _folder(p)
            grouped = True
        elif os.path.lexists(p):
            sources.append(Source(p, p.stem))
        elif glob.has_magic(arg):
            sources += _glob(arg)
            grouped = True
        else:
            raise ImageError(f"image not found: {p}")
    if images_from is not None:
        sources += read_list(Path(images_from))
    if not sources:
        raise DatasetError("no images given: name files, folders or globs, or --images-from FILE")
    return ImageSet(sources, grouped or len(sources) > DATASET_MIN_IMAGES)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def _folder(folder: Path) -> list[Source]:
    found = sorted(p for p in folder.rglob("*") if _is_image(p))
    if not found:
        raise DatasetError(f"no images in folder {folder} (extensions: "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [Source(p, p.relative_to(folder).with_suffix("").as_posix()) for p in found]


def _glob(pattern: str) -> list[Source]:
    sources: list[Source] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        p = Path(match)
        if p.is_dir():
            sources += [Source(f, f.relative_to(p).with_suffix("").as_posix())
                        for f in sorted(p.rglob("*")) if _is_image(f)]
        elif _is_image(p):
            sources.append(Source(p, p.stem))
    if not sources:
        raise DatasetError(f"no image matches {pattern}")
    return sources


def read_list(path: Path) -> list[Source]:
    """The images of a list file: one path a line, or a CSV with ``path`` and ``target``."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"--images-from {path}: no such file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"--images-from {path}: not UTF-8 text") from None
    except OSError as e:
        raise DatasetError(f"--images-from {path}: {e.strerror or e}") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    header = [c.strip().lower() for c in next(csv.reader([first]), [])]
    rows = _csv_rows(path, text) if "path" in header else _lines(text)
    sources = []
    for line, name, target in rows:
        p = Path(name)
        p = p if p.is_absolute() else path.parent / p
        if not os.path.lexists(p):
            raise ImageError(f"image not found: {p} ({path}, line {line})")
        sources.append(Source(p, p.stem, target))
    if not sources:
        raise DatasetError(f"--images-from {path}: no images listed")
    return sources


def _lines(text: str) -> list[tuple[int, str, int | None]]:
    return [(i, s, None) for i, line in enumerate(text.splitlines(), 1)
            if (s := line.strip()) and not s.startswith("#")]


def _csv_rows(path: Path, text: str) -> list[tuple[int, str, int | None]]:
    reader = csv.DictReader(io.StringIO(text))
    reader.fieldnames = [f.strip().lower() for f in reader.fieldnames or []]
    rows = []
    for row in reader:
        line = reader.line_num
        name = (row.get("path") or "").strip()
        if not name:
            raise DatasetError(f"--images-from {path}, line {line}: empty path")
        cell = (row.get("target") or "").strip()
        try:
            target = int(cell) if cell else None
        except ValueError:
            raise DatasetError(f"--images-from {path}, line {line}: target {cell!r} is not a "
                               "class index") from None
        if target is not None and target < 0:
            raise DatasetError(f"--images-from {path}, line {line}: target {target} is negative")
        rows.append((line, name, target))
    return rows
