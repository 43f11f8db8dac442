"""The :class:`Repo` handle: one atproto repository in one directory.

A repository is a content-addressed block graph (signed commit -> MST nodes
-> records) plus pointers (HEAD and named refs), stored in ``pds.db``, with
blobs beside it in ``blobs/``. Every write is a signed v3 commit: the MST
change is computed in memory, then the new blocks, HEAD and rev are written
in one SQLite transaction; the in-memory state only advances once that
transaction has committed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import shutil
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

from ..car.reader import CarSource
from ..car.stream import StreamedCar
from ..car.writer import CarWriter, write_car_file
from ..codec import cbor
from ..codec.cid import CID, parse_cid
from ..commit import Commit, decode_commit, rev_is_newer, rev_key, sign_commit
from ..errors import (
    BadSignature,
    BlockHashMismatch,
    DidMismatch,
    InvalidInput,
    MissingBlock,
    NotFound,
    RecordNotFound,
    RefNotFound,
    RepoClosed,
    RollbackRefused,
    SigningKeyMismatch,
    SigningKeyRequired,
    shown,
)
from ..keys import PublicKey, SigningKey, generate_signing_key, load_public_key, load_signing_key
from ..limits import DEFAULT_LIMITS, Limits
from ..mst import (
    MST,
    Link,
    Node,
    RecordChange,
    build_tree,
    diff_trees,
    empty_node,
    iter_range,
    iter_stored_stream_order,
    key_height,
)
from ..mst import delete as mst_delete
from ..mst import put as mst_put
from ..mst.nodestore import NodeCache
from ..mst.walk import walk_tree
from ..storage.blobs import BlobRef, BlobStore, RecordsMoved, ReferencedBlobs, blob_refs, record_blob_names
from ..storage.record_cache import CachedRecord, RecordCache
from ..storage.store import SqliteError, Store, storage_error
from ..sync.firehose import covering_proof
from ..sync.proof import proof_path
from ..sync.verify import VerifyReport, check_blob_files, check_index, verify_tree
from ..syntax import check_collection, check_did, check_record_key, check_tid, repo_path
from ..tid import TidClock
from .batch import Batch, WriteOp
from .blockstore import BlockStore

__all__ = ["Repo", "Batch", "BlockStore", "GcReport"]

F = TypeVar("F", bound=Callable[..., Any])

#: A batch on an empty tree with at least this many writes is built bottom-up.
BULK_BUILD_THRESHOLD = 64
#: An import writes its blocks to the store in batches of about this many bytes
#: (each sorted by CID), and its paths index rows in batches of this many.
IMPORT_BATCH_BYTES = 32 << 20
IMPORT_BATCH_PATHS = 50_000

_MAX_SQL_INT = (1 << 63) - 1


def _public(method: F) -> F:
    """Serialise calls on one handle and refuse them once it is closed."""

    @functools.wraps(method)
    def wrapper(self: Repo, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._store is None:
                raise RepoClosed(f"repository at {self.path} is closed")
            try:
                return method(self, *args, **kwargs)
            except SqliteError as exc:
                raise storage_error(exc, self.path) from None

    return wrapper  # type: ignore[return-value]


class Repo:
    """One atproto repository: ``pds.db`` plus ``blobs/`` in a directory.

    Open with :meth:`create`, :meth:`open` or :meth:`from_car`; use as a
    context manager or call :meth:`close`. Handles are safe to share between
    threads (calls are serialised); several processes may open one repo.
    """

    def __init__(
        self,
        path: Path,
        store: Store,
        *,
        signing_key: SigningKey | None,
        limits: Limits,
        rotate_key: bool = False,
    ) -> None:
        self.path = path
        self._store: Store | None = store
        self._lock = threading.RLock()
        self._limits = limits
        self._blobs = BlobStore(path / "blobs")
        self._referenced_blobs = ReferencedBlobs()  # kept per HEAD: see list_blobs
        # checkout() views read through the cache outside Repo methods: misses take the lock
        self._cache = NodeCache(self._get_block_locked, limits)
        self._records = RecordCache()
        self._signing_key = signing_key
        self._rotate_key = rotate_key
        self._key_verdict: tuple[bytes, bool] = (b"", False)  # (HEAD, whether the signing key signed it)
        self._did = store.did()
        self._clock = TidClock(clock_id=_int_meta(store, "clock_id"))
        self._head: CID = CID(b"")
        self._rev = ""
        self._root: Node = empty_node()
        self._height = 0
        self._seen_version = -1
        self.blockstore = BlockStore(self)

    # -- opening and closing ---------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        did: str,
        *,
        signing_key: SigningKey | bytes | str | None = None,
        store_key: bool | None = None,
        durability: str = "full",
        busy_timeout: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Repo:
        """Create a repository with a signed commit over the empty tree.

        Without ``signing_key`` a secp256k1 key is generated and kept in the
        store. A given key (object, 32 raw bytes or hex) is kept only if
        ``store_key=True``; otherwise pass it again to :meth:`open` to write.
        Refuses a directory that already holds a repository.
        """
        check_did(did)
        directory = Path(path)
        key = generate_signing_key() if signing_key is None else load_signing_key(signing_key)
        keep_key = signing_key is None if store_key is None else store_key
        created = _first_missing_dir(directory)
        store = Store.create(directory, durability=durability, busy_timeout=busy_timeout)
        try:
            with store.transaction():
                store.init_schema()
                _init_meta(store, did, key, keep_key)
                repo = cls(directory, store, signing_key=key, limits=limits)
                root = empty_node()
                written = repo._write_commit(root, [], key)
                store.index_replace(written.commit, [])  # the empty tree's (empty) paths index
            repo._committed(written)
            repo._set_state(written.commit, written.rev, root, 0)
        except BaseException as exc:
            store.close()
            _remove_store_files(directory, created)
            if isinstance(exc, SqliteError):
                raise storage_error(exc, directory) from None
            raise
        return repo

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        signing_key: SigningKey | bytes | str | None = None,
        rotate_key: bool = False,
        durability: str = "full",
        busy_timeout: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Repo:
        """Open an existing repository. ``signing_key`` overrides a stored key.

        A write signed by a key that did not sign HEAD's commit raises
        :class:`~pypds.errors.SigningKeyMismatch` (the history would verify
        against two keys), unless ``rotate_key=True``: then the new key signs
        on, and commits before that still verify only against the old one.
        """
        directory = Path(path)
        store = Store.open(directory, durability=durability, busy_timeout=busy_timeout)
        try:
            key = load_signing_key(signing_key) if signing_key is not None else _stored_key(store)
            repo = cls(directory, store, signing_key=key, limits=limits, rotate_key=rotate_key)
            with store.snapshot():
                repo._refresh(force=True)
            if store.index_head() != repo._head:  # written by an older pypds
                with store.transaction():
                    repo._refresh(force=True)
                    store.index_replace(repo._head, iter_range(repo._cache, repo._root))
            repo._blobs.remove_stale_temps()
        except BaseException as exc:
            store.close()
            if isinstance(exc, SqliteError):
                raise storage_error(exc, directory) from None
            raise
        return repo

    @classmethod
    def from_car(
        cls,
        path: str | os.PathLike,
        car: CarSource,
        *,
        key: PublicKey | SigningKey | str | None = None,
        signing_key: SigningKey | bytes | str | None = None,
        rotate_key: bool = False,
        durability: str = "full",
        busy_timeout: float = 5.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Repo:
        """Create a repository from a CAR: its DID comes from the CAR's commit.

        ``key`` (a did:key or key object) makes the import check the
        signature. ``signing_key`` is used for later writes (not stored);
        ``rotate_key`` as for :meth:`open`. On any failure nothing is left
        behind at ``path``.
        """
        directory = Path(path)
        with StreamedCar(car, limits) as streamed:
            commit = streamed.commit()
            created = _first_missing_dir(directory)
            store = Store.create(directory, durability=durability, busy_timeout=busy_timeout)
            try:
                signer = load_signing_key(signing_key) if signing_key is not None else None
                with store.transaction():
                    store.init_schema()
                    _init_meta(store, commit.did, None, False)
                    repo = cls(directory, store, signing_key=signer, limits=limits, rotate_key=rotate_key)
                    repo._import_streamed(streamed, commit, key)
                repo._refresh(force=True)
            except BaseException as exc:
                store.close()
                _remove_store_files(directory, created)
                if isinstance(exc, SqliteError):
                    raise storage_error(exc, directory) from None
                raise
        return repo

    def close(self) -> None:
        """Close the handle; later calls raise RepoClosed. Closing twice is fine."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._store is None else f"head={self._head.encode()}"
        return f"Repo({str(self.path)!r}, did={self._did!r}, {state})"

    # -- identity and state ---------------------------------------------------

    @property
    def did(self) -> str:
        """The repository's DID."""
        return self._did

    @property
    def signing_key(self) -> SigningKey | None:
        """The key that signs new commits (None for a read-only handle)."""
        return self._signing_key

    @property
    def did_key(self) -> str | None:
        """The ``did:key`` of the signing key."""
        return None if self._signing_key is None else self._signing_key.did_key

    @_public
    def signing_key_matches_head(self) -> bool | None:
        """Whether the signing key signed HEAD's commit (None for a handle without a key).

        When False, a write raises SigningKeyMismatch unless the handle was
        opened with ``rotate_key=True``. Checked once per HEAD.
        """
        self._refresh()
        return None if self._signing_key is None else self._signed_head(self._signing_key)

    @property
    @_public
    def head(self) -> CID:
        """The CID of the current commit."""
        self._refresh()
        return self._head

    @property
    @_public
    def rev(self) -> str | None:
        """The rev (TID) of the current commit; None when HEAD is a version 2 commit (no rev)."""
        self._refresh()
        return self._rev or None

    @_public
    def commit(self, cid: CID | str | None = None) -> Commit:
        """The decoded commit at ``cid`` (default HEAD)."""
        self._refresh()
        return self._load_commit(self._head if cid is None else parse_cid(cid))

    @_public
    def set_head(self, cid: CID | str) -> None:
        """Move HEAD to a stored commit of this repository whose tree is complete."""
        cid = parse_cid(cid, allow_raw=False)
        commit = self._load_commit(cid)
        self._check_complete(commit.data)
        store = self._store_or_raise()
        with store.transaction():
            self._refresh()
            changes = [
                (c.path.encode(), None if c.new is None else c.new.cid_bytes)
                for c in diff_trees(self._cache, self._root, commit.data)
            ]
            store.set_head(cid, rev_key(commit.rev))
            self._update_index(cid, commit.data, changes)
        self._refresh(force=True)

    @_public
    def checkout(self, cid: CID | str | None = None) -> MST:
        """A read-only view of the tree at HEAD or at the given commit."""
        self._refresh()
        if cid is None:
            return MST(self._cache, self._root_cid())
        return MST(self._cache, self._load_commit(parse_cid(cid)).data)

    # -- records ---------------------------------------------------------------

    @_public
    def put(self, collection: str, rkey: str, record: dict | bytes) -> CID:
        """Create or replace a record in its own signed commit; returns the record CID."""
        batch = Batch(self._limits)
        cid = batch.put(collection, rkey, record)
        self._commit_ops(batch.ops)
        return cid

    @_public
    def delete(self, collection: str, rkey: str) -> None:
        """Delete a record in its own signed commit; RecordNotFound if absent."""
        batch = Batch(self._limits)
        batch.delete(collection, rkey)
        self._commit_ops(batch.ops)

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Collect puts and deletes and commit them as one signed commit.

        An exception inside the block discards every write in it.
        """
        batch = Batch(self._limits)
        yield batch
        if batch.ops:
            batch.commit = self._commit_batch(batch)

    @_public
    def _commit_batch(self, batch: Batch) -> CID:
        return self._commit_ops(batch.ops)

    @_public
    def find(self, collection: str, rkey: str) -> dict | None:
        """The record at collection/rkey as a dict, or None."""
        data = self._find_bytes(collection, rkey)
        return None if data is None else cbor.decode(data, f"{collection}/{rkey}")

    @_public
    def find_bytes(self, collection: str, rkey: str) -> bytes | None:
        """The record's DAG-CBOR bytes, or None."""
        return self._find_bytes(collection, rkey)

    @_public
    def find_cid(self, collection: str, rkey: str) -> CID | None:
        """The record's CID at HEAD, or None."""
        found = self._store_or_raise().index_cid(repo_path(collection, rkey).encode())
        return None if found is None else CID(found)

    def _find_bytes(self, collection: str, rkey: str) -> bytes | None:
        # One statement on the paths index, which every transaction that moves
        # HEAD keeps current. A cached read is used only if the index still
        # holds the CID it was read under, and then the block is not read.
        cached = self._records.get(collection, rkey)
        path = repo_path(collection, rkey).encode() if cached is None else cached.path
        found = self._store_or_raise().index_record(path, None if cached is None else cached.cid)
        if found is None:
            return None
        cid, same, data = found
        if same:
            return cached.data  # type: ignore[union-attr]
        if data is None:
            raise MissingBlock(f"record block {CID(cid).encode()} for {path.decode()} is missing", CID(cid))
        self._records.put(collection, rkey, CachedRecord(path, cid, data))
        return data

    @_public
    def list(
        self,
        collection: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        reverse: bool = False,
    ) -> list[tuple[str, CID]]:
        """``(rkey, cid)`` pairs of a collection in key order.

        ``cursor`` is an rkey: listing starts after it (before it when
        ``reverse``). ``limit`` caps the number returned.
        """
        if limit is not None and limit < 0:
            raise InvalidInput(f"limit must not be negative: {limit}")
        prefix = check_collection(collection).encode() + b"/"
        start, stop = prefix, prefix[:-1] + b"0"  # "0" is the byte after "/"
        if cursor is not None:
            edge = prefix + check_record_key(cursor).encode()
            if reverse:
                stop = edge
            else:
                start = edge + b"\x00"
        if limit == 0:
            return []
        if limit is not None and limit > _MAX_SQL_INT:
            limit = None  # more than any repository holds
        cut = len(prefix)
        rows = self._store_or_raise().index_range(start, stop, reverse=reverse, limit=limit)
        return [(key[cut:].decode(), cid) for key, cid in rows]

    @_public
    def collections(self) -> list[str]:
        """The collections that hold at least one record, sorted."""
        self._refresh()
        found: list[str] = []
        start: bytes | None = None
        while True:
            first = next(iter_range(self._cache, self._root, start), None)
            if first is None:
                return found
            collection = first[0].split(b"/", 1)[0]
            found.append(collection.decode())
            start = collection + b"0"

    @_public
    def diff(self, old: CID | str, new: CID | str | None = None) -> list[RecordChange]:
        """Record-level creates, updates and deletes from ``old`` to ``new`` (default HEAD).

        Each side is a commit CID or the name of a ref. Only subtrees that
        differ are visited.
        """
        self._refresh()
        old_commit = self._load_commit(self._resolve(old))
        new_commit = self._load_commit(self._head if new is None else self._resolve(new))
        return list(diff_trees(self._cache, old_commit.data, new_commit.data))

    def _resolve(self, commit: CID | str) -> CID:
        """A commit CID given as a CID, its string, ``"HEAD"``, or the name of a ref."""
        if commit == "HEAD":
            return self._head
        if isinstance(commit, str):
            named = self._store_or_raise().get_ref(commit)
            if named is not None:
                return named
        return parse_cid(commit, allow_raw=False)

    # -- blobs -----------------------------------------------------------------

    @_public
    def put_blob(self, data: bytes, mime_type: str) -> BlobRef:
        """Store a blob durably; returns its reference (raw CID, MIME type, size)."""
        if not isinstance(mime_type, str) or "/" not in mime_type:
            raise InvalidInput(f"invalid MIME type: {shown(mime_type)}")
        cid = self._blobs.put(data)
        return BlobRef(cid=cid, mime_type=mime_type, size=len(data))

    def list_blobs(
        self, *, since: str | None = None, cursor: str | None = None, limit: int | None = None, stored: bool = False
    ) -> list[CID]:
        """CIDs of the blobs records at HEAD reference and that are stored here, in CID-string
        order, after ``cursor``, at most ``limit`` (what ``listBlobs`` serves).

        A blob no record at HEAD references is not listed, though its file
        stays until :meth:`gc` (and :meth:`blob` still reads it), as the
        reference PDS stops listing a blob once the last record using it is
        deleted. With ``since`` (a rev), only the blobs referenced by records
        created or updated at HEAD after that rev: what a copy at ``since``
        may lack. If no commit at or before ``since`` is known here (an
        imported history), every blob referenced at HEAD is listed. With
        ``stored=True``, every blob file stored, referenced or not (a local
        inventory, what ``pypds blob ls`` shows).

        The referenced set is kept on the handle for the HEAD it was made
        at: the first call reads every record, a later one at a new HEAD
        applies the record diff. It holds about 160 bytes per distinct
        blob referenced. The handle's lock is not held while records are
        read, so other calls go on meanwhile.
        """
        self._store_or_raise()
        if limit is not None and limit < 0:
            raise InvalidInput(f"limit must not be negative: {limit}")
        if since is not None:
            check_tid(since, "since rev")
            if stored:
                raise InvalidInput("list_blobs: since and stored=True cannot be combined")
            names = self._blob_names_since(since)
        else:
            names = self._blobs.names() if stored else self._referenced_blob_names()
        found: list[CID] = []
        for index in range(0 if cursor is None else bisect_right(names, cursor), len(names)):
            if limit is not None and len(found) >= limit:
                break
            cid = CID.decode(names[index])
            if self._blobs.has(cid):
                found.append(cid)
        return found

    def blob_referenced(self, cid: CID | str) -> bool:
        """Whether a record at HEAD references blob ``cid`` (stored here or not): what the server serves."""
        name = parse_cid(cid).encode()
        names = self._referenced_blob_names()
        index = bisect_left(names, name)
        return index < len(names) and names[index] == name

    def _referenced_blob_names(self) -> list[str]:
        """Sorted CID strings of the blobs records at HEAD reference (shared: do not change)."""
        with self._lock:
            self._store_or_raise()
            self._refresh()
            head, root = self._head, self._root
        records = functools.partial(self._indexed_records, head)
        return self._referenced_blobs.names_at(self._cache, root, self._get_block_locked, records)

    def _indexed_records(self, head: CID) -> Iterator[tuple[CID, bytes | None]]:
        """``(record CID, block)`` for every record of HEAD ``head``'s tree, read from the paths index
        a page per hold of the lock; raises RecordsMoved if the index is not at ``head`` or anything
        was committed meanwhile (the pages would mix two trees)."""
        with self._lock:
            store = self._store_or_raise()
            version = store.data_version()
            if store.index_head() != head:
                raise RecordsMoved(f"the paths index is not at {head.encode()}")
            rows = store.index_blocks()
        while True:
            with self._lock:
                store = self._store_or_raise()
                if store.data_version() != version or self._head != head:
                    raise RecordsMoved(f"HEAD moved from {head.encode()} while its records were read")
                page = list(itertools.islice(rows, 4096))
            if not page:
                return
            for cid, data in page:
                yield CID(cid), data

    def _blob_names_since(self, since: str) -> list[str]:
        """Sorted CID strings of the blobs referenced by records created or updated after rev ``since``."""
        with self._lock:
            store = self._store_or_raise()
            self._refresh()
            base = store.commit_at(since)
            old_root = None if base is None else self._load_commit(base).data
            root = self._root
        if old_root is None:
            return self._referenced_blob_names()
        names: set[str] = set()
        for change in diff_trees(self._cache, old_root, root):
            if change.new is not None:
                names.update(record_blob_names(self._get_block_locked, change.new))
        return sorted(names)

    @_public
    def blob(self, cid: CID | str) -> bytes | None:
        """A blob's bytes, checked against its CID; None if not stored.

        A local read of the stored file, referenced at HEAD or not (see
        :meth:`blob_referenced`). Never follows a symbolic link out of
        ``blobs/`` and never blocks on a FIFO: anything but a regular file
        there raises :class:`IntegrityError`, a file over 1 GiB
        :class:`LimitExceeded`, a damaged one :class:`BlockHashMismatch`.
        """
        return self._blobs.get(parse_cid(cid))

    @_public
    def missing_blobs(self) -> list[CID]:
        """Blobs referenced by records at HEAD but not stored, in key order of first use."""
        self._refresh()
        store = self._store_or_raise()
        missing: dict[bytes, CID] = {}
        for _key, cid in iter_range(self._cache, self._root):
            data = store.get_block(cid)
            if data is None:
                raise MissingBlock(f"record block {cid.encode()} is missing", cid)
            for blob in blob_refs(cbor.decode(data)):
                if blob.cid_bytes not in missing and not self._blobs.has(blob):
                    missing[blob.cid_bytes] = blob
        return list(missing.values())

    @_public
    def gc(self, *, blob_grace: float = 3600.0) -> GcReport:
        """Remove every block not reachable from HEAD or a named ref, and every blob
        file no record in those trees references.

        Blocks go in one transaction (a crash leaves all or none removed);
        blob files are removed after it, so a crash can only leave some
        unreferenced files for the next gc. Blob files younger than
        ``blob_grace`` seconds are kept: another process may be about to
        commit a record that references them. Loose blocks added with
        ``repo.blockstore.put`` and not reachable are removed too.
        """
        store = self._store_or_raise()
        with store.transaction():
            self._refresh()
            roots = [self._head, *(cid for _name, cid in store.list_refs())]
            reachable, blobs = self._reachable(roots)
            blocks, size = store.delete_blocks_except(reachable)
        self._cache.clear()
        files, blob_bytes = self._blobs.remove_unreferenced(blobs, blob_grace)
        return GcReport(blocks, size, files, blob_bytes)

    def _reachable(self, commits: list[CID]) -> tuple[set[bytes], set[bytes]]:
        """Every block reachable from ``commits``, and every blob their records reference."""
        store = self._store_or_raise()
        reachable: set[bytes] = set()
        blobs: set[bytes] = set()
        for commit_cid in commits:
            reachable.add(commit_cid.cid_bytes)
            commit = self._load_commit(commit_cid)
            fresh = lambda cid: cid.cid_bytes not in reachable  # noqa: E731 - shared subtrees are walked once
            walk = iter_stored_stream_order(self._cache.cached, store.get_block, commit.data, keep=fresh)
            for cid, node_block in walk:
                reachable.add(cid.cid_bytes)
                if node_block is None:
                    data = store.get_block(cid)
                    if data is None:
                        raise MissingBlock(f"record block {cid.encode()} is missing", cid)
                    blobs.update(blob.cid_bytes for blob in blob_refs(cbor.decode(data)))
        return reachable, blobs

    @_public
    def commit_event(self, commit: CID | str | None = None) -> dict:
        """The sync 1.1 ``#commit`` message for HEAD's commit (or ``commit``), as DAG-CBOR values.

        Holds ``repo``, ``commit``, ``rev``, ``since`` (the previous rev),
        ``prevData`` (the previous MST root), ``ops`` (``action``, ``path``,
        ``cid``, and ``prev`` for updates and deletes), ``blobs`` and
        ``blocks``: a CAR with the commit, every block the commit added, and
        the covering-proof nodes a consumer needs to undo the ops. Works for
        commits made or received (``apply_car``) here; the first commit of a
        history is described against the empty tree.
        """
        self._refresh()
        cid = self._head if commit is None else self._resolve(commit)
        store = self._store_or_raise()
        new = self._load_commit(cid)
        if new.rev is None:
            raise NotFound(f"commit {cid.encode()} is a version 2 commit: it has no rev, and a #commit event needs one")
        history = store.commit_history(cid)
        if history is None:
            raise NotFound(f"commit {cid.encode()} was not made here: its predecessor is unknown")
        prev = None if history[1] is None else self._load_commit(history[1])
        old_root: Link = empty_node() if prev is None else prev.data
        changes = list(diff_trees(self._cache, old_root, new.data))
        blocks = io.BytesIO()
        writer = CarWriter(blocks, [cid])
        written: set[bytes] = set()
        for block_cid, data in self._car_blocks(cid, None if prev is None else rev_key(prev.rev)):
            written.add(block_cid.cid_bytes)
            writer.write_block(block_cid, data)
        proof = covering_proof(self._cache, new.data, [change.path.encode() for change in changes])
        for raw, node in proof.items():
            if raw not in written:
                writer.write_block(node.cid, node.data)
        return {
            "repo": self._did,
            "commit": cid,
            "rev": new.rev,
            "since": None if prev is None else prev.rev,
            "prevData": None if prev is None else prev.data,
            "ops": [_op(change) for change in changes],
            "blobs": self._new_blob_refs(changes),
            "blocks": blocks.getvalue(),
            "rebase": False,
            "tooBig": False,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }

    def _new_blob_refs(self, changes: list[RecordChange]) -> list[CID]:
        found: dict[bytes, CID] = {}
        store = self._store_or_raise()
        for change in changes:
            data = None if change.new is None else store.get_block(change.new)
            for blob in [] if data is None else blob_refs(cbor.decode(data)):
                found.setdefault(blob.cid_bytes, blob)
        return list(found.values())

    @_public
    def prove(self, collection: str, rkey: str, *, commit: CID | str | None = None) -> bytes:
        """A proof CAR for collection/rkey at HEAD (or ``commit``): the commit, the MST
        nodes on the path to the key, and the record if present (inclusion) or
        the nodes showing where it would be (exclusion). Check with
        :func:`pypds.verify_proof`.
        """
        path = repo_path(collection, rkey).encode()
        self._refresh()
        commit_cid = self._head if commit is None else self._resolve(commit)
        commit_obj = self._load_commit(commit_cid)
        store = self._store_or_raise()
        buffer = io.BytesIO()
        writer = CarWriter(buffer, [commit_cid])
        writer.write_block(commit_cid, store.get_block(commit_cid))  # type: ignore[arg-type]
        for node, value in proof_path(self._cache, commit_obj.data, path):
            writer.write_block(node.cid, node.data)
            if value is not None:
                data = store.get_block(value)
                if data is None:
                    raise MissingBlock(f"record block {value.encode()} for {path.decode()} is missing", value)
                writer.write_block(value, data)
        return buffer.getvalue()

    # -- refs ------------------------------------------------------------------

    @_public
    def ref(self, name: str) -> CID | None:
        """The commit CID a named ref points to, or None."""
        return self._store_or_raise().get_ref(_check_ref_name(name))

    @_public
    def set_ref(self, name: str, cid: CID | str) -> None:
        """Point a named ref at a stored commit of this repository (tree complete)."""
        name = _check_ref_name(name)
        cid = parse_cid(cid, allow_raw=False)
        self._check_complete(self._load_commit(cid).data)
        store = self._store_or_raise()
        with store.transaction():
            store.set_ref(name, cid)

    @_public
    def delete_ref(self, name: str) -> None:
        """Remove a named ref; RefNotFound if it does not exist."""
        store = self._store_or_raise()
        with store.transaction():
            if not store.delete_ref(_check_ref_name(name)):
                raise RefNotFound(f"no ref named {shown(name)}")

    @_public
    def list_refs(self) -> list[tuple[str, CID]]:
        """All named refs as ``(name, commit CID)``, sorted by name."""
        return self._store_or_raise().list_refs()

    # -- verification ----------------------------------------------------------

    @_public
    def verify(self, *, key: PublicKey | SigningKey | str | None = None, did: str | None = None) -> VerifyReport:
        """Verify HEAD as ``import_car`` would verify a CAR, re-hashing every block read.

        Checks the commit (version 3 or 2 structure, the DID: ``did`` if
        given, else this repo's), the signature when ``key`` is given, the
        whole MST, completeness, repo paths, every record, the paths index
        and every blob file. Returns a report; never raises for bad data.
        """
        self._refresh()
        store = self._store_or_raise()
        report = VerifyReport()
        expected = self._did if did is None else did
        with store.snapshot():
            head = store.head()
            verify_tree(store.get_block, head, report, did=expected, key=key, limits=self._limits, rehash=True)
            tree = [] if not report.ok else iter_range(self._cache, self._load_commit(head).data)
            check_index(report, store.index_all(), tree)
        check_blob_files(report, self._blobs)
        return report

    # -- CAR import and export -------------------------------------------------

    @_public
    def import_car(
        self,
        source: CarSource,
        *,
        key: PublicKey | SigningKey | str | None = None,
        require_newer: bool = False,
    ) -> int:
        """Import a full repository CAR for this DID and move HEAD to its commit.

        Every block's hash, the commit, the whole MST (structure and
        completeness) and, when ``key`` is given, the signature are checked
        before anything is written; then all blocks and HEAD are written in
        one transaction. On failure the store is unchanged. Returns the
        number of blocks kept (commit, MST nodes, records).

        HEAD moves to the CAR's commit even if its rev is older than the
        current one (restoring a backup); older blocks stay, and the revs of
        later local commits still increase past every rev this repo has seen.
        With ``require_newer=True`` (what a download uses) a commit not newer
        than HEAD raises :class:`RollbackRefused` instead, checked inside the
        transaction so that a concurrent update cannot slip in between.
        """
        store = self._store_or_raise()
        with StreamedCar(source, self._limits) as streamed:
            commit = streamed.commit()
            with store.transaction():
                if require_newer:
                    self._refresh()
                    _refuse_rollback(streamed.root, commit.rev, self._head, self._rev or None)
                count = self._import_streamed(streamed, commit, key)
        self._refresh(force=True)
        return count

    @_public
    def apply_car(self, source: CarSource, *, key: PublicKey | SigningKey | str | None = None) -> int:
        """Apply a diff CAR (as ``export_car(since=...)`` writes) and move HEAD to its commit.

        The commit must be for this DID, newer than HEAD, and (with ``key``)
        validly signed; the tree it names must be complete and valid using
        the CAR's blocks together with the blocks already held. Everything
        is checked before one transaction writes the new blocks and HEAD; on
        failure nothing changes. Returns the number of blocks written.
        """
        store = self._store_or_raise()
        with StreamedCar(source, self._limits) as streamed:
            commit = streamed.commit()
            with store.transaction():
                self._refresh()
                _refuse_rollback(streamed.root, commit.rev, self._head, self._rev or None)
                count = self._import_streamed(streamed, commit, key, held=store.get_block, prev=self._head)
        self._refresh(force=True)
        return count

    @_public
    def export_car(
        self,
        dest: str | os.PathLike | BinaryIO | None = None,
        *,
        commit: CID | str | None = None,
        since: str | None = None,
    ) -> bytes | None:
        """Write the CAR of HEAD (or ``commit``): commit, every MST node, every record.

        Blocks come in the stream-friendly order (each node before its
        children, records in key order). With ``since`` (a rev), only the
        commit and the blocks of its tree first stored after that rev are
        written: what a copy at ``since`` needs (see :meth:`apply_car`).
        With no ``dest`` the CAR is returned as bytes; a path is written
        atomically; a binary file object is streamed to. Nothing is built in
        memory for a destination.
        """
        self._refresh()
        commit_cid = self._head if commit is None else parse_cid(commit, allow_raw=False)
        if since is not None:
            check_tid(since, "since rev")
        if dest is None:
            buffer = io.BytesIO()
            self._write_car(buffer, commit_cid, since)
            return buffer.getvalue()
        if isinstance(dest, (str, os.PathLike)):
            write_car_file(dest, [commit_cid], self._car_blocks(commit_cid, since))
            return None
        self._write_car(dest, commit_cid, since)
        return None

    @_public
    def iter_car(
        self, *, commit: CID | str | None = None, since: str | None = None, chunk_size: int = 1 << 16
    ) -> Iterator[bytes]:
        """Stream the CAR :meth:`export_car` writes, as chunks of about ``chunk_size`` bytes.

        For serving a CAR without holding it in memory. The commit is looked
        up now (a missing one raises here, before any byte is produced); each
        chunk is then read under the handle's lock, so the iterator may be
        consumed from another thread while the handle stays usable.
        """
        self._refresh()
        commit_cid = self._head if commit is None else parse_cid(commit, allow_raw=False)
        if since is not None:
            check_tid(since, "since rev")
        blocks = self._car_blocks(commit_cid, since)
        first = next(blocks)
        return self._car_chunks(commit_cid, first, blocks, chunk_size)

    # -- internals -------------------------------------------------------------

    def _car_chunks(
        self, root: CID, first: tuple[CID, bytes], blocks: Iterator[tuple[CID, bytes]], chunk_size: int
    ) -> Iterator[bytes]:
        buffer = io.BytesIO()
        writer = CarWriter(buffer, [root])
        writer.write_block(*first)
        done = False
        while not done:
            with self._lock:
                self._store_or_raise()
                while buffer.tell() < chunk_size:
                    try:
                        block = next(blocks, None)
                    except SqliteError as exc:
                        raise storage_error(exc, self.path) from None
                    if block is None:
                        done = True
                        break
                    writer.write_block(*block)
            chunk = buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if chunk:
                yield chunk

    def _get_block_locked(self, cid: CID) -> bytes | None:
        with self._lock:
            try:
                return self._store_or_raise().get_block(cid)
            except SqliteError as exc:
                raise storage_error(exc, self.path) from None

    def _store_or_raise(self) -> Store:
        store = self._store
        if store is None:
            raise RepoClosed(f"repository at {self.path} is closed")
        return store

    def _set_state(self, head: CID, rev: str, root: Node, height: int) -> None:
        """Adopt HEAD's state; ``rev`` is "" for a version 2 commit."""
        self._head, self._rev, self._root, self._height = head, rev, root, height
        if rev:
            self._clock.observe(rev)

    def _refresh(self, force: bool = False) -> None:
        """Reload HEAD if another connection moved it since we last looked."""
        store = self._store_or_raise()
        version = store.data_version()
        if not force and version == self._seen_version:
            return
        head = store.head()
        if force or head != self._head:
            commit = self._load_commit(head)
            root = self._cache.load_node(commit.data)
            height = key_height(root.keys[0]) if root.keys else 0
            self._set_state(head, rev_key(commit.rev), root, height)
        last = store.get_meta("last_rev")
        if last:
            self._clock.observe(str(last))
        self._seen_version = version

    def _head_label(self) -> str:
        return f"rev {self._rev}" if self._rev else "version 2 commit (no rev)"

    def _root_cid(self) -> CID:
        return self._root.cid

    def _load_commit(self, cid: CID) -> Commit:
        data = self._store_or_raise().get_block(cid)
        if data is None:
            raise MissingBlock(f"commit {cid.encode()} is not stored", cid)
        commit = decode_commit(data, cid)
        if commit.did != self._did:
            raise DidMismatch(f"commit {cid.encode()} belongs to {commit.did}, not {self._did}")
        return commit

    def _check_complete(self, root: CID) -> None:
        """Raise unless every node and record of the tree at ``root`` is stored."""
        store = self._store_or_raise()
        for step in walk_tree(store.get_block, root, limits=self._limits, check_paths=False):
            if step.node is None and not store.has_block(step.cid):
                raise MissingBlock(f"record block {step.cid.encode()} for {shown(step.key)} is missing", step.cid)

    def _require_key(self) -> SigningKey:
        if self._signing_key is None:
            raise SigningKeyRequired(f"repository at {self.path} has no signing key: pass signing_key= to Repo.open")
        return self._signing_key

    def _signed_head(self, key: SigningKey) -> bool:
        """True if ``key`` signed HEAD's commit; verified once per HEAD (a signature check, any commit version)."""
        head, verdict = self._key_verdict
        if head != self._head.cid_bytes:
            try:
                self._load_commit(self._head).verify(key.public_key)
                verdict = True
            except BadSignature:
                verdict = False
            self._key_verdict = (self._head.cid_bytes, verdict)
        return verdict

    def _check_key_for_write(self, key: SigningKey) -> None:
        if self._rotate_key or self._signed_head(key):
            return
        raise SigningKeyMismatch(
            f"repository at {self.path}: HEAD {self._head.encode()} ({self._head_label()}) was not signed by "
            f"{key.did_key}; a commit with this key would leave a history that verifies against two keys "
            "(open with rotate_key=True to do so)"
        )

    def _commit_ops(self, ops: list[WriteOp]) -> CID:
        """Apply ops to the tree at HEAD and write them as one signed commit."""
        key = self._require_key()
        store = self._store_or_raise()
        with store.transaction():
            self._refresh()  # under the write lock: we build on the latest HEAD
            self._check_key_for_write(key)
            root, height = self._apply_ops(ops)
            records = ((CID(cid), data) for _key, cid, data in ops if cid is not None)  # repeats stored once
            written = self._write_commit(root, records, key)
            self._update_index(written.commit, root, _effects(ops))
        self._committed(written)
        # No data_version read here: a commit by another connection may land right
        # after ours, and must be loaded by the next call, not marked as seen.
        # (Our own commit does not change data_version; the in-transaction
        # refresh above recorded the right value.)
        self._set_state(written.commit, written.rev, root, height)
        return written.commit

    def _update_index(self, head: CID, root: Link, changes: list[tuple[bytes, bytes | None]]) -> None:
        """Bring the paths index to ``head`` (inside the transaction that moves HEAD there).

        ``changes`` are applied when the index is at the previous HEAD;
        otherwise (a store from an older pypds) it is rebuilt from the tree.
        """
        store = self._store_or_raise()
        if self._head.cid_bytes and store.index_head() == self._head:
            store.index_apply(head, changes)
        else:
            store.index_replace(head, iter_range(self._cache, root))

    def _apply_ops(self, ops: list[WriteOp]) -> tuple[Node, int]:
        root = self._root
        if root.is_empty and len(ops) >= BULK_BUILD_THRESHOLD:
            final: dict[bytes, bytes] = {}
            for key, cid, _data in ops:
                if cid is not None:
                    final[key] = cid
                elif final.pop(key, None) is None:
                    raise RecordNotFound(f"no record at {key.decode()}")
            new_root, height = build_tree([(key, CID(final[key])) for key in sorted(final)])
        else:
            new_root, height = root, self._height
            for key, cid, _data in ops:
                if cid is not None:
                    new_root, height = mst_put(self._cache, new_root, height, key, CID(cid))
                else:
                    new_root, height = mst_delete(self._cache, new_root, height, key)
        return new_root, height

    def _write_commit(self, root: Node, records: Iterable[tuple[CID, bytes]], key: SigningKey) -> _Written:
        """Sign a commit over ``root`` and write it with the new blocks (inside a transaction).

        The caller passes the result to :meth:`_committed` once the
        transaction has committed, never before.
        """
        store = self._store_or_raise()
        new_nodes = _unpersisted_nodes(root)
        rev = self._clock.next()
        _commit, block, commit_cid = sign_commit(self._did, root.cid, rev, key)
        nodes = ((node.cid, node.data) for node in new_nodes)
        store.put_blocks(itertools.chain(nodes, records, [(commit_cid, block)]), rev)
        store.set_head(commit_cid, rev)
        store.record_commit(commit_cid, rev, self._head if self._head.cid_bytes else None)
        return _Written(commit_cid, rev, new_nodes)

    def _committed(self, written: _Written) -> None:
        """Record that a commit's new nodes are durably stored (and that our key signed it)."""
        self._key_verdict = (written.commit.cid_bytes, True)
        for node in written.nodes:
            node.persisted = True
            self._cache.add(node)

    def _import_streamed(
        self,
        streamed: StreamedCar,
        commit: Commit,
        key: PublicKey | SigningKey | str | None,
        held: Callable[[CID], bytes | None] | None = None,
        prev: CID | None = None,
    ) -> int:
        """Check a CAR against this repo while writing it (inside a transaction); the blocks written.

        The tree is walked and checked as the CAR streams in; its blocks and
        the paths index are written in batches, and HEAD moves only once the
        walk and the rest of the CAR have been checked: a failure rolls the
        whole transaction back. ``prev`` is the commit the CAR's commit
        follows (known for a diff CAR).
        """
        if commit.did != self._did:
            raise DidMismatch(f"CAR commit {streamed.root.encode()} is for {commit.did}, not {self._did}")
        if key is not None:
            commit.verify(load_public_key(key))
        store = self._store_or_raise()
        rev = rev_key(commit.rev)  # a version 2 commit's blocks get "", older than every rev
        store.index_clear()
        blocks: list[tuple[CID, bytes]] = []
        leaves: list[tuple[bytes, CID]] = []
        pending = written = 0
        for cid, data, path in streamed.tree_blocks(commit, held):
            if data is not None:
                blocks.append((cid, data))
                pending += len(data)
                if pending >= IMPORT_BATCH_BYTES:
                    store.put_blocks(blocks, rev)
                    written += len(blocks)
                    blocks, pending = [], 0
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

    def _car_blocks(self, commit_cid: CID, since: str | None = None) -> Iterator[tuple[CID, bytes]]:
        """The blocks of a CAR of ``commit_cid``'s tree, in stream order, each re-hashed against its CID.

        A block whose bytes do not hash to its CID (a damaged store) raises
        BlockHashMismatch before it is yielded, and before its links are read.
        """
        store = self._store_or_raise()
        commit_block = store.get_block(commit_cid)
        if commit_block is None:
            raise MissingBlock(f"commit {commit_cid.encode()} is not stored", commit_cid)
        self._check_shipped(commit_cid, commit_block)
        commit = decode_commit(commit_block, commit_cid)
        yield commit_cid, commit_block
        if commit.rev is None:
            since = None  # nothing is known to be older than a version 2 commit: write it all
        sha256 = hashlib.sha256
        written: set[bytes] = set()
        # A block first stored at or before ``since`` was stored with all the
        # blocks below it, so a copy at ``since`` has that whole subtree.
        keep = None if since is None else (lambda cid: (store.block_rev(cid) or "") > since)
        read_record = store.get_block
        if since is None and store.index_head() == commit_cid:
            read_record = _IndexedRecords(store).read
        for cid, node_block in iter_stored_stream_order(self._cache.cached, store.get_block, commit.data, keep=keep):
            if node_block is not None:
                if sha256(node_block).digest() != cid.cid_bytes[4:]:
                    self._check_shipped(cid, node_block)
                yield cid, node_block
                continue
            data = read_record(cid)  # called for every record, so the indexed reader keeps pace
            if cid.cid_bytes in written:
                continue
            written.add(cid.cid_bytes)
            if data is None:
                raise MissingBlock(f"record block {cid.encode()} is missing", cid)
            if sha256(data).digest() != cid.cid_bytes[4:]:
                self._check_shipped(cid, data)
            yield cid, data

    def _check_shipped(self, cid: CID, data: bytes) -> None:
        """Raise BlockHashMismatch unless a block about to leave the store hashes to its CID."""
        if hashlib.sha256(data).digest() != cid.cid_bytes[4:]:
            raise BlockHashMismatch(
                f"stored block {cid.encode()} in {self.path}: bytes do not hash to its CID "
                "(the store is damaged; nothing more was sent)"
            )

    def _write_car(self, stream: BinaryIO, commit_cid: CID, since: str | None = None) -> None:
        blocks = self._car_blocks(commit_cid, since)
        first = next(blocks)  # fail before writing anything if the commit is absent
        writer = CarWriter(stream, [commit_cid])
        writer.write_block(*first)
        for cid, data in blocks:
            writer.write_block(cid, data)


class GcReport(NamedTuple):
    """What :meth:`Repo.gc` freed."""

    blocks: int
    block_bytes: int
    blobs: int
    blob_bytes: int


class _Written(NamedTuple):
    commit: CID
    rev: str
    nodes: list[Node]


def _refuse_rollback(offered: CID, offered_rev: str | None, head: CID, head_rev: str | None) -> None:
    if not rev_is_newer(offered_rev, head_rev):  # a missing rev (version 2) is older than any rev
        raise RollbackRefused(offered, offered_rev, head, head_rev)


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


def _init_meta(store: Store, did: str, key: SigningKey | None, keep_key: bool) -> None:
    store.set_meta("did", did)
    store.set_meta("clock_id", TidClock().clock_id)
    if key is not None and keep_key:
        store.set_meta("signing_key", key.to_bytes().hex())
        store.set_meta("signing_curve", key.curve)


def _stored_key(store: Store) -> SigningKey | None:
    secret = store.get_meta("signing_key")
    if secret is None:
        return None
    return load_signing_key(str(secret), curve=str(store.get_meta("signing_curve") or "k256"))


def _int_meta(store: Store, name: str) -> int | None:
    value = store.get_meta(name)
    return None if value is None else int(value)  # type: ignore[call-overload]


def _check_ref_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 256 or not name.isprintable():
        raise InvalidInput(f"invalid ref name {shown(name)}: 1-256 printable characters")
    return name


class _IndexedRecords:
    """Read the record blocks of the indexed tree in key order, a page of the paths index at a time.

    A full export asks for the records of a tree in key order, which is the
    order of the paths index when that tree is the indexed one: one paged
    join instead of a point query per record. Each answer is checked against
    the CID asked for; on the first mismatch (HEAD moved meanwhile) the rest
    are read by point queries.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._rows: Iterator[tuple[bytes, bytes | None]] | None = store.index_blocks()

    def read(self, cid: CID) -> bytes | None:
        if self._rows is not None:
            row = next(self._rows, None)
            if row is not None and row[0] == cid.cid_bytes and row[1] is not None:
                return row[1]
            self._rows = None
        return self._store.get_block(cid)


def _effects(ops: list[WriteOp]) -> list[tuple[bytes, bytes | None]]:
    """The net change per key of a list of writes: the new record CID bytes, or None if deleted."""
    return list({key: cid for key, cid, _data in ops}.items())


def _op(change: RecordChange) -> dict:
    op: dict = {"action": change.action, "path": change.path, "cid": change.new}
    if change.old is not None:
        op["prev"] = change.old
    return op


def _first_missing_dir(directory: Path) -> Path | None:
    """The outermost directory on the way to ``directory`` that does not exist yet."""
    missing = None
    current = directory.absolute()
    while not current.exists():
        missing = current
        current = current.parent
    return missing


def _remove_store_files(directory: Path, created: Path | None) -> None:
    """Remove what a failed create left behind, including directories it made."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        target = directory / f"pds.db{suffix}"
        if target.exists():
            target.unlink()
    if created is not None and created.exists():
        shutil.rmtree(created)
