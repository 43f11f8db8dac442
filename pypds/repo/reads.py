"""Reading records at HEAD: one SQL statement on the paths index, through the handle's record cache.

The paths index (HEAD's tree as a table) is kept current by every
transaction that moves HEAD. A cached record is used only if the index
still holds the CID it was read under, so a cached read is never stale,
whatever other processes wrote.
"""

from __future__ import annotations

from ..codec.cid import CID
from ..errors import InvalidInput, MissingBlock
from ..mst import iter_range
from ..storage.record_cache import CachedRecord
from ..syntax import check_collection, check_record_key, repo_path
from .state import RepoState

__all__ = ["collections", "find_bytes", "find_cid", "list_records"]

_MAX_SQL_INT = (1 << 63) - 1


def find_bytes(state: RepoState, collection: str, rkey: str) -> bytes | None:
    """The record's DAG-CBOR bytes at HEAD, or None."""
    cached = state.records.get(collection, rkey)
    path = repo_path(collection, rkey).encode() if cached is None else cached.path
    found = state.store.index_record(path, None if cached is None else cached.cid)
    if found is None:
        return None
    cid, same, data = found
    if same and cached is not None:
        return cached.data
    if data is None:
        raise MissingBlock(f"record block {CID(cid).encode()} for {path.decode()} is missing", CID(cid))
    state.records.put(collection, rkey, CachedRecord(path, cid, data))
    return data


def find_cid(state: RepoState, collection: str, rkey: str) -> CID | None:
    """The record's CID at HEAD, or None."""
    found = state.store.index_cid(repo_path(collection, rkey).encode())
    return None if found is None else CID(found)


def list_records(
    state: RepoState, collection: str, *, limit: int | None, cursor: str | None, reverse: bool
) -> list[tuple[str, CID]]:
    """See :meth:`pypds.Repo.list`."""
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must not be negative: {limit}")
    prefix = check_collection(collection).encode() + b"/"
    start, stop = prefix, prefix[:-1] + b"0"  # "0" is the byte after "/"
    if cursor is not None:
        edge = prefix + check_record_key(cursor).encode()
        if reverse:
            stop = edge
        else:
            start = edge + b"\x00"
    if limit == 0:
        return []
    if limit is not None and limit > _MAX_SQL_INT:
        limit = None  # more than any repository holds
    cut = len(prefix)
    rows = state.store.index_range(start, stop, reverse=reverse, limit=limit)
    return [(key[cut:].decode(), cid) for key, cid in rows]


def collections(state: RepoState) -> list[str]:
    """See :meth:`pypds.Repo.collections`."""
    state.refresh()
    found: list[str] = []
    start: bytes | None = None
    while True:
        first = next(iter_range(state.nodes, state.root, start), None)
        if first is None:
            return found
        collection = first[0].split(b"/", 1)[0]
        found.append(collection.decode())
        start = collection + b"0"
