"""History: the commits a repository holds, HEAD moved by hand, reverts, named refs, and diffs between commits.

Old blocks are kept (until gc), so HEAD can move to any stored commit of
this DID whose tree is complete, and a named ref pins a commit against gc.
Moving HEAD back is an explicit act: downloads and ``apply_car`` refuse it.

Going back so that copies follow is :func:`revert`: a new signed commit
(the next rev) whose tree equals an older commit's, written by the normal
writer from the record diff, so the paths index, the rev and the commit
history stay right and a mirror takes it as any other update.

Trap: the reverted tree is made of blocks stored long ago, tagged with the
rev that first stored them, which a diff CAR (``export_car(since=)``) for a
copy newer than that would skip although the copy never had them. So the
blocks the old HEAD's tree did not share are tagged again with the revert's
rev, in a transaction right after the commit's (a crash in between only
makes such a diff fail, and a download then takes the full CAR).
"""

from __future__ import annotations

from typing import NamedTuple

from ..codec.cid import CID, parse_cid
from ..commit import rev_key
from ..errors import HeadMoved, InvalidInput, MissingBlock, RefNotFound, shown
from ..mst import diff_trees
from ..operation import RecordChange, WriteOp
from .state import RepoState
from .writer import commit_ops, require_key, update_index

__all__ = [
    "Revert",
    "check_ref_name",
    "commit_chain",
    "delete_ref",
    "diff",
    "list_refs",
    "ref",
    "revert",
    "set_head",
    "set_ref",
]

#: A revert whose HEAD another writer moves while it is prepared is tried again this many times.
REVERT_ATTEMPTS = 3


class Revert(NamedTuple):
    """What :meth:`pypds.Repo.revert` did: the new commit (None when HEAD already had the target's
    tree), the target commit, and the record changes from the old HEAD to it."""

    commit: CID | None
    target: CID
    changes: list[RecordChange]


def set_head(state: RepoState, cid: CID | str) -> None:
    """See :meth:`pypds.Repo.set_head`."""
    cid = parse_cid(cid, allow_raw=False)
    commit = state.load_commit(cid)
    state.check_complete(commit.data)
    store = state.store
    with store.transaction():
        state.refresh()
        changes = [
            (c.path.encode(), None if c.new is None else c.new.cid_bytes)
            for c in diff_trees(state.nodes, state.root, commit.data)
        ]
        store.set_head(cid, rev_key(commit.rev))
        update_index(state, cid, commit.data, changes)
    state.refresh(force=True)


def revert(state: RepoState, target: CID | str) -> Revert:
    """See :meth:`pypds.Repo.revert`."""
    state.refresh()
    target_cid = state.resolve(target)
    data = state.load_commit(target_cid).data  # DidMismatch for a commit of another DID
    state.check_complete(data)
    require_key(state)
    for _attempt in range(REVERT_ATTEMPTS):
        opened: list[CID] = []
        changes = list(diff_trees(state.nodes, state.root, data, new_nodes=opened.append))
        if not changes:
            return Revert(None, target_cid, [])
        try:
            commit = commit_ops(state, _ops(state, changes), expect_root=data)
        except HeadMoved:
            state.refresh()
            continue
        brought_back = opened + [change.new for change in changes if change.new is not None]
        rev = state.load_commit(commit).rev or ""  # not state.rev: a group commit may hold later commits
        with state.store.transaction():
            state.store.restamp_blocks(brought_back, rev)
        return Revert(commit, target_cid, changes)
    raise HeadMoved(
        f"repository at {state.path}: HEAD kept moving while the revert to {target_cid.encode()} was prepared "
        f"({REVERT_ATTEMPTS} attempts); nothing was written"
    )


def _ops(state: RepoState, changes: list[RecordChange]) -> list[WriteOp]:
    """The writes that take HEAD's tree to the target's: each record with its block (re-stored if gc took it)."""
    ops: list[WriteOp] = []
    for change in changes:
        if change.new is None:
            ops.append((change.path.encode(), None, None))
            continue
        data = state.store.get_block(change.new)
        if data is None:
            raise MissingBlock(f"record block {change.new.encode()} for {change.path} is missing", change.new)
        ops.append((change.path.encode(), change.new.cid_bytes, data))
    return ops


def commit_chain(state: RepoState, old: CID | str, new: CID | str | None, limit: int) -> list[CID] | None:
    """See :meth:`pypds.Repo.commit_chain`."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidInput(f"limit must be a positive integer: {shown(limit)}")
    state.refresh()
    start = parse_cid(old, allow_raw=False)
    cid: CID | None = state.head if new is None else state.resolve(new)
    chain: list[CID] = []
    while cid is not None and cid != start and len(chain) < limit:
        history = state.store.commit_history(cid)
        if history is None:
            return None  # imported whole: its predecessor is unknown
        chain.append(cid)
        cid = history[1]
    if cid != start:
        return None
    chain.reverse()
    return chain


def diff(state: RepoState, old: CID | str, new: CID | str | None) -> list[RecordChange]:
    """See :meth:`pypds.Repo.diff`."""
    state.refresh()
    old_commit = state.load_commit(state.resolve(old))
    new_commit = state.load_commit(state.head if new is None else state.resolve(new))
    return list(diff_trees(state.nodes, old_commit.data, new_commit.data))


def ref(state: RepoState, name: str) -> CID | None:
    """See :meth:`pypds.Repo.ref`."""
    return state.store.get_ref(check_ref_name(name))


def set_ref(state: RepoState, name: str, cid: CID | str) -> None:
    """See :meth:`pypds.Repo.set_ref`."""
    name = check_ref_name(name)
    if name == "HEAD":
        raise InvalidInput("a ref cannot be named HEAD: that name always means the current commit")
    cid = parse_cid(cid, allow_raw=False)
    state.check_complete(state.load_commit(cid).data)
    store = state.store
    with store.transaction():
        store.set_ref(name, cid)


def delete_ref(state: RepoState, name: str) -> None:
    """See :meth:`pypds.Repo.delete_ref`."""
    store = state.store
    with store.transaction():
        if not store.delete_ref(check_ref_name(name)):
            raise RefNotFound(f"no ref named {shown(name)}")


def list_refs(state: RepoState) -> list[tuple[str, CID]]:
    """See :meth:`pypds.Repo.list_refs`."""
    return state.store.list_refs()


def check_ref_name(name: str) -> str:
    """A ref name: 1-256 printable characters."""
    if not isinstance(name, str) or not name or len(name) > 256 or not name.isprintable():
        raise InvalidInput(f"invalid ref name {shown(name)}: 1-256 printable characters")
    return name
