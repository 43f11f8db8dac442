"""Sync 1.1 #commit messages: covering proofs, inversion, and the captured network messages."""

from __future__ import annotations

import base64
import copy
import itertools
import json

import pytest

from pypds import CID, InvalidCommitMessage, MissingBlock, PypdsError
from pypds.firehose import _PartialTree, _undo, covering_proof, verify_commit_message
from pypds.mst import build_tree, delete, put

from .conftest import INTEROP, REFERENCE, load_json
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
    ops = [(k.encode(), "create", leaf, None) for k in case["adds"]]
    ops += [(k.encode(), "delete", None, leaf) for k in case["dels"]]
    for order in itertools.permutations(ops):
        tree = _PartialTree(blocks, root.cid, source_limits())
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
    "op action": lambda m: m["ops"][0].update(action="update"),
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


def test_message_with_a_wrong_prev_data_is_rejected():
    msg = _message(MAIN_PDS)
    msg["prevData"] = {"$link": "bafyreicfeeojgjj7gtgl6go25tk5jmcuoytjp5hhulbdd7gwzk7gtqw3ka"}
    assert verify_commit_message(msg).prev_data_checked
    msg["prevData"] = {"$link": "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"}
    with pytest.raises(InvalidCommitMessage, match="prevData"):
        verify_commit_message(msg)
