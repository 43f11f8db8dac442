"""Hostile things to plant in ``blobs/`` where a blob file should be (server and library tests)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pypds.storage.blobs import MAX_BLOB_BYTES

SECRET = b"secret outside the repository " * 10_000  # 300 KB

#: Every way of planting, with what the library raises for it.
HOSTILE = [
    "link-outside",
    "link-to-a-copy",
    "link-dev-zero",
    "fifo",
    "directory",
    "truncated",
    "appended",
    "oversized",
    "linked-shard",
]


def plant(path: Path, how: str, data: bytes, outside: Path) -> None:
    """Replace the blob file at ``path`` (holding ``data``) with something hostile; ``outside``
    is a path outside the repository the plant may use."""
    path.unlink()
    if how == "link-outside":
        outside.write_bytes(SECRET)
        path.symlink_to(outside)
    elif how == "link-to-a-copy":  # even a link to the right bytes is not followed
        outside.write_bytes(data)
        path.symlink_to(outside)
    elif how == "link-dev-zero":
        path.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "truncated":
        path.write_bytes(data[:-1])
    elif how == "appended":
        path.write_bytes(data + SECRET)
    elif how == "oversized":  # sparse: made at once, and must be refused without being read
        with open(path, "wb") as stream:
            stream.truncate(MAX_BLOB_BYTES + 1)
    elif how == "linked-shard":
        shard = path.parent
        outside.mkdir()
        (outside / path.name).write_bytes(data)
        shutil.rmtree(shard)
        shard.symlink_to(outside)
    else:
        raise AssertionError(how)
