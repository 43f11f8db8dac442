"""The benchmark workload, the floors and the timed operations (shared by ``__main__`` and ``profile``).

Every operation takes paths and returns the seconds it measured; the harness
runs each in its own forked process. The floors do the same work as the
pypds operation they stand beside with nothing of pypds: plain Python
framing and hashing, and apsw statements on a table shaped like pypds's.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import apsw
import cbrrr

from pypds import CarReader, Repo
from pypds.tid import encode_tid

DID = "did:plc:benchmarkbenchmarkbench"
POST = "app.bsky.feed.post"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "atproto", "repos", "sync"]
START_MICROS = 1_700_000_000_000_000
READS = 10_000

#: pypds's blocks table (pypds/store.py, schema 4), which the floors write and read.
BLOCKS_DDL = (
    "CREATE TABLE blocks (id INTEGER PRIMARY KEY, cid BLOB NOT NULL UNIQUE, rev TEXT NOT NULL, data BLOB NOT NULL)"
)
#: pypds's page cache per connection (pypds/store.py PAGE_CACHE_KIB), given to the floors too.
CACHE_KIB = 32 * 1024
#: Bytes read from a CAR file per ``read`` call by the floors.
CHUNK = 1 << 20


def record_key(i: int) -> str:
    return encode_tid(START_MICROS + i * 1000, 0)


def workload(n: int, seed: int) -> Iterator[tuple[str, dict]]:
    """The N (record key, record) pairs, in key order, generated one at a time (never held).

    Texts come from a pool of 4,096 seeded ~100-character texts; ``createdAt``
    has millisecond precision and differs for every record, so no two
    records are equal (no block is shared).
    """
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(20))[:100] for _ in range(4096)]
    second, stamp = -1, ""
    for i in range(n):
        micros = START_MICROS + i * 1000
        if micros // 1_000_000 != second:
            second = micros // 1_000_000
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        created = f"{stamp}.{micros // 1000 % 1000:03d}Z"
        yield record_key(i), {"$type": POST, "text": texts[rng.randrange(4096)], "createdAt": created, "langs": ["en"]}


def status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmHWM``: peak RSS, ``VmRSS``: RSS now), Linux."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# -- floors: the same work without pypds -------------------------------------


def car_sections(stream: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """``(cid bytes, block)`` of every section of a CAR stream (header skipped), read a chunk at a time.

    For well-formed CARs written by this benchmark only: no limit or form checks.
    """
    buf, pos = b"", 0

    def fill(need: int) -> bool:
        nonlocal buf, pos
        if len(buf) - pos >= need:
            return True
        parts = [buf[pos:]]
        have = len(parts[0])
        while have < need:
            chunk = stream.read(max(CHUNK, need - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        buf, pos = b"".join(parts), 0
        return have >= need

    def varint() -> int:
        nonlocal pos
        fill(10)
        value = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    fill(10)
    header = varint()
    fill(header)
    pos += header
    while fill(1):
        size = varint()
        fill(size)
        yield buf[pos : pos + 36], buf[pos + 36 : pos + size]
        pos += size


def _floor_connection(path: Path, synchronous: str) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    # one statement per call: apsw runs the next statement of a string only once the rows of the
    # previous one are read, and "journal_mode" returns a row
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == {"NORMAL": 1, "FULL": 2}[synchronous]
    return conn


def import_floor(car: Path, db: Path) -> float:
    """The issue's tight import floor: CAR framing and sha256 in Python, then one apsw ``executemany``
    of every (cid, bytes) row into a WAL database with ``synchronous=NORMAL``, table shaped like
    pypds's (rowid + unique CID index), one transaction; rows in CAR order, streamed (nothing held).
    The clock covers opening, the transaction and the close (which checkpoints the WAL), as an import's does.
    """
    started = time.perf_counter()
    conn = _floor_connection(db, "NORMAL")
    conn.execute(BLOCKS_DDL)
    sha256 = hashlib.sha256

    def rows() -> Iterator[tuple[bytes, str, bytes]]:
        with open(car, "rb") as stream:
            for cid, data in car_sections(stream):
                if sha256(data).digest() != cid[4:]:
                    raise ValueError(f"block {cid.hex()} does not hash to its CID")
                yield cid, "r", data

    with conn:
        conn.executemany("INSERT OR IGNORE INTO blocks (cid, rev, data) VALUES (?, ?, ?)", rows())
    conn.close()
    return time.perf_counter() - started


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def export_floor(db: Path, car: Path) -> float:
    """The export floor: one sequential scan of the blocks table (rowid order), sha256 of every block
    against its CID, CAR framing written to a file that is fsynced and renamed into place, as pypds's
    export does. The blocks come out in storage order, not the stream order a repository CAR needs.
    """
    started = time.perf_counter()
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    head = conn.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()[0]
    header = cbrrr.encode_dag_cbor({"roots": [cbrrr.CID(head)], "version": 1})
    sha256 = hashlib.sha256
    tmp = car.with_name(f".tmp-{car.name}")
    with open(tmp, "wb") as out:
        out.write(encode_varint(len(header)) + header)
        write = out.write
        for cid, data in conn.execute("SELECT cid, data FROM blocks"):
            if sha256(data).digest() != cid[4:]:
                raise ValueError(f"block {cid.hex()} does not hash to its CID")
            write(encode_varint(len(cid) + len(data)) + cid + data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, car)
    conn.close()
    return time.perf_counter() - started


def commit_floor(db: Path, mode: str, count: int) -> float:
    """``count`` bare apsw WAL transactions of 10 small rows each, with the run's ``synchronous``:
    what one durable transaction costs on this disk, before any atproto work."""
    conn = _floor_connection(db, "FULL" if mode == "full" else "NORMAL")
    conn.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    started = time.perf_counter()
    for _ in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(os.urandom(36), bytes(200)) for _ in range(10)])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


# -- the operations ------------------------------------------------------------


def build(path: Path, car: Path, n: int, seed: int, mode: str) -> float:
    """Seconds to build, commit and export N records, less the time spent generating them.

    The records are generated as they are consumed; generating them alone is
    timed in the same process and subtracted, so the result is pypds's time.
    """
    generating = timed(lambda: sum(1 for _ in workload(n, seed)))
    started = time.perf_counter()
    with Repo.create(path, DID, durability=mode) as repo:
        with repo.batch() as batch:
            for rkey, record in workload(n, seed):
                batch.put(POST, rkey, record)
        repo.export_car(car)
    return time.perf_counter() - started - generating


def read_sample(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [record_key(rng.randrange(n)) for _ in range(READS)]


def reads(path: Path, n: int, seed: int, mode: str, *, warm: bool) -> float:
    sample = read_sample(n, seed)
    with Repo.open(path, durability=mode) as repo:
        if warm:
            for key in sample:
                repo.find(POST, key)
        return timed(lambda: [repo.find(POST, key) for key in sample])


def import_car(path: Path, car: Path, mode: str) -> float:
    return timed(lambda: Repo.from_car(path, car, durability=mode).close())


def export_car(path: Path, car: Path, mode: str) -> float:
    with Repo.open(path, durability=mode) as repo:
        return timed(lambda: repo.export_car(car))


def rehash(car: Path) -> float:
    """Seconds of the check an export makes on every block it ships: sha256, compared with the CID."""
    blocks = list(CarReader(car))  # loaded before the clock starts
    sha256 = hashlib.sha256
    return timed(lambda: [sha256(data).digest() != cid.cid_bytes[4:] for cid, data in blocks])


def single_commits(path: Path, n: int, seed: int, mode: str, count: int) -> float:
    records = [record for _, record in workload(min(n, count), seed)]
    with Repo.open(path, durability=mode) as repo:
        base = 1_800_000_000_000_000

        def commits() -> None:
            for i in range(count):
                repo.put(POST, encode_tid(base + i, 1), records[i % len(records)])

        return timed(commits)


def concurrent_commits(path: Path, n: int, seed: int, mode: str, threads: int, count: int, *, shared: bool) -> float:
    """``threads`` threads each making ``count / threads`` single-record commits (``put``) at once.

    ``shared``: one handle for all threads (what group commit is for: calls
    on one handle queue); otherwise a handle per thread, serialised by
    SQLite's write lock (busy timeout 60 s, so no call gives up).
    """
    per_thread = count // threads
    records = [record for _, record in workload(min(n, per_thread), seed)]
    handles = [Repo.open(path, durability=mode, busy_timeout=60.0) for _ in range(1 if shared else threads)]
    start = threading.Barrier(threads + 1)
    failures: list[BaseException] = []
    base = 2_000_000_000_000_000

    def writer(t: int) -> None:
        repo = handles[0 if shared else t]
        start.wait()
        try:
            for i in range(per_thread):
                repo.put(POST, encode_tid(base + t * per_thread + i, 3), records[i % len(records)])
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    for repo in handles:
        repo.close()
    if failures:
        raise failures[0]
    return seconds


def batches(path: Path, n: int, seed: int, mode: str, count: int, size: int) -> float:
    records = [record for _, record in workload(min(n, size), seed)]
    with Repo.open(path, durability=mode) as repo:
        base = 1_900_000_000_000_000

        def write() -> None:
            for b in range(count):
                with repo.batch() as batch:
                    for i in range(size):
                        batch.put(POST, encode_tid(base + b * size + i, 2), records[i % len(records)])

        return timed(write)
