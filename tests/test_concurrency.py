"""Concurrency: several processes, several handles and several threads on one repository.

What is checked (README, "Concurrency"):

* writers in different processes never lose an update and never interleave a
  commit: walking every stored commit in rev order, each one's tree is exactly
  the previous commit's tree plus one write, and HEAD is the last of them;
* readers in other processes only ever see complete, consistent snapshots
  (never a HEAD whose blocks are missing, never a rev going backwards);
* a writer blocked by another connection's write lock waits up to
  ``busy_timeout``, then raises ``RepoBusy`` and changes nothing;
* threads sharing one handle (through its public methods), or each with its
  own handle, are safe;
* a handle notices other processes' commits on its next call.

Child processes use the 'spawn' start method and run the functions of
``tests/concurrency_worker.py``; they report through JSON files. The parent
keeps a handle open during the multi-process tests, so that no child is ever
the last connection to close (that race has its own test, below).

Regression tests for the bugs these tests found are at the end of the module
(a lost update when another process committed in the instant between a
handle's COMMIT and a data_version read; opening while the last connection
closes; unlocked block-store reads on a shared handle).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import sys
import threading
import time
from pathlib import Path

import dag_cbor
import pytest

from pypds import (
    CID,
    Commit,
    InvalidCommit,
    PypdsError,
    Repo,
    RepoBusy,
    cid_for_cbor,
    decode_commit,
)
from pypds.car.stream import StreamedCar
from pypds.limits import DEFAULT_LIMITS
from pypds.mst import build_tree
from pypds.repo import writer as repo_writer

from . import concurrency_worker as worker
from .concurrency_worker import DID, LIKE, POST, like_record, like_rkey, post_record, post_rkey, writer_plan

SPAWN = multiprocessing.get_context("spawn")
JOIN_TIMEOUT = 60.0


# -- helpers ---------------------------------------------------------------------------------


def start(target, *args) -> multiprocessing.process.BaseProcess:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def join_all(processes) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in processes if p.is_alive()]
    for process in hung:
        process.terminate()
        process.join(5)
    assert not hung, f"child processes did not finish within {JOIN_TIMEOUT} s"
    assert [p.exitcode for p in processes] == [0] * len(processes)


def result(path: Path) -> dict:
    return json.loads(path.read_text())


def no_error(report: dict) -> dict:
    assert report.get("error") is None, report["error"]["traceback"]
    return report


def root_of(state: dict[bytes, CID]) -> CID:
    """The MST root of a key -> CID set, computed from scratch (bottom-up build)."""
    return build_tree(sorted(state.items()))[0].cid


def record_cid(record: dict) -> CID:
    """A record's CID from an independent DAG-CBOR encoder."""
    return cid_for_cbor(dag_cbor.encode(record))


def stored_commits(repo: Repo) -> dict[CID, Commit]:
    """Every commit block of the repository, by CID."""
    commits: dict[CID, Commit] = {}
    for cid, data in list(repo.blockstore):
        try:
            commit = decode_commit(data, cid)
        except InvalidCommit:
            continue
        if commit.did == repo.did:
            commits[cid] = commit
    return commits


def expected_state(plans: dict[int, list]) -> dict[bytes, CID]:
    """The final key -> record CID set of writers with disjoint keys, from their plans alone."""
    state: dict[bytes, CID] = {}
    for plan in plans.values():
        for _, ops in plan:
            for op in ops:
                key = f"{op[1]}/{op[2]}".encode()
                if op[0] == "put":
                    state[key] = record_cid(op[3])
                else:
                    del state[key]
    return state


def effect(ops) -> dict[bytes, CID | None]:
    """What one write does: each key it touches -> its value afterwards (None: deleted)."""
    out: dict[bytes, CID | None] = {}
    for key, value in ops:
        out[key.encode()] = None if value is None else CID.decode(value)
    return out


def check_history(repo: Repo, writes: list[dict], before: int = 1) -> dict[bytes, CID]:
    """Check that the commits form one serial history of ``writes``; returns HEAD's state.

    ``writes`` are reports ``{"ops": [[key, cid or None], ...], "commit": cid?}``
    in any order; ``before`` is the number of commits that existed before them.
    Walking the commits in rev order, the tree of each new commit must be its
    predecessor's tree changed by exactly one write, each write used once: no
    lost update, no interleaving, no commit built on a stale HEAD. Each tree is
    read back from the store and its root recomputed from scratch.

    A commit that is an *older* commit plus one write (a lost update) fails the check.
    """
    commits = stored_commits(repo)
    assert len(commits) == before + len(writes), (
        f"{len(commits)} commits stored for {before} initial commits and {len(writes)} writes"
    )
    ordered = sorted(commits.items(), key=lambda item: item[1].rev)
    revs = [c.rev for _, c in ordered]
    assert len(set(revs)) == len(revs), "two commits share a rev"
    assert repo.head == ordered[-1][0], "HEAD is not the commit with the highest rev"
    assert repo.rev == revs[-1]

    reported = [w["commit"] for w in writes if w.get("commit")]
    assert len(set(reported)) == len(reported), "two writes got back the same commit CID"
    assert not set(reported) - {c.encode() for c in commits}, "a commit CID handed back to a writer is not stored"

    pending = [(effect(w["ops"]), w.get("commit")) for w in writes]
    states: list[dict[bytes, CID]] = []
    for index, (cid, commit) in enumerate(ordered):
        state = {k.encode(): v for k, v in repo.checkout(cid)}
        assert commit.data == root_of(state), f"commit {index}: its root is not the root of its own items"
        states.append(state)
        if index < before:
            continue
        matches = [i for i, (eff, _) in enumerate(pending) if eff == diff(states[index - 1], state)]
        base = index - 1
        while not matches and base > 0:
            base -= 1
            matches = [i for i, (eff, _) in enumerate(pending) if eff == diff(states[base], state)]
        assert matches, (
            f"commit {index} (rev {commit.rev}) is not an earlier commit plus exactly one write: it changes "
            f"{sorted(k.decode() for k in diff(states[index - 1], state))}"
        )
        assert base == index - 1, f"commit {index} was built on commit {base}: commits in between are lost"
        _, reported_commit = pending.pop(matches[0])
        assert reported_commit in (None, cid.encode()), f"commit {index} is not the one its writer got back"
    assert not pending
    return states[-1]


def diff(old: dict[bytes, CID], new: dict[bytes, CID]) -> dict[bytes, CID | None]:
    return {k: new.get(k) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def check_final(repo: Repo, state: dict[bytes, CID]) -> None:
    """HEAD's tree is complete, holds exactly ``state``, and every record reads back."""
    tree = repo.checkout()
    repo._state.check_complete(tree.root)
    assert {k.encode(): v for k, v in tree} == state
    assert tree.root == root_of(state)
    assert repo.commit().data == tree.root
    for key, cid in state.items():
        collection, rkey = key.decode().split("/", 1)
        assert repo.find_cid(collection, rkey) == cid
        assert cid_for_cbor(repo.find_bytes(collection, rkey)) == cid


@pytest.fixture
def repo_path(tmp_path):
    """A repository with a stored signing key; a handle stays open in the parent.

    Keeping one connection open for the whole test means no child is ever
    the last connection to close (see test_open_races_with_last_close).
    """
    path = tmp_path / "repo"
    with Repo.create(path, DID) as repo:
        yield path, repo


# -- 1. writers in several processes ----------------------------------------------------------

WRITERS = 3
PUTS = 40
BATCH_EVERY = 12  # 3 batches per writer
PAUSE = 0.005  # think time between a writer's writes (see run_writer), so that writers interleave


def test_writer_processes_never_lose_or_interleave_commits(repo_path, tmp_path):
    path, repo = repo_path
    barrier = SPAWN.Barrier(WRITERS)
    reports = [tmp_path / f"writer{w}.json" for w in range(WRITERS)]
    processes = [
        start(worker.run_writer, str(path), w, PUTS, BATCH_EVERY, barrier, str(reports[w]), 30.0, PAUSE)
        for w in range(WRITERS)
    ]
    join_all(processes)
    plans = {w: writer_plan(w, PUTS, BATCH_EVERY) for w in range(WRITERS)}
    writes = []
    for w, report_path in enumerate(reports):
        report = no_error(result(report_path))
        assert [x["kind"] for x in report["writes"]] == [kind for kind, _ in plans[w]]
        # each writer's own commits come out in increasing rev order
        own_revs = [repo.commit(x["commit"]).rev for x in report["writes"]]
        assert own_revs == sorted(own_revs) and len(set(own_revs)) == len(own_revs)
        writes.extend(report["writes"])
    assert len(writes) == sum(len(plan) for plan in plans.values())

    # proof that the writers really ran at the same time: their commits interleave
    writer_of = {x["commit"]: x["writer"] for x in writes}
    in_rev_order = sorted(writer_of, key=lambda c: repo.commit(c).rev)
    switches = sum(writer_of[a] != writer_of[b] for a, b in itertools.pairwise(in_rev_order))
    assert switches >= 10, f"writers hardly interleaved ({switches} switches): the test did not exercise concurrency"

    state = check_history(repo, writes)
    assert state == expected_state(plans), "the final set is not the union of every writer's writes"
    check_final(repo, state)
    for w in range(WRITERS):
        for i in range(PUTS):
            found = repo.find(POST, post_rkey(w, i))
            assert found is not None and found["text"].startswith(f"writer {w} post {i} ")
        assert repo.find(LIKE, like_rkey(w, 0, 0)) == like_record(w, 0, 0)
        assert repo.find(LIKE, like_rkey(w, 0, 1)) is None  # deleted by the next batch


# -- 2. readers in other processes while writers write ------------------------------------------

READERS = 2


def test_reader_processes_only_see_complete_snapshots(repo_path, tmp_path):
    path, repo = repo_path
    writers, puts = 2, 80
    barrier = SPAWN.Barrier(writers + READERS)
    stop = SPAWN.Event()
    writer_reports = [tmp_path / f"writer{w}.json" for w in range(writers)]
    reader_reports = [tmp_path / f"reader{r}.json" for r in range(READERS)]
    writer_procs = [
        start(worker.run_writer, str(path), w, puts, 10, barrier, str(writer_reports[w]), 30.0, PAUSE)
        for w in range(writers)
    ]
    reader_procs = [
        start(worker.run_reader, str(path), r, writers, barrier, stop, str(reader_reports[r])) for r in range(READERS)
    ]
    join_all(writer_procs)
    stop.set()
    join_all(reader_procs)

    writes = [x for report in writer_reports for x in no_error(result(report))["writes"]]
    state = check_history(repo, writes)
    stored = {c.encode() for c in stored_commits(repo)}
    for report_path in reader_reports:
        report = result(report_path)
        errors = report["errors"]
        assert not errors, "\n".join(e["traceback"] for e in errors)
        assert report["iterations"] >= 5
        assert set(report["heads"]) <= stored
        # proof that the reader really ran while the writers wrote
        assert len(report["heads"]) > 1, f"reader saw only {report['heads']} in {report['iterations']} iterations"
    check_final(repo, state)


# -- 3. busy timeout ----------------------------------------------------------------------------


@pytest.fixture
def locked_repo(repo_path, tmp_path):
    """A repository whose write lock is held by another process (raw apsw, BEGIN IMMEDIATE)."""
    path, repo = repo_path
    repo.put(POST, "before", post_record(0, 0))
    locked, release = SPAWN.Event(), SPAWN.Event()
    report = tmp_path / "holder.json"
    holder = start(worker.run_lock_holder, str(path), locked, release, str(report))
    assert locked.wait(JOIN_TIMEOUT), "the lock holder did not take the lock"
    try:
        yield path, repo, release
    finally:
        release.set()
        join_all([holder])
    assert no_error(result(report))["released"]


def snapshot_state(repo: Repo):
    return repo.head, repo.rev, len(repo.blockstore), list(repo.checkout())


def blocked_put(repo: Repo) -> None:
    repo.put(POST, "blocked", post_record(1, 1))


def blocked_delete(repo: Repo) -> None:
    repo.delete(POST, "before")


def blocked_batch(repo: Repo) -> None:
    with repo.batch() as b:
        b.put(POST, "blocked", post_record(1, 1))
        b.delete(POST, "before")


def test_writer_gets_repo_busy_after_busy_timeout(locked_repo):
    path, repo, _release = locked_repo
    before = snapshot_state(repo)
    with Repo.open(path, busy_timeout=0.3) as writer:  # opening is not blocked by a writer
        for attempt in (blocked_put, blocked_delete, blocked_batch):
            started = time.monotonic()
            with pytest.raises(RepoBusy, match="another writer holds the lock") as raised:
                attempt(writer)
            waited = time.monotonic() - started
            assert 0.25 <= waited <= 2.0, f"{attempt.__name__}: RepoBusy after {waited:.2f} s, busy_timeout=0.3"
            assert isinstance(raised.value, PypdsError)
            assert snapshot_state(writer) == before
        # reads are not blocked, and never see the lock holder's uncommitted garbage
        assert writer.find(POST, "before") == post_record(0, 0)
        assert writer.find(POST, "blocked") is None
        assert writer.export_car()
    assert snapshot_state(repo) == before


def test_writer_waits_for_the_lock_then_commits(locked_repo):
    path, repo, release = locked_repo
    before = snapshot_state(repo)
    with Repo.open(path, busy_timeout=0.3) as impatient, Repo.open(path, busy_timeout=20) as patient:
        with pytest.raises(RepoBusy):
            impatient.put(POST, "first", post_record(1, 1))
        timer = threading.Timer(0.8, release.set)
        timer.start()
        started = time.monotonic()
        with patient.batch() as b:
            b.put(POST, "waited", post_record(3, 3))
        waited = time.monotonic() - started
        timer.join()
        assert 0.6 <= waited < 20, f"the patient writer committed after {waited:.2f} s"
        assert b.commit == patient.head and patient.rev > before[1]
        # the handle that got RepoBusy is still usable, and builds on the new HEAD
        impatient.put(POST, "first", post_record(1, 1))
    state = {k.encode(): v for k, v in before[3]}
    state[f"{POST}/waited".encode()] = record_cid(post_record(3, 3))
    state[f"{POST}/first".encode()] = record_cid(post_record(1, 1))
    check_final(repo, state)


# -- 4. threads in one process ------------------------------------------------------------------

THREADS = 8
THREAD_PUTS = 12
THREAD_BATCH_EVERY = 4


def run_threads(body, count: int = THREADS) -> list[BaseException]:
    """Run ``body(t, barrier)`` in ``count`` threads at once; the exceptions they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(t: int) -> None:
        try:
            body(t, barrier)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(count)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings per run
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads), "threads did not finish"
    return errors


def thread_writes(repo: Repo, t: int, rng: random.Random, reports: list[dict], *, own_handle: bool) -> None:
    """Thread ``t``'s writes (its own keys), each followed by reads that must see it."""
    mine: set[str] = set()
    for kind, ops in writer_plan(100 + t, THREAD_PUTS, THREAD_BATCH_EVERY):
        report = worker.perform(repo, 100 + t, kind, ops, own_handle=own_handle)
        reports.append(report)
        done = report["ops"]
        for key, value in done:
            (mine.add if value else mine.discard)(key)
        # own writes are visible at once, whatever the other threads did meanwhile
        key, value = done[-1]
        collection, rkey = key.split("/", 1)
        assert repo.find_cid(collection, rkey) == (None if value is None else CID.decode(value))
        listed = {f"{POST}/{rkey}" for rkey, _ in repo.list(POST)} | {f"{LIKE}/{rkey}" for rkey, _ in repo.list(LIKE)}
        assert mine <= listed
        assert set(repo.collections()) <= {POST, LIKE}
        other = post_rkey(100 + rng.randrange(THREADS), rng.randrange(THREAD_PUTS))
        found = repo.find(POST, other)
        assert found is None or found["$type"] == POST
        tree = repo.checkout()
        assert mine <= {k for k, _ in tree}
        assert len(repo.list(POST, limit=3)) <= 3


def thread_plans() -> dict[int, list]:
    return {t: writer_plan(100 + t, THREAD_PUTS, THREAD_BATCH_EVERY) for t in range(THREADS)}


def test_threads_sharing_one_handle(repo_path):
    _path, repo = repo_path
    reports: list[dict] = []

    def body(t: int, barrier: threading.Barrier) -> None:
        rng = random.Random(t)
        barrier.wait()
        thread_writes(repo, t, rng, reports, own_handle=False)

    errors = run_threads(body)
    assert not errors, errors
    state = check_history(repo, reports)
    assert state == expected_state(thread_plans())
    check_final(repo, state)


def test_threads_with_one_handle_each(repo_path):
    path, repo = repo_path
    reports: list[dict] = []

    def body(t: int, barrier: threading.Barrier) -> None:
        rng = random.Random(t)
        with Repo.open(path, busy_timeout=30) as own:
            barrier.wait()
            thread_writes(own, t, rng, reports, own_handle=True)

    errors = run_threads(body)
    assert not [e for e in errors if not isinstance(e, AssertionError)], errors
    state = check_history(repo, reports)
    # a thread noticing that one of its own writes vanished is a symptom of a lost update
    assert not errors, errors
    assert state == expected_state(thread_plans())
    check_final(repo, state)


# -- 5. a handle that was idle while another process wrote ----------------------------------------


def test_idle_handles_see_other_process_commits(repo_path, tmp_path):
    path, repo = repo_path
    handles = {name: Repo.open(path) for name in ("head", "find", "list", "checkout", "car", "put")}
    try:
        for handle in handles.values():  # every handle has loaded HEAD and its tree
            assert len(handle.checkout()) == 0 and handle.head == repo.head
        report = tmp_path / "writer.json"
        join_all([start(worker.run_writer, str(path), 5, 6, 3, None, str(report))])
        writes = no_error(result(report))["writes"]
        last = CID.decode(writes[-1]["commit"])
        expected = expected_state({5: writer_plan(5, 6, 3)})

        assert handles["head"].head == last
        assert handles["head"].commit().data == root_of(expected)
        assert handles["find"].find(POST, post_rkey(5, 4)) == post_record(5, 4)
        assert handles["list"].list(LIKE) == [
            (k.decode().split("/")[1], v) for k, v in sorted(expected.items()) if k.startswith(LIKE.encode())
        ]
        assert handles["checkout"].checkout().root == root_of(expected)
        car = handles["car"].export_car()
        with StreamedCar(car, DEFAULT_LIMITS) as streamed:
            assert streamed.root == last

        # the idle handle's next write builds on the other process's HEAD
        cid = handles["put"].put(POST, "after-idle", post_record(9, 9))
        writes.append({"ops": [[f"{POST}/after-idle", cid.encode()]], "commit": handles["put"].head.encode()})
        expected[f"{POST}/after-idle".encode()] = cid
        state = check_history(repo, writes)
        assert state == expected
        check_final(repo, state)
        for handle in handles.values():
            assert handle.head == repo.head
    finally:
        for handle in handles.values():
            handle.close()


# -- regressions -------------------------------------------------------------------------------


def test_commit_landing_right_after_ours_is_not_lost(repo_path, tmp_path, monkeypatch):
    path, repo = repo_path
    report = tmp_path / "writer.json"
    with Repo.open(path) as ours:
        original = repo_writer.adopt
        others: list[dict] = []

        def committed_then_descheduled(state, built):
            # Our COMMIT is done; before we get to read data_version, the OS runs
            # another process, which commits (as it may under any scheduler).
            original(state, built)
            if not others:
                join_all([start(worker.run_writer, str(path), 6, 2, 0, None, str(report))])
                others.extend(no_error(result(report))["writes"])

        monkeypatch.setattr(repo_writer, "adopt", committed_then_descheduled)
        first = ours.put(POST, "ours-1", post_record(1, 1))
        second = ours.put(POST, "ours-2", post_record(1, 2))
    writes = [*others, {"ops": [[f"{POST}/ours-1", first.encode()]]}, {"ops": [[f"{POST}/ours-2", second.encode()]]}]
    expected = expected_state({6: writer_plan(6, 2, 0)})
    expected[f"{POST}/ours-1".encode()] = first
    expected[f"{POST}/ours-2".encode()] = second
    assert repo.find(POST, post_rkey(6, 1)) == post_record(6, 1), "the other process's commit was lost"
    state = check_history(repo, writes)
    assert state == expected
    check_final(repo, state)


def test_open_races_with_last_close(tmp_path):
    path = tmp_path / "repo"
    Repo.create(path, DID).close()  # no connection stays open: every close may be the last
    openers = 3
    barrier = SPAWN.Barrier(openers)
    reports = [tmp_path / f"opener{i}.json" for i in range(openers)]
    join_all([start(worker.run_opener, str(path), 2.0, barrier, str(report)) for report in reports])
    for report in reports:
        assert no_error(result(report))["opens"] > 0


def test_blockstore_reads_while_other_threads_write_on_one_handle(repo_path):
    path, repo = repo_path
    cids = [repo.put(POST, f"seed{i}", post_record(0, i)) for i in range(20)]
    stop = threading.Event()

    def body(t: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        deadline = time.monotonic() + 4.0
        try:
            i = 0
            while not stop.is_set() and time.monotonic() < deadline:
                if t == 0:
                    for cid in cids:
                        assert repo.blockstore.get(cid) is not None and cid in repo.blockstore
                else:
                    repo.put(POST, f"t{t}-{i}", post_record(t, i))
                i += 1
        except BaseException:
            stop.set()
            raise

    errors = run_threads(body, 3)
    assert not errors, [f"{type(e).__module__}.{type(e).__name__}: {e}" for e in errors]
    # the shared handle must not be left holding the write lock
    with Repo.open(path, busy_timeout=1.0) as other:
        other.put(POST, "after", post_record(9, 9))
