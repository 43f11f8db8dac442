"""Repo.apply_commit (repo/follow.py): a verified #commit applied to a copy without a tree walk."""

from __future__ import annotations

import io
import shutil

import pytest

from pypds import (
    CID,
    CarWriter,
    CommitGap,
    DidMismatch,
    InvalidCommitMessage,
    InvalidMst,
    RecordChange,
    Repo,
    RollbackRefused,
    generate_signing_key,
    verify_commit_message,
)
from pypds.codec.cbor import encode
from pypds.codec.cid import cid_for_cbor
from pypds.commit import sign_commit
from pypds.mst.node import Node, key_height
from pypds.sync.firehose import VerifiedCommit

from .conftest import DID, POST, post

OTHER = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


@pytest.fixture
def pair(tmp_path):
    """A source with records and a copy of it."""
    key = generate_signing_key()
    source = Repo.create(tmp_path / "source", DID, signing_key=key, store_key=True)
    with source.batch() as batch:
        for i in range(40):
            batch.put(POST, f"3jui7kd5{i:05d}", post(i))
    copy = Repo.from_car(tmp_path / "copy", source.export_car())
    yield source, copy, key
    source.close()
    copy.close()


def step(source: Repo, i: int) -> dict:
    """One commit on the source (a put, or every third a delete): its #commit message."""
    if i % 3 == 2:
        source.delete(POST, f"3jui7kd5{i - 1:05d}")
    elif i % 5 == 4:
        source.put(POST, "3jui7kd500000", post(1000 + i))  # an update
    else:
        source.put(POST, f"3jui7kd5{100 + i:05d}", post(i))
    return dict(source.commit_event())


def test_applied_commits_leave_the_copy_equal_to_the_source(pair):
    source, copy, key = pair
    for i in range(30):
        event = step(source, i)
        assert copy.apply_commit(verify_commit_message(event, key=key.public_key), event["since"]) == "applied"
        assert copy.head == source.head and copy.rev == source.rev
    assert copy.export_car() == source.export_car()
    assert copy.verify(key=key.public_key).ok
    assert copy.list(POST) == source.list(POST)  # the paths index followed the ops


def test_a_gap_a_duplicate_and_a_rollback_change_nothing(pair):
    source, copy, key = pair
    first = step(source, 0)
    second = step(source, 1)
    with pytest.raises(CommitGap):  # since is not the copy's rev
        copy.apply_commit(verify_commit_message(second, key=key.public_key), second["since"])
    assert copy.apply_commit(verify_commit_message(first), first["since"]) == "applied"
    assert copy.apply_commit(verify_commit_message(first), first["since"]) == "duplicate"
    stranger = Repo.create(copy.path.parent / "stranger", DID, signing_key=key)  # another tree, same key
    stranger.put(POST, "3zzzzzzzzzzzy", post(2))
    unrelated = dict(stranger.commit_event())
    with pytest.raises(CommitGap):  # even claiming to follow HEAD: its previous tree is not the copy's
        copy.apply_commit(verify_commit_message(unrelated), copy.rev)
    stranger.close()
    assert copy.apply_commit(verify_commit_message(second), second["since"]) == "applied"
    head = copy.head
    fork = Repo.create(copy.path.parent / "fork", DID, signing_key=key)
    fork.put(POST, "3zzzzzzzzzzzz", post(1))
    older = dict(fork.commit_event())
    step(source, 2)
    newest = step(source, 3)
    copy.apply_car(source.export_car(since=copy.rev))
    assert copy.head == source.head and newest["rev"] > older["rev"]
    with pytest.raises(RollbackRefused):
        copy.apply_commit(verify_commit_message(older), copy.rev)
    assert copy.head != head and copy.head == source.head
    fork.close()


def test_another_accounts_commit_is_refused(pair, tmp_path):
    _source, copy, _key = pair
    with Repo.create(tmp_path / "other", OTHER) as other:
        other.put(POST, "3jui7kd54zh2y", post(1))
        event = dict(other.commit_event())
    with pytest.raises(DidMismatch):
        copy.apply_commit(verify_commit_message(event), event["since"])


def test_a_legacy_message_that_cannot_be_undone_is_checked_whole_from_its_car(pair):
    source, copy, key = pair
    step(source, 0)
    step(source, 1)
    copy.apply_car(source.export_car(since=copy.rev))
    event = step(source, 2)  # a delete
    assert event["ops"][0]["action"] == "delete"
    del event["prevData"]
    del event["ops"][0]["prev"]
    verified = verify_commit_message(event, key=key.public_key)
    assert not verified.inverted
    with pytest.raises(CommitGap):  # without the CAR it cannot be checked
        copy.apply_commit(verified, event["since"])
    assert copy.apply_commit(verified, event["since"], car=event["blocks"]) == "applied"
    assert copy.export_car() == source.export_car()


def test_make_durable_puts_normal_durability_commits_into_the_database_file(tmp_path):
    """With durability="normal" the last commits sit in the WAL; make_durable checkpoints them into
    pds.db itself (the file a power cut leaves, WAL or not)."""

    def head_of_database_file_alone(name: str) -> CID:
        alone = tmp_path / name
        alone.mkdir()
        shutil.copy(tmp_path / "repo" / "pds.db", alone / "pds.db")  # without pds.db-wal
        with Repo.open(alone) as copy:
            return copy.head

    with Repo.create(tmp_path / "repo", DID) as repo:
        first = repo.head
    with Repo.open(tmp_path / "repo", durability="normal") as repo:
        repo.make_durable()  # the create's pages are in pds.db
        repo.put(POST, "a", post(1))
        assert head_of_database_file_alone("before") == first
        repo.make_durable()
        assert head_of_database_file_alone("after") == repo.head


def test_a_new_key_off_its_layer_is_refused_even_if_verification_were_fooled(tmp_path):
    """Undoing the ops already refuses a key put on the wrong layer (its delete looks on the key's own
    layer); apply_commit checks the layers of the nodes it stores as well, so a commit that slipped
    through would still change nothing."""
    key = generate_signing_key()
    paths = [f"{POST}/3jui7kd5{i:05d}" for i in range(400)]
    low = [p for p in paths if key_height(p.encode()) == 0]
    a, c = low[0], low[40]
    middle = next(p for p in paths if key_height(p.encode()) == 1 and a < p < c)
    with Repo.create(tmp_path / "source", DID, signing_key=key) as source:
        source.put(POST, a.split("/")[1], post(1))
        source.put(POST, c.split("/")[1], post(3))
        old = source.commit()
        copy = Repo.from_car(tmp_path / "copy", source.export_car())
        record = encode(post(2))
        value = cid_for_cbor(record)
        found = [source.find_cid(POST, p.split("/")[1]) for p in (a, c)]
        flat = Node((a.encode(), middle.encode(), c.encode()), (found[0], value, found[1]), (None,) * 4)
        commit, block, cid = sign_commit(DID, flat.cid, "3zzzzzzzzzzzz", key)
    car = io.BytesIO()
    writer = CarWriter(car, [cid])
    for block_cid, data in ((cid, block), (flat.cid, flat.data), (value, record)):
        writer.write_block(block_cid, data)
    op = {"action": "create", "path": middle, "cid": value}
    message = {"repo": DID, "commit": cid, "rev": commit.rev, "since": old.rev, "prevData": old.data}
    message |= {"ops": [op], "blobs": [], "blocks": car.getvalue(), "rebase": False, "tooBig": False}
    with pytest.raises(InvalidCommitMessage, match="not in the tree"):
        verify_commit_message(message, key=key.public_key)
    # as if it had passed: the commit, its blocks and ops, prevData the copy's root
    fooled = VerifiedCommit(
        commit,
        cid,
        flat.cid,
        old.data,
        True,
        blocks={cid.cid_bytes: block, flat.cid.cid_bytes: flat.data, value.cid_bytes: record},
        changes=(RecordChange.from_op(op, 0),),
    )
    before = copy.export_car()
    with pytest.raises(InvalidMst, match="has height 1, not 0"):
        copy.apply_commit(fooled, old.rev)
    assert copy.export_car() == before
    copy.close()
