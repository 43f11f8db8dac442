"""What one open handle knows about its repository, shared by the modules that act on it.

A :class:`RepoState` holds the store connection, the handle's lock, the
caches (decoded MST nodes, recently read records, blobs referenced at HEAD)
and the handle's view of HEAD (commit, rev, root node, height). Every other
module of :mod:`pypds.repo` is a set of functions over a ``RepoState``;
:class:`~pypds.repo.repo.Repo` only holds one and delegates.

Traps:

* **HEAD moves under us.** Another connection may commit at any time.
  :meth:`RepoState.refresh` reloads HEAD when SQLite's ``data_version``
  says someone else committed; a writer calls it *inside* its transaction
  (under the write lock), so it builds on the latest HEAD.
* **The rev of a version 2 HEAD** is kept as ``""``, which sorts before
  every TID; the public API shows it as None.
* **The lock** serialises calls on one handle. Work that reads many rows
  without needing a consistent view (listing referenced blobs, streaming a
  CAR) takes it per page, so the handle stays usable meanwhile.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..codec.cid import CID, parse_cid
from ..commit import Commit, decode_commit, rev_key
from ..errors import DidMismatch, MissingBlock, RepoClosed, shown
from ..keys import SigningKey
from ..limits import Limits
from ..mst import Node, empty_node, key_height
from ..mst.nodestore import NodeStore
from ..mst.walk import walk_tree
from ..storage.blobs import BlobStore
from ..storage.record_cache import RecordCache
from ..storage.store import SqliteError, Store, storage_error
from ..tid import TidClock
from .commit_queue import CommitQueue
from .referenced_blobs import ReferencedBlobs

__all__ = ["RepoState"]


class RepoState:
    """One handle's connection, caches and view of HEAD (see the module docstring)."""

    def __init__(
        self, path: Path, store: Store, *, signing_key: SigningKey | None, limits: Limits, rotate_key: bool = False
    ) -> None:
        self.path = path
        self.store_or_none: Store | None = store
        self.lock = threading.RLock()
        self.limits = limits
        self.blobs = BlobStore(path / "blobs")
        self.referenced_blobs = ReferencedBlobs()  # kept per HEAD: see referenced_blobs.py
        # checkout() views read through the node store outside Repo methods: misses take the lock
        self.nodes = NodeStore(self.get_block_locked, limits, where=f"repository at {path}")
        self.records = RecordCache()
        self.commits = CommitQueue()  # writes waiting for the next group commit
        self.signing_key = signing_key
        self.rotate_key = rotate_key
        #: (HEAD, whether the signing key signed it): checked once per HEAD
        self.key_verdict: tuple[bytes, bool] = (b"", False)
        self.did = store.did()
        clock_id = store.get_meta("clock_id")
        self.clock = TidClock(clock_id=clock_id if isinstance(clock_id, int) else None)
        self.head: CID = CID(b"")
        self.rev = ""  # "" for a version 2 commit
        self.root: Node = empty_node()
        self.height = 0
        self.seen_version = -1

    @property
    def store(self) -> Store:
        """The open store; RepoClosed once the handle is closed."""
        store = self.store_or_none
        if store is None:
            raise RepoClosed(f"repository at {self.path} is closed")
        return store

    def check_open(self) -> None:
        """Raise RepoClosed once the handle is closed."""
        if self.store_or_none is None:
            raise RepoClosed(f"repository at {self.path} is closed")

    def close(self) -> None:
        with self.lock:
            if self.store_or_none is not None:
                self.store_or_none.close()
                self.store_or_none = None

    def get_block_locked(self, cid: CID) -> bytes | None:
        """A stored block, read under the handle's lock (for readers outside a Repo method)."""
        with self.lock:
            try:
                return self.store.get_block(cid)
            except SqliteError as exc:
                raise storage_error(exc, self.path) from None

    # -- HEAD ------------------------------------------------------------------

    def adopt(self, head: CID, rev: str, root: Node, height: int) -> None:
        """Take ``head`` as HEAD; ``rev`` is "" for a version 2 commit."""
        self.head, self.rev, self.root, self.height = head, rev, root, height
        if rev:
            self.clock.observe(rev)

    def refresh(self, force: bool = False) -> None:
        """Reload HEAD if another connection moved it since we last looked."""
        store = self.store
        version = store.data_version()
        if not force and version == self.seen_version:
            return
        head = store.head()
        if force or head != self.head:
            commit = self.load_commit(head)
            root = self.nodes.load_node(commit.data)
            height = key_height(root.keys[0]) if root.keys else 0
            self.adopt(head, rev_key(commit.rev), root, height)
        last = store.get_meta("last_rev")
        if last:
            self.clock.observe(str(last))
        self.seen_version = version

    def head_label(self) -> str:
        """HEAD's rev for a message: ``rev <TID>``, or that it is a version 2 commit."""
        return f"rev {self.rev}" if self.rev else "version 2 commit (no rev)"

    # -- commits -----------------------------------------------------------------

    def load_commit(self, cid: CID) -> Commit:
        """The stored commit ``cid`` of this repository's DID."""
        data = self.store.get_block(cid)
        if data is None:
            raise MissingBlock(f"commit {cid.encode()} is not stored", cid)
        commit = decode_commit(data, cid)
        if commit.did != self.did:
            raise DidMismatch(f"commit {cid.encode()} belongs to {commit.did}, not {self.did}")
        return commit

    def resolve(self, commit: CID | str) -> CID:
        """A commit CID given as a CID, its string, ``"HEAD"``, or the name of a ref."""
        if commit == "HEAD":
            return self.head
        if isinstance(commit, str):
            named = self.store.get_ref(commit)
            if named is not None:
                return named
        return parse_cid(commit, allow_raw=False)

    def check_complete(self, root: CID) -> None:
        """Raise unless every node and record of the tree at ``root`` is stored."""
        store = self.store
        for step in walk_tree(store.get_block, root, limits=self.limits, check_paths=False):
            if step.node is None and not store.has_block(step.cid):
                raise MissingBlock(f"record block {step.cid.encode()} for {shown(step.key)} is missing", step.cid)
