"""Profile one benchmark operation on a kept fixture (for the analysis in benchmarks/README.md).

    python -m benchmarks.profile OP [--n 1000000] [--dir /tmp/pypds-prof] [--profiler cprofile|pyinstrument|none]
                                    [--durability full|normal] [--sync off] [--out PREFIX]

OP is one of: build, import, export, reads, commits, import-floor, export-floor.
The fixture (a repository of N records built in one commit, and its CAR) is
built once in ``--dir`` and reused; ``commits`` works on a copy of it.
``--profiler cprofile`` writes PREFIX.prof and PREFIX.txt (top functions by
own and cumulative time); ``pyinstrument`` writes PREFIX.txt (a call tree);
``py-spy`` samples the run from outside (``pip install py-spy``; no
slowdown of the profiled process, unlike the two above, which inflate
Python-heavy code two- to threefold) and writes PREFIX.txt: the functions
by inclusive and by own share of the samples; ``none`` only times, for
running under ``memray run``.
``--sync off`` sets ``PRAGMA synchronous = OFF`` on the repository's
connection before ``commits``: the commit path without any fsync, i.e. its
CPU cost. Prints seconds and the process's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import apsw

from pypds import Repo

from . import ops

OPS = ("build", "import", "export", "reads", "commits", "import-floor", "export-floor")


def fixture(work: Path, n: int, seed: int) -> tuple[Path, Path]:
    """The kept repository and CAR of N records (built now if absent)."""
    repo, car = work / f"fixture-{n}", work / f"fixture-{n}.car"
    if not car.exists():
        shutil.rmtree(repo, ignore_errors=True)
        print(f"building the {n:,}-record fixture in {work} ...", flush=True)
        ops.build(repo, car, n, seed, "normal")
    return repo, car


def operation(name: str, work: Path, n: int, seed: int, mode: str, sync: str | None) -> Callable[[], object]:
    """The operation to profile, its inputs prepared (fixtures, clean targets)."""
    if name == "build":
        target, car = work / "build", work / "build.car"
        shutil.rmtree(target, ignore_errors=True)
        return lambda: _build(target, car, n, seed, mode)
    repo, car = fixture(work, n, seed)
    if name == "import":
        target = work / "import"
        shutil.rmtree(target, ignore_errors=True)
        return lambda: Repo.from_car(target, car, durability=mode).close()
    if name == "import-floor":
        target = work / "floor.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        return lambda: ops.import_floor(car, target)
    if name == "export":
        return lambda: _export(repo, work / "export.car", mode)
    if name == "export-floor":
        return lambda: ops.export_floor(repo / "pds.db", work / "floor.car")
    if name == "reads":
        return lambda: _reads(repo, n, seed, mode)
    if name == "commits":
        copy = work / "commits"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(repo, copy)
        return lambda: _commits(copy, n, seed, mode, sync)
    raise ValueError(f"unknown operation {name}")


def _build(target: Path, car: Path, n: int, seed: int, mode: str) -> None:
    with Repo.create(target, ops.DID, durability=mode) as repo:
        with repo.batch() as batch:
            for rkey, record in ops.workload(n, seed):
                batch.put(ops.POST, rkey, record)
        repo.export_car(car)


def _pages(repo: Repo, what: str, count: int) -> None:
    """Print the handle's SQLite page cache hits, misses (pages read from the file) and writes per item
    since the last call, and reset them (``count`` 0: only reset)."""
    conn = repo._store.conn  # type: ignore[union-attr]
    hits, misses, writes = (
        conn.status(op, True)[0]
        for op in (apsw.SQLITE_DBSTATUS_CACHE_HIT, apsw.SQLITE_DBSTATUS_CACHE_MISS, apsw.SQLITE_DBSTATUS_CACHE_WRITE)
    )
    if count:
        print(
            f"page cache over {count:,} {what}: {hits / count:.2f} hits, {misses / count:.2f} misses, "
            f"{writes / count:.2f} writes per {what[:-1]}"
        )


def _export(repo_path: Path, car: Path, mode: str) -> None:
    with Repo.open(repo_path, durability=mode) as repo:
        count = len(repo.blockstore)
        _pages(repo, "", 0)  # reset: counting scanned the table
        repo.export_car(car)
        _pages(repo, "blocks", count)


def _reads(repo_path: Path, n: int, seed: int, mode: str) -> None:
    sample = ops.read_sample(n, seed)
    with Repo.open(repo_path, durability=mode) as repo:
        for key in sample:
            repo.find(ops.POST, key)
        _pages(repo, "reads", len(sample))


def _commits(path: Path, n: int, seed: int, mode: str, sync: str | None) -> None:
    records = [record for _, record in ops.workload(1000, seed)]
    with Repo.open(path, durability=mode) as repo:
        if sync is not None:
            repo._store.conn.execute(f"PRAGMA synchronous = {sync}")  # type: ignore[union-attr]
        for i in range(1000):
            repo.put(ops.POST, ops.encode_tid(1_800_000_000_000_000 + i, 1), records[i])
        _pages(repo, "commits", 1000)


def sample_from_outside(op: str, work: Path, out: Path) -> None:
    """Run this script with ``--profiler none`` under ``py-spy record`` and summarise the samples."""
    command = [a if a != "py-spy" else "none" for a in sys.argv[1:]]
    raw = Path(f"{out}.raw")
    subprocess.run(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            sys.executable,
            "-m",
            "benchmarks.profile",
            *command,
        ],
        check=True,
    )
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]  # one entry per function
        samples = int(count)
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    lines = [f"{op}: {total} samples at 250/s ({total / 250:.1f} s)", "", "inclusive:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(60)]
    lines += ["", "own:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(40)]
    Path(f"{out}.txt").write_text("\n".join(lines) + "\n")
    print(f"{out}.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=OPS)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/pypds-prof")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--durability", default="full", choices=["full", "normal"])
    parser.add_argument("--sync", choices=["off", "normal", "full"], help="commits: PRAGMA synchronous to run with")
    parser.add_argument("--profiler", default="cprofile", choices=["cprofile", "pyinstrument", "py-spy", "none"])
    parser.add_argument("--out", help="output prefix (default: DIR/OP-PROFILER)")
    args = parser.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.profiler == "py-spy":
        sample_from_outside(args.op, work, Path(args.out or work / f"{args.op}-py-spy"))
        return
    run = operation(args.op, work, args.n, args.seed, args.durability, args.sync)
    out = Path(args.out or work / f"{args.op}-{args.profiler}")
    started = time.perf_counter()
    if args.profiler == "cprofile":
        profiler = cProfile.Profile()
        profiler.runcall(run)
        seconds = time.perf_counter() - started
        profiler.dump_stats(f"{out}.prof")
        text = io.StringIO()
        for order in ("tottime", "cumulative"):
            pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(40)
        Path(f"{out}.txt").write_text(text.getvalue())
    elif args.profiler == "pyinstrument":
        from pyinstrument import Profiler

        with Profiler(interval=0.001) as profiler:
            run()
        seconds = time.perf_counter() - started
        Path(f"{out}.txt").write_text(profiler.output_text(unicode=False, show_all=False))
    else:
        run()
        seconds = time.perf_counter() - started
    print(f"{args.op} N={args.n:,}: {seconds:.2f} s, peak RSS {ops.status_kib('VmHWM') / 1024:.0f} MiB; {out}.*")


if __name__ == "__main__":
    main()
