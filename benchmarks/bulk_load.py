"""Bulk loads: ``pypds load`` from JSON Lines against the Python API's batch, in the same run.

    python -m benchmarks.bulk_load [--records 100000] [--batch-size 10000] [--seed 1]

Run from the project root. The records are the workload of ``python -m
benchmarks`` (app.bsky.feed.post, ~100-character texts, distinct
``createdAt``), written once as JSON Lines (``{"path", "value"}``, what
``pypds dump`` prints minus the CID). Each row runs on a fresh repository:

* ``pypds load PATH records.jsonl`` as a user runs it: a new process,
  timed from start to exit (so it includes starting Python and pypds);
* the same with ``--batch-size``;
* ``Repo.load(path)`` in a forked process;
* the Python API: ``with repo.batch()`` of every record, the records
  already in memory as dicts (generated before the clock starts);
* ``pypds dump PATH > /dev/null``, for reference.

Every load must end at the same MST root as the API batch. Prints a table
(seconds, records per second, peak RSS of the process). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pypds import Repo, to_json

from .__main__ import DID, POST, in_child, workload

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, n: int, seed: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for rkey, record in workload(n, seed):
            out.write(json.dumps({"path": f"{POST}/{rkey}", "value": to_json(record)}) + "\n")


def command(args: list[str], stdout: int | None = None) -> tuple[float, float]:
    """Run ``pypds ARGS`` in a new process: (seconds from start to exit, its peak RSS MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "pypds.cli", *args], cwd=PROJECT_ROOT, stdout=stdout)
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"pypds {' '.join(args)} exited {process.returncode}")
    return seconds, usage.ru_maxrss / 1024


def fresh(base: Path, name: str) -> Path:
    Repo.create(base / name, DID, durability="full").close()
    return base / name


def root_of(path: Path) -> str:
    with Repo.open(path) as repo:
        return repo.commit().data.encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    n = args.records
    base = Path(tempfile.mkdtemp(prefix="pypds-bulk-"))
    rows: list[tuple[str, float, float]] = []
    try:
        source = base / "records.jsonl"
        write_jsonl(source, n, args.seed)
        print(f"{n:,} records, {source.stat().st_size / 2**20:.1f} MiB of JSON Lines", flush=True)

        def api_batch() -> float:
            records = list(workload(n, args.seed))
            with Repo.open(base / "api") as repo:
                started = time.perf_counter()
                with repo.batch() as batch:
                    for rkey, record in records:
                        batch.put(POST, rkey, record)
                return time.perf_counter() - started

        def library_load() -> float:
            with Repo.open(base / "library") as repo:
                started = time.perf_counter()
                repo.load(source)
                return time.perf_counter() - started

        fresh(base, "api")
        seconds, rss = in_child(api_batch)
        rows.append(("Python API: repo.batch() of every record (dicts in memory)", seconds, rss))
        expected = root_of(base / "api")
        fresh(base, "library")
        seconds, rss = in_child(library_load)
        rows.append(("Repo.load(records.jsonl), in process", seconds, rss))
        one = fresh(base, "cli")
        seconds, rss = command(["load", str(one), str(source), "-q"], stdout=subprocess.DEVNULL)
        rows.append(("pypds load PATH records.jsonl (new process)", seconds, rss))
        batched = fresh(base, "cli-batched")
        batch = ["--batch-size", str(args.batch_size)]
        seconds, rss = command(["load", str(batched), str(source), *batch, "-q"], stdout=subprocess.DEVNULL)
        rows.append((f"pypds load ... --batch-size {args.batch_size:,} (new process)", seconds, rss))
        for name in ("library", "cli", "cli-batched"):
            if root_of(base / name) != expected:
                raise RuntimeError(f"{name}: the loaded tree differs from the API batch's")
        with open(os.devnull, "wb") as null:
            seconds, rss = command(["dump", str(one), "-q"], stdout=null.fileno())
        rows.append(("pypds dump PATH > /dev/null (new process)", seconds, rss))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print("| operation | records | seconds | rate | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, rss in rows:
        print(f"| {name} | {n:,} | {seconds:.2f} | {n / seconds:,.0f} rec/s | {rss:.0f} |")
    print(f"\n(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
