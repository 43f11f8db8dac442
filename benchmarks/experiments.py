"""Storage-layout experiments behind the suggestions in benchmarks/README.md (raw apsw, no pypds code).

    python -m benchmarks.experiments [--dir /tmp/pypds-prof] [--n 1000000]

Works on a copy of the fixture that ``python -m benchmarks.profile`` keeps
(``DIR/fixture-N/pds.db`` and ``DIR/fixture-N.car``) and measures, each in a
fresh connection with pypds's page cache (32 MiB):

* **statement overhead**: an autocommit statement on a small table, each
  its own WAL read transaction, against the same inside one transaction;
* **commit floor pages**: pages written per transaction of the commit
  floor (``benchmarks.profile commits`` prints a commit's);
* **point reads** (10k random records, first pass): today's statement
  (paths -> CID index -> blocks), against a ``paths`` that maps each path
  to the block's rowid (one B-tree descent less), each with and without a
  memory map (``PRAGMA mmap_size``);
* **record scans** (every record in key order, as an export reads them):
  today's paged join through the CID index, the join by rowid, and a plain
  sequential scan of the blocks table;
* **bulk block inserts** (every block of the CAR, framing and hashing
  excluded): sorted by CID per 32 MiB batch (today's import), in CAR order
  into the indexed table (the floor), and in CAR order into a table without
  the CID index, creating the unique index afterwards.

Not a test: prints seconds and page-cache misses.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path

import apsw

from . import ops

MMAP_BYTES = 2 << 30
BATCH_BYTES = 32 << 20


def connect(path: Path, *, mmap: bool = False) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA cache_size = -{ops.CACHE_KIB}")
    if mmap:
        conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}").fetchall()
    return conn


def misses(conn: apsw.Connection) -> int:
    return conn.status(apsw.SQLITE_DBSTATUS_CACHE_MISS, True)[0]


def report(name: str, seconds: float, count: int, page_misses: int) -> None:
    print(
        f"  {name:<62} {seconds:7.3f} s  {seconds / count * 1e6:6.2f} µs each  {page_misses / count:5.2f} misses each",
        flush=True,
    )


def add_rowid_paths(db: Path) -> None:
    """Add ``paths_rowid(path, block)``: each path mapped to its record block's rowid."""
    conn = connect(db)
    with conn:
        conn.execute("CREATE TABLE paths_rowid (path BLOB PRIMARY KEY, block INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute(
            "INSERT INTO paths_rowid SELECT p.path, b.id FROM paths p JOIN blocks b ON b.cid = p.cid ORDER BY p.path"
        )
    conn.close()


READ_BY_CID = (
    "SELECT p.cid, (SELECT data FROM blocks WHERE cid = p.cid) FROM paths p WHERE p.path = ?",
    "paths -> CID index -> blocks (today)",
)
READ_BY_ROWID = (
    "SELECT p.block, (SELECT data FROM blocks WHERE id = p.block) FROM paths_rowid p WHERE p.path = ?",
    "paths -> blocks rowid",
)


def point_reads(db: Path, n: int) -> None:
    rng = random.Random(1)
    keys = [f"{ops.POST}/{ops.record_key(rng.randrange(n))}".encode() for _ in range(ops.READS)]
    for sql, label in (READ_BY_CID, READ_BY_ROWID):
        for mmap in (False, True):
            conn = connect(db, mmap=mmap)
            conn.execute("SELECT 1 FROM paths LIMIT 1").fetchall()  # the schema, before the clock
            misses(conn)
            started = time.perf_counter()
            for key in keys:
                for _row in conn.execute(sql, (key,)):
                    pass
            seconds = time.perf_counter() - started
            report(f"point read, {label}{', mmap' if mmap else ''}", seconds, len(keys), misses(conn))
            conn.close()


def statement_overhead(db: Path) -> None:
    """What one autocommit statement costs before any page is read: a WAL read transaction per statement."""
    conn = connect(db)
    count = 10_000
    for label, sql, in_transaction in (
        ("statement without a table (SELECT 1)", "SELECT 1", False),
        ("point read of the meta table, a read transaction each", "SELECT value FROM meta WHERE key = 'head'", False),
        (
            "point read of the meta table, all in one read transaction",
            "SELECT value FROM meta WHERE key = 'head'",
            True,
        ),
    ):
        if in_transaction:
            conn.execute("BEGIN")
        started = time.perf_counter()
        for _ in range(count):
            conn.execute(sql).fetchall()
        seconds = time.perf_counter() - started
        if in_transaction:
            conn.execute("COMMIT")
        report(label, seconds, count, misses(conn))
    conn.close()


def commit_floor_pages(work: Path) -> None:
    """Pages the commit floor's transactions write (10 random rows each), to compare with a commit's."""
    db = work / "floor-pages.db"
    conn = connect(db)
    conn.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    conn.status(apsw.SQLITE_DBSTATUS_CACHE_WRITE, True)
    count = 1000
    for _ in range(count):
        with conn:
            conn.executemany("INSERT INTO t VALUES (?, ?)", [(random.randbytes(36), bytes(200)) for _ in range(10)])
    writes = conn.status(apsw.SQLITE_DBSTATUS_CACHE_WRITE, True)[0]
    print(f"  commit floor: {writes / count:.1f} pages written per transaction of 10 rows", flush=True)
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def paged(conn: apsw.Connection, sql: str, page: int = 4096) -> int:
    after, count = b"", 0
    while True:
        rows = conn.execute(sql, (after, page)).fetchall()
        count += len(rows)
        if len(rows) < page:
            return count
        after = rows[-1][0]


def record_scans(db: Path) -> None:
    scans: list[tuple[str, Callable[[apsw.Connection], int]]] = [
        (
            "records in key order, paged join through the CID index (today)",
            lambda conn: paged(
                conn,
                "SELECT p.path, p.cid, b.data FROM paths p LEFT JOIN blocks b ON b.cid = p.cid "
                "WHERE p.path > ? ORDER BY p.path LIMIT ?",
            ),
        ),
        (
            "records in key order, paged join by rowid",
            lambda conn: paged(
                conn,
                "SELECT p.path, b.id, b.data FROM paths_rowid p LEFT JOIN blocks b ON b.id = p.block "
                "WHERE p.path > ? ORDER BY p.path LIMIT ?",
            ),
        ),
        (
            "every block, sequential scan in rowid order",
            lambda conn: sum(1 for _ in conn.execute("SELECT cid, data FROM blocks")),
        ),
    ]
    for label, scan in scans:
        conn = connect(db)
        misses(conn)
        started = time.perf_counter()
        count = scan(conn)
        report(label, time.perf_counter() - started, count, misses(conn))
        conn.close()


def insert_blocks(car: Path, work: Path) -> None:
    with open(car, "rb") as stream:
        blocks = list(ops.car_sections(stream))  # loaded before the clock starts

    def sorted_batches(conn: apsw.Connection) -> None:
        batch: list[tuple[bytes, str, bytes]] = []
        size = 0
        insert = "INSERT OR IGNORE INTO blocks (cid, rev, data) VALUES (?, ?, ?)"
        for cid, data in blocks:
            batch.append((cid, "r", data))
            size += len(data)
            if size >= BATCH_BYTES:
                batch.sort(key=itemgetter(0))
                conn.executemany(insert, batch)
                batch, size = [], 0
        batch.sort(key=itemgetter(0))
        conn.executemany(insert, batch)

    def car_order(conn: apsw.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO blocks (cid, rev, data) VALUES (?, ?, ?)", ((c, "r", d) for c, d in blocks)
        )

    def index_after(conn: apsw.Connection) -> None:
        conn.executemany("INSERT INTO blocks (cid, rev, data) VALUES (?, ?, ?)", ((c, "r", d) for c, d in blocks))
        conn.execute("CREATE UNIQUE INDEX blocks_cid ON blocks (cid)")

    unindexed = ops.BLOCKS_DDL.replace(" UNIQUE", "")
    cases = [
        ("blocks sorted by CID per 32 MiB batch (today's import)", ops.BLOCKS_DDL, sorted_batches),
        ("blocks in CAR order, CID index kept (the floor's order)", ops.BLOCKS_DDL, car_order),
        ("blocks in CAR order, unique CID index created after", unindexed, index_after),
    ]
    for label, ddl, fill in cases:
        db = work / "insert.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        conn = connect(db)
        conn.execute(ddl)
        started = time.perf_counter()
        with conn:
            fill(conn)
        conn.close()  # checkpoints the WAL, as an import's close does
        report(f"insert {label}", time.perf_counter() - started, len(blocks), 0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work / 'insert.db'}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/pypds-prof")
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(args.dir)
    source, car = work / f"fixture-{args.n}" / "pds.db", work / f"fixture-{args.n}.car"
    if not car.exists():
        raise SystemExit(f"no fixture in {work}: run `python -m benchmarks.profile reads --n {args.n}` first")
    db = work / "experiment.db"
    shutil.copyfile(source, db)
    try:
        add_rowid_paths(db)
        print(f"N = {args.n:,}, a copy of {source} with a paths -> rowid table")
        statement_overhead(db)
        commit_floor_pages(work)
        point_reads(db, args.n)
        record_scans(db)
        insert_blocks(car, work)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
