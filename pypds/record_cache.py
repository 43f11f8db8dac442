"""A bounded in-memory cache of recently read records, by repo path.

Each entry remembers the record CID it was read under. A read asks the paths
index for the path's current CID and only uses the cached bytes when the CID
is the same, so an entry can never be served stale, whatever other handles or
processes have written since (CIDs are content hashes). The cache is bounded
by the total size of the records it holds, oldest dropped first.
"""

from __future__ import annotations

DEFAULT_CACHE_BYTES = 16 * 1024 * 1024


class RecordCache:
    """``path -> (record CID bytes, record bytes)``, at most ``max_bytes`` of records."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._size = 0
        self._entries: dict[bytes, tuple[bytes, bytes]] = {}

    def get(self, path: bytes) -> tuple[bytes, bytes] | None:
        return self._entries.get(path)

    def put(self, path: bytes, cid: bytes, data: bytes) -> None:
        old = self._entries.pop(path, None)
        if old is not None:
            self._size -= len(old[1])
        if len(data) > self._max_bytes:
            return
        self._size += len(data)
        while self._size > self._max_bytes:  # dicts keep insertion order: the first entry is the oldest
            oldest = next(iter(self._entries))
            self._size -= len(self._entries.pop(oldest)[1])
        self._entries[path] = (cid, data)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Total bytes of the records held."""
        return self._size
