"""The read cache behind Repo.find: bounded, and never serves a record HEAD no longer holds."""

from __future__ import annotations

from pypds import Repo
from pypds.storage.record_cache import CachedRecord, RecordCache

from .conftest import DID, POST, post


def test_cache_is_bounded_by_bytes_and_drops_the_oldest_first():
    cache = RecordCache(max_bytes=100)
    for i in range(10):
        cache.put(POST, f"k{i}", CachedRecord(b"path", b"cid", bytes(30)))
    assert cache.size <= 100 and len(cache) == 3
    assert cache.get(POST, "k9") == (b"path", b"cid", bytes(30)) and cache.get(POST, "k0") is None
    cache.put(POST, "k9", CachedRecord(b"path", b"cid2", bytes(10)))  # replacing an entry frees its old size
    assert cache.size == 70 and cache.get(POST, "k9").cid == b"cid2"
    cache.put(POST, "big", CachedRecord(b"path", b"cid", bytes(101)))  # larger than the whole cache: not kept
    assert cache.get(POST, "big") is None and cache.size == 70


def test_keys_that_are_not_strings_are_never_cached(repo):
    import pytest

    from pypds import InvalidRepoPath

    assert RecordCache().get(["not", "hashable"], "k") is None
    for bad in (["a"], None, 5):
        with pytest.raises(InvalidRepoPath):
            repo.find(bad, "3kzfcijpj0001")
        with pytest.raises(InvalidRepoPath):
            repo.find(POST, bad)


def test_reads_follow_writes_made_by_another_handle(tmp_path):
    path = tmp_path / "r"
    with Repo.create(path, DID) as writer, Repo.open(path) as reader:
        writer.put(POST, "3kzfcijpj0001", post(1))
        assert reader.find(POST, "3kzfcijpj0001") == post(1)  # now cached in the reader
        writer.put(POST, "3kzfcijpj0001", post(2))
        assert reader.find(POST, "3kzfcijpj0001") == post(2)
        assert reader.find_bytes(POST, "3kzfcijpj0001") == writer.find_bytes(POST, "3kzfcijpj0001")
        writer.delete(POST, "3kzfcijpj0001")
        assert reader.find(POST, "3kzfcijpj0001") is None


def test_reads_follow_head_moving_back(repo):
    repo.put(POST, "3kzfcijpj0001", post(1))
    first = repo.head
    repo.put(POST, "3kzfcijpj0001", post(2))
    assert repo.find(POST, "3kzfcijpj0001") == post(2)
    repo.set_head(first)
    assert repo.find(POST, "3kzfcijpj0001") == post(1)
