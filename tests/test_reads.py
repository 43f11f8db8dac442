"""Reads at HEAD and at any other commit (``commit=``), and ``Repo.records``: lazy, in key order, one commit."""

from __future__ import annotations

import tracemalloc

import pytest

from pypds import (
    CID,
    InvalidCid,
    InvalidRepoPath,
    MissingBlock,
    Repo,
    RepoClosed,
    cid_for_cbor,
)
from pypds.codec import cbor
from pypds.repo.reads import RECORDS_PAGE

from .conftest import DID, POST, post

LIKE = "app.bsky.feed.like"
FOLLOW = "app.bsky.graph.follow"


@pytest.fixture
def history(tmp_path):
    """A repository with four commits of puts, updates and deletes over three collections; the commits."""
    with Repo.create(tmp_path / "repo", DID) as repo:
        commits = []
        with repo.batch() as batch:
            for i in range(120):
                batch.put(POST, f"p{i:04d}", post(i))
            for i in range(30):
                batch.put(LIKE, f"l{i:03d}", {"$type": LIKE, "n": i})
        commits.append(repo.head)
        with repo.batch() as batch:
            for i in range(0, 120, 7):
                batch.put(POST, f"p{i:04d}", post(i, "edited"))
            for i in range(0, 30, 3):
                batch.delete(LIKE, f"l{i:03d}")
        commits.append(repo.head)
        repo.set_ref("middle", repo.head)
        with repo.batch() as batch:
            for i in range(30):
                if i % 3:
                    batch.delete(LIKE, f"l{i:03d}")
            batch.put(FOLLOW, "f1", {"$type": FOLLOW, "subject": DID})
        commits.append(repo.head)
        repo.put(POST, "p9999", post(9999))
        commits.append(repo.head)
        yield repo, commits


def _copy_at(repo: Repo, commit: CID, tmp_path, name: str) -> Repo:
    """An independent reading of a commit: its CAR imported into a fresh repository, read at its HEAD."""
    return Repo.from_car(tmp_path / name, repo.export_car(commit=commit))


def test_reads_at_a_commit_equal_reads_of_that_commit_as_head(history, tmp_path):
    repo, commits = history
    for number, commit in enumerate(commits):
        with _copy_at(repo, commit, tmp_path, f"copy{number}") as copy:
            assert repo.collections(commit=commit) == copy.collections()
            for collection, cursor in ((POST, "p0050"), (LIKE, "l010"), (FOLLOW, "f0")):
                for kwargs in ({}, {"reverse": True}, {"limit": 5}, {"cursor": cursor}):
                    assert repo.list(collection, commit=commit, **kwargs) == copy.list(collection, **kwargs)
                for kwargs in ({"cursor": cursor, "reverse": True}, {"cursor": cursor, "limit": 3}):
                    assert repo.list(collection, commit=commit, **kwargs) == copy.list(collection, **kwargs)
            for path, cid in copy.checkout().items():
                collection, rkey = path.split("/")
                assert repo.find_cid(collection, rkey, commit=commit) == cid
                assert repo.find_bytes(collection, rkey, commit=commit) == copy.find_bytes(collection, rkey)
                assert repo.find(collection, rkey, commit=commit) == copy.find(collection, rkey)
            assert list(repo.records(commit=commit)) == list(copy.records())
            assert repo.find(LIKE, "nope", commit=commit) is None and repo.find_cid(LIKE, "nope", commit=commit) is None


def test_reads_at_head_by_every_name_agree_with_the_paths_index(history):
    repo, _commits = history
    for name in (repo.head, repo.head.encode(), "HEAD"):
        assert repo.collections(commit=name) == repo.collections()
        assert repo.list(POST, commit=name, reverse=True, limit=9) == repo.list(POST, reverse=True, limit=9)
        assert repo.find(POST, "p0007", commit=name) == repo.find(POST, "p0007")
        assert list(repo.records(LIKE, commit=name)) == list(repo.records(LIKE))


def test_a_ref_name_reads_the_commit_it_points_to(history):
    repo, commits = history
    assert repo.find(POST, "p0007", commit="middle") == post(7, "edited")
    assert repo.find(FOLLOW, "f1", commit="middle") is None and repo.find(FOLLOW, "f1") is not None
    assert list(repo.records(commit="middle")) == list(repo.records(commit=commits[1]))
    assert list(repo.checkout("middle").items()) == list(repo.checkout(commits[1]).items())
    assert repo.export_car(commit="middle") == repo.export_car(commit=commits[1])


def test_reads_at_an_unknown_commit_fail_with_typed_errors(history):
    repo, _commits = history
    absent = cid_for_cbor(b"\xa0")
    with pytest.raises(MissingBlock):
        repo.find(POST, "p0001", commit=absent)
    with pytest.raises(InvalidCid):
        repo.list(POST, commit="no-such-ref")
    with pytest.raises(MissingBlock):
        repo.records(commit=absent)  # raised when called, not when consumed


def test_records_yield_path_cid_and_value_in_key_order(history):
    repo, _commits = history
    records = list(repo.records())
    assert [path for path, _cid, _value in records] == [path for path, _cid in repo.checkout().items()]
    for path, cid, value in records:
        collection, rkey = path.split("/")
        assert cid == repo.find_cid(collection, rkey) and value == repo.find(collection, rkey)
        assert cid_for_cbor(cbor.encode(value)) == cid
    assert [path for path, _c, _v in repo.records(LIKE)] == [f"{LIKE}/{rkey}" for rkey, _c in repo.list(LIKE)]
    assert list(repo.records("com.example.nothing")) == []
    with pytest.raises(InvalidRepoPath):
        repo.records("not..an.nsid")


PAGES = 6


@pytest.fixture
def big(tmp_path):
    """A repository with six pages of records, each about 1 KB."""
    with Repo.create(tmp_path / "big", DID) as repo:
        with repo.batch() as batch:
            for i in range(PAGES * RECORDS_PAGE + 17):
                batch.put(POST, f"r{i:05d}", post(i, f"{i:05d} " + "x" * 1000))
        yield repo


def test_records_pin_the_commit_while_writes_go_on_between_pages(big, tmp_path):
    expected = list(big.records())
    pinned = big.head
    stream = big.records()
    seen = [next(stream) for _ in range(RECORDS_PAGE + 3)]
    big.delete(POST, "r01500")  # on this handle: the handle stays usable between pages
    big.put(POST, "r00001", post(1, "changed after the records were pinned"))
    with Repo.open(big.path) as other:  # and by another handle
        other.put(POST, "zzz", post(5))
    seen += list(stream)
    assert seen == expected
    assert list(big.records(commit=pinned)) == expected
    assert big.find(POST, "r00001")["text"].startswith("changed")


def test_records_do_not_hold_the_repository_in_memory(big):
    total = sum(len(data) for data in map(big.blockstore.get, (cid for _rkey, cid in big.list(POST))) if data)
    assert total > 3_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in big.records())
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == PAGES * RECORDS_PAGE + 17
    assert peak < 2 * total / PAGES, f"peak {peak} bytes for {total} bytes of records"


def test_records_of_a_closed_handle_stop_with_repo_closed(big):
    stream = big.records()
    next(stream)
    big.close()
    with pytest.raises(RepoClosed):
        list(stream)


def test_records_name_a_missing_record_block(big):
    cid = big.find_cid(POST, "r00002")
    big._state.store.conn.execute("DELETE FROM blocks WHERE cid = ?", (cid.cid_bytes,))
    with pytest.raises(MissingBlock, match="r00002"):
        list(big.records())
    with pytest.raises(MissingBlock, match="r00002"):
        list(big.records(commit=big.head.encode()))
