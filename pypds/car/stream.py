"""Reading and checking a repository CAR in one streaming pass.

:class:`StreamedCar` reads a CAR section by section (every block
hash-checked by :class:`~pypds.car.reader.CarReader`, bounded by
:mod:`pypds.limits`) and hands blocks to the tree walk on demand: asking for
a block reads forward until it arrives. A CAR in the stream-friendly order
(each MST node before its children, records in key order: what pypds and
newer exporters write) is therefore checked with almost nothing held. Blocks
that arrive before they are asked for wait in a :class:`Spill`: in memory up
to ``max_spill_memory_bytes``, then in a temporary SQLite file (in the
system's temporary directory: ``TMPDIR``), so a CAR in any order is read
with bounded memory. Blocks the tree never reaches are
read, hash-checked and dropped, never stored.

:meth:`StreamedCar.tree_blocks` walks the commit's MST checking every rule,
that every node and record is present, and that every record is a valid
atproto record, yielding what to store as it goes.

Traps: a block can be handed out only once (the spill forgets it). The walk
asks for a node once (a node linked twice is an MST error); a record CID used
by several keys is asked for again, and the importer says (``stored``)
whether it holds it already, so that nothing remembers every record CID
(the largest set an import would keep: ~100 bytes a record). A failed walk can leave unread sections
behind; :meth:`finish` reads the rest of the CAR (framing, hashes, limits)
once the walk succeeded.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

import apsw

from ..codec import cbor
from ..codec.cid import CID, is_dag_cbor
from ..commit import Commit, decode_commit
from ..errors import InvalidCbor, InvalidMst, InvalidRecord, LimitExceeded, MissingBlock, PartialTree, shown
from ..limits import Limits
from ..mst.walk import TreeWalk, walk_tree
from .reader import CarReader, CarSource

__all__ = ["StreamedCar", "TreeBlock", "Spill", "check_record", "partial_tree"]


class TreeBlock(NamedTuple):
    """One step of :meth:`StreamedCar.tree_blocks`.

    ``data`` is set for a block to store (the commit, each node and each
    record taken from the CAR, once); ``key`` for a record leaf, in key order.
    """

    cid: CID
    data: bytes | None
    key: bytes | None


class Spill:
    """Blocks read ahead of the walk: a dict up to a memory budget, then a temporary SQLite file."""

    def __init__(self, memory_budget: int) -> None:
        self._budget = memory_budget
        self._memory: dict[bytes, bytes] = {}
        self._memory_bytes = 0
        self._dir: Path | None = None
        self._db: apsw.Connection | None = None

    def put(self, cid: CID, data: bytes) -> None:
        key = cid.cid_bytes
        if key in self._memory:
            return
        self._memory[key] = data
        self._memory_bytes += len(data)
        if self._memory_bytes > self._budget:
            self._flush()

    def pop(self, cid: CID) -> bytes | None:
        """The block, forgotten (blocks are handed out once); None if it is not here."""
        data = self._memory.pop(cid.cid_bytes, None)
        if data is not None:
            self._memory_bytes -= len(data)
            return data
        if self._db is None:
            return None
        for (found,) in self._db.execute("SELECT data FROM spill WHERE cid = ?", (cid.cid_bytes,)):
            return found
        return None

    def _flush(self) -> None:
        db = self._db if self._db is not None else self._open()
        rows = sorted(self._memory.items(), key=itemgetter(0))
        with db:
            db.executemany("INSERT OR IGNORE INTO spill (cid, data) VALUES (?, ?)", rows)
        self._memory.clear()
        self._memory_bytes = 0

    def _open(self) -> apsw.Connection:
        self._dir = Path(tempfile.mkdtemp(prefix="pypds-spill-"))
        db = apsw.Connection(str(self._dir / "spill.db"))
        for pragma in ("journal_mode = OFF", "synchronous = OFF"):  # one statement each: apsw stops at a row
            db.execute(f"PRAGMA {pragma}").fetchall()
        db.execute("CREATE TABLE spill (cid BLOB PRIMARY KEY, data BLOB NOT NULL)")
        self._db = db
        return db

    @property
    def on_disk(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        self._memory.clear()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class StreamedCar:
    """A CAR read forward on demand; use as a context manager.

    ``blocks`` and ``bytes`` count the sections read so far (all of them
    after :meth:`finish`); ``read_error`` is the framing, hash or limit error
    the reader raised, if any, whoever caught it.
    """

    def __init__(self, source: CarSource, limits: Limits) -> None:
        self._limits = limits
        self._reader = CarReader(source, limits=limits)
        self._sections = iter(self._reader)
        self._stream = self._read()  # one generator for the whole CAR: get() resumes it
        self._spill = Spill(limits.max_spill_memory_bytes)
        self.root: CID = self._reader.roots[0]
        self.blocks = 0
        self.bytes = 0
        self.read_error: Exception | None = None
        self._commit_block = b""

    def __enter__(self) -> StreamedCar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spill.close()
        self._reader.close()

    @property
    def spilled_to_disk(self) -> bool:
        """Whether blocks out of stream order outgrew the memory budget."""
        return self._spill.on_disk

    def get(self, cid: CID, held: Callable[[CID], bool] | None = None) -> bytes | None:
        """The block with this CID, reading forward as far as needed; None if the CAR lacks it.

        With ``held``, once a block other than this one comes next, ``held(cid)``
        is asked; when it is True (the caller has the block already, say a
        record handed out earlier under another key), None is returned
        without reading the rest of the CAR.
        """
        data = self._spill.pop(cid)
        if data is not None:
            return data
        wanted = cid.cid_bytes
        for found, block in self._stream:
            if found.cid_bytes == wanted:
                return block
            self._spill.put(found, block)
            if held is not None:
                if held(cid):
                    return None
                held = None  # asked once
        return None

    def finish(self) -> None:
        """Read (and check) the rest of the CAR, dropping what the tree did not reach."""
        for _found, _block in self._stream:
            pass

    def _read(self) -> Iterator[tuple[CID, bytes]]:
        limits = self._limits
        try:
            for found, block in self._sections:
                self.blocks += 1
                self.bytes += len(block)
                if self.bytes > limits.max_import_bytes:
                    raise LimitExceeded("max_import_bytes", self.bytes, limits.max_import_bytes)
                if self.blocks > limits.max_import_blocks:
                    raise LimitExceeded("max_import_blocks", self.blocks, limits.max_import_blocks)
                yield found, block
        except Exception as exc:
            self.read_error = exc
            raise

    def commit(self) -> Commit:
        """The root commit (read first: in a well-formed CAR it is the first block)."""
        data = self.get(self.root)
        if data is None:
            raise MissingBlock(f"CAR root commit {self.root.encode()} is not in the CAR", self.root)
        self._commit_block = data
        return decode_commit(data, self.root)

    def tree_blocks(
        self,
        commit: Commit,
        held: Callable[[CID], bytes | None] | None = None,
        stats: TreeWalk | None = None,
        stored: Callable[[CID], bool] | None = None,
    ) -> Iterator[TreeBlock]:
        """Walk and check the commit's tree; yield what to store, commit first, and every leaf.

        Call :meth:`commit` first. With ``held`` (the blocks a repository
        already has), the tree may be completed from there: a diff CAR.
        Blocks found in ``held`` are checked like the rest but not yielded
        for storing. Without it, a block the CAR lacks raises
        :class:`PartialTree`. ``stored(cid)`` says whether a record block
        yielded earlier (one record under several keys) is stored or waiting
        to be; without it the walk remembers every record CID it yielded.
        """
        yield TreeBlock(self.root, self._commit_block, None)
        if held is not None:
            yield from self._walk(commit, held, stats, stored)
            return
        try:
            yield from self._walk(commit, None, stats, stored)
        except MissingBlock as exc:
            raise partial_tree(exc) from None

    def _walk(
        self,
        commit: Commit,
        held: Callable[[CID], bytes | None] | None,
        stats: TreeWalk | None,
        stored: Callable[[CID], bool] | None,
    ) -> Iterator[TreeBlock]:
        limits = self._limits
        records: set[bytes] | None = None  # the record CIDs yielded, kept when nobody else knows them
        if stored is None:
            records = set()
            stored = _member_of(records)
        in_car = self.get

        def get(cid: CID, record: bool) -> tuple[bytes | None, bool]:
            """The block and whether it came from the CAR (the repository's own copy is preferred)."""
            data = held(cid) if held is not None else None
            if data is not None:
                return data, False
            return in_car(cid, stored if record else None), True

        node_from_car = [False]

        def get_node(cid: CID) -> bytes | None:  # the walk yields each node right after loading it
            data, node_from_car[0] = get(cid, False)
            return data

        for step in walk_tree(get_node, commit.data, limits=limits, stats=stats):
            if step.node is not None:
                yield TreeBlock(step.cid, step.node.data if node_from_car[0] else None, None)
                continue
            data, fresh = get(step.cid, True)
            if data is None:
                if stored(step.cid):  # the same record under an earlier key
                    yield TreeBlock(step.cid, None, step.key)
                    continue
                raise MissingBlock(f"record {step.cid.encode()} for {_path(step.key)} is not in the CAR", step.cid)
            check_record(step.cid, step.key, data, limits)
            if records is not None:
                records.add(step.cid.cid_bytes)
            yield TreeBlock(step.cid, data if fresh else None, step.key)


def _member_of(cids: set[bytes]) -> Callable[[CID], bool]:
    return lambda cid: cid.cid_bytes in cids


def _path(key: bytes | None) -> str:
    return shown((key or b"").decode("utf-8", "replace"))


def partial_tree(exc: MissingBlock) -> PartialTree:
    """The error for a block absent from a CAR read as a whole repository."""
    return PartialTree(
        f"the CAR holds a partial tree: {exc}. That is what a proof CAR (getRecord) or a diff CAR "
        "(getRepo?since=, a firehose message) looks like: check those with verify_proof, apply_car or "
        "verify_commit_message; reading a whole repository needs a full repository CAR",
        exc.cid,
    )


def check_record(cid: CID, key: bytes | None, data: bytes, limits: Limits) -> None:
    """A record reached from the tree must be a dag-cbor block holding a valid record."""
    path = (key or b"").decode("utf-8", "replace")
    if not is_dag_cbor(cid):
        raise InvalidMst(f"record {cid.encode()} at {path}: value CID is not dag-cbor sha2-256")
    try:
        cbor.decode_record(data, path, limits)
    except (InvalidCbor, InvalidRecord) as exc:
        raise type(exc)(f"record {cid.encode()}: {exc}") from None
