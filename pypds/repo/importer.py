"""Importing CARs into a repository: a full repository CAR (``import_car``, ``from_car``) or a diff
CAR on top of what the repository holds (``apply_car``).

The CAR is read once, as a stream (:class:`~pypds.car.stream.StreamedCar`):
the tree walk checks every MST rule, record and block while the blocks and
the paths index are written in batches inside one transaction, and HEAD
moves only at its end, once the rest of the CAR has been read and checked
too. Any failure rolls the whole transaction back.

Traps: a download must never move a copy back in time, so ``apply_car``
(and ``import_car(require_newer=True)``) compare revs *inside* the
transaction, where no other writer can slip in; a missing rev (a version 2
commit) is older than every rev.
"""

from __future__ import annotations

from collections.abc import Callable

from ..car.reader import CarSource
from ..car.stream import StreamedCar
from ..codec.cid import CID
from ..commit import Commit, rev_is_newer, rev_key
from ..errors import DidMismatch, RollbackRefused
from ..keys import PublicKey, SigningKey, load_public_key
from .state import RepoState

__all__ = ["IMPORT_BATCH_BYTES", "IMPORT_BATCH_PATHS", "apply_car", "import_car", "import_streamed"]

#: An import writes its blocks to the store in batches of about this many bytes
#: (each sorted by CID), and its paths index rows in batches of this many.
IMPORT_BATCH_BYTES = 32 << 20
IMPORT_BATCH_PATHS = 50_000

KeyInput = PublicKey | SigningKey | str | None


def import_car(state: RepoState, source: CarSource, key: KeyInput, *, require_newer: bool = False) -> int:
    """See :meth:`pypds.Repo.import_car`."""
    store = state.store
    with StreamedCar(source, state.limits) as streamed:
        commit = streamed.commit()
        with store.transaction():
            if require_newer:
                state.refresh()
                refuse_rollback(streamed.root, commit.rev, state.head, state.rev or None)
            count = import_streamed(state, streamed, commit, key)
    state.refresh(force=True)
    return count


def apply_car(state: RepoState, source: CarSource, key: KeyInput) -> int:
    """See :meth:`pypds.Repo.apply_car`."""
    store = state.store
    with StreamedCar(source, state.limits) as streamed:
        commit = streamed.commit()
        with store.transaction():
            state.refresh()
            refuse_rollback(streamed.root, commit.rev, state.head, state.rev or None)
            count = import_streamed(state, streamed, commit, key, held=store.get_block, prev=state.head)
    state.refresh(force=True)
    return count


def import_streamed(
    state: RepoState,
    streamed: StreamedCar,
    commit: Commit,
    key: KeyInput,
    held: Callable[[CID], bytes | None] | None = None,
    prev: CID | None = None,
) -> int:
    """Check a CAR against this repo while writing it (inside a transaction); the blocks written.

    The tree is walked and checked as the CAR streams in; its blocks and
    the paths index are written in batches, and HEAD moves only once the
    walk and the rest of the CAR have been checked: a failure rolls the
    whole transaction back. ``held`` completes a diff CAR from the blocks
    already stored; ``prev`` is the commit the CAR's commit follows (known
    for a diff CAR).
    """
    if commit.did != state.did:
        raise DidMismatch(f"CAR commit {streamed.root.encode()} is for {commit.did}, not {state.did}")
    if key is not None:
        commit.verify(load_public_key(key))
    store = state.store
    rev = rev_key(commit.rev)  # a version 2 commit's blocks get "", older than every rev
    store.index_clear()
    blocks: list[tuple[CID, bytes]] = []
    waiting: set[bytes] = set()  # the CIDs in blocks
    leaves: list[tuple[bytes, CID]] = []
    pending = written = 0

    def stored(cid: CID) -> bool:  # a record met again under another key: written already?
        return cid.cid_bytes in waiting or store.has_block(cid)

    for cid, data, path in streamed.tree_blocks(commit, held, stored=stored):
        if data is not None:
            blocks.append((cid, data))
            waiting.add(cid.cid_bytes)
            pending += len(data)
            if pending >= IMPORT_BATCH_BYTES:
                store.put_blocks(blocks, rev)
                written += len(blocks)
                blocks, pending = [], 0
                waiting.clear()
        if path is not None:
            leaves.append((path, cid))
            if len(leaves) >= IMPORT_BATCH_PATHS:
                store.index_add(leaves)
                leaves = []
    store.put_blocks(blocks, rev)
    store.index_add(leaves)
    streamed.finish()
    store.set_index_head(streamed.root)
    store.set_head(streamed.root, rev)
    if prev is not None:  # a full import's predecessor is unknown: no #commit event for it
        store.record_commit(streamed.root, rev, prev)
    return written + len(blocks)


def refuse_rollback(offered: CID, offered_rev: str | None, head: CID, head_rev: str | None) -> None:
    """RollbackRefused unless the offered commit is newer than HEAD (a missing rev is older than any)."""
    if not rev_is_newer(offered_rev, head_rev):
        raise RollbackRefused(offered, offered_rev, head, head_rev)
