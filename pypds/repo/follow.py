"""Applying a verified ``#commit`` message to a followed copy, without walking the whole tree.

:func:`pypds.verify_commit_message` has already checked the message the
sync 1.1 way: the diff CAR's blocks hash to their CIDs, the commit is the
account's and validly signed, every op's CID is what the new tree holds,
and undoing the ops on the partial tree gives ``prev_data``. What is left
to check is that the commit builds on exactly what this copy holds, inside
the transaction that applies it:

* the commit is newer than HEAD (a commit this copy already holds is a
  duplicate: nothing happens; anything else not newer is a rollback and is
  refused),
* the message's ``since`` is HEAD's rev and ``prev_data`` is HEAD's MST
  root; otherwise :class:`~pypds.errors.CommitGap` (the follower resyncs).

Then the new tree equals the stored tree with the ops applied, so only the
blocks of the new tree the CAR carries are written (the commit, the MST
nodes reachable from the new root through the CAR, each op's record,
checked as a record), the paths index takes the ops, and HEAD moves: one
transaction. A message without ``prevData`` (before sync 1.1) whose ops
could not be undone is applied the slow, complete way instead: the tree
is walked as :meth:`Repo.apply_car` does, still inside one transaction.
"""

from __future__ import annotations

from ..car.stream import StreamedCar, check_record
from ..codec.cid import CID
from ..commit import rev_is_newer, rev_key
from ..errors import CommitGap, DidMismatch, InvalidCommitMessage, InvalidMst, MissingBlock, RollbackRefused, shown
from ..mst.node import Node, key_height
from ..mst.nodestore import NodeStore
from ..sync.firehose import VerifiedCommit
from .importer import import_streamed
from .state import RepoState
from .writer import update_index

__all__ = ["APPLIED", "DUPLICATE", "apply_commit"]

APPLIED, DUPLICATE = "applied", "duplicate"


def apply_commit(state: RepoState, verified: VerifiedCommit, since: str | None, car: bytes | None = None) -> str:
    """See :meth:`pypds.Repo.apply_commit`; returns :data:`APPLIED` or :data:`DUPLICATE`."""
    store = state.store
    commit, cid = verified.commit, verified.commit_cid
    if commit.did != state.did:
        raise DidMismatch(f"commit {cid.encode()} is for {commit.did}, not {state.did}")
    with store.transaction():
        state.refresh()
        if cid == state.head or store.commit_history(cid) is not None:
            return DUPLICATE
        if not rev_is_newer(commit.rev, state.rev or None):
            raise RollbackRefused(cid, commit.rev, state.head, state.rev or None, source="the followed commit")
        if since != (state.rev or None):
            raise CommitGap(
                f"commit {cid.encode()} (rev {commit.rev}) follows rev {since or 'none'}, the copy of "
                f"{state.did} is at {state.head_label()}"
            )
        if verified.inverted and verified.prev_data is not None:
            if verified.prev_data != state.root.cid:
                raise CommitGap(
                    f"commit {cid.encode()} builds on MST root {verified.prev_data.encode()}, the copy of "
                    f"{state.did} holds {state.root.cid.encode()}"
                )
            root = _write_new_tree(state, verified)
        elif car is not None:
            root = None
            with StreamedCar(car, state.limits) as streamed:
                if streamed.root != cid:
                    raise InvalidCommitMessage(f"the CAR is for commit {streamed.root.encode()}, not {cid.encode()}")
                import_streamed(state, streamed, streamed.commit(), None, held=store.get_block, prev=state.head)
        else:
            raise CommitGap(f"commit {cid.encode()} could not be inverted and no CAR was given to check it whole")
    if root is None:
        state.refresh(force=True)
    else:  # HEAD is what was just written (its root decoded from stored bytes): no need to read it back
        state.adopt(cid, rev_key(commit.rev), root, key_height(root.keys[0]) if root.keys else 0)
    return APPLIED


def _write_new_tree(state: RepoState, verified: VerifiedCommit) -> Node | None:
    """Write the commit, its new MST nodes and records, the index changes, and move HEAD; the new root
    node (None if the CAR does not carry it)."""
    store = state.store
    blocks, cid, rev = verified.blocks, verified.commit_cid, rev_key(verified.commit.rev)
    rows = [(cid.cid_bytes, rev, blocks[cid.cid_bytes])]
    carried = _carried_nodes(state, verified)
    rows.extend((node.cid.cid_bytes, rev, node.data) for node in carried)
    changes: list[tuple[bytes, bytes | None]] = []
    for change in verified.changes:
        path = change.path.encode()
        new = change.new
        changes.append((path, None if new is None else new.cid_bytes))
        if new is None:
            continue
        data = blocks.get(new.cid_bytes)
        if data is None:
            if not store.has_block(new):
                where = f"commit {cid.encode()}: the record {new.encode()} for {change.path}"
                raise MissingBlock(f"{where} is missing", new)
            continue
        check_record(new, path, data, state.limits)
        rows.append((new.cid_bytes, rev, data))
    store.put_block_rows(rows)
    update_index(state, cid, verified.data, changes)
    store.set_head(cid, rev)
    store.record_commit(cid, rev, state.head)
    return carried[0] if carried and carried[0].cid == verified.data else None


def _carried_nodes(state: RepoState, verified: VerifiedCommit) -> list[Node]:
    """The MST nodes of the new tree that the CAR carries (reached from the root through the CAR),
    each checked to sit on its layer: undoing the ops proves the keys and their order, not that a
    new key was put on the layer its hash gives, so that is checked here before anything is stored."""
    blocks = verified.blocks
    nodes = verified.nodes or NodeStore(lambda c: blocks.get(c.cid_bytes), state.limits)
    found: list[Node] = []
    seen: set[bytes] = set()
    stack: list[tuple[CID, int | None]] = [(verified.data, None)]  # (link, its layer; None for the root)
    while stack:
        link, layer = stack.pop()
        if link.cid_bytes in seen or link.cid_bytes not in blocks:
            continue
        seen.add(link.cid_bytes)
        node = nodes.load_node(link)
        layer = _check_layer(node, link, layer)
        found.append(node)
        stack.extend(
            (child if isinstance(child, CID) else child.cid, layer - 1) for child in node.links if child is not None
        )
    return found


def _check_layer(node: Node, cid: CID, layer: int | None) -> int:
    """The node's layer (the root's from its first key); InvalidMst if a key or link is off its layer."""
    if layer is None:
        layer = key_height(node.keys[0]) if node.keys else 0
    elif node.is_empty:
        raise InvalidMst(f"MST node {cid.encode()} is empty but not the root")
    if layer < 0 or (layer == 0 and any(link is not None for link in node.links)):
        raise InvalidMst(f"MST node {cid.encode()} links below layer 0")
    for key in node.keys:
        if key_height(key) != layer:
            raise InvalidMst(f"MST node {cid.encode()}: key {shown(key)} has height {key_height(key)}, not {layer}")
    return layer
