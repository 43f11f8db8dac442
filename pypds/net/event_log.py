"""The event log of ``subscribeRepos``: every frame sent, by sequence number, in an SQLite file (apsw).

Schema (version 1, in ``PRAGMA user_version``)::

    events(seq INTEGER PRIMARY KEY, did TEXT, type TEXT, frame BLOB)  -- the encoded frames, seq inside
    repos(did TEXT PRIMARY KEY, head BLOB, rev TEXT)  -- the HEAD last announced for each repository
    meta(key TEXT PRIMARY KEY, value)                 -- last_seq: the last sequence number given

A frame gets its sequence number and is stored (the transaction committed
with ``synchronous=FULL``) before anyone is sent it, so a restarted server
replays what it sent. Sequence numbers start at 1 and never go back, even
when the backlog is pruned (``meta.last_seq``). Only the last ``backlog``
events are kept. :meth:`EventLog.append` is a compare-and-set on the
repository's announced HEAD, so two servers sharing a log never announce
one change twice.

The file is created ``0600`` (SQLite gives ``-wal`` and ``-shm`` its mode).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw

from ..errors import InvalidInput, SchemaVersionError, StorageError, shown
from ..filesystem import create_private_file
from ..sync.event_stream import encode_frame

__all__ = ["DEFAULT_BACKLOG", "EVENT_LOG_NAME", "EventLog"]

#: Events kept for replay by default.
DEFAULT_BACKLOG = 10_000
#: The log's file name when none is given: inside the first repository served.
EVENT_LOG_NAME = "events.db"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, did TEXT NOT NULL, type TEXT NOT NULL, frame BLOB NOT NULL);
CREATE TABLE repos (did TEXT PRIMARY KEY, head BLOB NOT NULL, rev TEXT) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


class EventLog:
    """An open event log; every method is thread-safe (one connection, one lock)."""

    def __init__(self, conn: apsw.Connection, path: Path, backlog: int) -> None:
        self._conn: apsw.Connection | None = conn
        self.path = path
        self.backlog = backlog
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike, *, backlog: int = DEFAULT_BACKLOG) -> EventLog:
        """Open the log at ``path``, creating it (mode ``0600``) if it does not exist."""
        check_backlog(backlog)
        target = Path(path)
        try:
            if not target.exists():
                create_private_file(target)
            conn = apsw.Connection(str(target))
        except (OSError, apsw.Error) as exc:
            raise StorageError(f"cannot open the event log {target}: {exc}") from None
        log = cls(conn, target, backlog)
        try:
            log._setup()
        except BaseException:
            conn.close()
            raise
        return log

    def _setup(self) -> None:
        conn = self._open_conn()
        try:
            conn.set_busy_timeout(5000)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            with self._transaction() as c:
                version = _scalar(c, "PRAGMA user_version")
                if version == 0:
                    c.execute(_SCHEMA)
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"event log {self.path} has schema version {version}, not {SCHEMA_VERSION}"
                    )
        except apsw.Error as exc:
            raise StorageError(f"event log {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the log (later calls raise StorageError)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _open_conn(self) -> apsw.Connection:
        if self._conn is None:
            raise StorageError(f"event log {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[apsw.Connection]:
        conn = self._open_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------

    def announced(self, did: str) -> bytes | None:
        """The HEAD (CID bytes) last announced for ``did``, or None if it was never seen."""
        with self._lock:
            value = _scalar(self._open_conn(), "SELECT head FROM repos WHERE did = ?", (did,))
        return value if isinstance(value, bytes) else None

    def append(
        self, did: str, previous: bytes | None, head: bytes, rev: str | None, messages: list[tuple[str, dict[str, Any]]]
    ) -> list[int] | None:
        """Store ``messages`` (type, body without seq) for ``did``, each with the next seq, and ``head`` as
        its announced HEAD; the seqs given. None (nothing written) if the announced HEAD is no longer
        ``previous``: another server sharing the log announced the change."""
        try:
            with self._lock, self._transaction() as conn:
                current = _scalar(conn, "SELECT head FROM repos WHERE did = ?", (did,))
                if current != previous:
                    return None
                seq = int(_scalar(conn, "SELECT value FROM meta WHERE key = 'last_seq'") or 0)
                given = []
                for message_type, body in messages:
                    seq += 1
                    frame = encode_frame(message_type, {**body, "seq": seq})
                    conn.execute(
                        "INSERT INTO events (seq, did, type, frame) VALUES (?, ?, ?, ?)",
                        (seq, did, message_type, frame),
                    )
                    given.append(seq)
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (seq,))
                conn.execute("INSERT OR REPLACE INTO repos (did, head, rev) VALUES (?, ?, ?)", (did, head, rev))
                conn.execute("DELETE FROM events WHERE seq <= ?", (seq - self.backlog,))
                return given
        except apsw.Error as exc:
            raise StorageError(f"event log {self.path}: {exc}") from None

    # -- reading ---------------------------------------------------------------------

    def last_seq(self) -> int:
        """The last sequence number given (0 for a new log)."""
        with self._lock:
            return int(_scalar(self._open_conn(), "SELECT value FROM meta WHERE key = 'last_seq'") or 0)

    def oldest_seq(self) -> int | None:
        """The oldest sequence number still in the backlog, or None if it is empty."""
        with self._lock:
            value = _scalar(self._open_conn(), "SELECT min(seq) FROM events")
        return value if isinstance(value, int) else None

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored ``(seq, frame)`` with seq > ``after``, in order."""
        with self._lock:
            rows = self._open_conn().execute(
                "SELECT seq, frame FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            )
            return [(seq, frame) for seq, frame in rows]


def check_backlog(backlog: int) -> None:
    """InvalidInput unless ``backlog`` is a positive integer."""
    if not isinstance(backlog, int) or isinstance(backlog, bool) or backlog < 1:
        raise InvalidInput(f"backlog must be a positive number of events: {shown(backlog)}")


def _scalar(conn: apsw.Connection, sql: str, params: tuple = ()) -> Any:
    for row in conn.execute(sql, params):
        return row[0]
    return None
