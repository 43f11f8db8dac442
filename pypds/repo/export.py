"""What a repository hands out: full and diff CARs, record proofs, ``#commit`` events and blob files.

This is the "sync provider" side of a repository (``getRepo``, ``getRecord``,
``subscribeRepos``): every function reads the store and never writes it.

Traps:

* **Every block is re-hashed on the way out** (:func:`car_blocks`): a damaged
  store stops an export with :class:`~pypds.errors.BlockHashMismatch`
  naming the CID, before the bad bytes are written.
* **Stream order.** Blocks come commit first, then each MST node before its
  children and records in key order, so a reader can check the tree as it
  streams. A full export of the indexed HEAD reads its records a page of
  the paths index at a time (:class:`_IndexedRecords`) instead of one point
  query each.
* **``since``.** A block first stored at or before rev ``since`` was stored
  with every block below it, so a copy at ``since`` holds that whole
  subtree and it is skipped. Nothing is known to be older than a version 2
  commit: its export is always whole.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..car.writer import CarWriter, Writable, write_car_file
from ..codec import cbor
from ..codec.cid import CID
from ..commit import decode_commit, rev_key
from ..errors import BlockHashMismatch, InvalidInput, MissingBlock, NotFound
from ..filesystem import atomic_file
from ..mst import Link, diff_trees, empty_node, iter_stored_stream_order
from ..operation import RecordChange
from ..storage.blobs import blob_refs
from ..storage.store import SqliteError, Store, storage_error
from ..sync.firehose import CommitEvent, covering_proof
from ..sync.proof import proof_path
from ..syntax import check_tid, repo_path
from ..tid import utc_timestamp
from .state import RepoState

__all__ = ["car_blocks", "commit_event", "export_blobs", "export_car", "iter_car", "prove"]


def export_car(
    state: RepoState, dest: str | os.PathLike | Writable | None, commit: CID | str | None, since: str | None
) -> bytes | None:
    """See :meth:`pypds.Repo.export_car`."""
    commit_cid = _commit_to_export(state, commit, since)
    if dest is None:
        buffer = io.BytesIO()
        _write_car(state, buffer, commit_cid, since)
        return buffer.getvalue()
    if isinstance(dest, (str, os.PathLike)):
        write_car_file(dest, [commit_cid], car_blocks(state, commit_cid, since))
        return None
    _write_car(state, dest, commit_cid, since)
    return None


def iter_car(state: RepoState, commit: CID | str | None, since: str | None, chunk_size: int) -> Iterator[bytes]:
    """See :meth:`pypds.Repo.iter_car`."""
    commit_cid = _commit_to_export(state, commit, since)
    blocks = car_blocks(state, commit_cid, since)
    first = next(blocks)  # a missing commit raises now, before any byte is produced
    return _car_chunks(state, commit_cid, first, blocks, chunk_size)


def _commit_to_export(state: RepoState, commit: CID | str | None, since: str | None) -> CID:
    state.refresh()
    if since is not None:
        check_tid(since, "since rev")
    return state.head if commit is None else state.resolve(commit)


def _car_chunks(
    state: RepoState, root: CID, first: tuple[CID, bytes], blocks: Iterator[tuple[CID, bytes]], chunk_size: int
) -> Iterator[bytes]:
    """The CAR as chunks, each read under the handle's lock (the handle stays usable between them)."""
    buffer = io.BytesIO()
    writer = CarWriter(buffer, [root])
    writer.write_block(*first)
    done = False
    while not done:
        with state.lock:
            state.check_open()
            while buffer.tell() < chunk_size:
                try:
                    block = next(blocks, None)
                except SqliteError as exc:
                    raise storage_error(exc, state.path) from None
                if block is None:
                    done = True
                    break
                writer.write_block(*block)
        chunk = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if chunk:
            yield chunk


def _write_car(state: RepoState, stream: Writable, commit_cid: CID, since: str | None) -> None:
    blocks = car_blocks(state, commit_cid, since)
    first = next(blocks)  # fail before writing anything if the commit is absent
    writer = CarWriter(stream, [commit_cid])
    writer.write_block(*first)
    for cid, data in blocks:
        writer.write_block(cid, data)


def car_blocks(state: RepoState, commit_cid: CID, since: str | None = None) -> Iterator[tuple[CID, bytes]]:
    """The blocks of a CAR of ``commit_cid``'s tree, in stream order, each re-hashed against its CID.

    A block whose bytes do not hash to its CID (a damaged store) raises
    BlockHashMismatch before it is yielded, and before its links are read.
    """
    store = state.store
    commit_block = store.get_block(commit_cid)
    if commit_block is None:
        raise MissingBlock(f"commit {commit_cid.encode()} is not stored", commit_cid)
    _check_shipped(state, commit_cid, commit_block)
    commit = decode_commit(commit_block, commit_cid)
    yield commit_cid, commit_block
    if commit.rev is None:
        since = None  # nothing is known to be older than a version 2 commit: write it all
    sha256 = hashlib.sha256
    written: set[bytes] = set()
    keep = None if since is None else (lambda cid: (store.block_rev(cid) or "") > since)
    read_record = store.get_block
    if since is None and store.index_head() == commit_cid:
        read_record = _IndexedRecords(store).read
    for cid, node_block in iter_stored_stream_order(state.nodes.cached, store.get_block, commit.data, keep=keep):
        if node_block is not None:
            if sha256(node_block).digest() != cid.cid_bytes[4:]:
                _check_shipped(state, cid, node_block)
            yield cid, node_block
            continue
        data = read_record(cid)  # called for every record, so the indexed reader keeps pace
        if cid.cid_bytes in written:
            continue
        written.add(cid.cid_bytes)
        if data is None:
            raise MissingBlock(f"record block {cid.encode()} is missing", cid)
        if sha256(data).digest() != cid.cid_bytes[4:]:
            _check_shipped(state, cid, data)
        yield cid, data


def _check_shipped(state: RepoState, cid: CID, data: bytes) -> None:
    """Raise BlockHashMismatch unless a block about to leave the store hashes to its CID."""
    if hashlib.sha256(data).digest() != cid.cid_bytes[4:]:
        raise BlockHashMismatch(
            f"stored block {cid.encode()} in {state.path}: bytes do not hash to its CID "
            "(the store is damaged; nothing more was sent)"
        )


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


def prove(state: RepoState, collection: str, rkey: str, commit: CID | str | None) -> bytes:
    """See :meth:`pypds.Repo.prove`."""
    path = repo_path(collection, rkey).encode()
    state.refresh()
    commit_cid = state.head if commit is None else state.resolve(commit)
    commit_obj = state.load_commit(commit_cid)
    store = state.store
    buffer = io.BytesIO()
    writer = CarWriter(buffer, [commit_cid])
    commit_block = store.get_block(commit_cid)
    if commit_block is None:
        raise MissingBlock(f"commit {commit_cid.encode()} is not stored", commit_cid)
    writer.write_block(commit_cid, commit_block)
    for node, value in proof_path(state.nodes, commit_obj.data, path):
        writer.write_block(node.cid, node.data)
        if value is not None:
            data = store.get_block(value)
            if data is None:
                raise MissingBlock(f"record block {value.encode()} for {path.decode()} is missing", value)
            writer.write_block(value, data)
    return buffer.getvalue()


def commit_event(state: RepoState, commit: CID | str | None) -> CommitEvent:
    """See :meth:`pypds.Repo.commit_event`."""
    state.refresh()
    cid = state.head if commit is None else state.resolve(commit)
    store = state.store
    new = state.load_commit(cid)
    if new.rev is None:
        raise NotFound(f"commit {cid.encode()} is a version 2 commit: it has no rev, and a #commit event needs one")
    history = store.commit_history(cid)
    if history is None:
        raise NotFound(f"commit {cid.encode()} was not made here: its predecessor is unknown")
    prev = None if history[1] is None else state.load_commit(history[1])
    old_root: Link = empty_node() if prev is None else prev.data
    changes = list(diff_trees(state.nodes, old_root, new.data))
    blocks = io.BytesIO()
    writer = CarWriter(blocks, [cid])
    written: set[bytes] = set()
    for block_cid, data in car_blocks(state, cid, None if prev is None else rev_key(prev.rev)):
        written.add(block_cid.cid_bytes)
        writer.write_block(block_cid, data)
    proof = covering_proof(state.nodes, new.data, [change.path.encode() for change in changes])
    for raw, node in proof.items():
        if raw not in written:
            writer.write_block(node.cid, node.data)
    return {
        "repo": state.did,
        "commit": cid,
        "rev": new.rev,
        "since": None if prev is None else prev.rev,
        "prevData": None if prev is None else prev.data,
        "ops": [change.to_op() for change in changes],
        "blobs": _new_blob_refs(store, changes),
        "blocks": blocks.getvalue(),
        "rebase": False,
        "tooBig": False,
        "time": utc_timestamp(),
    }


def _new_blob_refs(store: Store, changes: list[RecordChange]) -> list[CID]:
    found: dict[bytes, CID] = {}
    for change in changes:
        data = None if change.new is None else store.get_block(change.new)
        for blob in [] if data is None else blob_refs(cbor.decode(data)):
            found.setdefault(blob.cid_bytes, blob)
    return list(found.values())


def export_blobs(
    state: RepoState, dest: str | os.PathLike, progress: Callable[[int, int], None] | None
) -> list[tuple[CID, Path]]:
    """See :meth:`pypds.Repo.export_blobs`."""
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"{folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    names = state.blobs.names()
    written: list[tuple[CID, Path]] = []
    for name in names:
        cid = CID.decode(name)
        blob = state.blobs.open(cid)
        if blob is None:  # removed meanwhile (gc)
            continue
        target = folder / (name + _extension(state.store.blob_type(cid)))
        with blob, atomic_file(target) as out:
            for segment in blob.segments():  # every byte checked against the CID before it is written
                out.write(segment)
        written.append((cid, target))
        if progress is not None:
            progress(len(written), len(names))
    return written


def _extension(mime: str | None) -> str:
    """The usual file name extension of a MIME type (``.jpg`` for ``image/jpeg``), or none."""
    if not mime:
        return ""
    import mimetypes  # only here: importing it at start costs every command

    return mimetypes.guess_extension(mime.split(";", 1)[0].strip(), strict=False) or ""
