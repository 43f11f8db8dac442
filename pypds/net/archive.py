"""A mirror archive: one directory of repository copies plus ``archive.db``, its index.

Layout (directories 0700, files 0600)::

    ARCHIVE/
      archive.db                     the index (SQLite, WAL)
      <shard>/<did>/pds.db           each account's copy, a pypds repository
      <shard>/<did>/blobs/

The **shard** is the first two hex digits of sha256(DID) (:func:`shard_of`):
256 directories, so no directory holds more than a 256th of the accounts.
The DID is the directory name (``:`` is fine on POSIX file systems).

The index holds, per account: the DID, the copy's rev and HEAD, its status
(``active``, ``takendown``, ``suspended``, ``deactivated``, ``deleted``...), the
time of its last sync, a count of errors and the last one, whether it needs
a resync (so a resync a follower had to abandon is retried on restart), and
how many commits were applied. Per stream (URL and partition): the cursor,
the ``seq`` of the last event whose effects are durable. A log of rejected
events (bounded to :data:`MAX_REJECTIONS` rows) says what was refused and why.

Each change is its own short transaction; the index is only ever written
*after* the copy it describes (see :mod:`pypds.net.mirror` for why that
makes a killed follower safe to restart).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from ..errors import InvalidInput, RepoBusy, StorageError
from ..filesystem import create_private_file, make_private_dirs
from ..syntax import check_did

__all__ = ["ARCHIVE_DB", "MAX_REJECTIONS", "AccountRow", "AccountUpdate", "Archive", "partition_of", "shard_of"]

ARCHIVE_DB = "archive.db"
#: Rejected events kept in the log (the oldest go first).
MAX_REJECTIONS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    did TEXT PRIMARY KEY,
    rev TEXT,
    head TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    last_sync REAL,
    applied INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    needs_resync INTEGER NOT NULL DEFAULT 0,
    seq INTEGER,
    synced_rev TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    did TEXT,
    seq INTEGER,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


def shard_of(did: str) -> str:
    """The shard directory of an account: the first two hex digits of sha256(DID)."""
    return hashlib.sha256(did.encode()).hexdigest()[:2]


def partition_of(did: str, count: int) -> int:
    """The partition (0..count-1) of an account: the first 8 bytes of sha256(DID), as a big-endian
    integer, mod ``count``."""
    return int.from_bytes(hashlib.sha256(did.encode()).digest()[:8], "big") % count


#: ``(did, rev, head, commits applied, stream seq)``: what :meth:`Archive.flush` records for an account.
AccountUpdate = tuple[str, str | None, str, int, int | None]


@dataclass(frozen=True)
class AccountRow:
    """One account as the index records it."""

    did: str
    rev: str | None
    head: str | None
    status: str
    last_sync: float | None
    applied: int
    errors: int
    last_error: str | None
    needs_resync: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``lastSync`` in Unix seconds)."""
        return {
            "did": self.did,
            "rev": self.rev,
            "head": self.head,
            "status": self.status,
            "lastSync": self.last_sync,
            "applied": self.applied,
            "errors": self.errors,
            "lastError": self.last_error,
            "needsResync": self.needs_resync,
        }


class Archive:
    """The archive directory and its index; create or open with :meth:`open`."""

    def __init__(self, root: Path, conn: apsw.Connection) -> None:
        self.root = root
        self.conn = conn

    @classmethod
    def open(cls, root: str | os.PathLike, *, create: bool = True, busy_timeout: float = 10.0) -> Archive:
        """Open the archive at ``root`` (created, owner-only, when missing and ``create``)."""
        path = Path(root)
        db = path / ARCHIVE_DB
        if not db.exists():
            if not create:
                raise InvalidInput(f"{path} is not a mirror archive (no {ARCHIVE_DB})")
            if path.exists() and not path.is_dir():
                raise InvalidInput(f"{path} is a file, not an archive directory")
            make_private_dirs(path)
            with contextlib.suppress(FileExistsError):  # another follower created it meanwhile
                create_private_file(db)
        try:
            conn = apsw.Connection(str(db))
            conn.set_busy_timeout(int(busy_timeout * 1000))
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
        except apsw.Error as exc:
            raise StorageError(f"{db}: {exc}") from None
        return cls(path, conn)

    def close(self) -> None:
        """Close the index."""
        self.conn.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- where copies live ------------------------------------------------------------

    def repo_path(self, did: str) -> Path:
        """The directory of an account's copy: ``ARCHIVE/<shard>/<did>``."""
        return self.root / shard_of(check_did(did)) / did

    def shard_dir(self, did: str) -> Path:
        """The shard directory of an account (created 0700 when missing)."""
        shard = self.root / shard_of(did)
        make_private_dirs(shard)
        return shard

    # -- writes -----------------------------------------------------------------------------

    def _write(self, sql: str, params: tuple = ()) -> None:
        try:
            with self.conn:
                self.conn.execute(sql, params)
        except apsw.BusyError:
            raise RepoBusy(f"{self.root / ARCHIVE_DB}: another process holds the lock") from None

    def record_sync(self, did: str, rev: str | None, head: str, *, applied: int = 0, seq: int | None = None) -> None:
        """The copy of ``did`` is now at ``head`` / ``rev`` (after a commit or a resync), covering
        the stream's events up to ``seq``."""
        self.flush([(did, rev, head, applied, seq)], None, None)

    def flush(self, rows: list[AccountUpdate], stream: str | None, cursor: int | None) -> None:
        """Account updates ``(did, rev, head, applied, seq)`` and the stream's cursor, in one transaction."""
        now = time.time()
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO accounts (did, rev, head, last_sync, applied, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
                    "ON CONFLICT (did) DO UPDATE SET rev = ?2, head = ?3, last_sync = ?4, applied = applied + ?5, "
                    "seq = max(coalesce(seq, 0), coalesce(?6, 0))",
                    [(did, rev, head, now, applied, seq) for did, rev, head, applied, seq in rows],
                )
                if stream is not None and cursor is not None:
                    self.conn.execute(
                        "INSERT INTO cursors (stream, seq, updated) VALUES (?1, ?2, ?3) "
                        "ON CONFLICT (stream) DO UPDATE SET seq = max(seq, ?2), updated = ?3",
                        (stream, cursor, now),
                    )
        except apsw.BusyError:
            raise RepoBusy(f"{self.root / ARCHIVE_DB}: another process holds the lock") from None

    def set_status(self, did: str, status: str) -> None:
        """Record an account's status (from ``#account`` or ``listRepos``)."""
        self._write(
            "INSERT INTO accounts (did, status) VALUES (?1, ?2) ON CONFLICT (did) DO UPDATE SET status = ?2",
            (did, status),
        )

    def mark_resync(self, did: str, needed: bool = True) -> None:
        """Remember (durably) that ``did`` needs a resync, or that it no longer does."""
        self._write(
            "INSERT INTO accounts (did, needs_resync) VALUES (?1, ?2) "
            "ON CONFLICT (did) DO UPDATE SET needs_resync = ?2",
            (did, int(needed)),
        )

    def record_error(self, did: str | None, seq: int | None, kind: str, reason: str) -> None:
        """Log a rejected event (and count it against the account, when known)."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO rejections (time, did, seq, kind, reason) VALUES (?, ?, ?, ?, ?)",
                (time.time(), did, seq, kind, reason),
            )
            self.conn.execute(
                "DELETE FROM rejections WHERE id <= (SELECT max(id) FROM rejections) - ?", (MAX_REJECTIONS,)
            )
            if did is not None:
                self.conn.execute(
                    "INSERT INTO accounts (did, errors, last_error) VALUES (?1, 1, ?2) "
                    "ON CONFLICT (did) DO UPDATE SET errors = errors + 1, last_error = ?2",
                    (did, f"{kind}: {reason}"),
                )

    def forget(self, did: str) -> None:
        """Drop an account's row (its copy was removed); its status is kept as ``deleted``."""
        self._write(
            "UPDATE accounts SET rev = NULL, head = NULL, status = 'deleted', needs_resync = 0 WHERE did = ?", (did,)
        )

    def save_cursor(self, stream: str, seq: int) -> None:
        """Persist the cursor of ``stream`` (only ever forward)."""
        self._write(
            "INSERT INTO cursors (stream, seq, updated) VALUES (?1, ?2, ?3) "
            "ON CONFLICT (stream) DO UPDATE SET seq = max(seq, ?2), updated = ?3",
            (stream, seq, time.time()),
        )

    # -- reads ----------------------------------------------------------------------------------

    def cursor(self, stream: str) -> int | None:
        """The persisted cursor of ``stream``, or None."""
        for (seq,) in self.conn.execute("SELECT seq FROM cursors WHERE stream = ?", (stream,)):
            return int(seq)
        return None

    def cursors(self) -> dict[str, int]:
        """Every stream's cursor."""
        return {stream: int(seq) for stream, seq in self.conn.execute("SELECT stream, seq FROM cursors")}

    def account(self, did: str) -> AccountRow | None:
        """One account's row, or None."""
        rows = self._accounts("WHERE did = ?", (did,))
        return rows[0] if rows else None

    def accounts(self) -> list[AccountRow]:
        """Every account, by DID."""
        return self._accounts("ORDER BY did", ())

    def resynced(self, did: str, rev: str | None) -> None:
        """A resync (getRepo) brought the copy to ``rev``: the stream's commits up to it are covered."""
        self._write(
            "INSERT INTO accounts (did, synced_rev) VALUES (?1, ?2) ON CONFLICT (did) DO UPDATE SET synced_rev = ?2",
            (did, rev),
        )

    def synced_rev(self, did: str) -> str:
        """The rev the account's last resync brought its copy to ("" if none)."""
        for (rev,) in self.conn.execute("SELECT synced_rev FROM accounts WHERE did = ?", (did,)):
            return str(rev or "")
        return ""

    def pending_resyncs(self) -> list[str]:
        """Accounts a resync was needed for and has not completed."""
        return [did for (did,) in self.conn.execute("SELECT did FROM accounts WHERE needs_resync ORDER BY did")]

    def rejections(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent rejected events, newest first."""
        rows = self.conn.execute(
            "SELECT time, did, seq, kind, reason FROM rejections ORDER BY id DESC LIMIT ?", (limit,)
        )
        names = ("time", "did", "seq", "kind", "reason")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _accounts(self, where: str, params: tuple) -> list[AccountRow]:
        sql = (
            "SELECT did, rev, head, status, last_sync, applied, errors, last_error, needs_resync FROM accounts " + where
        )
        return [
            AccountRow(did, rev, head, status, last_sync, applied, errors, last_error, bool(needs))
            for did, rev, head, status, last_sync, applied, errors, last_error, needs in self.conn.execute(sql, params)
        ]

    def status(self) -> dict[str, Any]:
        """A summary: account counts by status, errors, pending resyncs, cursors, the latest rejections."""
        by_status: dict[str, int] = {
            str(status): int(count)
            for status, count in self.conn.execute("SELECT status, count(*) FROM accounts GROUP BY status")
        }
        copies = self.conn.execute("SELECT count(*) FROM accounts WHERE head IS NOT NULL").fetchall()[0][0]
        applied = self.conn.execute("SELECT coalesce(sum(applied), 0) FROM accounts").fetchall()[0][0]
        rejected = self.conn.execute("SELECT count(*) FROM rejections").fetchall()[0][0]
        return {
            "archive": str(self.root),
            "accounts": sum(by_status.values()),
            "copies": copies,
            "byStatus": by_status,
            "commitsApplied": applied,
            "pendingResyncs": self.pending_resyncs(),
            "rejections": rejected,
            "cursors": self.cursors(),
            "recentRejections": self.rejections(10),
        }
