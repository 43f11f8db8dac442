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
