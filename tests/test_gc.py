"""Garbage collection, blob references and missing blobs."""

from __future__ import annotations

import os
import time

import pytest

from pypds import DiskFull, Repo, cid_for_cbor, cid_for_raw
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

    def fail_after_delete(self, keep, *, dry_run=False):
        real(self, keep, dry_run=dry_run)
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
    assert tuple(repo.gc())[:4] == (0, 0, 0, 0)
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


# -- dry runs and giving the space back ----------------------------------------------------------


def _garbage(repo, records=400, size=3000):
    """Many records, then every one of them replaced: the first versions become garbage."""
    for version in (1, 2):
        with repo.batch() as batch:
            for i in range(records):
                batch.put(POST, f"r{i:05d}", post(i, f"v{version} {i} " + "x" * size))


def test_dry_run_reports_what_gc_would_remove_and_removes_nothing(repo):
    _garbage(repo, records=50, size=100)
    old = repo.put_blob(b"old and unused", "text/plain")
    _age(repo, old.cid)
    blocks, size = len(repo.blockstore), repo._state.store.file_bytes()
    dry = repo.gc(dry_run=True)
    assert dry.dry_run and dry.blocks > 50 and dry.blobs == 1 and dry.blob_bytes == len(b"old and unused")
    assert dry.db_bytes_before == dry.db_bytes_after == size and not dry.vacuumed
    assert len(repo.blockstore) == blocks and repo.blob(old.cid) is not None
    real = repo.gc()
    assert tuple(real)[:4] == tuple(dry)[:4] and not real.dry_run
    assert repo.blob(old.cid) is None and repo.blob_type(old.cid) is None  # its MIME type goes with it


def test_gc_gives_the_space_back(repo):
    _garbage(repo)
    before = repo._state.store.file_bytes()
    report = repo.gc()
    assert report.block_bytes > 1_000_000 and report.vacuumed
    assert report.db_bytes_before == before
    assert report.db_bytes_after == repo._state.store.file_bytes()
    assert report.db_bytes_after < before - report.block_bytes * 0.8, report
    assert (repo.path / "pds.db").stat().st_size == report.db_bytes_after  # the log was checkpointed away
    assert repo._state.store.free_bytes() == 0
    assert repo.verify().ok
    repo.put(POST, "after", post(1))


def test_gc_without_vacuum_keeps_the_file_and_a_later_gc_vacuums(repo):
    _garbage(repo)
    kept = repo.gc(vacuum=False)
    assert not kept.vacuumed and kept.db_bytes_after > kept.db_bytes_before * 0.9
    assert repo._state.store.free_bytes() > 1_000_000
    later = repo.gc()  # nothing to remove, but a tenth of the file is free pages
    assert later.blocks == 0 and later.vacuumed
    assert later.db_bytes_after < kept.db_bytes_after - kept.block_bytes * 0.8


def test_gc_vacuums_only_when_it_is_worth_it(repo):
    _garbage(repo, records=40, size=50)
    repo.gc()
    repo.put(POST, "r00001", post(1, "one small change"))
    small = repo.gc()
    assert small.blocks > 0 and not small.vacuumed
    assert repo.gc(vacuum=True).vacuumed


def test_vacuum_waits_for_no_reader_and_readers_see_the_same_records(repo):
    _garbage(repo)
    with Repo.open(repo.path) as reader:
        expected = list(reader.records())
        stream = reader.records()
        first = [next(stream) for _ in range(10)]
        report = repo.gc()  # a reader in the middle of a listing does not stop gc
        assert report.vacuumed
        assert first + list(stream) == expected
        assert list(reader.records()) == expected
    repo.gc(vacuum=True)
    assert (repo.path / "pds.db").stat().st_size == repo._state.store.file_bytes()


def test_a_failed_vacuum_says_the_blocks_are_gone(repo, monkeypatch):
    import apsw

    _garbage(repo, records=100, size=1000)

    def full(self):
        raise apsw.FullError("database or disk is full")

    monkeypatch.setattr(Store, "vacuum", full)
    with pytest.raises(DiskFull, match="run gc again to give their space back"):
        repo.gc(vacuum=True)
    assert repo.verify().ok
    monkeypatch.undo()
    assert repo.gc().blocks == 0


def test_writers_go_on_while_gc_vacuums(repo):
    import threading

    _garbage(repo, records=300, size=1000)
    written, errors = [], []

    def writer():
        try:
            with Repo.open(repo.path, busy_timeout=30) as other:
                for i in range(40):
                    other.put(POST, f"w{i:03d}", post(i, f"written during gc {i}"))
                    written.append(other.head)
        except Exception as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    reports = [repo.gc(vacuum=True) for _ in range(3)]
    thread.join()
    assert not errors and all(report.vacuumed for report in reports)
    assert [rkey for rkey, _cid in repo.list(POST, cursor="v")] == [f"w{i:03d}" for i in range(40)]
    assert repo.head == written[-1] and repo.verify().ok
