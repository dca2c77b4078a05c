"""The one writer: every file a command writes is planned and checked before any computing, then
written all together or not at all.

    plan = OutputPlan(overwrite=False)
    plan.add("out/cat_rise.npy", source="cat.jpg")        # every file, before computing
    plan.check(inputs={"model.onnx": "the input model"})  # collisions, existing files, inputs
    ...                                                   # compute
    plan.commit({Path("out/cat_rise.npy"): data})         # all files appear, or none
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import BlackboxError, InternalError

#: what :meth:`OutputPlan.commit` writes to a path: its bytes, or a file already written on the
#: same filesystem (see :func:`staging_folder`) that is moved into place
Payload = bytes | Path


def model_inputs(model_path: str | os.PathLike) -> dict[Path, str]:
    """The model file and its sidecar ``<model>.json``: inputs that no output may replace."""
    return {Path(model_path): "the input model", Path(f"{model_path}.json"): "the model's sidecar"}


@dataclass(frozen=True)
class _Planned:
    path: Path
    source: str | None
    optional: bool


class OutputPlan:
    """The files one command writes, checked before computing and written together at the end.

    :meth:`add` every file the command may write, :meth:`check` them against the command's
    inputs before any computing, then :meth:`commit` their contents. Each file is written to a
    temporary file in its destination folder and all are renamed into place at the end. On any
    failure (an exception, a full disk, Ctrl-C) the temporary files are removed and the files
    already renamed are rolled back (a replaced file is restored), so no partial set is left.
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._files: dict[Path, _Planned] = {}  # resolved path -> entry
        self._inputs: dict[Path, tuple[Path, str]] = {}  # resolved path -> (path, description)

    @property
    def paths(self) -> list[Path]:
        """The planned files, as given, in the order they were added."""
        return [f.path for f in self._files.values()]

    def add(self, path: str | os.PathLike, *, source: str | None = None,
            optional: bool = False) -> Path:
        """Plan ``path``; ``source`` names what it comes from (an image) for the error when two
        sources map to one file. An ``optional`` file may be left unwritten by :meth:`commit`,
        which then removes an existing one (it would be stale)."""
        p = Path(path)
        key = _resolved(p)
        if key in self._files:
            first = self._files[key].source
            detail = f" (from {first} and from {source})" if first and source else ""
            raise BlackboxError(f"{p} would be written twice{detail}; rename one of the inputs")
        self._files[key] = _Planned(p, source, optional)
        return p

    def check(self, inputs: Mapping[str | os.PathLike, str] | None = None) -> None:
        """Refuse before computing: a planned file that is one of ``inputs`` ({path: what it is},
        kept for :meth:`commit`; refused even with ``overwrite``), a folder, inside another
        planned file, below a regular file or an unwritable folder, or that exists without
        ``overwrite``."""
        for path, what in (inputs or {}).items():
            self._inputs[_resolved(Path(path))] = (Path(path), what)
        ids = {fid: (p, what) for p, what in self._inputs.values() if (fid := _file_id(p))}
        folders: dict[Path, None] = {}  # parents already found fine
        for key, f in self._files.items():
            p = f.path
            same = self._inputs.get(key) or ids.get(_file_id(p))
            if same:
                src, what = same
                shown = "" if src == p else f" ({src})"
                raise BlackboxError(f"{p} is {what}{shown}; inputs are never overwritten, "
                                    "write the output elsewhere")
            if p.is_dir():
                raise BlackboxError(f"{p} is a folder; cannot write a file there")
            for parent in key.parents:
                if parent in self._files:
                    raise BlackboxError(f"{p} would be written inside {self._files[parent].path}, "
                                        "another output of this command")
            if p.parent not in folders:
                _check_folder(p)
                folders[p.parent] = None
            if os.path.lexists(p) and not self.overwrite:
                raise BlackboxError(f"{p} exists; pass --overwrite to replace it")

    def commit(self, payloads: Mapping[Path, Payload]) -> list[Path]:
        """Write every payload (all planned files but the optional ones) or none; returns the
        paths written. Files that appeared since :meth:`check` are refused as there."""
        given = {_resolved(Path(p)): v for p, v in payloads.items()}
        unplanned = [p for p in payloads if _resolved(Path(p)) not in self._files]
        if unplanned:
            raise InternalError(f"{unplanned[0]} was written without being planned")
        for key, f in self._files.items():
            if key not in given and not f.optional:
                raise InternalError(f"{f.path} was planned but not written")
        self.check()  # again: the computing took time
        created: list[Path] = []  # folders this commit made
        staged: list[tuple[Path, Path]] = []  # (temporary file, destination)
        done: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)
        current = None
        try:
            for key, f in self._files.items():
                current = f.path
                if key in given:
                    _make_folders(f.path.parent, created)
                    staged.append((_stage(f.path, given[key]), f.path))
            for tmp, dest in staged:
                current = dest
                backup = _set_aside(dest, keep=True)
                try:
                    os.replace(tmp, dest)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, dest)
                    raise
                done.append((dest, backup))
            for key, f in self._files.items():  # stale optional files go with the old set
                if key not in given and os.path.lexists(f.path):
                    current = f.path
                    done.append((f.path, _set_aside(f.path, keep=False)))
        except BaseException as e:
            _roll_back(staged, done, created)
            if isinstance(e, OSError):
                reason = e.strerror or str(e)
                raise BlackboxError(f"cannot write {current}: {reason}; nothing was written") from e
            raise
        for _, backup in done:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
        return [dest for _, dest in staged]


@contextlib.contextmanager
def staging_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder on ``path``'s filesystem, for writers that must produce real files
    (ONNX external data); its files can be committed as :data:`Payload`; removed on exit."""
    tmp = Path(tempfile.mkdtemp(dir=_existing_ancestor(Path(path).parent),
                                prefix=f".{Path(path).name}."))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resolved(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _file_id(p: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file: hard links to one file share it."""
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _existing_ancestor(folder: Path) -> Path:
    folder = Path(os.path.abspath(folder))
    while not os.path.lexists(folder):
        folder = folder.parent
    return folder


def _check_folder(p: Path) -> None:
    """``p``'s folder exists or can be created, and can be written."""
    top = _existing_ancestor(p.parent)
    if not top.is_dir():
        raise BlackboxError(f"cannot write {p}: {top} is a file, not a folder")
    if not os.access(top, os.W_OK | os.X_OK):
        raise BlackboxError(f"cannot write {p}: folder {top} is not writable")


def _make_folders(folder: Path, created: list[Path]) -> None:
    """Create ``folder`` and its missing parents, recording each one made in ``created``."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        os.mkdir(d)
        created.append(d)


def _temp_name(dest: Path, kind: str) -> Path:
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.{kind}")


def _stage(dest: Path, payload: Payload) -> Path:
    """Write ``payload`` to a temporary file beside ``dest`` (flushed to disk); returns it."""
    if isinstance(payload, Path):
        return payload
    tmp = _temp_name(dest, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _set_aside(dest: Path, keep: bool) -> Path | None:
    """A backup of ``dest`` (None when there is none) to restore on roll-back. With ``keep`` the
    file stays in place until replaced (a hard link, where the filesystem has them)."""
    if not os.path.lexists(dest):
        return None
    backup = _temp_name(dest, "bak")
    if keep:
        with contextlib.suppress(OSError):
            os.link(dest, backup, follow_symlinks=False)
            return backup
    os.replace(dest, backup)
    return backup


def _roll_back(staged: list[tuple[Path, Path]], done: list[tuple[Path, Path | None]],
               created: list[Path]) -> None:
    """Undo a failed commit: restore replaced files, remove new ones, temporaries, folders."""
    for dest, backup in reversed(done):
        with contextlib.suppress(OSError):
            if backup is None:
                os.unlink(dest)
            else:
                os.replace(backup, dest)
    for tmp, _ in staged:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for d in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(d)
