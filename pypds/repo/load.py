"""Bulk loads: many records from JSON Lines or an unpacked directory, in one signed commit or a few.

Input (see :meth:`pypds.Repo.load`):

* **JSON Lines**, one object per line: ``{"collection", "rkey", "value"}``
  or ``{"path", "value"}`` puts a record (``value`` in atproto JSON; an
  optional ``"cid"``, as ``pypds dump`` writes it, must be the CID of that
  value), ``{"delete": "collection/rkey"}`` deletes one. Blank lines are
  skipped; anything else is a bad line.
* **A directory** laid out as ``pypds unpack`` writes it:
  ``DIR/<collection>/<rkey>.json``; ``_commit.json`` and names starting
  with ``.`` are skipped.

Every line is checked before anything is written (JSON, shape, path,
record, CID, and that a delete's record exists at that point: at HEAD or
put by an earlier line), so one bad line raises :class:`LoadError` naming
it and leaves the repository as it was. The checked writes are then
committed: all in one commit, or ``batch_size`` per commit.

Memory: in one commit, the writes themselves (every encoded record, as a
:meth:`~pypds.Repo.batch` of them holds). With ``batch_size``, the checked
writes wait in a temporary SQLite file (in ``TMPDIR``, removed afterwards)
and memory holds one batch of them plus :data:`SPOOL_CACHE_KIB` of that
file's cache, whatever the input's size. One line is read at a time, at
most :data:`MAX_LINE_BYTES`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import apsw

from ..codec.atjson import loads
from ..codec.cid import CID
from ..errors import (
    DiskFull,
    InvalidInput,
    InvalidRepoPath,
    LimitExceeded,
    LoadError,
    LoadIncomplete,
    PypdsError,
    StorageError,
    shown,
)
from ..operation import WriteOp
from ..syntax import split_repo_path
from .batch import delete_op, put_op
from .state import RepoState
from .writer import check_key_for_write, commit_ops, require_key

__all__ = ["MAX_LINE_BYTES", "SPOOL_CACHE_KIB", "LoadReport", "load"]

#: Longest line (or record file) read: a record is at most 1 MiB of DAG-CBOR, larger as JSON.
MAX_LINE_BYTES = 16 << 20
#: SQLite page cache of the temporary file that holds the checked writes of a batched load.
SPOOL_CACHE_KIB = 8 * 1024
_READ_CHUNK = 1 << 16
#: Progress is reported every this many writes checked.
_PROGRESS_EVERY = 1000

#: ``progress(stage, done, total)``: stage "checking" (writes checked, total None) or "writing"
#: (writes committed, of the total).
Progress = Callable[[str, int, "int | None"], None]
#: One checked write and the line it came from (0 for a file of a directory).
Placed = tuple[int, WriteOp]


class LoadReport(NamedTuple):
    """What :meth:`pypds.Repo.load` wrote: puts, deletes, the commits (in order), and the new HEAD and rev."""

    records: int
    deleted: int
    commits: list[CID]
    head: CID
    rev: str | None


def load(
    state: RepoState,
    source: str | os.PathLike | BinaryIO,
    *,
    batch_size: int | None,
    name: str | None,
    progress: Progress | None,
) -> LoadReport:
    """See :meth:`pypds.Repo.load`."""
    if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
        raise InvalidInput(f"batch_size must be a positive integer, not {shown(batch_size)}")
    key = require_key(state)  # before reading anything: a load that cannot commit fails at once
    state.refresh()
    check_key_for_write(state, key)
    report = progress or (lambda _stage, _done, _total: None)
    pending: _Pending = _Memory() if batch_size is None else _Spool()
    try:
        label, writes = _writes(state, source, name)
        puts = deletes = 0
        for line, op in writes:
            if op[1] is None:
                _check_delete(state, pending, op[0], label, line)
                deletes += 1
            else:
                puts += 1
            pending.add(line, op)
            if (puts + deletes) % _PROGRESS_EVERY == 0:
                report("checking", puts + deletes, None)
        report("checking", puts + deletes, None)
        commits = _commit(state, pending, batch_size or max(1, puts + deletes), label, report)
    finally:
        pending.close()
    state.refresh()
    return LoadReport(puts, deletes, commits, state.head, state.rev or None)


def _check_delete(state: RepoState, pending: _Pending, key: bytes, label: str, line: int) -> None:
    """LoadError unless the record exists where the delete comes: put by an earlier write, or at HEAD."""
    present = pending.present(key)
    if present is None:
        present = state.store.index_cid(key) is not None
    if not present:
        raise LoadError(f"no record at {key.decode()} to delete", source=label, line=line or None)


def _commit(state: RepoState, pending: _Pending, size: int, label: str, report: Progress) -> list[CID]:
    """Commit the checked writes, ``size`` per commit; LoadIncomplete if one fails after others were written."""
    commits: list[CID] = []
    done, total = 0, pending.count
    for chunk in pending.chunks(size):
        try:
            commits.append(commit_ops(state, [op for _line, op in chunk]))
        except PypdsError as exc:
            if not commits:
                raise
            first_line, first = chunk[0]
            where = f"line {first_line}" if first_line else first[0].decode()
            raise LoadIncomplete(
                f"{label}: stopped at {where} after {len(commits)} commits ({done} writes) were written, "
                f"HEAD {commits[-1].encode()}: {exc}",
                commits=commits,
                records=done,
                line=first_line or None,
            ) from exc
        done += len(chunk)
        report("writing", done, total)
    return commits


# -- reading the input ---------------------------------------------------------------------


def _writes(state: RepoState, source: str | os.PathLike | BinaryIO, name: str | None) -> tuple[str, Iterator[Placed]]:
    """A name for the input in messages, and its writes, each checked as it is read."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or str(path)
        if path.is_dir():
            return label, _directory_writes(state, path, label)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except OSError as exc:
            raise InvalidInput(f"cannot read {label}: {exc.strerror}") from None
        return label, _closing(stream, _line_writes(state, stream, label))
    if not callable(getattr(source, "read", None)):
        raise InvalidInput(f"load reads a path or a binary file object, not {type(source).__name__}")
    label = name or str(getattr(source, "name", "input"))
    return label, _line_writes(state, source, label)


def _closing(stream: BinaryIO, writes: Iterator[Placed]) -> Iterator[Placed]:
    with stream:
        yield from writes


def _line_writes(state: RepoState, stream: BinaryIO, label: str) -> Iterator[Placed]:
    for number, raw in _lines(stream, label):
        if not raw.strip():
            continue
        try:
            yield number, _line_write(state, raw)
        except (PypdsError, ValueError) as exc:
            raise LoadError(str(exc), source=label, line=number) from None


def _lines(stream: BinaryIO, label: str) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of a binary stream, each at most MAX_LINE_BYTES (never more is held)."""
    buffer = bytearray()
    number = 0
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not isinstance(chunk, bytes):
            raise InvalidInput(f"{label} must be opened in binary mode")
        if not chunk:
            break
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            number += 1
            yield number, bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            raise LoadError(f"longer than {MAX_LINE_BYTES} bytes", source=label, line=number + 1)
    if buffer:
        yield number + 1, bytes(buffer)


_PUT_FIELDS = ({"collection", "rkey", "value"}, {"path", "value"})
_SHAPES = (
    '{"collection", "rkey", "value"}, {"path", "value"} (each with an optional "cid") or {"delete": "collection/rkey"}'
)


def _line_write(state: RepoState, raw: bytes) -> WriteOp:
    """The write one line asks for (raises what is wrong with it)."""
    obj = _parse_json(raw)
    if type(obj) is not dict:
        raise InvalidInput(f"expected a JSON object: {_SHAPES}")
    fields = set(obj)
    if fields == {"delete"}:
        target = obj["delete"]
        if not isinstance(target, str):
            raise InvalidInput(f'"delete" must be a "collection/rkey" string, not {shown(target)}')
        return delete_op(*split_repo_path(target))
    puts = fields - {"cid"}
    if puts not in _PUT_FIELDS:
        raise InvalidInput(f"fields {', '.join(sorted(fields)) or 'none'}: a line is {_SHAPES}")
    if "path" in obj:
        path = obj["path"]
        if not isinstance(path, str) or path.count("/") != 1:
            raise InvalidRepoPath(f'"path" must be a "collection/rkey" string, not {shown(path)}')
        collection, rkey = path.split("/")  # each checked by put_op
    else:
        collection, rkey = obj["collection"], obj["rkey"]
    if type(obj["value"]) is not dict:
        raise InvalidInput(f'"value" must be a record (a JSON object), not {shown(obj["value"])}')
    op = put_op(collection, rkey, obj["value"], state.limits)
    if "cid" in obj:
        _check_cid(obj["cid"], op)
    return op


def _check_cid(given: object, op: WriteOp) -> None:
    computed = CID(op[1] or b"").encode()
    if given != computed:
        raise InvalidInput(
            f'"cid" {shown(given)} is not the CID of the value ({computed}): drop "cid" from a line whose value '
            "you changed"
        )


def _parse_json(raw: bytes) -> Any:
    """Atproto JSON to DAG-CBOR values (links and bytes converted; the data model is checked on encoding)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise InvalidInput("invalid JSON: nested too deeply") from None


def _directory_writes(state: RepoState, root: Path, label: str) -> Iterator[Placed]:
    """The puts of an unpacked directory: ``<collection>/<rkey>.json`` in name order."""
    for folder in _names(root, label):
        if folder.startswith(".") or folder == "_commit.json":
            continue
        where = root / folder
        if not where.is_dir():
            layout = "the layout is DIR/<collection>/<rkey>.json"
            raise LoadError(f"not a collection directory ({layout})", source=str(where))
        for file in _names(where, str(where)):
            if file.startswith("."):
                continue
            path = where / file
            if not file.endswith(".json") or not path.is_file():
                raise LoadError("not a record file <rkey>.json", source=str(path))
            try:
                value = _parse_json(_read_capped(path))
                if type(value) is not dict:
                    raise InvalidInput(f"a record is a JSON object, not {shown(value)}")
                yield 0, put_op(folder, file.removesuffix(".json"), value, state.limits)
            except (PypdsError, ValueError) as exc:
                raise LoadError(str(exc), source=str(path)) from None


def _names(directory: Path, label: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as exc:
        raise LoadError(f"cannot list: {exc.strerror}", source=label) from None


def _read_capped(path: Path) -> bytes:
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_LINE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_LINE_BYTES:
        raise LimitExceeded("max_load_line_bytes", len(raw), MAX_LINE_BYTES, str(path))
    return raw


# -- checked writes waiting for their commit -------------------------------------------------


class _Pending(ABC):
    """Checked writes in input order, and whether each path they touch ends up holding a record."""

    count = 0

    @abstractmethod
    def add(self, line: int, op: WriteOp) -> None:
        """Keep a checked write (from input line ``line``)."""

    @abstractmethod
    def present(self, key: bytes) -> bool | None:
        """Whether the last write to ``key`` so far was a put (None: no write touched it)."""

    @abstractmethod
    def chunks(self, size: int) -> Iterator[list[Placed]]:
        """The writes in input order, ``size`` at a time."""

    def close(self) -> None:  # noqa: B027 (a default: only the spool holds something to free)
        """Free what the writes held."""


class _Memory(_Pending):
    """The writes in a list: for a load in one commit, which needs them all at once anyway."""

    def __init__(self) -> None:
        self._writes: list[Placed] = []
        self._present: dict[bytes, bool] = {}

    def add(self, line: int, op: WriteOp) -> None:
        self._writes.append((line, op))
        self._present[op[0]] = op[1] is not None
        self.count += 1

    def present(self, key: bytes) -> bool | None:
        return self._present.get(key)

    def chunks(self, size: int) -> Iterator[list[Placed]]:
        for start in range(0, len(self._writes), size):
            yield self._writes[start : start + size]

    def close(self) -> None:
        self._writes, self._present = [], {}


class _Spool(_Pending):
    """The writes in a temporary SQLite file (deleted when closed): memory holds one batch.

    A failure of that file (a full ``TMPDIR``) is a :class:`StorageError` naming it, never
    mistaken for damage to ``pds.db``.
    """

    def __init__(self) -> None:
        self._conn = apsw.Connection("")  # a private temporary file, removed on close
        with self._errors():
            for sql in (
                f"PRAGMA cache_size = -{SPOOL_CACHE_KIB}",
                "PRAGMA journal_mode = OFF",
                "PRAGMA synchronous = OFF",
                "CREATE TABLE writes (n INTEGER PRIMARY KEY, line INTEGER, path BLOB NOT NULL, cid BLOB, data BLOB)",
                "CREATE INDEX writes_path ON writes (path, n)",
                "BEGIN",  # one transaction until closed: nothing of this file needs to last
            ):
                self._conn.execute(sql).fetchall()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except apsw.FullError:
            raise DiskFull(
                "the temporary file of a batched load filled the disk (TMPDIR): nothing was written"
            ) from None
        except apsw.Error as exc:
            raise StorageError(f"the temporary file of a batched load (TMPDIR) failed: {exc}") from None

    def add(self, line: int, op: WriteOp) -> None:
        with self._errors():
            self._conn.execute("INSERT INTO writes (line, path, cid, data) VALUES (?, ?, ?, ?)", (line, *op))
        self.count += 1

    def present(self, key: bytes) -> bool | None:
        with self._errors():
            rows = self._conn.execute("SELECT cid FROM writes WHERE path = ? ORDER BY n DESC LIMIT 1", (key,))
            for (cid,) in rows:
                return cid is not None
        return None

    def chunks(self, size: int) -> Iterator[list[Placed]]:
        after = 0
        while True:
            with self._errors():
                rows = self._conn.execute(
                    "SELECT n, line, path, cid, data FROM writes WHERE n > ? ORDER BY n LIMIT ?", (after, size)
                ).fetchall()
            if not rows:
                return
            yield cast(list[Placed], [(line, (path, cid, data)) for _n, line, path, cid, data in rows])
            after = cast(int, rows[-1][0])

    def close(self) -> None:
        self._conn.close()
