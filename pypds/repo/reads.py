"""Reading records: at HEAD through the paths index and the record cache, at any other commit through its tree.

The paths index (HEAD's tree as a table) is kept current by every
transaction that moves HEAD, so a read at HEAD is one SQL statement. A
cached record is used only if the index still holds the CID it was read
under, so a cached read is never stale, whatever other processes wrote.

A read given ``commit=`` (a commit CID, its string, ``"HEAD"`` or a ref
name) walks that commit's MST through the handle's node store instead:
the same answers, O(depth) node visits.

Traps:

* **records() is lazy and long-lived.** It pins the commit when called and
  reads a page at a time, taking the handle's lock per page, so the handle
  stays usable between pages. At HEAD it reads the paths index while that
  index is still at the pinned commit; once another write moves HEAD it
  goes on through the pinned commit's tree, so it never mixes two trees.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from ..codec import cbor
from ..codec.cid import CID
from ..errors import InvalidInput, MissingBlock
from ..mst import Link, iter_range, lookup
from ..storage.record_cache import CachedRecord
from ..storage.store import SqliteError, storage_error
from ..syntax import check_collection, check_record_key, repo_path
from .state import RepoState

__all__ = ["RECORDS_PAGE", "collections", "find_bytes", "find_cid", "list_records", "records"]

_MAX_SQL_INT = (1 << 63) - 1
#: Records read per hold of the handle's lock by :func:`records`.
RECORDS_PAGE = 512

Record = tuple[str, CID, dict]


def tree_root(state: RepoState, commit: CID | str) -> tuple[CID, CID]:
    """``(commit CID, MST root CID)`` of a commit given as a CID, its string, ``"HEAD"`` or a ref name."""
    state.refresh()
    cid = state.resolve(commit)
    return cid, state.load_commit(cid).data


def find_bytes(state: RepoState, collection: str, rkey: str, commit: CID | str | None = None) -> bytes | None:
    """The record's DAG-CBOR bytes at HEAD (or ``commit``), or None."""
    if commit is not None:
        return _tree_record(state, repo_path(collection, rkey).encode(), tree_root(state, commit)[1])
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


def _tree_record(state: RepoState, path: bytes, root: CID) -> bytes | None:
    cid = lookup(state.nodes, root, path)
    if cid is None:
        return None
    data = state.store.get_block(cid)
    if data is None:
        raise MissingBlock(f"record block {cid.encode()} for {path.decode()} is missing", cid)
    return data


def find_cid(state: RepoState, collection: str, rkey: str, commit: CID | str | None = None) -> CID | None:
    """The record's CID at HEAD (or ``commit``), or None."""
    path = repo_path(collection, rkey).encode()
    if commit is not None:
        return lookup(state.nodes, tree_root(state, commit)[1], path)
    found = state.store.index_cid(path)
    return None if found is None else CID(found)


def list_records(
    state: RepoState,
    collection: str,
    *,
    limit: int | None,
    cursor: str | None,
    reverse: bool,
    commit: CID | str | None = None,
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
    if commit is not None:
        leaves = iter_range(state.nodes, tree_root(state, commit)[1], start, stop, reverse=reverse)
        return [(key[cut:].decode(), cid) for key, cid in itertools.islice(leaves, limit)]
    rows = state.store.index_range(start, stop, reverse=reverse, limit=limit)
    return [(key[cut:].decode(), cid) for key, cid in rows]


def collections(state: RepoState, commit: CID | str | None = None) -> list[str]:
    """See :meth:`pypds.Repo.collections`."""
    root: Link
    if commit is None:
        state.refresh()
        root = state.root
    else:
        root = tree_root(state, commit)[1]
    found: list[str] = []
    start: bytes | None = None
    while True:
        first = next(iter_range(state.nodes, root, start), None)
        if first is None:
            return found
        collection = first[0].split(b"/", 1)[0]
        found.append(collection.decode())
        start = collection + b"0"


def records(state: RepoState, collection: str | None, commit: CID | str | None) -> Iterator[Record]:
    """See :meth:`pypds.Repo.records`. Pins the commit now; the records are read as they are asked for."""
    if collection is None:
        start, stop = b"", None
    else:
        start = check_collection(collection).encode() + b"/"
        stop = start[:-1] + b"0"
    pinned, root = tree_root(state, "HEAD" if commit is None else commit)
    return _records(state, pinned, root, start, stop)


def _records(state: RepoState, pinned: CID, root: CID, start: bytes, stop: bytes | None) -> Iterator[Record]:
    indexed = True  # the paths index is at the pinned commit (checked on every page)
    while True:
        with state.lock:
            state.check_open()
            try:
                page, indexed = _page(state, pinned, root, start, stop, indexed)
            except SqliteError as exc:
                raise storage_error(exc, state.path) from None
        last = len(page) < RECORDS_PAGE
        if not last:
            start = page[-1][0] + b"\x00"
        page.reverse()
        while page:  # handed out and let go one by one: at most one page is held
            path, cid, data = page.pop()
            text = path.decode()
            yield text, cid, cbor.decode(data, text)
        if last:
            return


def _page(
    state: RepoState, pinned: CID, root: CID, start: bytes, stop: bytes | None, indexed: bool
) -> tuple[list[tuple[bytes, CID, bytes]], bool]:
    """The next page of ``(path, record CID, record block)`` from ``start``, and whether the index served it."""
    store = state.store
    if indexed:
        with store.snapshot():
            indexed = store.index_head() == pinned
            rows = store.index_records(start, stop, RECORDS_PAGE) if indexed else []
        if indexed:
            return [(path, CID(cid), _present(path, CID(cid), data)) for path, cid, data in rows], True
    leaves = itertools.islice(iter_range(state.nodes, root, start, stop), RECORDS_PAGE)
    return [(path, cid, _present(path, cid, store.get_block(cid))) for path, cid in leaves], False


def _present(path: bytes, cid: CID, data: bytes | None) -> bytes:
    if data is None:
        raise MissingBlock(f"record block {cid.encode()} for {path.decode()} is missing", cid)
    return data
