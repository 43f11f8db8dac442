"""Writing commits: record operations -> a new tree -> a signed commit -> one transaction.

A commit is first *built* as data (:class:`BuiltCommit`: the new tree, its
new nodes, the signed commit block and its rev) and then *applied* to the
store inside the transaction that also moves HEAD and the paths index.
Only once that transaction has committed does the handle adopt the new
state (:func:`adopt`): a failure anywhere leaves the store and the handle
as they were.

Traps:

* **Build on the latest HEAD.** Another process may have committed since
  the handle last looked; :func:`commit_ops` refreshes inside the
  transaction (under SQLite's write lock) before building.
* **One key per history.** A key that did not sign HEAD's commit raises
  :class:`~pypds.errors.SigningKeyMismatch` unless the handle was opened
  with ``rotate_key=True``; the check runs once per HEAD.
* **Nodes are marked persisted only after the commit** (:func:`adopt`),
  never inside the transaction: a rolled-back write must not leave nodes
  that claim to be stored.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from ..codec.cid import CID
from ..commit import sign_commit
from ..errors import BadSignature, HeadMoved, RecordNotFound, SigningKeyMismatch, SigningKeyRequired
from ..keys import SigningKey
from ..mst import Link, Node, build_tree, empty_node, iter_range
from ..mst import delete as mst_delete
from ..mst import put as mst_put
from ..operation import WriteOp
from .state import RepoState

__all__ = [
    "BULK_BUILD_THRESHOLD",
    "BuiltCommit",
    "adopt",
    "check_key_for_write",
    "commit_ops",
    "require_key",
    "signed_head",
    "update_index",
    "write_first_commit",
]

#: A batch on an empty tree with at least this many writes is built bottom-up.
BULK_BUILD_THRESHOLD = 64


@dataclass(frozen=True)
class BuiltCommit:
    """A signed commit and everything it adds, before it is written."""

    cid: CID
    rev: str
    block: bytes
    root: Node
    height: int
    nodes: list[Node]  # the tree's nodes not yet stored


def commit_ops(state: RepoState, ops: list[WriteOp], *, expect_root: CID | None = None) -> CID:
    """Apply ``ops`` to the tree at HEAD and write them as one signed commit; the commit's CID.

    With ``expect_root``, the new tree must have that root (checked under the
    write lock, before anything is written): else :class:`HeadMoved`.
    """
    key = require_key(state)
    store = state.store
    with store.transaction():
        state.refresh()  # under the write lock: we build on the latest HEAD
        check_key_for_write(state, key)
        root, height = _apply_ops(state, ops)
        if expect_root is not None and root.cid != expect_root:
            raise HeadMoved(f"repository at {state.path}: HEAD moved while the write was prepared")
        built = _sign(state, root, height, key)
        records = ((CID(cid), data) for _key, cid, data in ops if cid is not None and data is not None)
        _write(state, built, records)
        update_index(state, built.cid, root, _effects(ops))
    adopt(state, built)
    # No data_version read here: a commit by another connection may land right
    # after ours, and must be loaded by the next call, not marked as seen.
    # (Our own commit does not change data_version; the in-transaction
    # refresh above recorded the right value.)
    return built.cid


def write_first_commit(state: RepoState, key: SigningKey) -> BuiltCommit:
    """Sign and write the commit over the empty tree of a new repository (inside its transaction)."""
    root = empty_node()
    built = _sign(state, root, 0, key)
    _write(state, built, [])
    state.store.index_replace(built.cid, [])  # the empty tree's (empty) paths index
    return built


def adopt(state: RepoState, built: BuiltCommit) -> None:
    """After the transaction committed: the new nodes are stored, our key signed HEAD, HEAD moved."""
    state.key_verdict = (built.cid.cid_bytes, True)
    for node in built.nodes:
        node.persisted = True
        state.nodes.add(node)
    state.adopt(built.cid, built.rev, built.root, built.height)


def require_key(state: RepoState) -> SigningKey:
    """The handle's signing key; SigningKeyRequired without one."""
    if state.signing_key is None:
        raise SigningKeyRequired(f"repository at {state.path} has no signing key: pass signing_key= to Repo.open")
    return state.signing_key


def signed_head(state: RepoState, key: SigningKey) -> bool:
    """True if ``key`` signed HEAD's commit; verified once per HEAD (a signature check, any commit version)."""
    head, verdict = state.key_verdict
    if head != state.head.cid_bytes:
        try:
            state.load_commit(state.head).verify(key.public_key)
            verdict = True
        except BadSignature:
            verdict = False
        state.key_verdict = (state.head.cid_bytes, verdict)
    return verdict


def check_key_for_write(state: RepoState, key: SigningKey) -> None:
    """SigningKeyMismatch unless ``key`` signed HEAD or the handle may rotate keys."""
    if state.rotate_key or signed_head(state, key):
        return
    raise SigningKeyMismatch(
        f"repository at {state.path}: HEAD {state.head.encode()} ({state.head_label()}) was not signed by "
        f"{key.did_key}; a commit with this key would leave a history that verifies against two keys "
        "(open with rotate_key=True to do so)"
    )


def _apply_ops(state: RepoState, ops: list[WriteOp]) -> tuple[Node, int]:
    """The tree at HEAD with ``ops`` applied, and its height (a big first batch is built bottom-up)."""
    root = state.root
    if root.is_empty and len(ops) >= BULK_BUILD_THRESHOLD:
        final: dict[bytes, bytes] = {}
        for key, cid, _data in ops:
            if cid is not None:
                final[key] = cid
            elif final.pop(key, None) is None:
                raise RecordNotFound(f"no record at {key.decode()}")
        return build_tree([(key, CID(final[key])) for key in sorted(final)])
    new_root, height = root, state.height
    for key, cid, _data in ops:
        if cid is not None:
            new_root, height = mst_put(state.nodes, new_root, height, key, CID(cid))
        else:
            new_root, height = mst_delete(state.nodes, new_root, height, key)
    return new_root, height


def _sign(state: RepoState, root: Node, height: int, key: SigningKey) -> BuiltCommit:
    rev = state.clock.next()
    _commit, block, cid = sign_commit(state.did, root.cid, rev, key)
    return BuiltCommit(cid, rev, block, root, height, _unpersisted_nodes(root))


def _write(state: RepoState, built: BuiltCommit, records: Iterable[tuple[CID, bytes]]) -> None:
    """Write the commit's blocks and move HEAD (inside a transaction)."""
    store = state.store
    nodes = ((node.cid, node.data) for node in built.nodes)
    store.put_blocks(itertools.chain(nodes, records, [(built.cid, built.block)]), built.rev)
    store.set_head(built.cid, built.rev)
    store.record_commit(built.cid, built.rev, state.head if state.head.cid_bytes else None)


def update_index(state: RepoState, head: CID, root: Link, changes: list[tuple[bytes, bytes | None]]) -> None:
    """Bring the paths index to ``head`` (inside the transaction that moves HEAD there).

    ``changes`` (path, new record CID bytes or None) are applied when the index is at the previous HEAD;
    otherwise (a store from an older pypds) it is rebuilt from the tree.
    """
    store = state.store
    if state.head.cid_bytes and store.index_head() == state.head:
        store.index_apply(head, changes)
    else:
        store.index_replace(head, iter_range(state.nodes, root))


def _unpersisted_nodes(root: Node) -> list[Node]:
    """Nodes reachable from ``root`` through in-memory links that are not yet stored."""
    found: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.persisted:
            continue
        found.append(node)
        stack.extend(link for link in node.links if type(link) is Node)
    return found


def _effects(ops: list[WriteOp]) -> list[tuple[bytes, bytes | None]]:
    """The net change per key of a list of writes: the new record CID bytes, or None if deleted."""
    return list({key: cid for key, cid, _data in ops}.items())
