"""Which blobs the records at HEAD reference: what ``listBlobs`` lists and ``getBlob`` serves.

A blob's file outlives the last record that references it (until ``gc``),
as at the reference PDS, which stops listing and serving it then.
:class:`ReferencedBlobs` is the set the records of one tree reference, kept
on the handle and moved from tree to tree by the record diff, so asking
again at a new HEAD costs what changed, not a read of every record. The
functions below answer :meth:`pypds.Repo.list_blobs`,
:meth:`~pypds.Repo.blob_referenced` and :meth:`~pypds.Repo.missing_blobs`.

Traps: the first count reads every record. It runs without holding the
handle's lock (a page of the paths index per hold), and gives up on the
index (:class:`RecordsMoved`) if HEAD moves meanwhile, walking the tree
instead.
"""

from __future__ import annotations

import functools
import itertools
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from ..codec import cbor
from ..codec.cid import CID, parse_cid
from ..errors import InvalidInput, MissingBlock
from ..mst import Node, NodeSource, diff_trees, iter_range
from ..storage.blobs import blob_refs
from ..syntax import check_tid

if TYPE_CHECKING:
    from .state import RepoState

__all__ = [
    "RecordsMoved",
    "ReferencedBlobs",
    "blob_referenced",
    "list_blobs",
    "missing_blobs",
    "record_blob_names",
]

_BLOB_TYPE, _MIME_TYPE_KEY = b"\x64blob", b"\x68mimeType"


def blob_names_in(record: CID, data: bytes | None) -> list[str]:
    """CID strings of the blobs record block ``data`` (of CID ``record``, None if it is missing) references."""
    if data is None:
        raise MissingBlock(f"record block {record.encode()} is missing", record)
    if _BLOB_TYPE not in data and _MIME_TYPE_KEY not in data:  # no reference of either form: not decoded
        return []
    return [cid.encode() for cid in blob_refs(cbor.decode(data, f"record {record.encode()}"))]


def record_blob_names(get_block: Callable[[CID], bytes | None], record: CID) -> list[str]:
    """CID strings of the blobs the record block ``record`` references (see :func:`blob_refs`)."""
    return blob_names_in(record, get_block(record))


class RecordsMoved(Exception):
    """Raised by a ``records`` reader of :meth:`ReferencedBlobs.names_at` that could not keep to one tree."""


class ReferencedBlobs:
    """The blobs the records of one tree reference, moved from tree to tree by record diffs.

    :meth:`names_at` answers for a tree root. The first answer reads every
    record; an answer for a new root applies the record diff from the root
    before (work in proportion to the records changed), or reads every
    record again when that diff cannot be read (blocks removed by gc). Each
    blob is counted once per record that references it, so it leaves the
    set with the last such record. Memory: one entry per distinct blob
    (about 160 bytes with its sorted name: 155 measured). Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root: CID | None = None
        self._counts: dict[str, int] = {}
        self._names: list[str] = []

    def names_at(
        self,
        source: NodeSource,
        root: Node,
        get_block: Callable[[CID], bytes | None],
        records: Callable[[], Iterable[tuple[CID, bytes | None]]] | None = None,
    ) -> list[str]:
        """CID strings of the blobs the tree at ``root`` references, sorted. Do not change the list.

        ``records``, if given, reads every ``(record CID, block)`` of that
        tree faster than a walk of it (a table of HEAD's records, say), or
        raises :class:`RecordsMoved` if it cannot; a count of every record
        uses it first.
        """
        with self._lock:
            if self._root != root.cid:
                self._move_to(source, root, get_block, records)
            return self._names

    def _move_to(
        self,
        source: NodeSource,
        root: Node,
        get_block: Callable[[CID], bytes | None],
        records: Callable[[], Iterable[tuple[CID, bytes | None]]] | None,
    ) -> None:
        old, self._root = self._root, None  # the counts belong to no tree until the move completes
        try:
            names = None
            if old is not None:
                try:
                    names = self._apply_diff(source, old, root, get_block)
                except MissingBlock:  # the old tree or its records are gone (gc): count afresh
                    names = None
            if names is None and records is not None:
                try:
                    names = self._count_all(records())
                except RecordsMoved:
                    names = None
            if names is None:
                names = self._count_all((cid, get_block(cid)) for _key, cid in iter_range(source, root))
        except BaseException:
            self._counts, self._names = {}, []
            raise
        self._names, self._root = names, root.cid

    def _count_all(self, records: Iterable[tuple[CID, bytes | None]]) -> list[str]:
        counts: dict[str, int] = {}
        for record, data in records:
            for name in blob_names_in(record, data):
                counts[name] = counts.get(name, 0) + 1
        self._counts = counts
        return sorted(counts)

    def _apply_diff(
        self, source: NodeSource, old: CID, root: Node, get_block: Callable[[CID], bytes | None]
    ) -> list[str]:
        counts = self._counts
        gained: set[str] = set()
        lost: set[str] = set()
        for change in diff_trees(source, old, root):
            for name in [] if change.old is None else record_blob_names(get_block, change.old):
                counts[name] -= 1
                if not counts[name]:
                    del counts[name]
                    _move_name(name, gained, lost)
            for name in [] if change.new is None else record_blob_names(get_block, change.new):
                counts[name] = counts.get(name, 0) + 1
                if counts[name] == 1:
                    _move_name(name, lost, gained)
        if not gained and not lost:
            return self._names
        kept = [name for name in self._names if name not in lost]
        return sorted(kept + list(gained))  # kept is one sorted run: the sort merges into it in linear time


def _move_name(name: str, source: set[str], target: set[str]) -> None:
    """Note ``name`` as moved from ``source`` to ``target`` (undoing an earlier opposite move)."""
    if name in source:
        source.discard(name)
    else:
        target.add(name)


def list_blobs(
    state: RepoState,
    *,
    since: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
    stored: bool = False,
) -> list[CID]:
    """See :meth:`pypds.Repo.list_blobs`."""
    state.check_open()
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must not be negative: {limit}")
    if since is not None:
        check_tid(since, "since rev")
        if stored:
            raise InvalidInput("list_blobs: since and stored=True cannot be combined")
        names = _names_since(state, since)
    else:
        names = state.blobs.names() if stored else referenced_names(state)
    found: list[CID] = []
    for index in range(0 if cursor is None else bisect_right(names, cursor), len(names)):
        if limit is not None and len(found) >= limit:
            break
        cid = CID.decode(names[index])
        if state.blobs.has(cid):
            found.append(cid)
    return found


def blob_referenced(state: RepoState, cid: CID | str) -> bool:
    """See :meth:`pypds.Repo.blob_referenced`."""
    name = parse_cid(cid).encode()
    names = referenced_names(state)
    index = bisect_left(names, name)
    return index < len(names) and names[index] == name


def referenced_names(state: RepoState) -> list[str]:
    """Sorted CID strings of the blobs records at HEAD reference (shared: do not change)."""
    with state.lock:
        state.refresh()
        head, root = state.head, state.root
    records = functools.partial(_indexed_records, state, head)
    return state.referenced_blobs.names_at(state.nodes, root, state.get_block_locked, records)


def _indexed_records(state: RepoState, head: CID) -> Iterator[tuple[CID, bytes | None]]:
    """``(record CID, block)`` for every record of HEAD ``head``'s tree, read from the paths index
    a page per hold of the lock; raises RecordsMoved if the index is not at ``head`` or anything
    was committed meanwhile (the pages would mix two trees)."""
    with state.lock:
        store = state.store
        version = store.data_version()
        if store.index_head() != head:
            raise RecordsMoved(f"the paths index is not at {head.encode()}")
        rows = store.index_blocks()
    while True:
        with state.lock:
            store = state.store
            if store.data_version() != version or state.head != head:
                raise RecordsMoved(f"HEAD moved from {head.encode()} while its records were read")
            page = list(itertools.islice(rows, 4096))
        if not page:
            return
        for cid, data in page:
            yield CID(cid), data


def _names_since(state: RepoState, since: str) -> list[str]:
    """Sorted CID strings of the blobs referenced by records created or updated after rev ``since``."""
    with state.lock:
        state.refresh()
        base = state.store.commit_at(since)
        old_root = None if base is None else state.load_commit(base).data
        root = state.root
    if old_root is None:
        return referenced_names(state)
    names: set[str] = set()
    for change in diff_trees(state.nodes, old_root, root):
        if change.new is not None:
            names.update(record_blob_names(state.get_block_locked, change.new))
    return sorted(names)


def missing_blobs(state: RepoState) -> list[CID]:
    """See :meth:`pypds.Repo.missing_blobs`."""
    state.refresh()
    store = state.store
    missing: dict[bytes, CID] = {}
    for _key, cid in iter_range(state.nodes, state.root):
        data = store.get_block(cid)
        if data is None:
            raise MissingBlock(f"record block {cid.encode()} is missing", cid)
        for blob in blob_refs(cbor.decode(data)):
            if blob.cid_bytes not in missing and not state.blobs.has(blob):
                missing[blob.cid_bytes] = blob
    return list(missing.values())
