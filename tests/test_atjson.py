"""The atproto JSON data model converts to and from DAG-CBOR exactly (interop fixtures)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pypds import CID, InvalidRecord, LimitExceeded, cid_for_cbor, from_json, to_json
from pypds.codec.atjson import loads
from pypds.codec.cbor import check_data_model, decode, encode

from .conftest import INTEROP, load_json

FIXTURES = load_json(INTEROP / "data-model" / "data-model-fixtures.json")
INVALID = load_json(INTEROP / "data-model" / "data-model-invalid.json")
VALID = load_json(INTEROP / "data-model" / "data-model-valid.json")


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("case", FIXTURES, ids=lambda c: c["cid"])
def test_json_to_cbor_matches_fixture_bytes_and_cid(case):
    value = from_json(case["json"])
    data = encode(value)
    assert data == _b64(case["cbor_base64"])
    assert cid_for_cbor(data).encode() == case["cid"]


@pytest.mark.parametrize("case", FIXTURES, ids=lambda c: c["cid"])
def test_cbor_to_json_matches_fixture_json(case):
    assert to_json(decode(_b64(case["cbor_base64"]))) == case["json"]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["note"])
def test_invalid_data_model_json_is_rejected(case):
    with pytest.raises(InvalidRecord):
        from_json(case["json"])


@pytest.mark.parametrize("case", VALID, ids=lambda c: c["note"])
def test_valid_data_model_json_is_accepted(case):
    value = from_json(case["json"])
    assert to_json(value) == json.loads(json.dumps(case["json"]).replace("123.0", "123"))


def test_links_and_bytes_become_cids_and_bytes():
    cid = cid_for_cbor(b"\xa0")
    value = from_json({"a": {"$link": cid.encode()}, "b": {"$bytes": "AAE"}, "c": [{"$bytes": ""}]})
    assert value == {"a": cid, "b": b"\x00\x01", "c": [b""]}
    assert isinstance(value["a"], CID)


@pytest.mark.parametrize(
    "bad",
    [
        {"l": {"$link": "bafyrei"}},
        {"l": {"$link": "BAFYREIE5CVV4H45FEADGEUWHBCUTMH6T2CESEOCCKAHDOE6UAT64ZMZ454"}},
        {"l": {"$link": "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR"}},
        {"b": {"$bytes": "not base64!"}},
        {"b": {"$bytes": "AA=="}, "c": 1.5},
        {1: "int key"},
    ],
)
def test_malformed_json_values_are_rejected(bad):
    with pytest.raises(InvalidRecord):
        from_json(bad)


def test_deep_json_is_a_limit_not_a_recursion_error():
    deep: dict = {}
    node = deep
    for _ in range(100_000):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(LimitExceeded):
        from_json(deep)
    deep_list: list = []
    for _ in range(100_000):
        deep_list = [deep_list]
    with pytest.raises(LimitExceeded):
        to_json(deep_list)


def test_floats_do_not_convert_to_json():
    with pytest.raises(InvalidRecord):
        to_json({"a": 1.5})


plain_keys = st.text(max_size=6).filter(lambda k: not k.startswith("$"))  # $-keys have meanings
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.binary(min_size=1, max_size=8).map(cid_for_cbor),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(plain_keys, children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(plain_keys, json_values, max_size=5))
def test_to_json_and_back_is_the_identity(value):
    assert from_json(json.loads(json.dumps(to_json(value)))) == value
    assert loads(json.dumps(to_json(value))) == value


# -- loads: JSON text to DAG-CBOR values in one pass ---------------------------------------------


@pytest.mark.parametrize("case", FIXTURES + VALID, ids=lambda c: c.get("cid") or c["note"])
def test_loads_reads_what_from_json_reads(case):
    assert loads(json.dumps(case["json"])) == from_json(case["json"])


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["note"])
def test_loads_then_the_data_model_check_refuses_what_from_json_refuses(case):
    def read_record(text: str) -> dict:  # as Repo.load reads a value: loads, an object, the data model
        value = loads(text)
        if type(value) is not dict:
            raise InvalidRecord("not an object")
        check_data_model(value)
        return value

    with pytest.raises(InvalidRecord):
        read_record(json.dumps(case["json"]))


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"x": {"$link": "bafyrei"}}',
        '{"x": {"$link": "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454", "y": 1}}',
        '{"x": {"$bytes": "not base64!"}}',
        '{"x": 1.5}',
        '{"x": 1e400}',
    ],
)
def test_loads_refuses_what_atproto_json_forbids(text):
    with pytest.raises(InvalidRecord):
        loads(text)


def test_loads_turns_an_integral_float_into_an_int():
    assert loads('{"n": 123.0, "m": [1E2]}') == {"n": 123, "m": [100]}
