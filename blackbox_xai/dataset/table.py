"""A resumable CSV of typed per-image rows (``compare.csv``, ``evaluate.csv``).

Rows are appended as images finish, each flushed to disk, so an interrupted run leaves a valid
table. Reading it back keeps only whole, valid rows: a last line without its newline (cut short
by the interruption) or a row whose cells do not parse is dropped, and its image is redone.
Floats are written in their shortest exact form (``repr``), so a row read back equals the row
written, and a summary of the table equals a summary of the rows in memory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BlackboxError
from ..outputs import OutputPlan
from .sources import DatasetError

Row = dict[str, Any]


def _bool(s: str) -> bool:
    if s not in ("True", "False"):
        raise ValueError(s)
    return s == "True"


def _float(s: str) -> float:
    return float(s)  # "nan" is a valid value (a constant map's Spearman)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda s: None if s == "" else parse(s)


def _files(s: str) -> tuple[str, ...]:
    return tuple(f for f in s.split(";") if f)


#: the cell types: how a cell is parsed back ("files": relative paths joined by ";")
KINDS: dict[str, Callable[[str], Any]] = {
    "str": str, "int": int, "float": _float, "bool": _bool,
    "float?": _optional(_float), "bool?": _optional(_bool), "files": _files}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, tuple):
        return ";".join(v)
    return repr(float(v)) if isinstance(v, float) else str(v)


class RowTable:
    """The CSV at ``path`` with ``columns`` ({name: kind of :data:`KINDS`}), in that order;
    ``what`` names it in the refusal of another file."""

    def __init__(self, path: str | os.PathLike, columns: Mapping[str, str],
                 what: str = "this command's table") -> None:
        self.path = Path(path)
        self.columns = dict(columns)
        self.what = what

    def parse(self, cells: Sequence[str]) -> Row | None:
        """The row of ``cells``, or None when they are not a whole, valid row."""
        if len(cells) != len(self.columns):
            return None
        try:
            row = {k: KINDS[kind](c) for (k, kind), c in zip(self.columns.items(), cells)}
        except ValueError:
            return None
        seconds = row.get("seconds")
        return None if isinstance(seconds, float) and not math.isfinite(seconds) else row

    def read(self) -> list[Row]:
        """The valid rows (none when the file does not exist); another table is refused."""
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise DatasetError(f"cannot read {self.path}: {e.strerror or e}") from None
        if text and not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]  # the last row was cut short
        lines = list(csv.reader(io.StringIO(text)))
        if not lines or lines[0] != list(self.columns):
            raise DatasetError(f"{self.path} is not {self.what} (columns "
                                f"{', '.join(self.columns)}); pass --overwrite to replace it or "
                                "choose another --out")
        return [row for cells in lines[1:] if (row := self.parse(cells)) is not None]

    def text(self, rows: Sequence[Row]) -> str:
        """The CSV text of ``rows`` under the header."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows([_cell(r[k]) for k in self.columns] for r in rows)
        return buf.getvalue()

    def write(self, rows: Sequence[Row]) -> None:
        """Replace the file by ``rows`` (all at once)."""
        plan = OutputPlan(overwrite=True)
        plan.add(self.path)
        plan.check()
        plan.commit({self.path: self.text(rows).encode()})

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[Row], None]]:
        """A function appending one row, flushed to disk on return."""
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")

            def append(row: Row) -> None:
                writer.writerow([_cell(row[k]) for k in self.columns])
                f.flush()
                os.fsync(f.fileno())

            yield append


def resume(table: RowTable, settings: Mapping[str, str], overwrite: bool) -> list[Row]:
    """The rows of ``table`` to keep. ``settings`` maps each method of the run to its settings
    hash (``""`` for a table without a method column); a row of one of them with another hash
    is refused without ``overwrite`` (it would be mixed into one summary) and dropped with it,
    as is an unreadable table. Rows of other methods are kept."""
    try:
        rows = table.read()
    except BlackboxError:
        if not overwrite:
            raise
        return []

    def stale(r: Row) -> bool:
        method = r.get("method", "")
        return method in settings and r["settings"] != settings[method]

    other = [r for r in rows if stale(r)]
    if other and not overwrite:
        raise BlackboxError(f"{table.path} holds results with other settings (e.g. "
                            f"{other[0]['image']}); pass --overwrite to redo them or choose "
                            "another --out")
    return [r for r in rows if not stale(r)]


def unique_names(names: Sequence[str], paths: Sequence[os.PathLike]) -> None:
    """Refuse two images of one name (a table holds one row per image and name)."""
    seen: dict[str, os.PathLike] = {}
    for name, path in zip(names, paths):
        if name in seen:
            raise BlackboxError(f"two images are named {name!r} ({seen[name]} and {path}); "
                                "rename one of them")
        seen[name] = path
