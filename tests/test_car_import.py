"""Streaming import: memory bounded by the tree walk, not by the CAR, in any block order."""

from __future__ import annotations

import hashlib
import os
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from pypds import CID, CarReader, CarWriter, LimitExceeded, Limits, PartialTree, Repo, verify_car
from pypds.car.stream import StreamedCar

from .conftest import DID, POST, post

PAD_BLOCK = 3 << 19  # 1.5 MiB: under the 2 MiB section limit
PAD_BYTES = 48 << 20
SMALL_SPILL = Limits(max_spill_memory_bytes=4 << 20)
PEAK = 20 << 20  # far below the padding


def _padding() -> list[tuple[CID, bytes]]:
    blocks = []
    for _ in range(PAD_BYTES // PAD_BLOCK):
        data = os.urandom(PAD_BLOCK)
        blocks.append((CID(b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()), data))
    return blocks


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "repo"
    with Repo.create(path, DID) as repo:
        with repo.batch() as batch:
            for i in range(200):
                batch.put(POST, f"k{i:04d}", post(i))
        car = repo.export_car()
        head = repo.head
    with CarReader(car) as reader:
        blocks = list(reader)
    return head, car, blocks


def _write(path: Path, root: CID, blocks: list[tuple[CID, bytes]]) -> Path:
    with open(path, "wb") as stream:
        writer = CarWriter(stream, [root])
        for cid, data in blocks:
            writer.write_block(cid, data)
    return path


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _spill_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("pypds-spill-")}


@pytest.mark.parametrize("where", ["after", "before", "interleaved"])
def test_unreached_padding_is_never_held_nor_stored(source, tmp_path, where):
    head, car, blocks = source
    padding = _padding()
    if where == "after":
        order = blocks + padding
    elif where == "before":
        order = padding + blocks
    else:
        order = [b for pair in zip(blocks, padding, strict=False) for b in pair] + blocks[len(padding) :]
    path = _write(tmp_path / "padded.car", head, order)
    spills = _spill_dirs()

    repo, peak = _peak(lambda: Repo.from_car(tmp_path / "copy", path, limits=SMALL_SPILL, durability="normal"))
    with repo:
        assert peak < PEAK, peak
        assert repo.head == head
        assert len(repo.blockstore) == len(blocks)
        assert repo.export_car() == car
    assert os.path.getsize(path) > PAD_BYTES

    report, peak = _peak(lambda: verify_car(path, did=DID, limits=SMALL_SPILL))
    assert report.ok and report.blocks == len(order)
    assert peak < PEAK, peak
    assert _spill_dirs() == spills  # temporary spill files are removed


def test_a_car_in_reverse_order_spills_to_disk_and_imports_the_same(source, tmp_path):
    head, car, blocks = source
    path = _write(tmp_path / "reversed.car", head, blocks[::-1])
    tiny = Limits(max_spill_memory_bytes=1 << 10)
    with StreamedCar(path, tiny) as streamed:
        commit = streamed.commit()
        assert streamed.spilled_to_disk  # the commit came last: everything before it waited on disk
        stored = [step for step in streamed.tree_blocks(commit) if step.data is not None]
        streamed.finish()
    assert {step.cid for step in stored} == {cid for cid, _ in blocks}
    with Repo.from_car(tmp_path / "copy", path, limits=tiny) as repo:
        assert repo.export_car() == car


def test_a_missing_record_found_after_spilling_is_a_partial_tree_and_leaves_nothing(source, tmp_path):
    head, _car, blocks = source
    record = blocks[-1][0]  # stream order: the last block is a record
    path = _write(tmp_path / "holed.car", head, [b for b in blocks if b[0] != record][::-1])
    spills = _spill_dirs()
    with pytest.raises(PartialTree, match=record.encode()):
        Repo.from_car(tmp_path / "copy", path, limits=Limits(max_spill_memory_bytes=1 << 10))
    assert not (tmp_path / "copy").exists()
    assert _spill_dirs() == spills


def test_import_bytes_cap_counts_every_section_read(source, tmp_path):
    head, _car, blocks = source
    path = _write(tmp_path / "padded.car", head, blocks + _padding()[:4])
    total = sum(len(data) for _cid, data in blocks)
    with pytest.raises(LimitExceeded, match="max_import_bytes"):
        Repo.from_car(tmp_path / "copy", path, limits=Limits(max_import_bytes=total + PAD_BLOCK))
    assert not (tmp_path / "copy").exists()


# -- one record under several keys: the walk asks for it again, and the importer says it has it --

SHARED = {"$type": POST, "text": "the same record under several keys", "createdAt": "2024-01-01T00:00:00Z"}
SHARED_KEYS = ["k0003", "k0050", "k0120", "k0199"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A repository where one record block sits under four keys far apart, and its CAR."""
    path = tmp_path_factory.mktemp("shared") / "repo"
    with Repo.create(path, DID) as repo:
        with repo.batch() as batch:
            for i in range(200):
                key = f"k{i:04d}"
                batch.put(POST, key, SHARED if key in SHARED_KEYS else post(i))
        car = repo.export_car()
        records = list(repo.records())
        head = repo.head
    with CarReader(car) as reader:
        blocks = list(reader)
    assert len({cid for key, cid, _ in records if key.split("/")[1] in SHARED_KEYS}) == 1
    return head, car, blocks, records


def _imports_the_same(repo: Repo, head: CID, records: list) -> None:
    assert repo.head == head
    assert list(repo.records()) == records
    assert repo.verify().ok


@pytest.mark.parametrize("batch_bytes", [32 << 20, 1], ids=["record-waiting-in-the-batch", "record-stored-already"])
def test_a_record_under_several_keys_imports_without_reading_ahead(shared, tmp_path, monkeypatch, batch_bytes):
    head, car, _blocks, records = shared
    monkeypatch.setattr("pypds.repo.importer.IMPORT_BATCH_BYTES", batch_bytes)
    asked: list[bool] = []
    original = StreamedCar.get

    def counting_get(self, cid, held=None):
        data = original(self, cid, held)
        asked.append(data is None)
        return data

    monkeypatch.setattr(StreamedCar, "get", counting_get)
    with Repo.from_car(tmp_path / "copy", car) as copy:
        _imports_the_same(copy, head, records)
        # three repeats of the record, each answered by the importer after one block of look-ahead
        assert asked.count(True) == len(SHARED_KEYS) - 1
        assert copy.blockstore.get(records[3][1]) is not None


def test_a_record_under_several_keys_in_a_reversed_car(shared, tmp_path):
    head, _car, blocks, records = shared
    path = _write(tmp_path / "reversed.car", head, [blocks[0], *reversed(blocks[1:])])
    with Repo.from_car(tmp_path / "copy", path, limits=SMALL_SPILL) as copy:
        _imports_the_same(copy, head, records)
    assert verify_car(path.read_bytes()).ok


def test_a_record_under_several_keys_into_an_existing_repository_and_as_a_diff(shared, tmp_path):
    head, car, _blocks, records = shared
    with Repo.create(tmp_path / "existing", DID) as existing:
        existing.put(POST, "other", post(999))
        existing.import_car(car)
        _imports_the_same(existing, head, records)
    with Repo.open(tmp_path / "existing", rotate_key=True) as existing:  # HEAD is the source's, signed by its key
        existing.put(POST, "a", SHARED | {"text": "new, twice"})
        existing.put(POST, "z", SHARED | {"text": "new, twice"})
        diff = existing.export_car(since=existing.commit(head).rev)
        new_head = existing.head
        expected = list(existing.records())
    with Repo.from_car(tmp_path / "follower", car) as follower:
        follower.apply_car(diff)
        assert follower.head == new_head
        assert list(follower.records()) == expected


def test_a_record_missing_from_the_car_is_still_a_partial_tree(shared, tmp_path):
    head, _car, blocks, records = shared
    shared_cid = records[3][1]
    path = _write(tmp_path / "lacking.car", head, [b for b in blocks if b[0] != shared_cid])
    with pytest.raises(PartialTree, match=shared_cid.encode()):
        Repo.from_car(tmp_path / "copy", path)
    assert not (tmp_path / "copy").exists()
