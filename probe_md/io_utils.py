"""Crash-safe file output: atomic replacement (never a half-written file under the final name)
and whole-record appends that are on disk when the call returns."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename.

    The file gets the usual permissions (0666 minus the umask), not mkstemp's 0600, so
    shipped models and reports stay readable by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:  # data on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def check_output_path(path: str | os.PathLike, what: str, is_folder: bool = False) -> Path:
    """Fail now, in one line, if `path` (a file, or a folder with is_folder) cannot be written.

    Called before any work starts, so a bad -o never costs a finished run: it creates the
    folder and a temporary file in it (removed again). Raises ValueError naming the path.
    """
    path = Path(path)
    folder = path if is_folder else path.parent
    if not is_folder and path.is_dir():
        raise ValueError(f"{what} {path} is a folder: give a file name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except OSError as error:
        # mkdir's own message for a file in the way ("File exists") hides which file it is.
        blocking = next((up for up in (folder, *folder.parents) if up.exists() and not up.is_dir()), None)
        reason = f"{blocking} is a file, not a folder" if blocking else error.strerror or type(error).__name__
        raise ValueError(f"cannot write {what} {path} ({reason}): choose another location") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)


def append_and_fsync(path: str | os.PathLike, data: bytes) -> None:
    """Append one record to `path` (created 0644) and fsync it before returning.

    The record goes out through one O_APPEND descriptor, so appends never interleave with
    other writers' records; a crash mid-call can leave only a torn tail, which readers drop.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, pipes)
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
