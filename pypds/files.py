"""Durable file writes: a temporary file in the same directory, fsynced, then renamed.

A reader never sees a partial file under the final name: either the old
file (or none) or the complete new one. If the write fails, the temporary
file is removed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_PREFIX", "atomic_file", "fsync_dir"]

#: Name prefix of temporary files (cleanup code recognises them by it).
TEMP_PREFIX = ".tmp-"


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yields a binary file; on success it is fsynced and renamed into place."""
    target = Path(path)
    tmp = target.with_name(f"{TEMP_PREFIX}{target.name}-{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
