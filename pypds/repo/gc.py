"""Garbage collection: drop what neither HEAD nor a named ref reaches.

Blocks go in one transaction (a crash leaves all or none removed); blob
files go after it, so a crash can only leave some unreferenced files for
the next gc. Blob files younger than the grace period are kept: another
process may be about to commit a record that references them.
"""

from __future__ import annotations

from typing import NamedTuple

from ..codec import cbor
from ..codec.cid import CID
from ..errors import MissingBlock
from ..mst import iter_stored_stream_order
from ..storage.blobs import blob_refs
from .state import RepoState

__all__ = ["GcReport", "gc", "reachable"]


class GcReport(NamedTuple):
    """What :meth:`pypds.Repo.gc` freed."""

    blocks: int
    block_bytes: int
    blobs: int
    blob_bytes: int


def gc(state: RepoState, blob_grace: float) -> GcReport:
    """See :meth:`pypds.Repo.gc`."""
    store = state.store
    with store.transaction():
        state.refresh()
        roots = [state.head, *(cid for _name, cid in store.list_refs())]
        blocks_kept, blobs_kept = reachable(state, roots)
        blocks, size = store.delete_blocks_except(blocks_kept)
    state.nodes.clear()
    files, blob_bytes = state.blobs.remove_unreferenced(blobs_kept, blob_grace)
    return GcReport(blocks, size, files, blob_bytes)


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
