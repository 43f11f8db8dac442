"""The long crash-safety run: SIGKILL a pypds writer many times and check the repo after each kill.

    python -m benchmarks.crash [--cycles 300] [--seed 1] [--min-delay 0.05] [--max-delay 0.8]
                               [--workdir DIR] [--keep] [--keep-going]

Run from the project root. Each cycle starts ``tests/crash_writer.py`` (puts,
deletes, 1-50 write batches, 0-300 KB blobs, CAR imports, set_ref) on the
same repository, kills it with SIGKILL after a random delay, reopens the
repository and checks it (see ``tests/crash_harness.py``): it opens, HEAD's
tree is complete (and ``repo.verify()`` passes), nothing acknowledged was
lost, every acknowledged blob reads back, no partial blob file sits under a
final name, and the repository still takes writes. The quick version of this
loop runs in the test suite (``tests/test_crash.py``).

Prints a progress line every 10 cycles and a stats table at the end. Exit
status 0 if every kill was survived, 1 if a check failed (the failing repo
is copied under /tmp/crash-failures/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.crash_harness import CrashCheckFailure, CrashStats, run_kill_cycles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-delay", type=float, default=0.05, help="seconds (default 0.05)")
    parser.add_argument("--max-delay", type=float, default=0.8, help="seconds (default 0.8)")
    parser.add_argument("--workdir", type=Path, help="an empty directory to work in (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    parser.add_argument("--keep-going", action="store_true", help="go on after a failed check (default: stop)")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pypds-crash-"))
    started = time.monotonic()
    print(
        f"pypds crash run: {args.cycles} cycles, seed {args.seed}, delays {args.min_delay}-{args.max_delay} s, "
        f"in {workdir}",
        flush=True,
    )

    def progress(stats: CrashStats) -> None:
        if stats.cycles % 10 == 0 or stats.cycles == args.cycles:
            print(
                f"  cycle {stats.cycles:>5}/{args.cycles}: {stats.survived} kills survived, "
                f"{stats.acked_ops} ops acked, {len(stats.failures)} failures, "
                f"{time.monotonic() - started:.0f}s",
                flush=True,
            )

    failed: CrashCheckFailure | None = None
    stats: CrashStats | None = None
    try:
        stats = run_kill_cycles(
            workdir,
            args.cycles,
            args.seed,
            args.min_delay,
            args.max_delay,
            stop_on_failure=not args.keep_going,
            progress=progress,
        )
    except CrashCheckFailure as exc:
        failed = exc
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed is not None:
        stats = failed.stats
    assert stats is not None
    print()
    print(stats.table())
    print()
    ok = failed is None and not stats.failures and stats.survived == stats.kills == args.cycles
    print(f"RESULT: {'PASS' if ok else 'FAIL'}: survived {stats.survived} of {stats.kills} SIGKILLs")
    if failed is not None:
        print(f"stopped at the first failure (use --keep-going to continue):\n{failed}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
