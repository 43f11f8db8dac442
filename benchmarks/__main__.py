"""Benchmark the main pypds operations on a deterministic workload.

    python -m benchmarks [--sizes 1000,10000,100000] [--durability full|normal] [--seed 1]

Workload: N records in app.bsky.feed.post with increasing TID record keys,
each {"$type", "text" (~100 chars), "createdAt", "langs": ["en"]}. Prints a
table: operation, N, seconds, rate, peak RSS. Not a test: nothing here
passes or fails.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pypds import Repo
from pypds.car import CarReader
from pypds.tid import encode_tid

DID = "did:plc:benchmarkbenchmarkbench"
POST = "app.bsky.feed.post"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "atproto",
    "repos",
    "sync",
    "across",
    "the",
    "network",
]


def workload(n: int, seed: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    start = 1_700_000_000_000_000
    out = []
    for i in range(n):
        micros = start + i * 1000
        text = " ".join(rng.choice(WORDS) for _ in range(20))[:100]
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(micros // 1_000_000)) + ".000Z"
        out.append((encode_tid(micros, 0), {"$type": POST, "text": text, "createdAt": created, "langs": ["en"]}))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, float, str, float, str]] = []

    def time(self, name: str, n: int, units: int, unit: str, fn: Callable[[], object], note: str = "") -> float:
        started = time.perf_counter()
        fn()
        seconds = time.perf_counter() - started
        self.rows.append((name, n, seconds, f"{units / seconds:,.0f} {unit}/s", peak_rss_mb(), note))
        print(f"  {name:<42} N={n:<8} {seconds:8.3f}s", flush=True)
        return seconds

    def print(self) -> None:
        print()
        print(f"| {'operation':<44} | {'N':>9} | {'seconds':>8} | {'rate':>18} | {'peak RSS MB':>11} | note |")
        print(f"|{'-' * 46}|{'-' * 11}|{'-' * 10}|{'-' * 20}|{'-' * 13}|------|")
        for name, n, seconds, rate, rss, note in self.rows:
            print(f"| {name:<44} | {n:>9,} | {seconds:>8.3f} | {rate:>18} | {rss:>11.0f} | {note} |")


def import_floor(car: Path, db: Path) -> None:
    """Read CAR framing in plain Python, sha256 every block, insert rows in one transaction."""
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

    header_len = varint()
    pos += header_len
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


def run_size(table: Table, n: int, args: argparse.Namespace, work: Path) -> None:
    records = workload(n, args.seed)
    opts = {"durability": args.durability}
    path = work / f"build-{n}"
    car = work / f"repo-{n}.car"

    def build() -> None:
        with Repo.create(path, DID, **opts) as repo:
            with repo.batch() as batch:
                for rkey, record in records:
                    batch.put(POST, rkey, record)
            repo.export_car(car)

    table.time("build N records in one commit + write CAR", n, n, "rec", build)

    with Repo.open(path, **opts) as repo:
        keys = [rkey for rkey, _ in records]
        rng = random.Random(args.seed)
        sample = [rng.choice(keys) for _ in range(10_000)]
        for key in sample:  # warm the node cache
            repo.find(POST, key)
        table.time(
            "10k random point reads (decoded), warm",
            n,
            len(sample),
            "read",
            lambda: [repo.find(POST, k) for k in sample],
        )
    with Repo.open(path, **opts) as repo:
        table.time(
            "10k random point reads, first pass after open",
            n,
            len(sample),
            "read",
            lambda: [repo.find(POST, k) for k in sample],
        )

    floor_db = work / f"floor-{n}.db"
    floor = table.time(
        "import floor (framing + sha256 + sqlite insert)", n, n, "rec", lambda: import_floor(car, floor_db)
    )

    def do_import() -> None:
        with Repo.from_car(work / f"import-{n}", car, **opts):
            pass

    seconds = table.time("import CAR, full verification, durable", n, n, "rec", do_import)
    table.rows[-1] = (*table.rows[-1][:5], f"{seconds / floor:.2f}x floor")

    with Repo.open(path, **opts) as repo:
        table.time("export CAR to file", n, n, "rec", lambda: repo.export_car(work / f"export-{n}.car"))

        base = 1_800_000_000_000_000

        def singles() -> None:
            for i in range(1000):
                repo.put(POST, encode_tid(base + i, 1), records[i % n][1])

        table.time("1000 single-record commits", n, 1000, "commit", singles)

        def batches() -> None:
            for b in range(10):
                with repo.batch() as batch:
                    for i in range(200):
                        batch.put(POST, encode_tid(base + 10_000 + b * 200 + i, 2), records[i % n][1])

        table.time("10 batches of 200 writes", n, 2000, "write", batches)
    blocks = sum(1 for _ in CarReader(car))
    print(f"  CAR for N={n}: {car.stat().st_size / 1e6:.1f} MB, {blocks} blocks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--durability", default="full", choices=["full", "normal"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    table = Table()
    work = Path(tempfile.mkdtemp(prefix="pypds-bench-"))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            print(f"N = {n:,} (durability={args.durability})", flush=True)
            run_size(table, n, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table.print()


if __name__ == "__main__":
    main()
