"""Group commit: concurrent writes through one handle share a transaction, each still its own commit."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import apsw
import pytest

from pypds import RecordNotFound, Repo, StorageError, verify_commit_message
from pypds.storage.store import Store

from .conftest import DID, POST, post


def _chain(repo: Repo) -> list:
    """Commits from HEAD back to the first, through the commits table."""
    store = repo._state.store
    chain, cid = [], repo.head
    while cid is not None:
        chain.append(cid)
        history = store.commit_history(cid)
        cid = None if history is None else history[1]
    return chain[::-1]


@contextmanager
def _counting_transactions(monkeypatch):
    count = [0]
    original = Store.transaction

    @contextmanager
    def counted(self):
        count[0] += 1
        with original(self):
            yield

    monkeypatch.setattr(Store, "transaction", counted)
    yield count


def _queued_then_released(repo: Repo, calls: list, timeout: float = 10.0) -> list:
    """Run ``calls`` in threads while a (pretend) group is being written, so they all queue; then let
    them go: one leads the whole queue. Returns each call's result or exception."""
    results: list = [None] * len(calls)

    def run(index: int, call) -> None:
        try:
            results[index] = call()
        except Exception as exc:  # the test inspects it
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    queue = repo._state.commits
    with queue._cond:
        queue._leading = True  # as if a group were being written: every write waits in the queue
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    while len(queue) < len(calls):
        assert time.monotonic() < deadline, "the writes did not queue"
        time.sleep(0.005)
    queue.done_leading()  # the next leader takes them all
    for thread in threads:
        thread.join(timeout)
    return results


def test_queued_writes_become_one_transaction_of_chained_commits(repo, monkeypatch):
    first = repo.head
    with _counting_transactions(monkeypatch) as transactions:
        calls = [lambda i=i: repo.put(POST, f"k{i:02d}", post(i)) for i in range(8)]
        results = _queued_then_released(repo, calls)
    assert transactions[0] == 1
    assert all(not isinstance(result, Exception) for result in results)
    chain = _chain(repo)
    assert chain[0] == first and len(chain) == 9  # each write its own commit, one after another
    revs = [repo.commit(cid).rev for cid in chain]
    assert revs == sorted(revs) and len(set(revs)) == 9
    for cid in chain:
        repo.commit(cid).verify(repo.signing_key.public_key)
    assert [rkey for rkey, _cid in repo.list(POST)] == [f"k{i:02d}" for i in range(8)]
    assert repo.verify().ok
    # each commit's event describes exactly its own write
    for cid in chain[1:]:
        event = repo.commit_event(cid)
        assert len(event["ops"]) == 1
        verify_commit_message(event, key=repo.did_key)


def test_a_failing_write_fails_its_own_call_alone(repo, monkeypatch):
    with _counting_transactions(monkeypatch) as transactions:
        calls = [
            lambda: repo.put(POST, "a", post(1)),
            lambda: repo.delete(POST, "absent"),
            lambda: repo.put(POST, "b", post(2)),
        ]
        results = _queued_then_released(repo, calls)
    assert transactions[0] == 1
    assert isinstance(results[1], RecordNotFound)
    assert repo.find(POST, "a") == post(1) and repo.find(POST, "b") == post(2)
    assert len(_chain(repo)) == 3  # the empty repo's commit, a, b
    assert repo.verify().ok


def test_when_the_transaction_fails_every_write_in_it_fails_and_nothing_changes(repo, monkeypatch):
    repo.put(POST, "before", post(0))
    head, car = repo.head, repo.export_car()

    def disk_full(self, rows):
        raise apsw.FullError("database or disk is full")

    monkeypatch.setattr(Store, "put_block_rows", disk_full)
    results = _queued_then_released(repo, [lambda i=i: repo.put(POST, f"x{i}", post(i)) for i in range(3)])
    assert all(isinstance(result, StorageError) for result in results), results
    monkeypatch.undo()
    assert repo.head == head and repo.export_car() == car
    repo.put(POST, "after", post(9))  # the handle goes on
    assert repo.verify().ok


@pytest.mark.parametrize("threads", [8])
def test_concurrent_writers_on_one_handle_lose_nothing(tmp_path, threads):
    per_thread = 25
    with Repo.create(tmp_path / "repo", DID, durability="normal") as repo:
        errors: list = []

        def writer(t: int) -> None:
            try:
                for i in range(per_thread):
                    if i % 5 == 4:
                        with repo.batch() as batch:
                            batch.put(POST, f"t{t}-b{i}", post(i))
                            batch.delete(POST, f"t{t}-{i - 1:03d}")
                    else:
                        repo.put(POST, f"t{t}-{i:03d}", post(i))
            except Exception as exc:
                errors.append(exc)

        pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert not errors
        chain = _chain(repo)
        assert len(chain) == 1 + threads * per_thread
        revs = [repo.commit(cid).rev for cid in chain]
        assert revs == sorted(revs)
        expected = {f"t{t}-{i:03d}" for t in range(threads) for i in range(per_thread) if i % 5 not in (3, 4)}
        expected |= {f"t{t}-b{i}" for t in range(threads) for i in range(per_thread) if i % 5 == 4}
        assert {rkey for rkey, _cid in repo.list(POST)} == expected
        assert repo.verify().ok
