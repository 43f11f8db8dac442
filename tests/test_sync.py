"""Keeping a copy current: export_car(since=...), apply_car, and the stream-friendly CAR order."""

from __future__ import annotations

import io

import pytest

from pypds import (
    BadSignature,
    CarReader,
    CarWriter,
    DidMismatch,
    MissingBlock,
    Repo,
    RollbackRefused,
    check_car_order,
    generate_signing_key,
)

from .conftest import POST, post

LIKE = "app.bsky.feed.like"


def _write(repo, start, n):
    with repo.batch() as batch:
        for i in range(start, start + n):
            batch.put(POST if i % 3 else LIKE, f"k{i:05d}", post(i))


def test_copy_kept_current_by_diffs_is_byte_identical_to_a_full_import(repo, tmp_path):
    _write(repo, 0, 300)
    with Repo.from_car(tmp_path / "mirror", repo.export_car(), key=repo.did_key) as mirror:
        for round_ in range(5):
            since = mirror.rev
            _write(repo, 1000 + round_ * 40, 40)
            repo.put(POST, f"k{round_:05d}", post(9000 + round_))  # an update
            repo.delete(POST, f"k{100 + round_ * 3:05d}") if round_ % 2 else None
            diff = repo.export_car(since=since)
            assert len(diff) < len(repo.export_car()) / 3
            mirror.apply_car(diff, key=repo.did_key)
            assert mirror.head == repo.head
        assert mirror.export_car() == repo.export_car()
        assert mirror.verify(key=repo.did_key).ok
        with Repo.from_car(tmp_path / "full", repo.export_car()) as full:
            assert full.export_car() == mirror.export_car()


def test_diff_since_the_current_rev_is_only_the_commit(repo):
    _write(repo, 0, 20)
    blocks = list(CarReader(repo.export_car(since=repo.rev)))
    assert [cid for cid, _ in blocks] == [repo.head]


def _mirror(repo, tmp_path):
    return Repo.from_car(tmp_path / "mirror", repo.export_car())


def _state(repo):
    return repo.head, repo.rev, len(repo.blockstore)


def test_apply_refuses_a_commit_that_is_not_newer(repo, tmp_path):
    _write(repo, 0, 20)
    with _mirror(repo, tmp_path) as mirror:
        before = _state(mirror)
        with pytest.raises(RollbackRefused, match="not newer"):
            mirror.apply_car(repo.export_car(since=repo.rev))
        assert _state(mirror) == before


def test_apply_refuses_an_incomplete_diff_without_change(repo, tmp_path):
    _write(repo, 0, 50)
    with _mirror(repo, tmp_path) as mirror:
        since = mirror.rev
        _write(repo, 100, 30)
        diff = repo.export_car(since=since)
        blocks = list(CarReader(diff))
        # drop one new record block
        dropped = next(cid for cid, data in blocks[1:] if b"$type" in data)
        out = io.BytesIO()
        writer = CarWriter(out, [blocks[0][0]])
        for cid, data in blocks:
            if cid != dropped:
                writer.write_block(cid, data)
        before = _state(mirror)
        with pytest.raises(MissingBlock):
            mirror.apply_car(out.getvalue())
        assert _state(mirror) == before
        mirror.apply_car(diff)  # the complete diff still applies
        assert mirror.head == repo.head


def test_apply_checks_did_and_signature(repo, tmp_path):
    _write(repo, 0, 10)
    with _mirror(repo, tmp_path) as mirror:
        since = mirror.rev
        repo.put(POST, "new", post(1))
        diff = repo.export_car(since=since)
        with pytest.raises(BadSignature):
            mirror.apply_car(diff, key=generate_signing_key().did_key)
        with Repo.create(tmp_path / "other", "did:plc:someoneelse") as other:
            other.put(POST, "x", post(1))
            with pytest.raises(DidMismatch):
                mirror.apply_car(other.export_car())
        mirror.apply_car(diff, key=repo.did_key)


def test_exports_follow_the_stream_friendly_order(repo):
    _write(repo, 0, 200)
    result = check_car_order(repo.export_car())
    assert result.ok, result.detail


def test_reordered_car_is_reported(repo):
    _write(repo, 0, 50)
    blocks = list(CarReader(repo.export_car()))
    out = io.BytesIO()
    writer = CarWriter(out, [blocks[0][0]])
    for cid, data in [blocks[0], *reversed(blocks[1:])]:
        writer.write_block(cid, data)
    result = check_car_order(out.getvalue())
    assert not result.ok and "block 1" in result.detail


def test_extra_and_missing_blocks_are_reported(repo):
    from pypds import cid_for_cbor

    _write(repo, 0, 10)
    blocks = list(CarReader(repo.export_car()))
    for variant, word in ((blocks + [(cid_for_cbor(b"\xa0"), b"\xa0")], "does not reach"), (blocks[:-1], "missing")):
        out = io.BytesIO()
        writer = CarWriter(out, [blocks[0][0]])
        for cid, data in variant:
            writer.write_block(cid, data)
        result = check_car_order(out.getvalue())
        assert not result.ok and word in result.detail
