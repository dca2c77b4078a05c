"""The index table of a dataset run: one row per (image, method), in ``OUT/index.csv``.

The CSV is the source of truth: rows are appended (and flushed to disk) as images finish, so an
interrupted run leaves a valid index; a row cut short by the interruption, or otherwise
unreadable, is dropped when the index is read back. At the end the table is rewritten sorted by
name and method, and also written as ``index.parquet`` where pyarrow is importable.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from ..outputs import OutputPlan
from .sources import DatasetError

INDEX_NAME = "index.csv"
PARQUET_NAME = "index.parquet"


@dataclass(frozen=True)
class IndexRow:
    """One image's result: ``files`` are its output files, relative to the index's folder."""

    name: str
    path: str
    sha256: str
    target: int
    label: str
    score: float
    method: str
    options_hash: str
    seed: int
    queries: int
    seconds: float
    files: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        """(name, method): what a newer row for the same image replaces."""
        return (self.name, self.method)

    def cells(self) -> list[str]:
        """The row's CSV cells (floats in their shortest exact form)."""
        return [";".join(v) if isinstance(v, tuple) else repr(v) if isinstance(v, float) else str(v)
                for v in astuple(self)]

    @classmethod
    def parse(cls, cells: list[str]) -> IndexRow | None:
        """The row from its CSV cells, or None when they are not a whole, valid row."""
        if len(cells) != len(COLUMNS):
            return None
        v = dict(zip(COLUMNS, cells))
        try:
            row = cls(v["name"], v["path"], v["sha256"], int(v["target"]), v["label"],
                      float(v["score"]), v["method"], v["options_hash"], int(v["seed"]),
                      int(v["queries"]), float(v["seconds"]),
                      tuple(f for f in v["files"].split(";") if f))
        except ValueError:
            return None
        if len(row.sha256) != 64 or not row.files or not math.isfinite(row.seconds):
            return None
        return row

    def complete(self, folder: Path) -> bool:
        """Whether every file of the row exists in ``folder``."""
        return all((folder / f).is_file() for f in self.files)


COLUMNS = [f.name for f in fields(IndexRow)]


def read_index(path: Path) -> list[IndexRow]:
    """The valid rows of the index at ``path`` (none when it does not exist); a file whose header
    is not an index's is refused."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or lines[0] != COLUMNS:
        raise DatasetError(f"{path} is not a bbx index (columns {', '.join(COLUMNS)}); pass "
                           "--overwrite to replace it or choose another --out")
    return [row for cells in lines[1:] if (row := IndexRow.parse(cells)) is not None]


def write_index(path: Path, rows: list[IndexRow]) -> list[Path]:
    """Replace the index at ``path`` by ``rows`` sorted by name and method (all at once), and
    ``index.parquet`` beside it where pyarrow is importable; returns the files written."""
    rows = sorted(rows, key=lambda r: r.key)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.cells() for r in rows)
    plan = OutputPlan(overwrite=True)
    payloads = {plan.add(path): buf.getvalue().encode()}
    parquet = _parquet(rows)
    planned = plan.add(path.with_name(PARQUET_NAME), optional=True)  # a stale one goes
    if parquet is not None:
        payloads[planned] = parquet
    plan.check()
    return plan.commit(payloads)


def _parquet(rows: list[IndexRow]) -> bytes | None:
    """The rows as Parquet bytes, or None without pyarrow (an optional dependency)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    table = pa.table({c: [";".join(v) if isinstance(v := getattr(r, c), tuple) else v
                          for r in rows] for c in COLUMNS})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@contextlib.contextmanager
def appending(path: Path) -> Iterator[Callable[[IndexRow], None]]:
    """A function that appends a row to the index at ``path``, flushed to disk on return."""
    with open(path, "a", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")

        def append(row: IndexRow) -> None:
            writer.writerow(row.cells())
            f.flush()
            os.fsync(f.fileno())

        yield append
