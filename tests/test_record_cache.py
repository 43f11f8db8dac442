"""The read cache behind Repo.find: bounded, and never serves a record HEAD no longer holds."""

from __future__ import annotations

from pypds import Repo
from pypds.record_cache import RecordCache

from .conftest import DID, POST, post


def test_cache_is_bounded_by_bytes_and_drops_the_oldest_first():
    cache = RecordCache(max_bytes=100)
    for i in range(10):
        cache.put(b"p%d" % i, b"cid", bytes(30))
    assert cache.size <= 100 and len(cache) == 3
    assert cache.get(b"p9") == (b"cid", bytes(30)) and cache.get(b"p0") is None
    cache.put(b"p9", b"cid2", bytes(10))  # replacing an entry frees its old size
    assert cache.size == 70 and cache.get(b"p9") == (b"cid2", bytes(10))
    cache.put(b"big", b"cid", bytes(101))  # larger than the whole cache: not kept
    assert cache.get(b"big") is None and cache.size == 70


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
