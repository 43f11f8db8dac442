"""The :class:`Repo` handle: one atproto repository in one directory.

A repository is a content-addressed block graph (signed commit -> MST nodes
-> records) plus pointers (HEAD and named refs), stored in ``pds.db``, with
blobs beside it in ``blobs/``. Every write is a signed v3 commit: the MST
change is computed in memory, then the new blocks, HEAD and rev are written
in one SQLite transaction; the in-memory state only advances once that
transaction has committed.

``Repo`` is a facade: it holds one :class:`~pypds.repo.state.RepoState`
and each method delegates to the module that owns the concept (writer,
reads, history, importer, export, referenced_blobs, gc, integrity). The
facade adds the handle's rules: calls are serialised by the handle's lock,
refused once it is closed, and SQLite failures become typed errors.
Modules a read of one record does not need are imported inside the methods
that use them, so a short-lived process (``pypds get``) loads little.
"""

from __future__ import annotations

import builtins
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from ..car.reader import CarSource
from ..car.writer import Writable
from ..codec import cbor
from ..codec.cid import CID, parse_cid
from ..commit import Commit
from ..errors import InvalidInput, RepoClosed, shown
from ..keys import PublicKey, SigningKey
from ..limits import DEFAULT_LIMITS, Limits
from ..mst import MST
from ..operation import RecordChange
from ..storage.blobs import BlobRef
from ..storage.store import SqliteError, storage_error
from . import lifecycle, reads, writer
from .batch import Batch
from .blockstore import BlockStore
from .state import RepoState

if TYPE_CHECKING:
    from ..sync.firehose import CommitEvent, VerifiedCommit
    from ..sync.verify import VerifyReport
    from .gc import GcReport
    from .history import Revert
    from .load import LoadReport

__all__ = ["Batch", "BlockStore", "Repo"]

F = TypeVar("F", bound=Callable[..., Any])
KeyInput = PublicKey | SigningKey | str | None


def _public(method: F) -> F:
    """Serialise calls on one handle, refuse them once it is closed, type SQLite failures."""

    @functools.wraps(method)
    def wrapper(self: Repo, *args: Any, **kwargs: Any) -> Any:
        state = self._state
        with state.lock:
            if state.store_or_none is None:
                raise RepoClosed(f"repository at {state.path} is closed")
            try:
                return method(self, *args, **kwargs)
            except SqliteError as exc:
                raise storage_error(exc, state.path) from None

    return wrapper  # type: ignore[return-value]


class Repo:
    """One atproto repository: ``pds.db`` plus ``blobs/`` in a directory.

    Open with :meth:`create`, :meth:`open` or :meth:`from_car`; use as a
    context manager or call :meth:`close`. Handles are safe to share between
    threads (calls are serialised); several processes may open one repo.
    """

    def __init__(self, state: RepoState) -> None:
        self._state = state
        self.path: Path = state.path
        self.blockstore = BlockStore(state)

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
        state = lifecycle.create_state(
            path, did, signing_key, store_key, durability=durability, busy_timeout=busy_timeout, limits=limits
        )
        return cls(state)

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
        state = lifecycle.open_state(
            path, signing_key, rotate_key=rotate_key, durability=durability, busy_timeout=busy_timeout, limits=limits
        )
        return cls(state)

    @classmethod
    def from_car(
        cls,
        path: str | os.PathLike,
        car: CarSource,
        *,
        key: KeyInput = None,
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
        state = lifecycle.from_car_state(
            path,
            car,
            key,
            signing_key,
            rotate_key=rotate_key,
            durability=durability,
            busy_timeout=busy_timeout,
            limits=limits,
        )
        return cls(state)

    def close(self) -> None:
        """Close the handle; later calls raise RepoClosed. Closing twice is fine."""
        self._state.close()

    @_public
    def make_durable(self) -> None:
        """Make every commit so far durable against a power cut now.

        With ``durability="full"`` (the default) each commit already is;
        with ``"normal"`` the last commits may sit in an unsynced WAL until
        SQLite's next checkpoint. A mirror calls this before it records how
        far it got, so its index never runs ahead of its copies.
        """
        self._state.store.make_durable()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._state
        shown_state = "closed" if state.store_or_none is None else f"head={state.head.encode()}"
        return f"Repo({str(self.path)!r}, did={state.did!r}, {shown_state})"

    # -- identity and state ---------------------------------------------------

    @property
    def did(self) -> str:
        """The repository's DID."""
        return self._state.did

    @property
    def signing_key(self) -> SigningKey | None:
        """The key that signs new commits (None for a read-only handle)."""
        return self._state.signing_key

    @property
    def did_key(self) -> str | None:
        """The ``did:key`` of the signing key."""
        key = self._state.signing_key
        return None if key is None else key.did_key

    @_public
    def signing_key_matches_head(self) -> bool | None:
        """Whether the signing key signed HEAD's commit (None for a handle without a key).

        When False, a write raises SigningKeyMismatch unless the handle was
        opened with ``rotate_key=True``. Checked once per HEAD.
        """
        state = self._state
        state.refresh()
        return None if state.signing_key is None else writer.signed_head(state, state.signing_key)

    @property
    @_public
    def head(self) -> CID:
        """The CID of the current commit."""
        self._state.refresh()
        return self._state.head

    @property
    @_public
    def rev(self) -> str | None:
        """The rev (TID) of the current commit; None when HEAD is a version 2 commit (no rev)."""
        self._state.refresh()
        return self._state.rev or None

    @_public
    def commit(self, cid: CID | str | None = None) -> Commit:
        """The decoded commit at ``cid`` (default HEAD)."""
        state = self._state
        state.refresh()
        return state.load_commit(state.head if cid is None else parse_cid(cid))

    @_public
    def set_head(self, cid: CID | str) -> None:
        """Move HEAD to a stored commit of this repository whose tree is complete.

        History then goes back: copies of this repository refuse to follow
        (their HEAD is newer). To go back so that copies follow, use :meth:`revert`.
        """
        from . import history

        history.set_head(self._state, cid)

    @_public
    def commit_chain(
        self, old: CID | str, new: CID | str | None = None, *, limit: int = 1000
    ) -> builtins.list[CID] | None:
        """The commits leading from ``old`` (excluded) to ``new`` (default HEAD; included), oldest first.

        Follows the commit history (commits made here, or received as diffs
        with ``apply_car``) back from ``new``. None when ``new`` does not
        chain back to ``old`` within ``limit`` commits: it is older, on
        another branch, imported whole (``import_car``), or too far ahead.
        An empty list when ``new`` is ``old``. This is how a server turns a
        HEAD that moved into one ``#commit`` event per commit.
        """
        from . import history

        return history.commit_chain(self._state, old, new, limit)

    @_public
    def revert(self, target: CID | str) -> Revert:
        """Write a new signed commit whose tree equals ``target``'s (a commit CID, its string or a ref).

        History moves forward: the new commit gets the next rev and follows
        HEAD, so copies take it as any update (``apply_car``, downloads).
        The record diff from HEAD to the target is written as puts and
        deletes, and the new tree's root is checked to be the target's before
        anything is written. The target must be a stored commit of this DID
        with a complete tree; the signing key rules of any write apply. When
        HEAD already has the target's tree, nothing is written and
        ``commit`` is None. :class:`~pypds.errors.HeadMoved` if other writers
        keep moving HEAD meanwhile.
        """
        from . import history

        return history.revert(self._state, target)

    @_public
    def checkout(self, cid: CID | str | None = None) -> MST:
        """A read-only view of the tree at HEAD or at the given commit (a CID, its string or a ref name)."""
        state = self._state
        state.refresh()
        if cid is None:
            return MST(state.nodes, state.root.cid)
        return MST(state.nodes, state.load_commit(state.resolve(cid)).data)

    # -- records ---------------------------------------------------------------

    # Writes queue for the handle's next group commit instead of holding the lock while they
    # wait (pypds.repo.writer): concurrent calls share one transaction and one fsync.

    def put(self, collection: str, rkey: str, record: dict | bytes) -> CID:
        """Create or replace a record in its own signed commit; returns the record CID once durable."""
        self._state.check_open()
        batch = Batch(self._state.limits)
        cid = batch.put(collection, rkey, record)
        writer.commit_ops(self._state, batch.ops)
        return cid

    def delete(self, collection: str, rkey: str) -> None:
        """Delete a record in its own signed commit; RecordNotFound if absent."""
        self._state.check_open()
        batch = Batch(self._state.limits)
        batch.delete(collection, rkey)
        writer.commit_ops(self._state, batch.ops)

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Collect puts and deletes and commit them as one signed commit.

        An exception inside the block discards every write in it.
        """
        self._state.check_open()
        batch = Batch(self._state.limits)
        yield batch
        if batch.ops:
            batch.commit = writer.commit_ops(self._state, batch.ops)

    @_public
    def find(self, collection: str, rkey: str, *, commit: CID | str | None = None) -> dict | None:
        """The record at collection/rkey as a dict, or None.

        At HEAD, or at ``commit`` (a commit CID, its string, ``"HEAD"`` or a
        ref name) read through that commit's tree; so for every read below.
        """
        data = reads.find_bytes(self._state, collection, rkey, commit)
        return None if data is None else cbor.decode(data, f"{collection}/{rkey}")

    @_public
    def find_bytes(self, collection: str, rkey: str, *, commit: CID | str | None = None) -> bytes | None:
        """The record's DAG-CBOR bytes at HEAD (or ``commit``), or None."""
        return reads.find_bytes(self._state, collection, rkey, commit)

    @_public
    def find_cid(self, collection: str, rkey: str, *, commit: CID | str | None = None) -> CID | None:
        """The record's CID at HEAD (or ``commit``), or None."""
        return reads.find_cid(self._state, collection, rkey, commit)

    @_public
    def list(
        self,
        collection: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        reverse: bool = False,
        commit: CID | str | None = None,
    ) -> builtins.list[tuple[str, CID]]:
        """``(rkey, cid)`` pairs of a collection in key order, at HEAD (or ``commit``).

        ``cursor`` is an rkey: listing starts after it (before it when
        ``reverse``). ``limit`` caps the number returned.
        """
        return reads.list_records(self._state, collection, limit=limit, cursor=cursor, reverse=reverse, commit=commit)

    @_public
    def collections(self, *, commit: CID | str | None = None) -> builtins.list[str]:
        """The collections that hold at least one record at HEAD (or ``commit``), sorted."""
        return reads.collections(self._state, commit)

    @_public
    def records(
        self, collection: str | None = None, *, commit: CID | str | None = None
    ) -> Iterator[tuple[str, CID, dict]]:
        """Every record (or every record of ``collection``) as ``(path, cid, value)``, in key order, lazily.

        The commit (HEAD, or ``commit``) is pinned when this is called; records
        are then read a page at a time as the iterator is consumed, so memory
        does not grow with the repository and the handle stays usable between
        pages (writes meanwhile, even on this handle, do not change what it
        yields). A migration is a loop over it and a :meth:`batch`.
        """
        return reads.records(self._state, collection, commit)

    @_public
    def load(
        self,
        source: str | os.PathLike | BinaryIO,
        *,
        batch_size: int | None = None,
        name: str | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> LoadReport:
        """Write many records from JSON Lines (a file, or a binary stream) or an unpacked directory.

        A line is ``{"collection", "rkey", "value"}`` or ``{"path", "value"}``
        (``value`` in atproto JSON, an optional ``"cid"`` checked against it:
        what ``pypds dump`` prints) or ``{"delete": "collection/rkey"}``; a
        directory is laid out as ``pypds unpack`` writes it. Every write is
        checked first: one bad line raises :class:`~pypds.errors.LoadError`
        naming it, and nothing is written. Then all of them are one signed
        commit, or ``batch_size`` per commit (memory: one batch; a failure
        after the first commit raises :class:`~pypds.errors.LoadIncomplete`
        saying how far it got). ``name`` labels the input in messages;
        ``progress(stage, done, total)`` hears "checking" and "writing".
        """
        from . import load

        return load.load(self._state, source, batch_size=batch_size, name=name, progress=progress)

    @_public
    def diff(self, old: CID | str, new: CID | str | None = None) -> builtins.list[RecordChange]:
        """Record-level creates, updates and deletes from ``old`` to ``new`` (default HEAD).

        Each side is a commit CID or the name of a ref. Only subtrees that
        differ are visited.
        """
        from . import history

        return history.diff(self._state, old, new)

    # -- blobs -----------------------------------------------------------------

    @_public
    def put_blob(self, data: bytes, mime_type: str) -> BlobRef:
        """Store a blob durably, and its MIME type; returns its reference (raw CID, MIME type, size).

        The file is written first, then the type (see :meth:`blob_type`);
        storing the same bytes again with another type keeps the new one.
        """
        if not isinstance(mime_type, str) or "/" not in mime_type or not mime_type.isprintable():
            raise InvalidInput(f"invalid MIME type: {shown(mime_type)}")
        state = self._state
        cid = state.blobs.put(data)
        with state.store.transaction():
            state.store.set_blob_type(cid, mime_type, len(data))
        return BlobRef(cid=cid, mime_type=mime_type, size=len(data))

    @_public
    def blob_type(self, cid: CID | str) -> str | None:
        """The MIME type :meth:`put_blob` was given for a blob; None if unknown (stored before pypds
        kept types, downloaded, or removed by gc)."""
        return self._state.store.blob_type(parse_cid(cid))

    @_public
    def export_blobs(
        self, dest: str | os.PathLike, *, progress: Callable[[int, int], None] | None = None
    ) -> builtins.list[tuple[CID, Path]]:
        """Copy every stored blob into directory ``dest`` as ``<CID>`` plus the usual extension of its
        MIME type when known (``.png``, ``.jpg``); returns ``(cid, file)`` for each.

        Each file is streamed, every byte checked against the CID before it
        is written, and written atomically; an existing file of that name is
        replaced. A damaged blob raises :class:`BlockHashMismatch` (the files
        before it are written). ``progress(done, total)`` after each file.
        """
        from . import export

        return export.export_blobs(self._state, dest, progress)

    def list_blobs(
        self, *, since: str | None = None, cursor: str | None = None, limit: int | None = None, stored: bool = False
    ) -> builtins.list[CID]:
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
        from . import referenced_blobs

        return referenced_blobs.list_blobs(self._state, since=since, cursor=cursor, limit=limit, stored=stored)

    def blob_referenced(self, cid: CID | str) -> bool:
        """Whether a record at HEAD references blob ``cid`` (stored here or not): what the server serves."""
        from . import referenced_blobs

        return referenced_blobs.blob_referenced(self._state, cid)

    @_public
    def blob(self, cid: CID | str) -> bytes | None:
        """A blob's bytes, checked against its CID; None if not stored.

        A local read of the stored file, referenced at HEAD or not (see
        :meth:`blob_referenced`). Never follows a symbolic link out of
        ``blobs/`` and never blocks on a FIFO: anything but a regular file
        there raises :class:`IntegrityError`, a file over 1 GiB
        :class:`LimitExceeded`, a damaged one :class:`BlockHashMismatch`.
        """
        return self._state.blobs.get(parse_cid(cid))

    @_public
    def missing_blobs(self) -> builtins.list[CID]:
        """Blobs referenced by records at HEAD but not stored, in key order of first use."""
        from . import referenced_blobs

        return referenced_blobs.missing_blobs(self._state)

    @_public
    def gc(self, *, blob_grace: float = 3600.0, dry_run: bool = False, vacuum: bool | None = None) -> GcReport:
        """Remove every block not reachable from HEAD or a named ref, and every blob
        file no record in those trees references, then give the space back.

        Blocks go in one transaction (a crash leaves all or none removed);
        blob files are removed after it, so a crash can only leave some
        unreferenced files for the next gc. Blob files younger than
        ``blob_grace`` seconds are kept: another process may be about to
        commit a record that references them. Loose blocks added with
        ``repo.blockstore.put`` and not reachable are removed too.

        Then, when at least a tenth of ``pds.db`` is free pages (always with
        ``vacuum=True``, never with ``False``), ``pds.db`` is rewritten
        without them (SQLite ``VACUUM``: crash-safe, holds the write lock
        while it runs) and the file shrinks. The report gives the sizes
        before and after. ``dry_run=True`` only reports what would go.
        """
        from . import gc

        return gc.gc(self._state, blob_grace, dry_run=dry_run, vacuum=vacuum)

    # -- sync: events, proofs ----------------------------------------------------

    @_public
    def commit_event(self, commit: CID | str | None = None) -> CommitEvent:
        """The sync 1.1 ``#commit`` message for HEAD's commit (or ``commit``), as DAG-CBOR values.

        Holds ``repo``, ``commit``, ``rev``, ``since`` (the previous rev),
        ``prevData`` (the previous MST root), ``ops`` (``action``, ``path``,
        ``cid``, and ``prev`` for updates and deletes), ``blobs`` and
        ``blocks``: a CAR with the commit, every block the commit added, and
        the covering-proof nodes a consumer needs to undo the ops. Works for
        commits made or received (``apply_car``) here; the first commit of a
        history is described against the empty tree.
        """
        from . import export

        return export.commit_event(self._state, commit)

    @_public
    def prove(self, collection: str, rkey: str, *, commit: CID | str | None = None) -> bytes:
        """A proof CAR for collection/rkey at HEAD (or ``commit``): the commit, the MST
        nodes on the path to the key, and the record if present (inclusion) or
        the nodes showing where it would be (exclusion). Check with
        :func:`pypds.verify_proof`.
        """
        from . import export

        return export.prove(self._state, collection, rkey, commit)

    # -- refs ------------------------------------------------------------------

    @_public
    def ref(self, name: str) -> CID | None:
        """The commit CID a named ref points to, or None."""
        from . import history

        return history.ref(self._state, name)

    @_public
    def set_ref(self, name: str, cid: CID | str) -> None:
        """Point a named ref at a stored commit of this repository (tree complete)."""
        from . import history

        history.set_ref(self._state, name, cid)

    @_public
    def delete_ref(self, name: str) -> None:
        """Remove a named ref; RefNotFound if it does not exist."""
        from . import history

        history.delete_ref(self._state, name)

    @_public
    def list_refs(self) -> builtins.list[tuple[str, CID]]:
        """All named refs as ``(name, commit CID)``, sorted by name."""
        from . import history

        return history.list_refs(self._state)

    # -- verification ----------------------------------------------------------

    @_public
    def verify(self, *, key: KeyInput = None, did: str | None = None) -> VerifyReport:
        """Verify HEAD as ``import_car`` would verify a CAR, re-hashing every block read.

        Checks the commit (version 3 or 2 structure, the DID: ``did`` if
        given, else this repo's), the signature when ``key`` is given, the
        whole MST, completeness, repo paths, every record, the paths index
        and every blob file. Returns a report; never raises for bad data.
        """
        from . import integrity

        return integrity.verify(self._state, key, did)

    # -- CAR import and export -------------------------------------------------

    @_public
    def import_car(self, source: CarSource, *, key: KeyInput = None, require_newer: bool = False) -> int:
        """Import a full repository CAR for this DID and move HEAD to its commit.

        Every block's hash, the commit, the whole MST (structure and
        completeness) and, when ``key`` is given, the signature are checked
        while the blocks are written in one transaction, and HEAD moves only
        once all of it passed. On failure the store is unchanged. Returns the
        number of blocks kept (commit, MST nodes, records).

        HEAD moves to the CAR's commit even if its rev is older than the
        current one (restoring a backup); older blocks stay, and the revs of
        later local commits still increase past every rev this repo has seen.
        With ``require_newer=True`` (what a download uses) a commit not newer
        than HEAD raises :class:`RollbackRefused` instead, checked inside the
        transaction so that a concurrent update cannot slip in between.
        """
        from . import importer

        return importer.import_car(self._state, source, key, require_newer=require_newer)

    @_public
    def apply_car(self, source: CarSource, *, key: KeyInput = None) -> int:
        """Apply a diff CAR (as ``export_car(since=...)`` writes) and move HEAD to its commit.

        The commit must be for this DID, newer than HEAD, and (with ``key``)
        validly signed; the tree it names must be complete and valid using
        the CAR's blocks together with the blocks already held. Everything
        is checked before the transaction that writes the new blocks and
        HEAD commits; on failure nothing changes. Returns the number of
        blocks written.
        """
        from . import importer

        return importer.apply_car(self._state, source, key)

    @_public
    def apply_commit(self, verified: VerifiedCommit, since: str | None, *, car: bytes | None = None) -> str:
        """Apply a followed ``#commit`` that :func:`pypds.verify_commit_message` verified; one transaction.

        ``since`` is the message's ``since`` (the rev it builds on). Returns
        ``"applied"``, or ``"duplicate"`` for a commit this copy already holds
        (nothing changes). Raises :class:`~pypds.errors.CommitGap` when the
        commit does not build on HEAD (``since`` is not HEAD's rev, or its
        previous MST root is not HEAD's), :class:`RollbackRefused` for any
        other commit not newer than HEAD, :class:`DidMismatch` for another
        account's commit; the copy is then unchanged. Only the new blocks the
        message carries are written (no walk of the whole tree); a message
        whose ops could not be undone (before sync 1.1) is checked whole from
        ``car`` (the message's ``blocks``) instead.
        """
        from . import follow

        return follow.apply_commit(self._state, verified, since, car)

    @_public
    def export_car(
        self,
        dest: str | os.PathLike | Writable | None = None,
        *,
        commit: CID | str | None = None,
        since: str | None = None,
    ) -> bytes | None:
        """Write the CAR of HEAD (or ``commit``): commit, every MST node, every record.

        Blocks come in the stream-friendly order (each node before its
        children, records in key order), each re-hashed against its CID on
        the way out. With ``since`` (a rev), only the commit and the blocks
        of its tree first stored after that rev are written: what a copy at
        ``since`` needs (see :meth:`apply_car`). With no ``dest`` the CAR is
        returned as bytes; a path is written atomically; a binary file
        object is streamed to. Nothing is built in memory for a destination.
        """
        from . import export

        return export.export_car(self._state, dest, commit, since)

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
        from . import export

        return export.iter_car(self._state, commit, since, chunk_size)
