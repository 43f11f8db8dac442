"""Process bodies for tests/test_concurrency.py (started with the 'spawn' method).

Each ``run_*`` function runs in a child process, opens the repository
itself, and writes what it did (or the traceback of what went wrong) as JSON
to ``result_path``; the parent reads that file after ``join`` and makes the
assertions. (The reader's consistency checks run here, because they must run
while the writers write; what they find is reported, not raised.)
"""

from __future__ import annotations

import json
import random
import time
import traceback
from pathlib import Path
from typing import Any

import apsw

from pypds import Repo, parse_did_key
from pypds.car.stream import StreamedCar
from pypds.limits import DEFAULT_LIMITS
from pypds.mst import build_tree

DID = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
#: Upper bound on how long any child runs, whatever the parent does.
HARD_DEADLINE = 60.0


# -- what writers write (deterministic, so the parent can recompute it) ------------------


def post_rkey(writer: int, i: int) -> str:
    return f"w{writer}-p{i:03d}"


def post_record(writer: int, i: int, version: int = 0) -> dict:
    return {
        "$type": POST,
        "text": f"writer {writer} post {i} version {version}",
        "createdAt": "2024-01-01T00:00:00.000Z",
    }


def like_rkey(writer: int, batch: int, n: int) -> str:
    return f"w{writer}-b{batch}-{n}"


def like_record(writer: int, batch: int, n: int) -> dict:
    return {"$type": LIKE, "createdAt": "2024-01-01T00:00:00.000Z", "via": f"writer {writer} batch {batch} #{n}"}


def writer_plan(writer: int, puts: int, batch_every: int) -> list[tuple[str, list[tuple]]]:
    """The writes of one writer, in order: ``("put", [op])`` or ``("batch", [ops])``.

    An op is ``("put", collection, rkey, record)`` or ``("delete", collection, rkey)``.
    Single puts create ``w<writer>-p<i>`` posts in increasing order and are never
    deleted (readers rely on that: a snapshot holds a prefix of each writer's posts).
    After every ``batch_every`` puts comes a batch that creates three likes, rewrites
    the latest post, and deletes one like of the previous batch.
    """
    plan: list[tuple[str, list[tuple]]] = []
    batch = 0
    for i in range(puts):
        plan.append(("put", [("put", POST, post_rkey(writer, i), post_record(writer, i))]))
        if batch_every and (i + 1) % batch_every == 0:
            ops: list[tuple] = [
                ("put", LIKE, like_rkey(writer, batch, n), like_record(writer, batch, n)) for n in range(3)
            ]
            ops.append(("put", POST, post_rkey(writer, i), post_record(writer, i, version=batch + 1)))
            if batch:
                ops.append(("delete", LIKE, like_rkey(writer, batch - 1, 1)))
            plan.append(("batch", ops))
            batch += 1
    return plan


# -- helpers -----------------------------------------------------------------------------


def _dump(result_path: str, result: dict[str, Any]) -> None:
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)


def _wait(barrier: Any) -> None:
    if barrier is not None:
        barrier.wait(timeout=HARD_DEADLINE)


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}


# -- writer ------------------------------------------------------------------------------


def perform(repo: Repo, writer: int, kind: str, ops: list[tuple], *, own_handle: bool = True) -> dict[str, Any]:
    """Do one write of a plan; report its ops (key, record CID or None), commit CID and timing.

    ``start``/``end`` are ``time.monotonic()`` (one clock for all processes on
    Linux) around the call. For a single put the commit CID is the handle's
    own HEAD right after it, which is only meaningful when no other thread
    uses the handle (``own_handle``).
    """
    start = time.monotonic()
    done: list[list] = []
    commit = None
    if kind == "put":
        _, collection, rkey, record = ops[0]
        cid = repo.put(collection, rkey, record)
        if own_handle:
            commit = repo._state.head  # put() returns the record CID, not the commit's
        done.append([f"{collection}/{rkey}", cid.encode()])
    else:
        with repo.batch() as b:
            for op in ops:
                if op[0] == "put":
                    done.append([f"{op[1]}/{op[2]}", b.put(op[1], op[2], op[3]).encode()])
                else:
                    b.delete(op[1], op[2])
                    done.append([f"{op[1]}/{op[2]}", None])
        commit = b.commit
    return {
        "writer": writer,
        "kind": kind,
        "commit": None if commit is None else commit.encode(),
        "ops": done,
        "start": start,
        "end": time.monotonic(),
    }


def run_writer(
    path: str,
    writer: int,
    puts: int,
    batch_every: int,
    barrier: Any,
    result_path: str,
    busy_timeout: float = 30.0,
    pause: float = 0.0,
) -> None:
    """Perform ``writer_plan`` and report every commit CID and record CID it got back.

    ``pause`` is the longest random think time between two writes: without
    it, a writer that just committed takes the lock again before the others
    (asleep in SQLite's busy handler) wake up, and writers hardly interleave.
    """
    rng = random.Random(writer)
    result: dict[str, Any] = {"writer": writer, "writes": [], "error": None}
    try:
        with Repo.open(path, busy_timeout=busy_timeout) as repo:
            _wait(barrier)
            started = time.monotonic()
            for kind, ops in writer_plan(writer, puts, batch_every):
                result["writes"].append(perform(repo, writer, kind, ops))
                if pause:
                    time.sleep(rng.uniform(0, pause))
            result["elapsed"] = time.monotonic() - started
    except BaseException as exc:
        result["error"] = _error(exc)
    _dump(result_path, result)


# -- reader ------------------------------------------------------------------------------


def run_reader(
    path: str,
    reader: int,
    writers: int,
    barrier: Any,
    stop: Any,
    result_path: str,
    min_iterations: int = 5,
) -> None:
    """Read the repository over and over while writers write; report what was seen.

    Every iteration checks that what it read is one consistent, complete
    snapshot: the tree at the HEAD it read is complete, its root is the root of
    its own items, each writer's posts form a prefix, every record block is
    stored, and the exported CAR verifies (signature, whole tree present).
    """
    rng = random.Random(reader)
    result: dict[str, Any] = {"reader": reader, "iterations": 0, "heads": [], "errors": [], "opens": 0}
    heads: dict[str, str] = {}
    repo: Repo | None = None
    last_rev = ""
    deadline = time.monotonic() + HARD_DEADLINE
    try:
        _wait(barrier)
        iteration = 0
        while time.monotonic() < deadline and (not stop.is_set() or iteration < min_iterations):
            iteration += 1
            try:
                if repo is None or iteration % 4 == 0:
                    if repo is not None:
                        repo.close()
                        repo = None
                    repo = Repo.open(path)
                    result["opens"] += 1
                key = parse_did_key(repo.did_key)
                head = repo.head
                commit = repo.commit(head)
                heads[head.encode()] = commit.rev
                if commit.rev < last_rev:
                    raise AssertionError(f"HEAD went back in time: rev {commit.rev} after {last_rev}")
                last_rev = commit.rev

                # the whole tree at the HEAD just read, then the tree at HEAD now
                for tree in (repo.checkout(head), repo.checkout()):
                    items = list(tree)
                    keys = [k for k, _ in items]
                    if keys != sorted(set(keys)):
                        raise AssertionError("tree iteration is not sorted and unique")
                    rebuilt = build_tree([(k.encode(), v) for k, v in items])[0].cid
                    if rebuilt != tree.root:
                        raise AssertionError(f"snapshot root {tree.root} is not the root of its items {rebuilt}")
                    for _, cid in items:
                        if not repo.blockstore.has(cid):
                            raise AssertionError(f"record block {cid} reachable from HEAD is not stored")
                    present = set(keys)
                    for w in range(writers):
                        have = [i for i in range(1000) if f"{POST}/{post_rkey(w, i)}" in present]
                        if have != list(range(len(have))):
                            raise AssertionError(f"writer {w}'s posts are not a prefix: {have}")
                if repo.checkout(head).root != commit.data:
                    raise AssertionError("checkout(head).root is not the commit's data root")

                # point reads at the current HEAD: posts are never deleted
                posts = [k for k in keys if k.startswith(POST + "/")]
                for k in rng.sample(posts, min(5, len(posts))):
                    record = repo.find(POST, k.split("/", 1)[1])
                    if record is None or record.get("$type") != POST:
                        raise AssertionError(f"find({k}) returned {record!r}")

                # the full CAR of HEAD (and of the HEAD read first) verifies
                for car in (repo.export_car(), repo.export_car(commit=head)):
                    with StreamedCar(car, DEFAULT_LIMITS) as streamed:
                        car_commit = streamed.commit()
                        car_commit.verify(key)
                        for _step in streamed.tree_blocks(car_commit):
                            pass
                        streamed.finish()
                    if car_commit.rev < commit.rev:
                        raise AssertionError("export_car() went back in time")
                    heads[streamed.root.encode()] = car_commit.rev
            except Exception as exc:
                result["errors"].append(_error(exc))
                if len(result["errors"]) >= 5:
                    break
        result["iterations"] = iteration
    except BaseException as exc:
        result["errors"].append(_error(exc))
    finally:
        if repo is not None:
            repo.close()
    result["heads"] = sorted(heads, key=heads.__getitem__)
    _dump(result_path, result)


# -- lock holder and opener ------------------------------------------------------------------


def run_lock_holder(path: str, locked: Any, release: Any, result_path: str) -> None:
    """Hold SQLite's write lock on the repo (raw apsw, BEGIN IMMEDIATE) until ``release``.

    While holding it, write garbage into HEAD and the block table (never
    committed: readers must not see it), then roll back.
    """
    result: dict[str, Any] = {"error": None}
    try:
        conn = apsw.Connection(str(Path(path) / "pds.db"))
        conn.set_busy_timeout(10_000)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'head'", (b"\x01\x71\x12\x20" + bytes(32),))
        conn.execute("INSERT INTO blocks (cid, rev, data) VALUES (?, ?, ?)", (b"garbage", "x", b"garbage"))
        locked.set()
        result["released"] = release.wait(HARD_DEADLINE)
        conn.execute("ROLLBACK")
        conn.close()
    except BaseException as exc:
        result["error"] = _error(exc)
    _dump(result_path, result)


def run_opener(path: str, seconds: float, barrier: Any, result_path: str, busy_timeout: float = 5.0) -> None:
    """Open the repo, read HEAD, close; again and again for ``seconds`` or until an error."""
    result: dict[str, Any] = {"opens": 0, "error": None}
    try:
        _wait(barrier)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with Repo.open(path, busy_timeout=busy_timeout) as repo:
                assert repo.head is not None
            result["opens"] += 1
    except BaseException as exc:
        result["error"] = _error(exc)
    _dump(result_path, result)
