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

Group commit: threads writing through one handle queue their writes
(:class:`~pypds.repo.commit_queue.CommitQueue`); one of them leads: it
writes every queued write as its own signed commit, each with its own rev
and chained on the one before, in one transaction with one fsync, while
the others keep queueing for the next group. The group's commits are
built in memory first, so a write that fails (a delete of an absent
record) fails its own call alone; then the whole group is written with a
few statements. A call returns once the transaction holding its commit is
durable, and if that transaction fails, every call in it fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from ..codec.cid import CID
from ..commit import sign_commit
from ..errors import (
    BadSignature,
    HeadMoved,
    PypdsError,
    RecordNotFound,
    SigningKeyMismatch,
    SigningKeyRequired,
    StorageError,
    StoreDamaged,
)
from ..keys import SigningKey
from ..mst import Link, Node, build_tree, empty_node, iter_range
from ..mst import delete as mst_delete
from ..mst import put as mst_put
from ..operation import WriteOp
from ..storage.store import SqliteError, storage_error
from .commit_queue import Request
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
    """Write ``ops`` as one signed commit on the tree at HEAD; the commit's CID once it is durable.

    Concurrent calls on one handle share a transaction and its fsync (see
    the module docstring); each still gets its own commit. With
    ``expect_root``, the new tree must have that root (checked under the
    write lock, before anything is written): else :class:`HeadMoved`.
    """
    queue = state.commits
    request = queue.submit(ops, expect_root)
    group = queue.wait_turn(request)
    if group is not None:
        try:
            with state.lock:
                _commit_group(state, group)
        finally:
            queue.done_leading()
    if request.error is not None:
        raise request.error
    assert request.result is not None
    return request.result


def _commit_group(state: RepoState, group: list[Request]) -> None:
    """Write each request as its own commit, chained, in one transaction (the handle's lock is held).

    Every commit of the group is built and signed in memory first (a write
    that fails there, a delete of an absent record say, fails its own call
    and the next commit chains on the last good one); then the whole group
    is written with a few statements and one COMMIT.
    """
    built: list[tuple[Request, BuiltCommit, CID, list[WriteOp]]] = []  # request, commit, the commit before
    try:
        state.check_open()
        key = require_key(state)
        store = state.store
        with store.transaction():
            state.refresh()  # under the write lock: we build on the latest HEAD
            check_key_for_write(state, key)
            start = state.head
            head, root, height = state.head, state.root, state.height
            skip: set[bytes] = set()  # nodes already counted as new by an earlier commit of the group
            for index, request in enumerate(group):
                try:
                    new_root, new_height = _apply_ops(state, root, height, request.ops)
                    if request.expect_root is not None and new_root.cid != request.expect_root:
                        raise HeadMoved(f"repository at {state.path}: HEAD moved while the write was prepared")
                except PypdsError as exc:
                    if isinstance(exc, (StorageError, StoreDamaged)):
                        raise  # the store failed, not the write: the whole group fails
                    request.error = exc
                    continue
                commit = _sign(state, new_root, new_height, key, skip=skip)
                built.append((request, commit, head, request.ops))
                if index + 1 < len(group):  # a later commit of the group must not count these again
                    skip.update(node.cid.cid_bytes for node in commit.nodes)
                head, root, height = commit.cid, new_root, new_height
            if built:
                _write_group(state, [(commit, prev, ops) for _request, commit, prev, ops in built], start)
    except BaseException as exc:
        error = storage_error(exc, state.path) if isinstance(exc, SqliteError) else exc
        for request in group:
            request.error = request.error or error
            request.finished = True
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt and the like reach the thread that leads the group
        return
    for request, commit, _prev, _ops in built:
        adopt(state, commit)
        request.result = commit.cid
    for request in group:
        request.finished = True
    # No data_version read here: a commit by another connection may land right
    # after ours, and must be loaded by the next call, not marked as seen.
    # (Our own commit does not change data_version; the in-transaction
    # refresh above recorded the right value.)


def _write_group(state: RepoState, commits: list[tuple[BuiltCommit, CID, list[WriteOp]]], start: CID) -> None:
    """Write a chain of built commits (inside the transaction): every block tagged with the rev of the
    commit that first stores it, one row per commit in the history, HEAD and the paths index at the last."""
    store = state.store
    rows: list[tuple[bytes, str, bytes]] = []
    changes: dict[bytes, bytes | None] = {}
    for commit, _prev, ops in commits:
        rows.extend((node.cid.cid_bytes, commit.rev, node.data) for node in commit.nodes)
        rows.extend((cid, commit.rev, data) for _key, cid, data in ops if cid is not None and data is not None)
        rows.append((commit.cid.cid_bytes, commit.rev, commit.block))
        changes.update((key, cid) for key, cid, _data in ops)
    store.put_block_rows(rows)
    last = commits[-1][0]
    store.set_head(last.cid, last.rev)
    store.record_commits((commit.cid, commit.rev, prev if prev.cid_bytes else None) for commit, prev, _ops in commits)
    update_index(state, last.cid, last.root, list(changes.items()), prev_head=start)


def write_first_commit(state: RepoState, key: SigningKey) -> BuiltCommit:
    """Sign and write the commit over the empty tree of a new repository (inside its transaction)."""
    root = empty_node()
    built = _sign(state, root, 0, key)
    _write(state, built, [], None)
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


def _apply_ops(state: RepoState, root: Node, height: int, ops: list[WriteOp]) -> tuple[Node, int]:
    """The tree at ``root`` with ``ops`` applied, and its height (a big first batch is built bottom-up)."""
    if root.is_empty and len(ops) >= BULK_BUILD_THRESHOLD:
        final: dict[bytes, bytes] = {}
        for key, cid, _data in ops:
            if cid is not None:
                final[key] = cid
            elif final.pop(key, None) is None:
                raise RecordNotFound(f"no record at {key.decode()}")
        return build_tree([(key, CID(final[key])) for key in sorted(final)])
    new_root = root
    for key, cid, _data in ops:
        if cid is not None:
            new_root, height = mst_put(state.nodes, new_root, height, key, CID(cid))
        else:
            new_root, height = mst_delete(state.nodes, new_root, height, key)
    return new_root, height


def _sign(state: RepoState, root: Node, height: int, key: SigningKey, skip: set[bytes] | None = None) -> BuiltCommit:
    """Sign a commit over ``root``; its new nodes are those neither stored nor in ``skip``."""
    rev = state.clock.next()
    _commit, block, cid = sign_commit(state.did, root.cid, rev, key)
    return BuiltCommit(cid, rev, block, root, height, _unpersisted_nodes(root, skip or set()))


def _write(state: RepoState, built: BuiltCommit, records: Iterable[tuple[CID, bytes]], prev: CID | None) -> None:
    """Write the commit's blocks and move HEAD (inside a transaction); ``prev`` is the commit it follows."""
    store = state.store
    nodes = ((node.cid, node.data) for node in built.nodes)
    store.put_blocks(itertools.chain(nodes, records, [(built.cid, built.block)]), built.rev)
    store.set_head(built.cid, built.rev)
    store.record_commit(built.cid, built.rev, prev if prev is not None and prev.cid_bytes else None)


def update_index(
    state: RepoState,
    head: CID,
    root: Link,
    changes: list[tuple[bytes, bytes | None]],
    prev_head: CID | None = None,
) -> None:
    """Bring the paths index to ``head`` (inside the transaction that moves HEAD there).

    ``changes`` (path, new record CID bytes or None) are applied when the
    index is at the previous HEAD (``prev_head``, default the handle's);
    otherwise (a store from an older pypds) it is rebuilt from the tree.
    """
    store = state.store
    prev = state.head if prev_head is None else prev_head
    if prev.cid_bytes and store.index_head() == prev:
        store.index_apply(head, changes)
    else:
        store.index_replace(head, iter_range(state.nodes, root))


def _unpersisted_nodes(root: Node, skip: set[bytes]) -> list[Node]:
    """Nodes reachable from ``root`` through in-memory links that are neither stored nor in ``skip``."""
    found: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.persisted or (skip and node.cid.cid_bytes in skip):
            continue
        found.append(node)
        stack.extend(link for link in node.links if type(link) is Node)
    return found


def _effects(ops: list[WriteOp]) -> list[tuple[bytes, bytes | None]]:
    """The net change per key of a list of writes: the new record CID bytes, or None if deleted."""
    return list({key: cid for key, cid, _data in ops}.items())
