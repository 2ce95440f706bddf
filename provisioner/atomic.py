"""Atomic file writes, private files and folders, advisory locks: a reader sees the old file or
the new one, never half, and a secret is never readable by anyone but root, not even for a moment.

Every artifact and every CLI edit of the site goes through here. Modes are given at creation
(umask can only take bits away), never set by a chmod once data is in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: int = 0o644, binary: bool = True) -> Iterator[IO[Any]]:
    """Yield a temp file beside `path`; on clean exit fsync it and rename it over `path`.

    On an exception (or a kill) the temp file is removed or left as a dot-file, and `path`
    keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    with atomic_open(path, mode=mode, binary=isinstance(data, bytes)) as f:
        f.write(data)


def write_new(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """A new file, made with `mode` (by default only root can read it); fails if it exists,
    since callers write into folders no reader sees until they are complete."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a folder only root can enter: made 0700 (missing parents 0755), or tightened
    to 0700 if an older version left it open. Everything a secret passes through lives below
    one of these, so a file's own mode is never the only guard."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(p, 0o700 if p == path else 0o755)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive flock on `path`.lock for the duration (serialises CLI edits)."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
