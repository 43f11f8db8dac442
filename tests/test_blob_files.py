"""The ``blobs/`` tree (pypds.storage.blobs): a hostile tree cannot make the library read outside the
repository or block, a file changed while streamed is never passed on, and the set of blobs
records reference follows HEAD (issue 11, section 3)."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from pypds import (
    BlockHashMismatch,
    IntegrityError,
    InvalidInput,
    LimitExceeded,
    Repo,
    RepoClosed,
    cid_for_cbor,
    cid_for_raw,
)
from pypds.repo import referenced_blobs as referenced_module
from pypds.storage import blobs as blobs_module
from pypds.storage.blobs import SEGMENT_BYTES, BlobStore

from .conftest import DID, POST, post
from .hostile_blobs import HOSTILE, SECRET, plant

#: What reading each plant raises.
RAISES = {
    "link-outside": IntegrityError,
    "link-to-a-copy": IntegrityError,
    "link-dev-zero": IntegrityError,
    "fifo": IntegrityError,
    "directory": IntegrityError,
    "truncated": BlockHashMismatch,
    "appended": BlockHashMismatch,
    "oversized": LimitExceeded,
    "linked-shard": IntegrityError,
}
NOT_A_FILE = {"link-outside", "link-to-a-copy", "link-dev-zero", "fifo", "directory", "linked-shard"}
DATA = bytes(range(256)) * 4096  # 1 MiB: the segment size


def with_image(i: int, ref) -> dict:
    return {**post(i), "embed": {"images": [{"image": ref.to_record()}]}}


def within(seconds: float, call):
    """``call()``'s result or exception, failing the test if it takes longer than ``seconds`` (a hang)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("value", call()))
        except BaseException as exc:  # reported below
            outcome.append(("error", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still running after {seconds} s: blocked"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


@pytest.fixture
def planted(repo, tmp_path, request):
    """A referenced blob whose file was replaced by the plant named by the test's parameter."""
    ref = repo.put_blob(DATA, "image/png")
    repo.put(POST, "a", with_image(1, ref))
    plant(repo.path / "blobs" / ref.cid.encode()[:2] / ref.cid.encode(), request.param, DATA, tmp_path / "outside")
    return ref.cid


# -- a hostile tree ------------------------------------------------------------------------------


@pytest.mark.parametrize("planted", HOSTILE, indirect=True)
def test_a_hostile_blob_file_raises_at_once_without_reading_outside(repo, planted, request):
    how = request.node.callspec.params["planted"]
    with pytest.raises(RAISES[how]) as caught:
        within(2, lambda: repo.blob(planted))
    assert str(repo.path) in str(caught.value) or planted.encode() in str(caught.value)
    assert SECRET[:20].decode() not in str(caught.value)


@pytest.mark.parametrize("planted", sorted(NOT_A_FILE), indirect=True)
def test_a_blob_that_is_not_a_regular_file_is_neither_stored_nor_listed(repo, planted):
    assert not repo._state.blobs.has(planted)
    assert repo.blob_referenced(planted)
    assert repo.list_blobs() == [] and repo.list_blobs(stored=True) == []


@pytest.mark.parametrize("planted", ["link-outside", "fifo", "link-dev-zero", "truncated"], indirect=True)
def test_storing_the_blob_again_replaces_the_plant_and_leaves_its_target_alone(repo, planted, tmp_path):
    assert within(2, lambda: repo.put_blob(DATA, "image/png")).cid == planted
    assert repo.blob(planted) == DATA and repo.list_blobs() == [planted]
    outside = tmp_path / "outside"
    assert not outside.exists() or outside.read_bytes() == SECRET


def linked_shard(repo: Repo, tmp_path: Path) -> Path:
    """Make ``blobs/ba`` (the shard of every raw CIDv1 string) a link to a directory outside."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo.path / "blobs").mkdir(exist_ok=True)
    (repo.path / "blobs" / "ba").symlink_to(elsewhere)
    return elsewhere


def test_put_blob_does_not_write_through_a_linked_shard_directory(repo, tmp_path):
    elsewhere = linked_shard(repo, tmp_path)
    with pytest.raises(IntegrityError, match="not a directory"):
        repo.put_blob(b"data", "text/plain")
    assert list(elsewhere.iterdir()) == []


def test_gc_does_not_walk_into_a_linked_shard_directory(repo, tmp_path):
    elsewhere = linked_shard(repo, tmp_path)
    victim = cid_for_raw(b"someone else's file").encode()
    (elsewhere / victim).write_bytes(b"someone else's file")
    os.utime(elsewhere / victim, (0, 0))
    assert repo.gc(blob_grace=0).blobs == 0
    assert (elsewhere / victim).read_bytes() == b"someone else's file"


def test_gc_removes_an_unreferenced_link_not_its_target_and_leaves_directories(repo, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(SECRET)
    shard = repo.path / "blobs" / "ba"
    shard.mkdir(parents=True)
    link, directory = cid_for_raw(b"link").encode(), cid_for_raw(b"dir").encode()
    (shard / link).symlink_to(target)
    (shard / directory).mkdir()
    for name in (link, directory):
        os.utime(shard / name, (0, 0), follow_symlinks=False)
    assert repo.gc(blob_grace=0).blobs == 1
    assert not (shard / link).is_symlink() and target.read_bytes() == SECRET and (shard / directory).is_dir()


def test_a_linked_blobs_directory_is_followed(tmp_path):
    disk = tmp_path / "other-disk"
    disk.mkdir()
    with Repo.create(tmp_path / "r", DID) as repo:
        (repo.path / "blobs").symlink_to(disk)
        ref = repo.put_blob(b"on another disk", "text/plain")
        repo.put(POST, "a", with_image(1, ref))
        assert repo.blob(ref.cid) == b"on another disk" and repo.list_blobs() == [ref.cid]
    assert (disk / ref.cid.encode()[:2] / ref.cid.encode()).exists()


def test_stray_files_in_blobs_are_not_listed(repo):
    ref = repo.put_blob(b"real", "text/plain")
    shard = repo.path / "blobs" / ref.cid.encode()[:2]
    (shard / "notes.txt").write_bytes(b"x")
    (repo.path / "blobs" / "README").write_bytes(b"x")
    (shard / cid_for_cbor(b"\xa0").encode()).write_bytes(b"\xa0")  # a CID, but not a blob's
    (repo.path / "blobs" / "zz").mkdir()
    (repo.path / "blobs" / "zz" / ref.cid.encode()).write_bytes(b"real")  # in the wrong shard
    assert repo.list_blobs(stored=True) == [ref.cid]


# -- streaming a file checked first ---------------------------------------------------------------


def test_a_file_changed_after_its_check_is_never_passed_on(repo):
    data = os.urandom(3 * SEGMENT_BYTES + 5)
    cid = repo.put_blob(data, "application/octet-stream").cid
    store = BlobStore(repo.path / "blobs")
    with store.open(cid) as blob:
        assert list(blob.check())[-1] == len(data)
        with open(blob.path, "r+b") as stream:  # in place: the same file the check read
            stream.seek(2 * SEGMENT_BYTES + 1)
            stream.write(b"changed")
        sent = []
        with pytest.raises(BlockHashMismatch, match="changed while it was read"):
            for segment in blob.segments():
                sent.append(segment)
    assert b"".join(sent) == data[: 2 * SEGMENT_BYTES]


def test_segments_check_first_and_refuse_a_corrupt_file_before_any_segment(repo):
    data = os.urandom(2 * SEGMENT_BYTES)
    cid = repo.put_blob(data, "application/octet-stream").cid
    store = BlobStore(repo.path / "blobs")
    with store.open(cid) as blob:
        assert b"".join(blob.segments()) == data
    path = store.path_for(cid)
    path.write_bytes(data[:-1] + b"!")
    with store.open(cid) as blob:
        segments = blob.segments()
        with pytest.raises(BlockHashMismatch, match="corrupt"):
            next(segments)


def test_a_closed_blob_file_is_not_read(repo):
    cid = repo.put_blob(b"data", "text/plain").cid
    blob = BlobStore(repo.path / "blobs").open(cid)
    blob.close()
    blob.close()
    with pytest.raises(InvalidInput, match="closed"):
        blob.read()


def test_a_blob_over_the_limit_is_not_stored(repo, monkeypatch):
    monkeypatch.setattr(blobs_module, "MAX_BLOB_BYTES", 10)
    with pytest.raises(LimitExceeded, match="max_blob_bytes"):
        repo.put_blob(b"eleven byte", "text/plain")
    assert repo.list_blobs(stored=True) == []


# -- blobs referenced at HEAD -------------------------------------------------------------------------


def test_listed_blobs_follow_the_records_at_head(repo):
    shared, own = repo.put_blob(b"shared", "image/png"), repo.put_blob(b"own", "image/png")
    repo.put(POST, "a", with_image(1, shared))
    repo.put(POST, "b", {**post(2), "embed": {"images": [{"image": shared.to_record()}, {"image": own.to_record()}]}})
    assert set(repo.list_blobs()) == {shared.cid, own.cid}
    repo.put(POST, "b", post(2))  # the update drops both references; "a" still holds `shared`
    assert repo.list_blobs() == [shared.cid]
    assert not repo.blob_referenced(own.cid) and repo.blob(own.cid) == b"own"
    repo.delete(POST, "a")
    assert repo.list_blobs() == [] and not repo.blob_referenced(shared.cid)
    assert set(repo.list_blobs(stored=True)) == {shared.cid, own.cid}


def test_legacy_blob_references_count(repo):
    ref = repo.put_blob(b"old style", "image/jpeg")
    repo.put(POST, "a", {**post(1), "image": {"cid": ref.cid.encode(), "mimeType": "image/jpeg"}})
    assert repo.list_blobs() == [ref.cid]


def test_the_referenced_set_matches_a_fresh_count_after_every_commit(repo):
    rng = random.Random(7)
    refs = [repo.put_blob(b"blob %d" % i, "image/png") for i in range(8)]
    model: dict[str, set] = {}  # record key -> the blobs its record references
    for step in range(40):
        with repo.batch() as batch:
            for rkey in rng.sample([f"r{i}" for i in range(12)], rng.randint(1, 3)):
                if rng.random() < 0.3:
                    if model.pop(rkey, None) is not None:
                        batch.delete(POST, rkey)
                else:
                    chosen = rng.sample(refs, rng.randint(0, 3))
                    model[rkey] = {ref.cid for ref in chosen}
                    batch.put(
                        POST, rkey, {**post(step), "embed": {"images": [{"image": r.to_record()} for r in chosen]}}
                    )
        listed = repo.list_blobs()  # this handle moves its count by each commit's diff
        assert set(listed) == set().union(*model.values())
        with Repo.open(repo.path) as fresh:  # counts every record
            assert fresh.list_blobs() == listed


def test_a_new_head_costs_the_records_changed_not_all_of_them(repo, monkeypatch):
    ref = repo.put_blob(b"image", "image/png")
    with repo.batch() as batch:
        for i in range(300):
            batch.put(POST, f"p{i:03d}", with_image(i, ref) if i % 3 == 0 else post(i))
    reads: list = []
    counted = referenced_module.blob_names_in
    monkeypatch.setattr(referenced_module, "blob_names_in", lambda cid, data: reads.append(cid) or counted(cid, data))
    assert repo.list_blobs() == [ref.cid]
    assert len(reads) == 300
    reads.clear()
    repo.delete(POST, "p000")
    repo.put(POST, "new", post(1))
    assert repo.list_blobs() == [ref.cid] and len(reads) <= 2
    assert repo.list_blobs() == [ref.cid] and len(reads) <= 2  # same HEAD: nothing read


def test_the_referenced_set_is_recounted_when_gc_removed_the_old_tree(repo, tmp_path):
    ref = repo.put_blob(b"image", "image/png")
    repo.put(POST, "a", with_image(1, ref))
    repo.put(POST, "b", with_image(2, ref))
    assert repo.list_blobs() == [ref.cid]  # counted at this HEAD
    with Repo.open(repo.path) as other:
        other.delete(POST, "a")
        other.delete(POST, "b")
        other.gc(blob_grace=3600)  # the tree the count was made at is gone
    assert repo.list_blobs() == [] and not repo.blob_referenced(ref.cid)


def test_a_count_from_the_index_falls_back_to_the_tree_when_head_moves_meanwhile(repo, monkeypatch):
    ref = repo.put_blob(b"image", "image/png")
    repo.put(POST, "a", with_image(1, ref))
    reads: list = []
    counted = referenced_module.blob_names_in

    def commit_elsewhere_first(cid, data):
        if not reads:
            with Repo.open(repo.path) as other:
                other.delete(POST, "a")
        reads.append(cid)
        return counted(cid, data)

    monkeypatch.setattr(referenced_module, "blob_names_in", commit_elsewhere_first)
    assert repo.list_blobs() == [ref.cid]  # the HEAD the call started at, counted by its tree
    assert len(reads) == 2  # once from the index (abandoned), once from the tree
    assert repo.list_blobs() == []  # the new HEAD


def test_counting_does_not_hold_the_handle(repo, monkeypatch):
    ref = repo.put_blob(b"image", "image/png")
    repo.put(POST, "a", with_image(1, ref))
    release = threading.Event()
    counted = referenced_module.blob_names_in

    def slow(cid, data):
        release.wait(5)
        return counted(cid, data)

    monkeypatch.setattr(referenced_module, "blob_names_in", slow)
    counting = threading.Thread(target=repo.list_blobs)
    counting.start()
    time.sleep(0.1)
    try:
        assert within(2, lambda: repo.find(POST, "a")) is not None  # the handle answers meanwhile
    finally:
        release.set()
        counting.join(5)


def test_list_blobs_arguments(repo):
    with pytest.raises(InvalidInput, match="since and stored"):
        repo.list_blobs(since=repo.rev, stored=True)
    with pytest.raises(InvalidInput, match="negative"):
        repo.list_blobs(limit=-1)
    repo.close()
    with pytest.raises(RepoClosed):
        repo.list_blobs()
    with pytest.raises(RepoClosed):
        repo.blob_referenced(cid_for_raw(b"x"))


def test_a_failed_count_is_not_kept(repo, monkeypatch):
    ref = repo.put_blob(b"image", "image/png")
    repo.put(POST, "a", with_image(1, ref))
    counted = referenced_module.blob_names_in

    def failing(cid, data):
        raise OSError("disk error")

    monkeypatch.setattr(referenced_module, "blob_names_in", failing)
    with pytest.raises(OSError):
        repo.list_blobs()
    monkeypatch.setattr(referenced_module, "blob_names_in", counted)
    assert repo.list_blobs() == [ref.cid]


def test_blob_file_names_its_path(tmp_path):
    store = BlobStore(Path(tmp_path / "blobs"))
    cid = store.put(b"x")
    with store.open(cid) as blob:
        assert blob.path == store.path_for(cid) and blob.size == 1 and blob.read() == b"x"
