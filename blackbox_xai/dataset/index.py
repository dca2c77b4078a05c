"""The index table of a dataset run: one row per (image, method), in ``OUT/index.csv``.

A resumable :class:`~blackbox_xai.dataset.table.RowTable` like the compare and evaluate tables:
rows are appended (and flushed to disk) as images finish, so an interrupted run leaves a valid
index; a row cut short by the interruption, or otherwise unreadable, is dropped when the index
is read back. At the end the table is rewritten sorted by name and method, and also written as
``index.parquet`` where pyarrow is importable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..outputs import OutputPlan
from .table import Row, RowTable

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

    @classmethod
    def of(cls, row: Row) -> IndexRow | None:
        """The index row of a table row, or None when it is not a valid one (no sha256, no
        files)."""
        index_row = cls(**row)
        return index_row if len(index_row.sha256) == 64 and index_row.files else None

    def complete(self, folder: Path) -> bool:
        """Whether every file of the row exists in ``folder``."""
        return all((folder / f).is_file() for f in self.files)


#: index.csv: the columns and their kinds (see :data:`blackbox_xai.dataset.table.KINDS`), read
#: from :class:`IndexRow`'s fields (annotations are strings here: ``int``, ..., the files tuple)
INDEX_COLUMNS = {f.name: "files" if f.type.startswith("tuple") else f.type
                 for f in fields(IndexRow)}
COLUMNS = list(INDEX_COLUMNS)


def _table(path: Path) -> RowTable:
    return RowTable(path, INDEX_COLUMNS, what="a bbx index")


def read_index(path: Path) -> list[IndexRow]:
    """The valid rows of the index at ``path`` (none when it does not exist); a file whose header
    is not an index's is refused."""
    return [row for r in _table(path).read() if (row := IndexRow.of(r)) is not None]


def write_index(path: Path, rows: list[IndexRow]) -> list[Path]:
    """Replace the index at ``path`` by ``rows`` sorted by name and method (all at once), and
    ``index.parquet`` beside it where pyarrow is importable; returns the files written."""
    rows = sorted(rows, key=lambda r: r.key)
    plan = OutputPlan(overwrite=True)
    payloads = {plan.add(path): _table(path).text([asdict(r) for r in rows]).encode()}
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
    with _table(path).appending() as append:
        yield lambda row: append(asdict(row))
