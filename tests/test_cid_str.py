"""``str()`` of every CID pypds hands out is its canonical string; plain cbrrr CIDs still work."""

from __future__ import annotations

import copy
import json
import pickle

import cbrrr
import pytest

import pypds
from pypds import CID, CarReader, Repo, cid_for_cbor, parse_cid, verify_car
from pypds.cli import main
from pypds.codec import cbor
from pypds.codec.cid import relink
from pypds.mst import decode_node

from .conftest import DID, POST, post

LIKE = "app.bsky.feed.like"
TEXT = "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"


def assert_canonical(cid: object) -> None:
    """A pypds CID whose str, f-string and format are the string form, and whose repr names the class."""
    assert type(cid) is CID, type(cid)
    text = cid.encode()
    assert text.startswith("b")
    assert str(cid) == text
    assert f"{cid}" == text
    assert "{}".format(cid) == text  # noqa: UP032 (str.format takes another path than f-strings)
    assert f"{cid:>70}" == text.rjust(70)
    assert repr(cid) == f"CID({text})"
    assert CID.decode(str(cid)) == cid


def test_str_of_a_cid_is_the_string_form():
    cid = CID.decode(TEXT)
    assert_canonical(cid)
    assert str(cid) == TEXT and cid.encode() == TEXT
    assert f"https://pds.example/xrpc/com.atproto.sync.getBlob?cid={cid}".endswith(TEXT)
    assert json.dumps({"cid": str(cid)}) == f'{{"cid": "{TEXT}"}}'
    assert_canonical(cid_for_cbor(b"\xa0"))
    assert_canonical(pypds.cid_for_raw(b"blob"))
    assert_canonical(parse_cid(TEXT))
    assert_canonical(parse_cid(bytes(cid)))


@pytest.fixture
def world(tmp_path):
    """A repository with a record linking another, a blob, two commits and a ref."""
    with Repo.create(tmp_path / "alice", DID) as repo:
        first = repo.put(POST, "3jui7kd54zh2y", post(1))
        ref = repo.put_blob(b"\x89PNG image", "image/png")
        repo.set_ref("first", repo.head)
        record = {"$type": LIKE, "subject": {"uri": f"at://{DID}/{POST}/3jui7kd54zh2y", "cid": first}}
        with repo.batch() as batch:
            batch.put(LIKE, "3jui7kd54zh3a", record)
            batch.put(POST, "3jui7kd54zh3b", {**post(2), "embed": {"$type": "x.y.z", "image": ref.to_record()}})
        yield repo, first, ref, batch.commit


def test_every_cid_the_library_returns_prints_canonically(world):
    repo, first, ref, batch_commit = world
    found = [first, ref.cid, batch_commit, repo.head, repo.ref("first"), repo.find_cid(POST, "3jui7kd54zh2y")]
    found += [cid for _rkey, cid in repo.list(POST)]
    found += [cid for _name, cid in repo.list_refs()]
    found.append(repo.commit().data)
    found.append(repo.find(LIKE, "3jui7kd54zh3a")["subject"]["cid"])  # a link inside a decoded record
    found.append(repo.find(POST, "3jui7kd54zh3b")["embed"]["image"]["ref"])
    found += [cid for change in repo.diff("first") for cid in (change.old, change.new) if cid is not None]
    found += repo.list_blobs()
    found.append(repo.checkout().root)
    found += [cid for _key, cid in repo.checkout().items()]
    found += [cid for cid, _data in repo.blockstore]
    event = repo.commit_event()
    found += [event["commit"], event["prevData"], *event["blobs"]]
    found += [op["cid"] for op in event["ops"]]
    car = repo.export_car()
    with CarReader(car) as reader:
        found += reader.roots
        blocks = list(reader)
    found += [cid for cid, _data in blocks]
    found += [cid for _cid, data in blocks if _is_node(data) for cid in decode_node(data).vals]
    found.append(verify_car(car, did=DID).commit)
    verified = pypds.verify_commit_message(event, key=repo.did_key)
    found += [verified.commit.data, verified.prev_data]
    assert len(found) > 30
    for cid in found:
        assert_canonical(cid)


def _is_node(data: bytes) -> bool:
    value = cbor.decode(data)
    return type(value) is dict and value.keys() == {"e", "l"}


def test_cids_in_atproto_json_round_trip_as_strings(world):
    repo, first, _ref, _commit = world
    value = pypds.to_json(repo.find(LIKE, "3jui7kd54zh3a"))
    assert value["subject"]["cid"] == {"$link": str(first)}
    assert_canonical(pypds.from_json(value)["subject"]["cid"])


def test_cli_json_prints_cid_strings(world, capsys):
    repo, first, _ref, _commit = world
    assert main(["ls", str(repo.path), POST, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert str(first) in json.dumps(listed)
    assert "CID(" not in json.dumps(listed)


def test_plain_cbrrr_cids_are_equal_and_hash_alike():
    cid = cid_for_cbor(b"\xa0")
    plain = cbrrr.CID(cid.cid_bytes)
    assert cid == plain and plain == cid
    assert (cid != plain) is False and (plain != cid) is False
    assert hash(cid) == hash(plain)
    assert {cid: 1}[plain] == 1 and plain in {cid}
    assert cid != cid_for_cbor(b"\xa1") and cid != cid.encode()


def test_copies_and_pickles_stay_pypds_cids():
    cid = cid_for_cbor(b"\xa0")
    for other in (copy.copy(cid), copy.deepcopy(cid), pickle.loads(pickle.dumps(cid))):
        assert_canonical(other)
        assert other == cid


def test_parse_cid_turns_a_plain_cbrrr_cid_into_a_pypds_cid():
    plain = cbrrr.CID(CID.decode(TEXT).cid_bytes)
    parsed = parse_cid(plain)
    assert_canonical(parsed)
    assert parsed == plain


def test_records_decoded_by_cbrrr_itself_can_be_written(repo):
    """A record decoded with cbrrr's defaults (plain cbrrr.CID links) is stored byte for byte."""
    target = cid_for_cbor(b"\xa0")
    record = {"$type": LIKE, "subject": {"uri": f"at://{DID}/{POST}/a", "cid": target}, "createdAt": "2024"}
    data = cbor.encode(record)
    plain = cbrrr.decode_dag_cbor(data)
    assert type(plain["subject"]["cid"]) is cbrrr.CID
    assert repo.put(LIKE, "3jui7kd54zh2y", plain) == cid_for_cbor(data)
    assert repo.find_bytes(LIKE, "3jui7kd54zh2y") == data
    assert_canonical(repo.find(LIKE, "3jui7kd54zh2y")["subject"]["cid"])
    mixed = {**plain, "other": target}  # plain and pypds CIDs in one value
    assert cbor.decode(cbor.encode(mixed)) == mixed
    assert pypds.to_json(plain)["subject"]["cid"] == {"$link": str(target)}


def test_blob_references_held_in_plain_cbrrr_cids_are_found(repo):
    ref = repo.put_blob(b"image bytes", "image/png")
    record = cbrrr.decode_dag_cbor(cbor.encode({"$type": POST, "embed": ref.to_record()}))
    assert type(record["embed"]["ref"]) is cbrrr.CID
    refs = pypds.blob_refs(record)
    assert refs == [ref.cid]
    assert_canonical(refs[0])


def test_a_commit_message_decoded_by_cbrrr_itself_verifies(world):
    repo, *_ = world
    event = cbrrr.decode_dag_cbor(cbor.encode(dict(repo.commit_event())))
    assert type(event["commit"]) is cbrrr.CID
    verified = pypds.verify_commit_message(event, key=repo.did_key)
    assert verified.commit.data == repo.commit().data and verified.inverted
    assert_canonical(verified.prev_data)


def test_relink_copies_each_container_once_and_keeps_pypds_cids():
    pypds_cid, plain = cid_for_cbor(b"\xa0"), cbrrr.CID(cid_for_cbor(b"\xa1").cid_bytes)
    shared = [plain]
    value = {"a": shared, "b": shared, "c": pypds_cid, "d": [[[plain]]], "e": b"x", "f": None}
    out = relink(value)
    assert out == value
    assert out["a"] is out["b"] and out["a"] is not shared
    assert out["c"] is pypds_cid
    assert type(out["a"][0]) is CID and type(out["d"][0][0][0]) is CID
    assert type(value["a"][0]) is cbrrr.CID  # the input is left alone
    cyclic: list = [plain]
    cyclic.append(cyclic)
    copied = relink(cyclic)
    assert copied[1] is copied and type(copied[0]) is CID
    assert relink(plain) == plain and type(relink(plain)) is CID
