"""Garbage collection: drop what neither HEAD nor a named ref reaches, and give the space back.

Blocks go in one transaction (a crash leaves all or none removed); blob
files go after it, so a crash can only leave some unreferenced files for
the next gc. Blob files younger than the grace period are kept: another
process may be about to commit a record that references them.

Space: deleted rows only free pages inside ``pds.db``; the file keeps its
size. When the free pages are worth it (:data:`AUTO_VACUUM_FRACTION` of the
file, or always with ``vacuum=True``), gc then runs SQLite's ``VACUUM``,
which rewrites the database without them; a checkpoint then truncates the
write-ahead log (and ``pds.db``, if it shrank). ``VACUUM`` is one write transaction (in WAL mode
every rewritten page goes through the log, so a crash leaves the database
either as it was or vacuumed: never half of it); it holds the write lock
while it runs (other writers wait up to their busy timeout, readers go on),
needs free disk for a temporary copy of the live data, and takes time in
proportion to the live data. Incremental vacuum was not chosen: it needs
``auto_vacuum`` set before the tables are created (stores from before
schema 5 would need a full ``VACUUM`` to switch anyway), costs every commit
pointer-map updates, and leaves the file fragmented.
"""

from __future__ import annotations

from typing import NamedTuple

from ..codec import cbor
from ..codec.cid import CID
from ..errors import MissingBlock
from ..mst import iter_stored_stream_order
from ..storage.blobs import blob_refs
from ..storage.store import SqliteError, storage_error
from .state import RepoState

__all__ = ["AUTO_VACUUM_FRACTION", "GcReport", "gc", "reachable"]

#: Without ``vacuum=``, gc vacuums when at least this fraction of ``pds.db`` is free pages.
AUTO_VACUUM_FRACTION = 0.1


class GcReport(NamedTuple):
    """What :meth:`pypds.Repo.gc` freed (or, with ``dry_run``, would free).

    ``db_bytes_before`` / ``db_bytes_after``: ``pds.db`` and its write-ahead
    log on disk before and after (the same for a dry run); ``vacuumed``:
    whether ``pds.db`` was rewritten to give the space back.
    """

    blocks: int
    block_bytes: int
    blobs: int
    blob_bytes: int
    db_bytes_before: int = 0
    db_bytes_after: int = 0
    vacuumed: bool = False
    dry_run: bool = False


def gc(state: RepoState, blob_grace: float, *, dry_run: bool = False, vacuum: bool | None = None) -> GcReport:
    """See :meth:`pypds.Repo.gc`."""
    store = state.store
    before = store.file_bytes()
    with store.snapshot() if dry_run else store.transaction():
        state.refresh()
        roots = [state.head, *(cid for _name, cid in store.list_refs())]
        blocks_kept, blobs_kept = reachable(state, roots)
        blocks, size = store.delete_blocks_except(blocks_kept, dry_run=dry_run)
    removed = state.blobs.remove_unreferenced(blobs_kept, blob_grace, dry_run=dry_run)
    blob_bytes = sum(length for _cid, length in removed)
    if dry_run:
        return GcReport(blocks, size, len(removed), blob_bytes, before, before, dry_run=True)
    state.nodes.clear()
    if removed:
        with store.transaction():
            store.delete_blob_types(cid for cid, _length in removed)
    vacuumed = _give_back(state, blocks) if _worth_vacuum(state, vacuum) else False
    store.checkpoint()
    return GcReport(blocks, size, len(removed), blob_bytes, before, store.file_bytes(), vacuumed)


def _worth_vacuum(state: RepoState, vacuum: bool | None) -> bool:
    if vacuum is not None:
        return vacuum
    store = state.store
    free = store.free_bytes()
    return free > 0 and free >= AUTO_VACUUM_FRACTION * store.file_bytes()


def _give_back(state: RepoState, blocks: int) -> bool:
    """Vacuum ``pds.db``; a failure says that the blocks are gone and the space comes with the next gc."""
    try:
        state.store.vacuum()
    except SqliteError as exc:
        error = storage_error(exc, state.path)
        raise type(error)(f"{error} (gc removed {blocks} blocks; run gc again to give their space back)") from None
    return True


def reachable(state: RepoState, commits: list[CID]) -> tuple[set[bytes], set[bytes]]:
    """Every block reachable from ``commits``, and every blob their records reference (CID bytes)."""
    store = state.store
    blocks: set[bytes] = set()
    blobs: set[bytes] = set()
    for commit_cid in commits:
        blocks.add(commit_cid.cid_bytes)
        commit = state.load_commit(commit_cid)
        fresh = lambda cid: cid.cid_bytes not in blocks  # noqa: E731 - shared subtrees are walked once
        walk = iter_stored_stream_order(state.nodes.cached, store.get_block, commit.data, keep=fresh)
        for cid, node_block in walk:
            blocks.add(cid.cid_bytes)
            if node_block is None:
                data = store.get_block(cid)
                if data is None:
                    raise MissingBlock(f"record block {cid.encode()} is missing", cid)
                blobs.update(blob.cid_bytes for blob in blob_refs(cbor.decode(data)))
    return blocks, blobs
