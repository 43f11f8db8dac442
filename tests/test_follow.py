"""Repo.apply_commit (repo/follow.py): a verified #commit applied to a copy without a tree walk."""

from __future__ import annotations

import pytest

from pypds import CommitGap, DidMismatch, Repo, RollbackRefused, generate_signing_key, verify_commit_message

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
