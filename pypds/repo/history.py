"""History: the commits a repository holds, HEAD moved by hand, named refs, and diffs between commits.

Old blocks are kept (until gc), so HEAD can move to any stored commit of
this DID whose tree is complete, and a named ref pins a commit against gc.
Moving HEAD back is an explicit act: downloads and ``apply_car`` refuse it.
"""

from __future__ import annotations

from ..codec.cid import CID, parse_cid
from ..commit import rev_key
from ..errors import InvalidInput, RefNotFound, shown
from ..mst import diff_trees
from ..operation import RecordChange
from .state import RepoState
from .writer import update_index

__all__ = ["check_ref_name", "delete_ref", "diff", "list_refs", "ref", "set_head", "set_ref"]


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
