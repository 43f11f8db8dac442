"""Benchmark the main pypds operations on a deterministic workload.

    python -m benchmarks [--sizes 1000,10000,100000] [--large] [--huge] [--durability full|normal|both]
                         [--ops build,reads,import,export,commits,concurrent,batches] [--seed 1] [--dir DIR]

Workload: N records in app.bsky.feed.post with increasing TID record keys,
each {"$type", "text" (~100 chars), "createdAt", "langs": ["en"]}, generated
from the seed as they are used (never all held in memory). Every operation
runs in its own forked process and reports its own peak RSS (VmHWM, reset
at the fork). Floors (the same work without pypds) are measured in the same
run. Prints a table: operation, N, durability, seconds, rate, peak RSS,
note (ratios to the floors and targets). Not a test: nothing here passes or
fails.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import ops

LARGE = 1_000_000
HUGE = 10_000_000
#: Operation groups (``--ops``); each brings the floors it is compared with.
ALL_OPS = ("build", "reads", "import", "export", "commits", "concurrent", "batches")
#: What ``--huge`` runs at 10M records (minutes each).
HUGE_OPS = ("build", "import", "export")
COMMITS = 1000
THREADS = 8


# -- peak memory of a forked child ---------------------------------------------


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def in_child(fn: Callable[[], float]) -> tuple[float, float]:
    """Run ``fn`` (which returns the seconds it measured) in a forked process: (seconds, peak RSS MiB).

    The peak is the child's own VmHWM, read in the child at its end. A
    forked child starts with the parent's mappings (its RSS, and on some
    kernels its high-water mark): the peak is reset right after the fork,
    so it counts what the child held, starting from the small parent's
    image (the interpreter and libraries, ~30 MiB).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            reset_peak_rss()
            result: object = (fn(), ops.status_kib("VmHWM") / 1024)
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


# -- the table -----------------------------------------------------------------


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str, float, str, float, str]] = []
        self.per_record: dict[tuple[str, str], float] = {}  # (operation, durability) -> seconds per record at 1M

    def run(
        self, name: str, n: int, mode: str, units: int, unit: str, fn: Callable[[], float], note: str = ""
    ) -> float:
        seconds, rss = in_child(fn)
        self.rows.append((name, n, mode, seconds, f"{units / seconds:,.0f} {unit}/s", rss, note))
        print(f"  {name:<52} N={n:<9} {mode:<6} {seconds:8.3f}s {rss:7.0f} MiB {note}", flush=True)
        return seconds

    def note(self, text: str) -> None:
        name, n, mode, seconds, rate, rss, old = self.rows[-1]
        self.rows[-1] = (name, n, mode, seconds, rate, rss, f"{old}; {text}" if old else text)
        print(f"    {text}", flush=True)

    def scaling(self, name: str, n: int, mode: str, seconds: float) -> None:
        """Note the per-record time, and at 10M its ratio to the same operation's at 1M in this run."""
        per_record = seconds / n
        if n == LARGE:
            self.per_record[name, mode] = per_record
        text = f"{per_record * 1e6:.1f} µs/rec"
        base = self.per_record.get((name, mode))
        if n == HUGE and base:
            text += f", {per_record / base:.2f}x the 1M per-record time"
        self.note(text)

    def print(self) -> None:
        print()
        print("| operation | N | durability | seconds | rate | peak RSS MiB | note |")
        print("|---|---:|---|---:|---:|---:|---|")
        for name, n, mode, seconds, rate, rss, note in self.rows:
            print(f"| {name} | {n:,} | {mode} | {seconds:.3f} | {rate} | {rss:.0f} | {note} |")


# -- one size ------------------------------------------------------------------


def run_size(table: Table, n: int, mode: str, seed: int, work: Path, selected: tuple[str, ...]) -> None:
    path = work / f"build-{n}-{mode}"
    car = work / f"repo-{n}-{mode}.car"
    run = table.run
    seconds = run(
        "build N records in one commit + write CAR", n, mode, n, "rec", lambda: ops.build(path, car, n, seed, mode)
    )
    table.scaling("build", n, mode, seconds)
    if "reads" in selected:
        run(
            "10k random point reads (decoded), warm",
            n,
            mode,
            ops.READS,
            "read",
            lambda: ops.reads(path, n, seed, mode, warm=True),
        )
        run(
            "10k random point reads, first pass after open",
            n,
            mode,
            ops.READS,
            "read",
            lambda: ops.reads(path, n, seed, mode, warm=False),
        )
    if "import" in selected:
        floor = run(
            "import floor (framing + sha256 + apsw executemany, WAL)",
            n,
            mode,
            n,
            "rec",
            lambda: ops.import_floor(car, work / f"floor-{n}-{mode}.db"),
        )
        seconds = run(
            "import CAR, full verification, stored",
            n,
            mode,
            n,
            "rec",
            lambda: ops.import_car(work / f"import-{n}-{mode}", car, mode),
        )
        table.note(f"{seconds / floor:.2f}x floor (target <= 1.3x)")
        table.scaling("import", n, mode, seconds)
        _remove(work / f"floor-{n}-{mode}.db", work / f"import-{n}-{mode}")
    if "export" in selected:
        floor = run(
            "export floor (sequential scan + sha256 + CAR framing)",
            n,
            mode,
            n,
            "rec",
            lambda: ops.export_floor(path / "pds.db", work / f"floor-{n}-{mode}.car"),
        )
        exported = work / f"export-{n}-{mode}.car"
        seconds = run(
            "export CAR to file, every block re-hashed", n, mode, n, "rec", lambda: ops.export_car(path, exported, mode)
        )
        table.note(f"{seconds / floor:.2f}x floor")
        table.scaling("export", n, mode, seconds)
        if n < HUGE:  # the re-hash row loads the whole CAR
            checking = run("  of which: re-hash every exported block", n, mode, n, "rec", lambda: ops.rehash(exported))
            table.note(f"{checking / seconds:.1%} of the export")
        _remove(work / f"floor-{n}-{mode}.car", exported)
    single = 0.0
    if "commits" in selected:
        floor = run(
            "floor: bare apsw WAL transactions (10 rows)",
            n,
            mode,
            COMMITS,
            "tx",
            lambda: ops.commit_floor(work / f"tx-{n}-{mode}.db", mode, COMMITS),
        )
        single = run(
            f"{COMMITS} single-record commits",
            n,
            mode,
            COMMITS,
            "commit",
            lambda: ops.single_commits(path, n, seed, mode, COMMITS),
        )
        table.note(f"{floor / single:.2f}x the floor rate (target >= 0.85x)")
    if "concurrent" in selected:
        for shared, how in ((True, "one shared handle"), (False, "a handle each")):
            seconds = run(
                f"{THREADS} threads x {COMMITS // THREADS} single commits, {how}",
                n,
                mode,
                COMMITS,
                "commit",
                lambda shared=shared: ops.concurrent_commits(path, n, seed, mode, THREADS, COMMITS, shared=shared),
            )
            if single:
                table.note(f"{single / seconds:.2f}x the single-writer rate (target >= 5x)")
    if "batches" in selected:
        run("10 batches of 200 writes", n, mode, 2000, "write", lambda: ops.batches(path, n, seed, mode, 10, 200))
    print(
        f"  CAR for N={n:,}: {car.stat().st_size / 1e6:.1f} MB; pds.db {(path / 'pds.db').stat().st_size / 1e6:.1f} MB"
    )
    _remove(*work.iterdir())  # keep the disk use of a large run bounded


def _remove(*paths: Path) -> None:
    for item in paths:
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink(missing_ok=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated record counts")
    parser.add_argument("--large", action="store_true", help="add the 1,000,000-record workload (minutes)")
    parser.add_argument(
        "--huge", action="store_true", help=f"add 10,000,000 records: {', '.join(HUGE_OPS)} only (tens of minutes)"
    )
    parser.add_argument("--durability", default="full", choices=["full", "normal", "both"])
    parser.add_argument("--ops", default=",".join(ALL_OPS), help="comma-separated operation groups (build always runs)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="work directory (default: a new temporary directory, removed at the end)")
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",") if s] + ([LARGE] if args.large else []) + ([HUGE] if args.huge else [])
    )
    modes = ["full", "normal"] if args.durability == "both" else [args.durability]
    selected = tuple(op.strip() for op in args.ops.split(",") if op.strip())
    unknown = set(selected) - set(ALL_OPS)
    if unknown:
        parser.error(f"unknown operation(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_OPS)}")
    table = Table()
    work = Path(tempfile.mkdtemp(prefix="pypds-bench-", dir=args.dir))
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S')}, {_load()}")
    print(f"forked child baseline: {in_child(lambda: 0.0)[1]:.0f} MiB (the parent's image; every peak includes it)")
    try:
        for n in sizes:
            for mode in modes:
                print(f"N = {n:,} (durability={mode}), {_load()}", flush=True)
                groups = tuple(op for op in selected if op in HUGE_OPS) if n >= HUGE else selected
                run_size(table, n, mode, args.seed, work, groups)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"finished {time.strftime('%Y-%m-%d %H:%M:%S')}, {_load()}")
    table.print()


if __name__ == "__main__":
    main()
