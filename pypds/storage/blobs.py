"""The ``blobs/`` tree: content-addressed files beside ``pds.db``, and which of them records reference.

A blob lives at ``blobs/<first two characters of its CID>/<CID>`` (raw-codec
CIDv1, sha2-256). Writes go to a temporary file in the same directory, are
fsynced and renamed into place, so an interrupted write never leaves a
partial file under a final name; new directories are fsynced into their
parents. Files are created 0600 and directories 0700, whatever the umask; a
full disk raises :class:`~pypds.errors.DiskFull` and leaves no file.
Temporary files left by a killed writer are removed when a repository is
next opened (once they are an hour old).

Tricky bits:

* **The tree is hostile.** A blob file is opened relative to ``blobs/``
  (which may itself be a link, to another disk say) one name at a time,
  never following a symbolic link below it, and without blocking: a FIFO
  opens at once and is then refused. Only a regular file of at most
  :data:`MAX_BLOB_BYTES` is read. A link, FIFO, device, socket or directory
  where a blob or its shard directory should be raises
  :class:`IntegrityError` (a larger file :class:`LimitExceeded`), so no read
  leaves the tree or waits on a writer, and ``put`` never writes through a
  linked shard directory.
* **Reads are checked against the CID**: a truncated or altered file raises
  :class:`BlockHashMismatch`. :meth:`BlobFile.read` hashes what it returns.
  To stream a blob without holding it, :meth:`BlobFile.check` first hashes
  the whole file (a segment per step, keeping each segment's digest) and
  :meth:`BlobFile.segments` then reads it again, passing a segment on only
  if it still has the digest it had during the check: bytes that changed in
  between are never passed on, not even in part.
* **Stored is not referenced.** A blob's file outlives the last record that
  references it (until ``gc`` removes it); which blobs the records at HEAD
  reference is :mod:`pypds.repo.referenced_blobs`'s business.
* **Blobs from the network are never held whole**: :meth:`BlobStore.receive`
  writes one to a temporary file in its shard while hashing it, and renames
  it into place only if the bytes hash to the expected CID.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cbrrr

from ..codec.cid import CID, RAW_PREFIX, cid_for_raw
from ..errors import BlockHashMismatch, IntegrityError, InvalidCid, InvalidInput, LimitExceeded
from ..filesystem import (
    PRIVATE_DIR_MODE,
    TEMP_PREFIX,
    atomic_file,
    create_private_file,
    disk_full_as_error,
    fsync_dir,
)

__all__ = [
    "MAX_BLOB_BYTES",
    "BlobFile",
    "BlobRef",
    "BlobStore",
    "IncomingBlob",
    "blob_mime_types",
    "blob_refs",
]

#: Temporary blob files older than this (seconds) are removed when a repo opens.
STALE_TEMP_SECONDS = 3600.0
#: Largest blob stored, read or served (bytes).
MAX_BLOB_BYTES = 1 << 30
#: Bytes read (and checked) per step when a blob file is streamed.
SEGMENT_BYTES = 1 << 20

_NO_FOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_SHARD_FLAGS = _NO_FOLLOW | os.O_DIRECTORY
_FILE_FLAGS = _NO_FOLLOW | os.O_NONBLOCK
#: What open(2) answers for a symbolic link under O_NOFOLLOW (Linux: ELOOP, BSDs: EMLINK).
_LINK_ERRORS = {errno.ELOOP, errno.EMLINK}
_NOT_A_FILE_ERRORS = _LINK_ERRORS | {errno.ENOTDIR, errno.ENXIO, errno.EISDIR}
_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
#: Bytes that any record holding a blob reference contains: the DAG-CBOR text "blob" (the
#: ``$type`` of the typed form) or the key "mimeType" (of the legacy form).


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


def blob_mime_types(value: object) -> dict[bytes, str]:
    """The MIME type a record gives each blob it references, by the blob's binary CID.

    Same references as :func:`blob_refs`; a reference without a string
    ``mimeType`` is left out. Iterative.
    """
    found: dict[bytes, str] = {}
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            cid = _blob_ref_of(item)
            if cid is not None:
                if isinstance(item.get("mimeType"), str):
                    found.setdefault(cid.cid_bytes, item["mimeType"])
                continue
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return found


def _blob_ref_of(item: dict) -> CID | None:
    if item.get("$type") == "blob":
        ref = item.get("ref")
        if type(ref) is CID:
            return ref
        if isinstance(ref, cbrrr.CID):  # a record decoded by cbrrr itself
            return CID(ref.cid_bytes)
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
        """Store ``data`` durably and return its raw CID (idempotent; a damaged file is replaced)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"blob data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_BLOB_BYTES:
            raise LimitExceeded("max_blob_bytes", len(data), MAX_BLOB_BYTES, "put_blob")
        cid = cid_for_raw(data)
        if self._holds(cid):
            return cid
        final = self.path_for(cid)
        self._make_dirs(final.parent)
        with atomic_file(final, private=True) as out:
            out.write(data)
        fsync_dir(final.parent)
        return cid

    @contextmanager
    def receive(self, cid: CID) -> Iterator[IncomingBlob]:
        """An :class:`IncomingBlob` for ``cid``; its temporary file is removed on exit unless
        :meth:`IncomingBlob.finish` moved it into place."""
        incoming = IncomingBlob(self, cid)
        try:
            yield incoming
        finally:
            incoming.discard()

    def _holds(self, cid: CID) -> bool:
        """Whether ``cid``'s file is stored intact (a link, FIFO or damaged file is not)."""
        try:
            blob = self.open(cid)
            if blob is None:
                return False
            with blob:
                blob.read()
        except (IntegrityError, LimitExceeded):
            return False
        return True

    def _make_dirs(self, shard: Path) -> None:
        """Create ``blobs/`` and the shard directory durably (their entries fsynced), mode 0700."""
        if not self.root.is_dir():
            _make_private_dir(self.root)
        try:
            mode = os.lstat(shard).st_mode
        except FileNotFoundError:
            _make_private_dir(shard)
            mode = os.lstat(shard).st_mode
        if not stat.S_ISDIR(mode):
            raise IntegrityError(f"{shard} is {_kind(mode)}, not a directory: no blob is written through it")

    def _entries(self) -> Iterator[tuple[str, os.DirEntry]]:
        """``(shard name, entry)`` for everything in the shard directories (a link in a shard's
        place is not followed)."""
        try:
            shards = [entry for entry in os.scandir(self.root) if entry.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return
        for shard in shards:
            try:
                entries = list(os.scandir(shard.path))
            except (FileNotFoundError, NotADirectoryError):  # removed meanwhile
                continue
            for entry in entries:
                yield shard.name, entry

    def files(self) -> list[Path]:
        """Every entry in the shard directories but temporary files, sorted (whatever its kind or name)."""
        return sorted(Path(entry.path) for _shard, entry in self._entries() if not entry.name.startswith(TEMP_PREFIX))

    def names(self) -> list[str]:
        """Sorted CID strings of the blob files stored: regular files named by a CID in their shard."""
        return sorted(
            entry.name
            for shard, entry in self._entries()
            if entry.name[:2] == shard and entry.is_file(follow_symlinks=False) and _is_blob_cid(entry.name)
        )

    def remove_stale_temps(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary files left by interrupted writes; returns how many.

        Only files older than ``older_than`` seconds go: a younger one may
        belong to a write still in progress in another process.
        """
        removed = 0
        cutoff = time.time() - older_than
        for _shard, entry in self._entries():
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def open(self, cid: CID) -> BlobFile | None:
        """``cid``'s file, opened for checked reading; None if there is none.

        Never follows a symbolic link below ``blobs/`` and never blocks.
        Raises :class:`IntegrityError` if anything but a regular file (in a
        real shard directory) is in its place, :class:`LimitExceeded` if the
        file is larger than :data:`MAX_BLOB_BYTES`.
        """
        if cid.cid_bytes[:4] != RAW_PREFIX or len(cid.cid_bytes) != 36:
            return None
        path = self.path_for(cid)
        fd = self._open_file(path)
        if fd is None:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IntegrityError(f"{path} is {_kind(info.st_mode)}, not a blob file: not read")
            if info.st_size > MAX_BLOB_BYTES:
                raise LimitExceeded("max_blob_bytes", info.st_size, MAX_BLOB_BYTES, str(path))
        except BaseException:
            os.close(fd)
            raise
        return BlobFile(fd, cid, info.st_size, path)

    def _open_file(self, path: Path) -> int | None:
        """A descriptor of ``path`` opened below ``blobs/`` name by name, following no link; None if absent."""
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            shard = _open_at(root, path.parent, _SHARD_FLAGS)
            if shard is None:
                return None
            try:
                return _open_at(shard, path, _FILE_FLAGS)
            finally:
                os.close(shard)
        finally:
            os.close(root)

    def get(self, cid: CID) -> bytes | None:
        """The blob's bytes, checked against its CID; None if absent (raises as :meth:`open` does)."""
        blob = self.open(cid)
        if blob is None:
            return None
        with blob:
            return blob.read()

    def remove_unreferenced(
        self, referenced: set[bytes], older_than: float, *, dry_run: bool = False
    ) -> list[tuple[CID, int]]:
        """Delete blob files whose CID is not in ``referenced`` and that are older than
        ``older_than`` seconds; returns ``(CID, bytes)`` of each removed (with ``dry_run``, of each
        that would be, and nothing is). A directory is left alone."""
        removed: list[tuple[CID, int]] = []
        cutoff = time.time() - older_than
        for _shard, entry in self._entries():
            if entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                cid = CID.decode(entry.name)
                info = entry.stat(follow_symlinks=False)
            except (ValueError, FileNotFoundError):
                continue
            if cid.cid_bytes in referenced or info.st_mtime >= cutoff or stat.S_ISDIR(info.st_mode):
                continue
            if dry_run:
                removed.append((cid, info.st_size))
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append((cid, info.st_size))
        return removed

    def has(self, cid: CID) -> bool:
        """Whether a regular file is stored under ``cid``'s name (not read: see :meth:`open`)."""
        path = self.path_for(cid)
        try:
            return stat.S_ISDIR(os.lstat(path.parent).st_mode) and stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False


def _make_private_dir(directory: Path) -> None:
    with disk_full_as_error(directory):
        directory.mkdir(PRIVATE_DIR_MODE, exist_ok=True)
        directory.chmod(PRIVATE_DIR_MODE)
        fsync_dir(directory.parent)


def _is_blob_cid(name: str) -> bool:
    try:
        raw = CID.decode(name).cid_bytes
    except ValueError:
        return False
    return raw[:4] == RAW_PREFIX and len(raw) == 36


def _open_at(directory: int, path: Path, flags: int) -> int | None:
    try:
        return os.open(path.name, flags, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _NOT_A_FILE_ERRORS:
            raise
        what = "a symbolic link" if exc.errno in _LINK_ERRORS else exc.strerror
        raise IntegrityError(f"{path} is not a blob file or shard directory ({what}): not followed") from None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


class BlobFile:
    """An open blob file (from :meth:`BlobStore.open`), read only through checks against its CID.

    ``size`` is the file's size when it was opened. Close it, or use it as a
    context manager. Reads may run in any thread, one at a time; a
    :meth:`close` from another thread waits for a read in progress.
    """

    def __init__(self, fd: int, cid: CID, size: int, path: Path) -> None:
        self.cid = cid
        self.size = size
        self.path = path
        self._fd: int | None = fd
        self._lock = threading.Lock()
        self._digests: list[bytes] | None = None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> BlobFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> bytes:
        """The whole blob, checked against its CID (one pass; held in memory)."""
        data = self._read_at(0, self.size)
        self._verify(hashlib.sha256(data).digest(), len(data))
        return data

    def check(self) -> Iterator[int]:
        """Hash the whole file against the CID, one segment per step, yielding the bytes hashed so far.

        Raises :class:`BlockHashMismatch` at the end if the file does not
        hash to its CID. Afterwards :meth:`segments` streams it.
        """
        whole = hashlib.sha256()
        digests: list[bytes] = []
        done = 0
        while done < self.size:
            segment = self._read_at(done, min(SEGMENT_BYTES, self.size - done))
            if not segment:  # shorter than when it was opened
                break
            whole.update(segment)
            digests.append(hashlib.sha256(segment).digest())
            done += len(segment)
            yield done
        self._verify(whole.digest(), done)
        self._digests = digests

    def segments(self) -> Iterator[bytes]:
        """The checked file again, one segment per step (checking it first if that was not done).

        A segment is yielded only if it still has the digest it had during
        the check; one that changed since raises :class:`BlockHashMismatch`
        instead, so every byte yielded is a byte of the blob.
        """
        if self._digests is None:
            for _ in self.check():
                pass
        assert self._digests is not None
        for index, digest in enumerate(self._digests):
            offset = index * SEGMENT_BYTES
            segment = self._read_at(offset, min(SEGMENT_BYTES, self.size - offset))
            if hashlib.sha256(segment).digest() != digest:
                raise BlockHashMismatch(
                    f"blob {self.cid.encode()} at {self.path} changed while it was read (segment at byte {offset})"
                )
            yield segment

    def _read_at(self, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        with self._lock:
            if self._fd is None:
                raise InvalidInput(f"blob file {self.path} is closed")
            while length > 0:
                part = os.pread(self._fd, length, offset)
                if not part:
                    break
                parts.append(part)
                offset += len(part)
                length -= len(part)
        return b"".join(parts)

    def _verify(self, digest: bytes, length: int) -> None:
        if digest != self.cid.cid_bytes[4:]:
            raise BlockHashMismatch(
                f"blob {self.cid.encode()} at {self.path}: file is corrupt ({length} bytes do not hash to its CID)"
            )


class IncomingBlob:
    """A blob written piece by piece: to a temporary file in its shard directory, hashed as it
    arrives. :meth:`finish` fsyncs it and renames it into place only if the bytes hash to the
    expected CID; memory use does not depend on the blob's size."""

    def __init__(self, store: BlobStore, cid: CID) -> None:
        if cid.cid_bytes[:4] != RAW_PREFIX or len(cid.cid_bytes) != 36:
            raise InvalidCid(f"{cid.encode()} is not a blob (raw sha2-256) CID")
        self.cid = cid
        self.final = store.path_for(cid)
        store._make_dirs(self.final.parent)
        self.tmp = self.final.with_name(f"{TEMP_PREFIX}{self.final.name}-{secrets.token_hex(6)}")
        self.size = 0
        self._hash = hashlib.sha256()
        with disk_full_as_error(self.final):
            create_private_file(self.tmp)
        self._file = open(self.tmp, "r+b")  # noqa: SIM115 (closed by finish or discard)

    def write(self, chunk: bytes) -> None:
        with disk_full_as_error(self.final):
            self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> None:
        """Move the blob into place; :class:`BlockHashMismatch` (and nothing stored) if its bytes
        do not hash to its CID."""
        if self._hash.digest() != self.cid.cid_bytes[4:]:
            raise BlockHashMismatch(f"blob {self.cid.encode()}: {self.size} bytes received do not hash to its CID")
        with disk_full_as_error(self.final):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.final)
            fsync_dir(self.final.parent)

    def discard(self) -> None:
        """Close and remove the temporary file (nothing to do after :meth:`finish`)."""
        self._file.close()
        self.tmp.unlink(missing_ok=True)
