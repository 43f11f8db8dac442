"""Reverts: a new commit with an older commit's tree (history moves forward, copies follow); refs named HEAD."""

from __future__ import annotations

import pytest

from pypds import (
    DidMismatch,
    HeadMoved,
    InvalidCommit,
    InvalidInput,
    MissingBlock,
    Repo,
    RollbackRefused,
    SigningKeyMismatch,
    SigningKeyRequired,
    cid_for_cbor,
    generate_signing_key,
    verify_commit_message,
)
from pypds.repo import history, writer

from .conftest import DID, POST, post

LIKE = "app.bsky.feed.like"


@pytest.fixture
def changed(repo):
    """A repository with a ref ``before`` and then puts, updates and deletes on top of it."""
    with repo.batch() as batch:
        for i in range(200):
            batch.put(POST, f"p{i:04d}", post(i))
    repo.set_ref("before", repo.head)
    with repo.batch() as batch:
        for i in range(0, 200, 3):
            batch.delete(POST, f"p{i:04d}")
        for i in range(1, 200, 5):
            batch.put(POST, f"p{i:04d}", post(i, "edited"))
        batch.put(LIKE, "l1", {"$type": LIKE})
    repo.put(POST, "zz", post(9))
    return repo


def test_revert_writes_a_new_commit_with_the_target_tree(changed):
    target = changed.ref("before")
    old_head, old_rev = changed.head, changed.rev
    expected = changed.diff(old_head, target)
    result = changed.revert("before")
    assert result.commit == changed.head and result.target == target and result.changes == expected
    assert changed.commit().data == changed.commit(target).data
    assert changed.rev > old_rev and changed.head not in (old_head, target)
    changed.commit().verify(changed.signing_key.public_key)
    assert list(changed.records()) == list(changed.records(commit=target))
    assert changed.list(POST, limit=5) == changed.list(POST, limit=5, commit=target)  # the paths index follows
    assert changed.verify().ok
    event = changed.commit_event()  # history: a commit after old_head, which a firehose consumer can check
    assert event["ops"] == [c.to_op() for c in expected] and event["since"] == old_rev
    assert verify_commit_message(event, key=changed.did_key).inverted


def test_revert_to_a_commit_cid_string_and_to_the_empty_tree(repo):
    empty = repo.head
    repo.put(POST, "a", post(1))
    result = repo.revert(empty.encode())
    assert result.target == empty and [c.action for c in result.changes] == ["delete"]
    assert repo.commit().data == repo.commit(empty).data and repo.head != empty
    assert list(repo.records()) == [] and repo.collections() == []
    with Repo.open(repo.path) as again:  # what was committed, read afresh
        assert len(again.checkout()) == 0 and again.head == repo.head


def test_revert_to_the_tree_at_head_writes_nothing(changed):
    head, count = changed.head, len(changed.blockstore)
    result = changed.revert(changed.head)
    assert result.commit is None and result.changes == []
    changed.revert("before")
    again = changed.revert("before")
    assert again.commit is None
    assert (changed.head, len(changed.blockstore)) != (head, count)


def test_a_mirror_follows_a_revert_but_refuses_a_head_set(changed, tmp_path):
    key = changed.did_key
    with Repo.from_car(tmp_path / "mirror", changed.export_car(), key=key) as mirror:
        since = mirror.rev
        changed.revert("before")
        mirror.apply_car(changed.export_car(since=since), key=key)
        assert mirror.head == changed.head and mirror.commit().data == changed.commit(changed.ref("before")).data

        changed.set_head(changed.ref("before"))  # the other way back: history moves back
        with pytest.raises(RollbackRefused, match="pypds revert"):
            mirror.import_car(changed.export_car(), key=key, require_newer=True)


def test_revert_refuses_a_commit_of_another_did(changed, tmp_path):
    with Repo.create(tmp_path / "other", "did:plc:ewvi7nxzyoun6zhxrhs64oiz") as other:
        other.put(POST, "x", post(1))
        foreign = other.head
        changed.blockstore.put(other.blockstore.get(foreign))
    head = changed.head
    with pytest.raises(DidMismatch):
        changed.revert(foreign)
    assert changed.head == head


def test_revert_refuses_unknown_and_incomplete_targets(changed):
    head = changed.head
    with pytest.raises(InvalidCommit):
        changed.revert(changed.find_cid(POST, "zz"))  # a record, not a commit
    with pytest.raises(MissingBlock):
        changed.revert(cid_for_cbor(b"\xa0"))
    node = changed.commit(changed.ref("before")).data
    changed._state.store.conn.execute("DELETE FROM blocks WHERE cid = ?", (node.cid_bytes,))
    changed._state.nodes.clear()
    with pytest.raises(MissingBlock):
        changed.revert("before")
    assert changed.head == head


def test_revert_follows_the_signing_key_rules(changed, tmp_path):
    with Repo.from_car(tmp_path / "keyless", changed.export_car()) as keyless, pytest.raises(SigningKeyRequired):
        keyless.revert(keyless.head)  # even one that would write nothing
    with Repo.open(changed.path, signing_key=generate_signing_key()) as other, pytest.raises(SigningKeyMismatch):
        other.revert("before")


def test_a_head_moved_meanwhile_is_retried_on_the_new_head(changed, monkeypatch):
    real = writer.commit_ops
    moved = []

    def another_writer_first(state, ops, **kwargs):
        if not moved:  # another process commits between the diff and the revert's transaction
            with Repo.open(changed.path) as other:
                other.put(LIKE, "sneaked-in", {"$type": LIKE})
            moved.append(True)
        return real(state, ops, **kwargs)

    monkeypatch.setattr(history, "commit_ops", another_writer_first)
    result = changed.revert("before")
    assert changed.commit().data == changed.commit(result.target).data
    assert changed.find(LIKE, "sneaked-in") is None


def test_a_head_that_keeps_moving_gives_up_and_writes_nothing(changed, monkeypatch):
    real = writer.commit_ops

    def always_another_writer(state, ops, **kwargs):
        with Repo.open(changed.path) as other:
            other.put(LIKE, f"n{len(other.list(LIKE))}", {"$type": LIKE})
        return real(state, ops, **kwargs)

    monkeypatch.setattr(history, "commit_ops", always_another_writer)
    with pytest.raises(HeadMoved, match="3 attempts"):
        changed.revert("before")
    assert changed.commit().data != changed.commit(changed.ref("before")).data


def test_a_revert_after_gc_took_the_target_records_stores_them_again(changed):
    target = changed.ref("before")
    car = changed.export_car(commit=target)
    changed.delete_ref("before")
    changed.gc()
    assert not changed.blockstore.has(target)
    changed.import_car(car)  # the old commit is back (HEAD moved to it); go forward again
    changed.put(POST, "new", post(1))
    changed.revert(target)
    assert changed.verify().ok and changed.commit().data == changed.commit(target).data


def test_a_ref_cannot_be_named_head_but_an_old_one_can_be_removed(repo):
    with pytest.raises(InvalidInput, match="HEAD"):
        repo.set_ref("HEAD", repo.head)
    assert repo.list_refs() == []
    repo._state.store.conn.execute("INSERT INTO refs (name, cid) VALUES ('HEAD', ?)", (repo.head.cid_bytes,))
    assert repo.ref("HEAD") == repo.head  # made by an older pypds: still readable and removable
    repo.delete_ref("HEAD")
    assert repo.list_refs() == []


def test_revert_in_another_did_repo_keeps_did(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo:
        start = repo.head
        repo.put(POST, "a", post(1))
        repo.revert(start)
        assert repo.commit().did == DID and len(repo.checkout()) == 0
