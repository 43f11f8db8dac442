"""A bounded in-memory cache of recently read records, by collection and record key.

Each entry remembers the record's repo path and the record CID it was read
under. A read asks the paths index for the path's current CID and only uses
the cached bytes when the CID is the same, so an entry can never be served
stale, whatever other handles or processes have written since (CIDs are
content hashes). A key is only cached after it was validated, so a cache hit
also skips path validation. The cache is bounded by the total size of the
records it holds, oldest dropped first.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_CACHE_BYTES = 16 * 1024 * 1024


class CachedRecord(NamedTuple):
    path: bytes  # the validated repo path, UTF-8
    cid: bytes  # the record CID it was read under
    data: bytes  # the record block


class RecordCache:
    """``(collection, rkey) -> CachedRecord``, at most ``max_bytes`` of records."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._size = 0
        self._entries: dict[tuple[str, str], CachedRecord] = {}

    def get(self, collection: object, rkey: object) -> CachedRecord | None:
        """The entry for ``collection``/``rkey``; None if absent (or if either is not a string)."""
        if type(collection) is not str or type(rkey) is not str:
            return None
        return self._entries.get((collection, rkey))

    def put(self, collection: str, rkey: str, record: CachedRecord) -> None:
        key = (collection, rkey)
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= len(old.data)
        if len(record.data) > self._max_bytes:
            return
        self._size += len(record.data)
        while self._size > self._max_bytes:  # dicts keep insertion order: the first entry is the oldest
            oldest = next(iter(self._entries))
            self._size -= len(self._entries.pop(oldest).data)
        self._entries[key] = record

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Total bytes of the records held."""
        return self._size
