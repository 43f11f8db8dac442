"""Garbage collection, blob references and missing blobs."""

from __future__ import annotations

import os
import time

import pytest

from pypds import cid_for_cbor, cid_for_raw
from pypds.storage.blobs import blob_refs
from pypds.storage.store import Store

from .conftest import POST, post


def _age(repo, cid, seconds=7200):
    path = repo.path / "blobs" / cid.encode()[:2] / cid.encode()
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_blob_refs_finds_typed_and_legacy_references():
    typed = cid_for_raw(b"a")
    legacy = cid_for_raw(b"b")
    record = {
        "$type": POST,
        "embed": {"images": [{"image": {"$type": "blob", "ref": typed, "mimeType": "image/png", "size": 1}}]},
        "old": {"cid": legacy.encode(), "mimeType": "image/jpeg"},
        "again": {"$type": "blob", "ref": typed, "mimeType": "image/png", "size": 1},
        "not-a-blob": {"cid": "nonsense", "mimeType": "x"},
    }
    assert blob_refs(record) == [typed, legacy]


def test_missing_blobs_lists_referenced_blobs_not_stored(repo):
    stored = repo.put_blob(b"here", "text/plain")
    absent = cid_for_raw(b"not here")
    repo.put(POST, "a", {"$type": POST, "b": stored.to_record()})
    repo.put(POST, "b", {"$type": POST, "b": {"$type": "blob", "ref": absent, "mimeType": "x/y", "size": 8}})
    assert repo.missing_blobs() == [absent]


def test_gc_keeps_head_and_refs_and_removes_the_rest(repo):
    with repo.batch() as batch:
        for i in range(100):
            batch.put(POST, f"r{i:03d}", post(i))
    pinned = repo.head
    repo.set_ref("pinned", pinned)
    for i in range(20):
        repo.put(POST, f"r{i:03d}", post(1000 + i))  # old versions stay reachable only through the ref
    abandoned = repo.head
    repo.set_head(pinned)
    repo.put(POST, "after", post(5000))  # HEAD moves on; `abandoned` is now unreachable
    loose = repo.blockstore.put(b"\xa1ax\x01")
    head_car, pinned_car = repo.export_car(), repo.export_car(commit=pinned)
    blocks_before = len(repo.blockstore)

    report = repo.gc()

    assert report.blocks > 20 and report.block_bytes > 0
    assert len(repo.blockstore) == blocks_before - report.blocks
    assert repo.export_car() == head_car and repo.export_car(commit=pinned) == pinned_car
    assert repo.verify().ok
    assert not repo.blockstore.has(abandoned) and not repo.blockstore.has(loose)
    assert repo.gc().blocks == 0  # nothing left to collect
    repo.put(POST, "later", post(6000))  # still writable


def test_gc_removes_only_old_unreferenced_blobs(repo):
    used = repo.put_blob(b"used", "text/plain")
    old = repo.put_blob(b"old and unused", "text/plain")
    young = repo.put_blob(b"young and unused", "text/plain")
    repo.put(POST, "a", {"$type": POST, "b": used.to_record()})
    for ref in (used, old):
        _age(repo, ref.cid)
    report = repo.gc()
    assert (report.blobs, report.blob_bytes) == (1, len(b"old and unused"))
    assert repo.blob(used.cid) == b"used" and repo.blob(old.cid) is None
    assert repo.blob(young.cid) == b"young and unused"


def test_failed_gc_removes_nothing(repo, monkeypatch):
    repo.put(POST, "a", post(1))
    first = repo.head
    repo.put(POST, "a", post(2))
    repo.set_head(first)
    repo.put(POST, "b", post(3))
    before = len(repo.blockstore)
    real = Store.delete_blocks_except

    def fail_after_delete(self, keep):
        real(self, keep)
        raise OSError("disk went away")

    monkeypatch.setattr(Store, "delete_blocks_except", fail_after_delete)
    with pytest.raises(OSError):
        repo.gc()
    assert len(repo.blockstore) == before
    assert repo.verify().ok


def test_gc_removes_superseded_commits_then_nothing_more(repo):
    first = repo.head  # the initial commit over the empty tree
    repo.put(POST, "a", post(1))
    car = repo.export_car()
    report = repo.gc()
    assert report.blocks == 2  # the initial commit and the empty root node
    assert not repo.blockstore.has(first)
    assert tuple(repo.gc()) == (0, 0, 0, 0)
    assert repo.export_car() == car
    assert repo.blockstore.has(cid_for_cbor(repo.find_bytes(POST, "a")))


def test_list_blobs_since_a_rev_lists_only_newly_referenced_blobs(repo):
    old = repo.put_blob(b"old image", "image/png")
    repo.put(POST, "a", {"$type": POST, "img": old.to_record()})
    since = repo.rev
    new = repo.put_blob(b"new image", "image/png")
    unreferenced = repo.put_blob(b"not referenced", "image/png")
    repo.put(POST, "b", {"$type": POST, "img": new.to_record()})
    assert repo.list_blobs(since=since) == [new.cid]
    assert repo.list_blobs(since=repo.rev) == []
    assert {c.encode() for c in repo.list_blobs()} == {old.cid.encode(), new.cid.encode()}
    assert unreferenced.cid not in repo.list_blobs() and unreferenced.cid in repo.list_blobs(stored=True)
    # a rev before any known commit: everything referenced at HEAD
    assert sorted(c.encode() for c in repo.list_blobs(since="2222222222222")) == sorted(
        [old.cid.encode(), new.cid.encode()]
    )
