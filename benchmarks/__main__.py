"""Benchmark the main pypds operations on a deterministic workload.

    python -m benchmarks [--sizes 1000,10000,100000] [--large] [--durability full|normal|both] [--seed 1]

Workload: N records in app.bsky.feed.post with increasing TID record keys,
each {"$type", "text" (~100 chars), "createdAt", "langs": ["en"]}, generated
from the seed as they are used (never all held in memory). Every operation
runs in its own forked process, so its peak RSS is its own. Prints a table:
operation, N, durability, seconds, rate, peak RSS, note (floor ratios).
Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import random
import resource
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pypds import CarReader, Repo
from pypds.tid import encode_tid

DID = "did:plc:benchmarkbenchmarkbench"
POST = "app.bsky.feed.post"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "atproto", "repos", "sync"]
START_MICROS = 1_700_000_000_000_000
READS = 10_000


def record_key(i: int) -> str:
    return encode_tid(START_MICROS + i * 1000, 0)


def workload(n: int, seed: int) -> Iterator[tuple[str, dict]]:
    """The N (record key, record) pairs, in key order; cheap to generate, so timings are pypds's.

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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(fn: Callable[[], float]) -> tuple[float, float]:
    """Run ``fn`` (which returns the seconds it measured) in a forked process: (seconds, peak RSS MB)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            result: object = (fn(), peak_rss_mb())
        except BaseException as exc:  # report it to the parent, whatever it was
            result = f"{type(exc).__name__}: {exc}"
        with os.fdopen(write_end, "wb") as out:
            pickle.dump(result, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stream:
        result = pickle.load(stream)
    os.waitpid(pid, 0)
    if isinstance(result, str):
        raise RuntimeError(f"benchmark step failed: {result}")
    return result  # type: ignore[return-value]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str, float, str, float, str]] = []

    def run(
        self, name: str, n: int, mode: str, units: int, unit: str, fn: Callable[[], float], note: str = ""
    ) -> float:
        seconds, rss = in_child(fn)
        self.rows.append((name, n, mode, seconds, f"{units / seconds:,.0f} {unit}/s", rss, note))
        print(f"  {name:<48} N={n:<8} {mode:<6} {seconds:8.3f}s {rss:7.0f} MB {note}", flush=True)
        return seconds

    def note(self, text: str) -> None:
        name, n, mode, seconds, rate, rss, _ = self.rows[-1]
        self.rows[-1] = (name, n, mode, seconds, rate, rss, text)
        print(f"    {text}", flush=True)

    def print(self) -> None:
        print()
        print("| operation | N | durability | seconds | rate | peak RSS MB | note |")
        print("|---|---:|---|---:|---:|---:|---|")
        for name, n, mode, seconds, rate, rss, note in self.rows:
            print(f"| {name} | {n:,} | {mode} | {seconds:.3f} | {rate} | {rss:.0f} | {note} |")


# -- floors: the same work without pypds -------------------------------------


def import_floor(car: Path, db: Path) -> float:
    """Read CAR framing in plain Python, sha256 every block, insert rows in one transaction."""
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE blocks (cid BLOB PRIMARY KEY, data BLOB) WITHOUT ROWID")
    data = car.read_bytes()
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    header_size = varint()
    pos += header_size
    rows = []
    while pos < len(data):
        size = varint()
        section = data[pos : pos + size]
        pos += size
        if hashlib.sha256(section[36:]).digest() != section[4:36]:
            raise ValueError("bad block")
        rows.append((section[:36], section[36:]))
    with conn:
        conn.executemany("INSERT OR IGNORE INTO blocks VALUES (?, ?)", rows)
    conn.close()
    return time.perf_counter() - started


def commit_floor(db: Path, mode: str, count: int) -> float:
    """``count`` bare SQLite WAL transactions of 10 small rows each: the durable-commit floor."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if mode == 'full' else 'NORMAL'}")
    conn.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    started = time.perf_counter()
    for i in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t VALUES (?, ?)", ((os.urandom(36), bytes(200)) for _ in range(10)))
        conn.execute("COMMIT")
        del i
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


# -- the operations ------------------------------------------------------------


def build(path: Path, car: Path, n: int, seed: int, mode: str) -> float:
    """Seconds to build, commit and export N records, less the time spent generating them.

    The records are generated as they are consumed (a 1M list would weigh
    ~500 MB); generating them alone is timed in the same process and
    subtracted, so the result is pypds's time.
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


def run_size(table: Table, n: int, mode: str, seed: int, work: Path) -> None:
    path = work / f"build-{n}-{mode}"
    car = work / f"repo-{n}-{mode}.car"
    table.run("build N records in one commit + write CAR", n, mode, n, "rec", lambda: build(path, car, n, seed, mode))
    table.run(
        "10k random point reads (decoded), warm", n, mode, READS, "read", lambda: reads(path, n, seed, mode, warm=True)
    )
    table.run(
        "10k random point reads, first pass after open",
        n,
        mode,
        READS,
        "read",
        lambda: reads(path, n, seed, mode, warm=False),
    )
    floor = table.run(
        "import floor (framing + sha256 + sqlite insert)",
        n,
        mode,
        n,
        "rec",
        lambda: import_floor(car, work / f"floor-{n}-{mode}.db"),
    )
    seconds = table.run(
        "import CAR, full verification, stored",
        n,
        mode,
        n,
        "rec",
        lambda: import_car(work / f"import-{n}-{mode}", car, mode),
    )
    table.note(f"{seconds / floor:.2f}x floor")
    exported = work / f"export-{n}-{mode}.car"
    seconds = table.run("export CAR to file", n, mode, n, "rec", lambda: export_car(path, exported, mode))
    checking = table.run("  of which: re-hash every exported block", n, mode, n, "rec", lambda: rehash(exported))
    table.note(f"{checking / seconds:.1%} of the export")
    commits = 1000
    floor = table.run(
        "floor: bare SQLite WAL transactions (10 rows)",
        n,
        mode,
        commits,
        "tx",
        lambda: commit_floor(work / f"tx-{n}-{mode}.db", mode, commits),
    )
    seconds = table.run(
        "1000 single-record commits", n, mode, commits, "commit", lambda: single_commits(path, n, seed, mode, commits)
    )
    table.note(f"{seconds / floor:.2f}x floor")
    table.run("10 batches of 200 writes", n, mode, 2000, "write", lambda: batches(path, n, seed, mode, 10, 200))
    print(f"  CAR for N={n}: {car.stat().st_size / 1e6:.1f} MB; pds.db {(path / 'pds.db').stat().st_size / 1e6:.1f} MB")
    for item in work.iterdir():  # keep the disk use of a 1M run bounded
        shutil.rmtree(item) if item.is_dir() else item.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated record counts")
    parser.add_argument("--large", action="store_true", help="add the 1,000,000-record workload (minutes)")
    parser.add_argument("--durability", default="full", choices=["full", "normal", "both"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="work directory (default: a new temporary directory, removed at the end)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.large else [])
    modes = ["full", "normal"] if args.durability == "both" else [args.durability]
    table = Table()
    work = Path(tempfile.mkdtemp(prefix="pypds-bench-", dir=args.dir))
    try:
        for n in sizes:
            for mode in modes:
                print(f"N = {n:,} (durability={mode})", flush=True)
                run_size(table, n, mode, args.seed, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table.print()


if __name__ == "__main__":
    main()
