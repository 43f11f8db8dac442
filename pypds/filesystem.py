"""Durable file writes, private files and directories, and disk-full errors.

:func:`atomic_file` writes a temporary file in the same directory, fsyncs it
and renames it into place: a reader never sees a partial file under the
final name, either the old file (or none) or the complete new one. If the
write fails, the temporary file is removed.

A repository's files hold its signing key (``pds.db``) and its data, so
pypds creates them readable by their owner only: files ``0600`` and
directories ``0700``, set explicitly after creation, so the umask cannot
widen (or narrow) them.

A full disk (``ENOSPC``, ``EDQUOT``) is reported as :class:`DiskFull`, a
:class:`~pypds.errors.PypdsError`, rather than a bare ``OSError``.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import DiskFull

__all__ = [
    "TEMP_PREFIX",
    "PRIVATE_FILE_MODE",
    "PRIVATE_DIR_MODE",
    "atomic_file",
    "create_private_file",
    "disk_full_as_error",
    "fsync_dir",
    "make_private_dirs",
]

#: Name prefix of temporary files (cleanup code recognises them by it).
TEMP_PREFIX = ".tmp-"
#: Mode of every file pypds creates in a repository: read and write for the owner only.
PRIVATE_FILE_MODE = 0o600
#: Mode of every directory pypds creates in a repository.
PRIVATE_DIR_MODE = 0o700

_FULL = {errno.ENOSPC, errno.EDQUOT}


@contextmanager
def disk_full_as_error(what: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` for a full disk or quota raised inside into :class:`DiskFull` naming ``what``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            reason = os.strerror(exc.errno)
            raise DiskFull(f"{what}: {reason}; nothing was written") from None
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, *, private: bool = False) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yields a binary file; on success it is fsynced and renamed into place.

    With ``private`` the file is created ``0600`` whatever the umask;
    otherwise it gets the usual ``0666`` less the umask. A full disk raises
    :class:`DiskFull`, and leaves neither the temporary nor a partial file.
    """
    target = Path(path)
    tmp = target.with_name(f"{TEMP_PREFIX}{target.name}-{secrets.token_hex(6)}")
    try:
        with disk_full_as_error(target):
            if private:
                create_private_file(tmp)
            with open(tmp, "wb") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def create_private_file(path: Path) -> None:
    """Create the empty file ``path`` with mode ``0600`` (it must not exist)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have removed bits from the mode asked for
    finally:
        os.close(fd)


def make_private_dirs(directory: Path) -> Path | None:
    """Create ``directory`` and any missing parents, each new one with mode ``0700``.

    Directories that already exist are left as they are. Returns the
    outermost directory created (None if there was none), for cleaning up.
    """
    missing: list[Path] = []
    current = directory.absolute()
    while not current.exists():
        missing.append(current)
        current = current.parent
    outermost = None
    for path in reversed(missing):
        try:
            path.mkdir(PRIVATE_DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # made by another process meanwhile: not ours to change or remove
        os.chmod(path, PRIVATE_DIR_MODE)
        if outermost is None:
            outermost = path
    return outermost


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
