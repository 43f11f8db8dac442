"""The ``blobs/`` tree: content-addressed files beside ``pds.db``.

A blob lives at ``blobs/<first two characters of its CID>/<CID>`` (raw-codec
CIDv1, sha2-256). Writes go to a temporary file in the same directory, are
fsynced and renamed into place, so an interrupted write never leaves a
partial file under a final name; new directories are fsynced into their
parents. Files are created 0600 and directories 0700, whatever the umask; a
full disk raises :class:`~pypds.errors.DiskFull` and leaves no file.
Temporary files left by a killed writer are removed when a repository is
next opened (once they are an hour old). Reads are checked
against the CID: a truncated or altered file raises :class:`BlockHashMismatch`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from .cid import CID, RAW_PREFIX, cid_for_raw
from .errors import BlockHashMismatch, InvalidInput
from .files import PRIVATE_DIR_MODE, TEMP_PREFIX, atomic_file, disk_full_as_error, fsync_dir

__all__ = ["BlobRef", "BlobStore", "blob_refs"]

#: Temporary blob files older than this (seconds) are removed when a repo opens.
STALE_TEMP_SECONDS = 3600.0


@dataclass(frozen=True)
class BlobRef:
    """A reference to a stored blob, as embedded in records."""

    cid: CID
    mime_type: str
    size: int

    def to_json(self) -> dict:
        """The atproto JSON form ``{"$type": "blob", "ref": {"$link": ...}, ...}``."""
        return {
            "$type": "blob",
            "ref": {"$link": self.cid.encode()},
            "mimeType": self.mime_type,
            "size": self.size,
        }

    def to_record(self) -> dict:
        """The DAG-CBOR form to embed in a record passed to ``Repo.put``."""
        return {"$type": "blob", "ref": self.cid, "mimeType": self.mime_type, "size": self.size}


def blob_refs(value: object) -> list[CID]:
    """CIDs of the blobs a record references, in document order, without repeats.

    Recognises the typed form ``{"$type": "blob", "ref": CID, ...}`` and the
    legacy form ``{"cid": "<CID string>", "mimeType": str}``. Iterative.
    """
    found: dict[bytes, CID] = {}
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            cid = _blob_ref_of(item)
            if cid is not None:
                found.setdefault(cid.cid_bytes, cid)
                continue
            stack.extend(reversed(list(item.values())))
        elif type(item) is list:
            stack.extend(reversed(item))
    return list(found.values())


def _blob_ref_of(item: dict) -> CID | None:
    if item.get("$type") == "blob" and type(item.get("ref")) is CID:
        return item["ref"]
    if item.keys() == {"cid", "mimeType"} and type(item["cid"]) is str:
        try:
            return CID.decode(item["cid"])
        except ValueError:
            return None
    return None


class BlobStore:
    """Blob files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, cid: CID) -> Path:
        name = cid.encode()
        return self.root / name[:2] / name

    def put(self, data: bytes) -> CID:
        """Store ``data`` durably and return its raw CID (idempotent)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"blob data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        cid = cid_for_raw(data)
        final = self.path_for(cid)
        if final.exists() and self._matches(final, cid):
            return cid
        self._make_dirs(final.parent)
        with atomic_file(final, private=True) as out:
            out.write(data)
        fsync_dir(final.parent)
        return cid

    def _make_dirs(self, shard: Path) -> None:
        """Create ``blobs/`` and the shard directory durably (their entries fsynced), mode 0700."""
        for directory in (self.root, shard):
            if not directory.is_dir():
                with disk_full_as_error(directory):
                    directory.mkdir(PRIVATE_DIR_MODE, exist_ok=True)
                    directory.chmod(PRIVATE_DIR_MODE)
                    fsync_dir(directory.parent)

    def remove_stale_temps(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary files left by interrupted writes; returns how many.

        Only files older than ``older_than`` seconds go: a younger one may
        belong to a write still in progress in another process.
        """
        removed = 0
        cutoff = time.time() - older_than
        for tmp in self.root.glob(f"*/{TEMP_PREFIX}*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def get(self, cid: CID) -> bytes | None:
        """The blob's bytes, checked against its CID; None if absent."""
        if cid.cid_bytes[:4] != RAW_PREFIX or len(cid.cid_bytes) != 36:
            return None
        path = self.path_for(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).digest() != cid.cid_bytes[4:]:
            raise BlockHashMismatch(
                f"blob {cid.encode()} at {path}: file is corrupt ({len(data)} bytes do not hash to its CID)"
            )
        return data

    def list(self, *, cursor: str | None = None, limit: int | None = None) -> list[CID]:
        """Stored blob CIDs in string order, after ``cursor`` (a CID string), at most ``limit``."""
        names = sorted(
            path.name for path in self.root.glob("*/*") if not path.name.startswith(TEMP_PREFIX) and path.is_file()
        )
        if cursor is not None:
            names = [name for name in names if name > cursor]
        if limit is not None:
            names = names[:limit]
        return [CID.decode(name) for name in names]

    def remove_unreferenced(self, referenced: set[bytes], older_than: float) -> tuple[int, int]:
        """Delete blob files whose CID is not in ``referenced`` and that are older than
        ``older_than`` seconds; returns (files, bytes) removed."""
        files = size = 0
        cutoff = time.time() - older_than
        for path in self.root.glob("*/*"):
            if path.name.startswith(TEMP_PREFIX):
                continue
            try:
                cid = CID.decode(path.name)
                stat = path.stat()
            except (ValueError, FileNotFoundError):
                continue
            if cid.cid_bytes in referenced or stat.st_mtime >= cutoff:
                continue
            path.unlink(missing_ok=True)
            files += 1
            size += stat.st_size
        return files, size

    def has(self, cid: CID) -> bool:
        return self.path_for(cid).is_file()

    def _matches(self, path: Path, cid: CID) -> bool:
        return hashlib.sha256(path.read_bytes()).digest() == cid.cid_bytes[4:]
