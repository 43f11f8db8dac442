"""Sync 1.1 #commit messages: covering proofs, inversion, and the captured network messages."""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypds import (
    CID,
    BadSignature,
    CarWriter,
    InvalidCommitMessage,
    MissingBlock,
    PypdsError,
    Repo,
    generate_signing_key,
    to_json,
)
from pypds.car.reader import CarReader
from pypds.mst import build_tree, delete, put
from pypds.operation import RecordChange
from pypds.sync.firehose import _undo, covering_proof, proof_nodes, verify_commit_message

from .conftest import DID, INTEROP, POST, REALWORLD, REFERENCE, load_json, post
from .test_mst import MemorySource

PROOF_CASES = load_json(INTEROP / "firehose" / "commit-proof-fixtures.json")
CAPTURED = sorted((REFERENCE / "firehose-commits").glob("*.json"))
MAIN_PDS = REFERENCE / "firehose-commits" / "firehose_commit_4623075231.json"
BRIDGED = {
    "firehose_commit_4621317030": "bafyreib53rpa22j37zopupxk73qcavwws26nfnrww3iqjrhrzvcqfv54de",
    "firehose_commit_4621317332": "bafyreihakg2pbt4behbphrpcx3u5hz5eziqsbudhlfsoda5eab6hixl3ea",
}


def _nodes(source: MemorySource, root) -> set[bytes]:
    out, stack = set(), [root]
    while stack:
        cid = stack.pop()
        if cid is None or cid.cid_bytes in out:
            continue
        out.add(cid.cid_bytes)
        stack.extend(source.load_node(cid).links)
    return out


@pytest.mark.parametrize("case", PROOF_CASES, ids=lambda c: c["comment"])
def test_covering_proof_holds_the_fixture_blocks_and_inverts_in_every_order(case):
    leaf = CID.decode(case["leafValue"])
    source = MemorySource()
    before, height = build_tree(sorted((k.encode(), leaf) for k in case["keys"]))
    source.store(before)
    root = source.load_node(before.cid)
    for key in case["adds"]:
        root, height = put(source, root, height, key.encode(), leaf)
    for key in case["dels"]:
        root, height = delete(source, root, height, key.encode())
    source.store(root)
    assert root.cid.encode() == case["rootAfterCommit"]

    changed = [k.encode() for k in case["adds"] + case["dels"]]
    new_nodes = _nodes(source, root.cid) - _nodes(source, before.cid)
    proof = set(covering_proof(source, root.cid, changed)) | new_nodes
    assert {CID.decode(c).cid_bytes for c in case["blocksInProof"]} <= proof

    blocks = {cid: source.blocks[cid] for cid in proof}
    ops = [RecordChange(k, "create", None, leaf) for k in case["adds"]]
    ops += [RecordChange(k, "delete", leaf, None) for k in case["dels"]]
    for order in itertools.permutations(ops):
        tree = proof_nodes(blocks, root.cid, source_limits())
        assert _undo(tree, root.cid, list(order)).encode() == case["rootBeforeCommit"]


def source_limits():
    from pypds.limits import DEFAULT_LIMITS

    return DEFAULT_LIMITS


def _message(path):
    return json.loads(path.read_text())


def test_main_pds_message_verifies_and_trims_the_top_of_a_partial_tree():
    result = verify_commit_message(_message(MAIN_PDS))
    # undoing the profile create leaves a key-less top: the root becomes the unchanged old root
    assert result.prev_data.encode() == "bafyreicfeeojgjj7gtgl6go25tk5jmcuoytjp5hhulbdd7gwzk7gtqw3ka"
    assert not result.prev_data_checked  # the captured message predates prevData


def test_multi_op_bridged_message_verifies():
    verify_commit_message(_message(REFERENCE / "firehose-commits" / "firehose_commit_4621332152.json"))


@pytest.mark.parametrize("name", sorted(BRIDGED))
def test_bridged_messages_name_the_missing_proof_block(name):
    with pytest.raises(MissingBlock) as info:
        verify_commit_message(_message(REFERENCE / "firehose-commits" / f"{name}.json"))
    assert info.value.cid.encode() == BRIDGED[name]
    assert BRIDGED[name] in str(info.value)


def _car_bytes(msg):
    text = msg["blocks"]["$bytes"]
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _b64(data):
    return base64.b64encode(data).decode().rstrip("=")


OTHER = {"$link": "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"}
ALTERATIONS = {
    "other repo": lambda m: m.update(repo="did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"),
    "other rev": lambda m: m.update(rev="3lhhxizu5wr2e"),
    "op cid": lambda m: m["ops"][0].update(
        cid={"$link": "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"}
    ),
    "op path": lambda m: m["ops"][0].update(path=m["ops"][0]["path"] + "x"),
    "op action": lambda m: m["ops"][0].update(action="delete"),
    "op action and prev data": lambda m: (m["ops"][0].update(action="update"), m.update(prevData=OTHER)),
    "prevData": lambda m: m.update(prevData=OTHER),
    "commit link": lambda m: m.update(commit=OTHER),
    "flipped byte": lambda m: m.update(blocks={"$bytes": _b64(_car_bytes(m)[:-1] + bytes([_car_bytes(m)[-1] ^ 1]))}),
    "truncated car": lambda m: m.update(blocks={"$bytes": _b64(_car_bytes(m)[:-10])}),
    "no ops": lambda m: m.update(ops="none"),
}


@pytest.mark.parametrize("path", [p for p in CAPTURED if p.stem not in BRIDGED], ids=lambda p: p.stem)
@pytest.mark.parametrize("change", sorted(ALTERATIONS))
def test_altered_messages_are_rejected(path, change):
    msg = copy.deepcopy(_message(path))
    ALTERATIONS[change](msg)
    with pytest.raises(PypdsError):
        verify_commit_message(msg)


def test_legacy_create_relabelled_update_cannot_be_told_apart_and_is_not_inverted():
    # Without prevData and prev, nothing in a pre-sync-1.1 message says whether the key
    # existed before: the check that remains is that the new tree holds the op's CID.
    msg = copy.deepcopy(_message(MAIN_PDS))
    msg["ops"][0]["action"] = "update"
    result = verify_commit_message(msg)
    assert not result.inverted and result.prev_data is None


def test_message_with_a_wrong_prev_data_is_rejected():
    msg = _message(MAIN_PDS)
    msg["prevData"] = {"$link": "bafyreicfeeojgjj7gtgl6go25tk5jmcuoytjp5hhulbdd7gwzk7gtqw3ka"}
    assert verify_commit_message(msg).prev_data_checked
    msg["prevData"] = {"$link": "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"}
    with pytest.raises(InvalidCommitMessage, match="prevData"):
        verify_commit_message(msg)


# -- events pypds produces -----------------------------------------------------------------


def _check_event(repo, event, prev_commit):
    result = verify_commit_message(event, key=repo.did_key)
    assert result.prev_data_checked
    assert result.prev_data == repo.commit(prev_commit).data
    assert event["since"] == repo.commit(prev_commit).rev
    # the same message in the atproto JSON form
    assert verify_commit_message(to_json(event), key=repo.did_key).prev_data == result.prev_data


def test_every_kind_of_commit_produces_an_event_that_verifies(repo):
    with repo.batch() as batch:
        for i in range(300):
            batch.put(POST, f"k{i:04d}", post(i))
    steps = [
        lambda: repo.put(POST, "k0150a", post(1000)),  # create
        lambda: repo.put(POST, "k0007", post(1001)),  # update
        lambda: repo.delete(POST, "k0100"),  # delete
        lambda: repo.put("app.bsky.feed.like", "zzz", {"$type": "app.bsky.feed.like"}),  # new collection
    ]
    for step in steps:
        before = repo.head
        step()
        _check_event(repo, repo.commit_event(), before)
    before = repo.head
    with repo.batch() as batch:
        batch.put(POST, "k0042", post(2000))
        batch.delete(POST, "k0043")
        for i in range(5):
            batch.put(POST, f"n{i}", post(3000 + i))
    event = repo.commit_event()
    assert sorted(op["action"] for op in event["ops"]) == ["create"] * 5 + ["delete", "update"]
    _check_event(repo, event, before)
    blocks = list(CarReader(event["blocks"]))
    assert blocks[0][0] == repo.head and len(blocks) < 60  # a diff, not the repo


def test_event_lists_new_blobs(repo):
    ref = repo.put_blob(b"image bytes", "image/png")
    repo.put(POST, "with-image", {"$type": POST, "embed": ref.to_record()})
    assert repo.commit_event()["blobs"] == [ref.cid]


def test_event_of_an_applied_diff_verifies(repo, tmp_path):
    with repo.batch() as batch:
        for i in range(50):
            batch.put(POST, f"k{i:04d}", post(i))
    with Repo.from_car(tmp_path / "mirror", repo.export_car()) as mirror:
        since, before = mirror.rev, mirror.head
        repo.put(POST, "k0010x", post(99))
        mirror.apply_car(repo.export_car(since=since))
        event = mirror.commit_event()
        assert verify_commit_message(event, key=repo.did_key).prev_data == mirror.commit(before).data


def test_event_with_a_dropped_proof_block_fails_naming_it(repo):
    with repo.batch() as batch:
        for i in range(300):
            batch.put(POST, f"k{i:04d}", post(i))
    repo.delete(POST, "k0150")
    event = repo.commit_event()
    blocks = list(CarReader(event["blocks"]))
    out = io.BytesIO()
    writer = CarWriter(out, [blocks[0][0]])
    for cid, data in blocks[:-1]:
        writer.write_block(cid, data)
    with pytest.raises((MissingBlock, InvalidCommitMessage)):
        verify_commit_message({**event, "blocks": out.getvalue()})


def test_commit_made_elsewhere_has_no_event(repo, tmp_path):
    from pypds import NotFound

    repo.put(POST, "a", post(1))
    with Repo.from_car(tmp_path / "copy", repo.export_car()) as copy, pytest.raises(NotFound):
        copy.commit_event()


def test_version_1_store_is_migrated_on_open(tmp_path):
    import apsw

    Repo.create(tmp_path / "r", DID).close()
    conn = apsw.Connection(str(tmp_path / "r" / "pds.db"))
    conn.execute(
        "DROP TABLE commits; DROP TABLE paths; DROP TABLE blob_types; DELETE FROM meta WHERE key = 'index_head';"
        "PRAGMA user_version = 1"
    )
    conn.close()
    with Repo.open(tmp_path / "r") as repo:
        before = repo.head
        repo.put(POST, "a", post(1))
        _check_event(repo, repo.commit_event(), before)
    conn = apsw.Connection(str(tmp_path / "r" / "pds.db"))
    from pypds.storage.store import SCHEMA_VERSION

    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# -- hostile messages ----------------------------------------------------------------------


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mutation_of_a_message_gives_a_result_or_a_pypds_error(data):
    msg = _message(MAIN_PDS)
    car = bytearray(_car_bytes(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(car) - 1))
        if kind == "flip":
            car[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del car[pos:]
            if not car:
                car = bytearray(b"\x00")
        else:
            car[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    msg["blocks"] = {"$bytes": _b64(bytes(car))}
    with contextlib.suppress(PypdsError):
        verify_commit_message(msg)


@settings(max_examples=150, deadline=2000)
@given(
    st.dictionaries(
        st.sampled_from(["repo", "rev", "commit", "blocks", "ops", "prevData", "since"]),
        st.none() | st.integers() | st.text(max_size=5) | st.binary(max_size=5) | st.lists(st.integers(), max_size=2),
    )
)
def test_malformed_message_fields_give_a_pypds_error(fields):
    msg = {**_message(MAIN_PDS), **fields}
    with contextlib.suppress(PypdsError):
        verify_commit_message(msg)


# -- recorded relay streams (indigo), legacy messages included -----------------------------

STREAMS = sorted((REALWORLD / "indigo-relay-streams").glob("*.json"))


def _stream_commits():
    for path in STREAMS:
        stream = load_json(path)
        identities = [account["identity"] for account in stream["accounts"]]
        keys = {ident["did"]: ident["keys"]["atproto"]["publicKeyMultibase"] for ident in identities}
        for message in stream["messages"]:
            if message["frame"]["header"]["t"] == "#commit":
                body = message["frame"]["body"]
                yield pytest.param(body, "did:key:" + keys[body["repo"]], message, id=f"{path.stem}-{body['seq']}")


@pytest.mark.parametrize(("body", "key", "expected"), list(_stream_commits()))
def test_recorded_relay_stream_commits_get_the_outcome_the_relay_expects(body, key, expected):
    if expected["drop"] or expected["invalid"]:
        with pytest.raises(PypdsError):
            verify_commit_message(body, key=key)
        return
    result = verify_commit_message(body, key=key)
    assert result.commit.rev == body["rev"]
    assert result.prev_data_checked == ("prevData" in body)


def _legacy_messages():
    return [m["frame"]["body"] for m in load_json(STREAMS_LEGACY)["messages"]]


STREAMS_LEGACY = REALWORLD / "indigo-relay-streams" / "post_lifecycle_legacy.json"


def test_legacy_delete_without_prev_is_accepted_and_says_the_inversion_was_not_checked():
    deletes = [m for m in _legacy_messages() if m["ops"][0]["action"] == "delete"]
    assert deletes and all("prev" not in m["ops"][0] and "prevData" not in m for m in deletes)
    for message in deletes:
        result = verify_commit_message(message)
        assert not result.inverted
        assert result.prev_data is None
        assert not result.prev_data_checked


def test_legacy_creates_are_inverted_without_a_prev_data_to_compare():
    creates = [m for m in _legacy_messages() if m["ops"][0]["action"] == "create"]
    for message in creates:
        result = verify_commit_message(message)
        assert result.inverted and result.prev_data is not None
        assert not result.prev_data_checked


def test_legacy_delete_still_checks_the_path_is_gone_and_the_signature():
    message = next(m for m in _legacy_messages() if m["ops"][0]["action"] == "delete")
    with pytest.raises(BadSignature):
        verify_commit_message(message, key=generate_signing_key().did_key)
    altered = copy.deepcopy(message)
    create = next(m for m in _legacy_messages() if m["ops"][0]["action"] == "create")
    altered["ops"][0]["path"] = create["ops"][0]["path"]  # a path that is still in the tree? must not be "deleted"
    altered["rev"] = "3llxva5nnod2e"
    with pytest.raises(InvalidCommitMessage):
        verify_commit_message(altered)


def test_a_delete_without_prev_in_a_message_with_prev_data_is_still_rejected():
    message = copy.deepcopy(load_json(STREAMS[1])["messages"][1]["frame"]["body"])
    assert message["ops"][0]["action"] == "delete" and "prevData" in message
    del message["ops"][0]["prev"]
    with pytest.raises(InvalidCommitMessage, match="no 'prev'"):
        verify_commit_message(message)
