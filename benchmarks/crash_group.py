"""Crash safety of group commit: SIGKILL a process whose threads write through one shared handle.

    python -m benchmarks.crash_group [--cycles 40] [--threads 8] [--seed 1]

Each cycle starts a writer process (``--writer``) on one repository: THREADS
threads put records on their own keys (thread t writes ``t<t>-<i>`` for
i = 0, 1, 2, ...), so concurrent writes share group commits. After each put
returns, the thread appends ``t i CID`` to an ack file and fsyncs it. The
parent kills the writer with SIGKILL after a random delay, reopens the
repository and checks: it opens and ``verify()`` passes; every acknowledged
record is there with its CID; for each thread, nothing beyond its last
acknowledged key but the one write it may have had in flight (which, when
it made it, counts as acknowledged from then on: the next writer resumes
after it); the commit history is one chain with increasing revs. Prints a line per failure and a
summary; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DID = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
POST = "app.bsky.feed.post"


def record(t: int, i: int) -> dict:
    return {"$type": POST, "text": f"thread {t} write {i}", "createdAt": "2024-01-01T00:00:00Z"}


def writer(repo_dir: str, acks: str, threads: int) -> None:
    """Write until killed; each thread resumes after its last key already in the repository."""
    from pypds import Repo

    repo = Repo.open(repo_dir)
    lock = threading.Lock()
    log = open(acks, "a", encoding="utf-8")  # noqa: SIM115 (written until the process is killed)

    def run(t: int) -> None:
        i = 1 + max(
            (int(rkey.split("-")[1]) for rkey, _cid in repo.list(POST) if rkey.startswith(f"t{t}-")), default=-1
        )
        while True:
            cid = repo.put(POST, f"t{t}-{i:06d}", record(t, i))
            with lock:
                log.write(f"{t} {i} {cid.encode()}\n")
                log.flush()
                os.fsync(log.fileno())
            i += 1

    pool = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def check(repo_dir: Path, acks: Path, threads: int) -> list[str]:
    """What is wrong with the repository after a kill (an empty list if nothing)."""
    from pypds import Repo

    problems: list[str] = []
    in_flight: list[str] = []
    acked: dict[int, dict[int, str]] = {t: {} for t in range(threads)}
    text = acks.read_text()
    if not text.endswith("\n"):  # a line cut by the kill is not an acknowledgement: drop it
        text = text[: text.rfind("\n") + 1]
        acks.write_text(text)
    for line in text.splitlines():
        t, i, cid = line.split()
        acked[int(t)][int(i)] = cid
    with Repo.open(repo_dir) as repo:
        report = repo.verify()
        if not report.ok:
            problems.append(f"verify failed:\n{report}")
        stored = {rkey: cid.encode() for rkey, cid in repo.list(POST)}
        for t in range(threads):
            for i, cid in acked[t].items():
                if stored.get(f"t{t}-{i:06d}") != cid:
                    problems.append(f"acknowledged write t{t}-{i:06d} is lost or wrong")
            last = max(acked[t], default=-1)
            beyond = sorted(
                int(k.split("-")[1]) for k in stored if k.startswith(f"t{t}-") and int(k.split("-")[1]) > last
            )
            if beyond and beyond != [last + 1]:
                problems.append(f"thread {t}: unacknowledged writes {beyond} beyond the one in flight ({last + 1})")
            elif beyond:  # the write in flight made it: the next writer resumes after it, so count it as
                in_flight.append(f"{t} {last + 1} {stored[f't{t}-{last + 1:06d}']}\n")  # acknowledged from now
        chain, cid = [], repo.head
        store = repo._state.store
        while cid is not None:
            chain.append(repo.commit(cid).rev)
            history = store.commit_history(cid)
            cid = None if history is None else history[1]
        if chain != sorted(chain, reverse=True) or len(set(chain)) != len(chain):
            problems.append("the commit history is not one chain of increasing revs")
        repo.put(POST, "after-kill", record(0, 0))  # the repository still takes writes
        repo.delete(POST, "after-kill")
    with acks.open("a", encoding="utf-8") as log:
        log.writelines(in_flight)
    return problems


def cycle(repo_dir: Path, acks: Path, threads: int, rng: random.Random) -> tuple[list[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.crash_group", "--writer", str(repo_dir), str(acks), str(threads)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(rng.uniform(0.3, 1.5))
    child.send_signal(signal.SIGKILL)
    child.wait()
    return check(repo_dir, acks, threads), sum(1 for _ in acks.open())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--writer", nargs=3, metavar=("REPO", "ACKS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        writer(args.writer[0], args.writer[1], int(args.writer[2]))
        return 0
    from pypds import Repo

    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        repo_dir, acks = Path(tmp) / "repo", Path(tmp) / "acks"
        Repo.create(repo_dir, DID).close()
        acks.touch()
        acked = 0
        for n in range(1, args.cycles + 1):
            problems, acked = cycle(repo_dir, acks, args.threads, rng)
            for problem in problems:
                print(f"cycle {n}: {problem}")
            failures += bool(problems)
        survived = args.cycles - failures
        print(f"{survived} of {args.cycles} kills survived; {acked} acknowledged writes by {args.threads} threads")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
