"""DAG-CBOR codec and atproto record rules."""

from __future__ import annotations

import base64
import contextlib
import json
import struct

import dag_cbor
import multiformats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pypds import (
    CID,
    InvalidCbor,
    InvalidRecord,
    LimitExceeded,
    PypdsError,
    cid_for_cbor,
)
from pypds.codec import cbor as pcbor
from pypds.limits import MAX_CBOR_DEPTH, MAX_RECORD_BYTES, Limits

from .conftest import INTEROP, decode_dag_cbor, encode_dag_cbor

DATA_MODEL = INTEROP / "data-model"
WRAPPER_TYPE = "com.example.wrapper"


def b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def same(a, b) -> bool:
    """Structural equality that also compares types (True != 1, b'' != '')."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# -- interop data-model fixtures ---------------------------------------------------------

FIXTURES = json.loads((DATA_MODEL / "data-model-fixtures.json").read_text())


@pytest.mark.parametrize("fx", FIXTURES, ids=[f["cid"][-8:] for f in FIXTURES])
def test_fixture_cbor_decodes_to_its_json(fx):
    data = b64decode(fx["cbor_base64"])
    assert decode_dag_cbor(data, atjson_mode=True) == fx["json"]


@pytest.mark.parametrize("fx", FIXTURES, ids=[f["cid"][-8:] for f in FIXTURES])
def test_fixture_cbor_decode_encode_is_byte_identical(fx):
    data = b64decode(fx["cbor_base64"])
    assert pcbor.encode(pcbor.decode(data)) == data


@pytest.mark.parametrize("fx", FIXTURES, ids=[f["cid"][-8:] for f in FIXTURES])
def test_fixture_cid_matches(fx):
    data = b64decode(fx["cbor_base64"])
    assert cid_for_cbor(data).encode() == fx["cid"]


@pytest.mark.parametrize("fx", FIXTURES, ids=[f["cid"][-8:] for f in FIXTURES])
def test_fixture_json_encodes_to_the_fixture_bytes(fx):
    value = decode_dag_cbor(encode_dag_cbor(fx["json"], atjson_mode=True))
    assert pcbor.encode(value) == b64decode(fx["cbor_base64"])


# -- differential test against the pure-Python dag_cbor package ------------------------------

cids = st.binary(max_size=40).map(cid_for_cbor)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | cids
)
# "$type" keys are left out: their values are subject to record rules of their own
keys = st.text(max_size=8).filter(lambda k: k != "$type")
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def to_multiformats(value):
    if isinstance(value, CID):
        return multiformats.CID.decode(bytes(value))
    if isinstance(value, dict):
        return {k: to_multiformats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_multiformats(v) for v in value]
    return value


def from_multiformats(value):
    if isinstance(value, multiformats.CID):
        return CID(bytes(value))
    if isinstance(value, dict):
        return {k: from_multiformats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_multiformats(v) for v in value]
    return value


def test_cid_conversion_between_libraries_is_lossless():
    cid = cid_for_cbor(b"hello")
    m = to_multiformats(cid)
    assert isinstance(m, multiformats.CID)
    assert bytes(m) == bytes(cid)
    assert from_multiformats(m) == cid


@settings(max_examples=200, deadline=None)
@given(values)
def test_encoding_matches_reference_dag_cbor_library(value):
    ours = pcbor.encode(value)
    assert ours == dag_cbor.encode(to_multiformats(value))
    assert same(pcbor.decode(ours), value)
    assert same(from_multiformats(dag_cbor.decode(ours)), value)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, values, max_size=3))
def test_random_records_round_trip(fields):
    record = {**fields, "$type": "com.example.record"}
    data = pcbor.encode_record(record)
    assert data == dag_cbor.encode(to_multiformats(record))
    assert same(pcbor.decode_record(data), record)


# -- interop data-model valid / invalid inputs ----------------------------------------------


def _json_number(text: str):
    # JSON has one number type: atproto JSON readers take an integral number
    # such as 123.0 as the integer 123 (the "float, but integer-like" valid case)
    number = float(text)
    return int(number) if number.is_integer() else number


def _load_cases(name: str) -> list[dict]:
    return json.loads((DATA_MODEL / name).read_text(), parse_float=_json_number)


INVALID = {c["note"]: c["json"] for c in _load_cases("data-model-invalid.json")}
VALID = {c["note"]: c["json"] for c in _load_cases("data-model-valid.json")}

# Invalid inputs whose problem exists in the DAG-CBOR form of the data.
INVALID_RECORD_NOTES = [
    "float",
    "record with $type null",
    "record with $type wrong type",
    "record with empty $type string",
]
INVALID_BLOB_NOTES = ["blob with string size", "blob with missing key"]
# Invalid only as JSON syntax ($bytes / $link objects): they never reach the
# DAG-CBOR form at all, and belong to a JSON <-> data model converter, which
# pypds does not have yet.
JSON_ONLY_NOTES = [
    "bytes with wrong field type",
    "bytes with extra fields",
    "link with wrong field type",
    "link with bogus CID",
    "link with extra fields",
]


def to_data_model(value):
    """atproto JSON -> DAG-CBOR-form value ($link -> CID, $bytes -> bytes) via cbrrr's atjson mode.

    cbrrr's atjson mode refuses floats outright, so a value containing floats
    (which has no $link / $bytes either) is already in its DAG-CBOR form.
    """
    try:
        return decode_dag_cbor(encode_dag_cbor(value, atjson_mode=True))
    except TypeError as exc:
        if "float" not in str(exc):
            raise
        return value


def test_every_data_model_fixture_case_is_classified():
    classified = {"top-level not an object", *INVALID_RECORD_NOTES, *INVALID_BLOB_NOTES, *JSON_ONLY_NOTES}
    assert set(INVALID) == classified
    assert len(VALID) == 5


def test_top_level_non_object_is_not_a_record():
    value = to_data_model(INVALID["top-level not an object"])
    with pytest.raises(InvalidRecord):
        pcbor.encode_record(value)
    with pytest.raises(InvalidRecord):
        pcbor.decode_record(pcbor.encode(value))


@pytest.mark.parametrize("note", INVALID_RECORD_NOTES)
def test_invalid_record_is_rejected_by_encode_record(note):
    record = to_data_model(INVALID[note])["rcrd"]
    with pytest.raises(InvalidRecord):
        pcbor.encode_record(record)


@pytest.mark.parametrize("note", INVALID_RECORD_NOTES)
def test_invalid_record_bytes_are_rejected_by_decode_record(note):
    record = to_data_model(INVALID[note])["rcrd"]
    data = encode_dag_cbor(record)  # canonical bytes; only the record rules are broken
    with pytest.raises(InvalidRecord):
        pcbor.decode_record(data)


@pytest.mark.parametrize(
    "note",
    [
        "float",
        "record with $type null",
        "record with $type wrong type",
        "record with empty $type string",
        "blob with string size",
        "blob with missing key",
    ],
)
def test_invalid_data_model_value_nested_in_a_record_is_rejected(note):
    # the fixture value itself (a map holding the bad record / blob) embedded in a valid record
    record = {"$type": WRAPPER_TYPE, **to_data_model(INVALID[note])}
    with pytest.raises(InvalidRecord):
        pcbor.encode_record(record)


@pytest.mark.parametrize("note", sorted(VALID))
def test_valid_data_model_value_is_accepted_in_a_record(note):
    value = to_data_model(VALID[note])
    record = {"$type": WRAPPER_TYPE, **value}
    data = pcbor.encode_record(record)
    assert same(pcbor.decode_record(data), record)
    if "rcrd" in value:
        inner = value["rcrd"]
        assert same(pcbor.decode_record(pcbor.encode_record(inner)), inner)


def test_python_float_is_rejected_even_when_integral():
    # in the DAG-CBOR form a float is a float: 1.0 would encode as a CBOR float
    with pytest.raises(InvalidRecord):
        pcbor.encode_record({"$type": "com.example.x", "a": 1.0})


# -- decode_record strictness ---------------------------------------------------------------

TYPE_KV = b"\x65$type\x65a.b.c"  # "$type": "a.b.c"
X1 = b"\x61x\x01"  # "x": 1  (shorter key: sorts before "$type")


def test_hand_built_canonical_record_is_accepted():
    # guards the byte-level cases below: the same construction, done right, decodes
    data = b"\xa2" + X1 + TYPE_KV
    assert pcbor.decode_record(data) == {"x": 1, "$type": "a.b.c"}
    assert pcbor.encode({"x": 1, "$type": "a.b.c"}) == data


BAD_RECORD_BYTES = {
    "unsorted-keys": b"\xa2" + TYPE_KV + X1,
    "duplicate-keys": b"\xa3" + X1 + b"\x61x\x02" + TYPE_KV,
    "non-minimal-int-1-byte": b"\xa2\x61x\x18\x01" + TYPE_KV,
    "non-minimal-int-2-bytes": b"\xa2\x61x\x19\x00\x01" + TYPE_KV,
    "non-minimal-negative-int": b"\xa2\x61x\x38\x00" + TYPE_KV,
    "non-minimal-string-length": b"\xa2" + X1 + b"\x78\x05$type\x65a.b.c",
    "non-minimal-map-length": b"\xb8\x02" + X1 + TYPE_KV,
    "indefinite-length-map": b"\xbf" + X1 + TYPE_KV + b"\xff",
    "float64": b"\xa2\x61x\xfb" + struct.pack(">d", 3.25) + TYPE_KV,
    "float64-integral": b"\xa2\x61x\xfb" + struct.pack(">d", 1.0) + TYPE_KV,
    "float16": b"\xa2\x61x\xf9\x3c\x00" + TYPE_KV,
    "undefined": b"\xa2\x61x\xf7" + TYPE_KV,
    "non-42-tag": b"\xa2\x61x\xc1\x01" + TYPE_KV,
    "integer-map-key": b"\xa2\x01\x01" + TYPE_KV,
    "invalid-utf8": b"\xa2\x61x\x61\xff" + TYPE_KV,
    "uint64-above-int64": b"\xa2\x61x\x1b" + b"\xff" * 8 + TYPE_KV,
    "nint64-below-int64": b"\xa2\x61x\x3b" + b"\xff" * 8 + TYPE_KV,
    "top-level-list": b"\x81\x01",
    "top-level-string": b"\x63abc",
    "missing-type": b"\xa1" + X1,
    "type-not-string": b"\xa1\x65$type\x01",
    "type-empty": b"\xa1\x65$type\x60",
    "trailing-byte": b"\xa2" + X1 + TYPE_KV + b"\x00",
    "two-values": b"\xa2" + X1 + TYPE_KV + b"\xa2" + X1 + TYPE_KV,
    "truncated": (b"\xa2" + X1 + TYPE_KV)[:-1],
    "truncated-header": b"\xa2" + X1 + b"\x65$ty",
    "empty": b"",
}


@pytest.mark.parametrize("data", BAD_RECORD_BYTES.values(), ids=BAD_RECORD_BYTES.keys())
def test_decode_record_rejects_bad_bytes(data):
    with pytest.raises((InvalidCbor, InvalidRecord)) as info:
        pcbor.decode_record(data)
    assert isinstance(info.value, PypdsError)


@pytest.mark.parametrize(
    "name", ["unsorted-keys", "duplicate-keys", "non-minimal-int-1-byte", "non-minimal-string-length", "trailing-byte"]
)
def test_non_canonical_bytes_raise_invalid_cbor(name):
    with pytest.raises(InvalidCbor):
        pcbor.decode_record(BAD_RECORD_BYTES[name])


@pytest.mark.parametrize("name", ["float64", "float64-integral", "missing-type", "top-level-list"])
def test_record_rule_violations_raise_invalid_record(name):
    with pytest.raises(InvalidRecord):
        pcbor.decode_record(BAD_RECORD_BYTES[name])


def test_decode_record_rejects_link_that_is_not_a_cid():
    data = b"\xa2\x61x\xd8\x2a\x42\x00\x01" + TYPE_KV
    with pytest.raises(PypdsError):
        pcbor.decode_record(data)


def test_decode_rejects_link_without_multibase_zero_prefix():
    cid = cid_for_cbor(b"x")
    good = b"\xd8\x2a\x58\x25\x00" + bytes(cid)
    assert pcbor.decode(good) == cid
    bad = b"\xd8\x2a\x58\x24" + bytes(cid)
    with pytest.raises(InvalidCbor):
        pcbor.decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_decode_record_raises_only_pypds_errors_on_random_bytes(data):
    with contextlib.suppress(PypdsError):
        pcbor.decode_record(data)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, values, max_size=3), st.data())
def test_decode_record_rejects_any_truncation(fields, data):
    encoded = pcbor.encode_record({**fields, "$type": "com.example.record"})
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises((InvalidCbor, InvalidRecord)):
        pcbor.decode_record(encoded[:cut])


# -- limits -----------------------------------------------------------------------------------


def _nested_lists(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_record_at_the_depth_limit_is_accepted():
    # the record map is level 1, so MAX_CBOR_DEPTH - 1 nested lists fit
    record = {"$type": "com.example.deep", "n": _nested_lists(MAX_CBOR_DEPTH - 1)}
    data = pcbor.encode_record(record)
    assert pcbor.decode_record(data) == record


def test_record_one_level_too_deep_raises_limit_exceeded():
    record = {"$type": "com.example.deep", "n": _nested_lists(MAX_CBOR_DEPTH)}
    with pytest.raises(LimitExceeded) as info:
        pcbor.encode_record(record)
    assert info.value.limit == "max_cbor_depth"
    data = encode_dag_cbor(record)
    with pytest.raises(LimitExceeded):
        pcbor.decode_record(data)


def _nested_maps(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def test_nested_maps_at_the_depth_limit_are_accepted_and_one_more_is_not():
    ok = {"$type": "com.example.deep", "n": _nested_maps(MAX_CBOR_DEPTH - 1)}
    assert pcbor.decode_record(pcbor.encode_record(ok)) == ok
    too_deep = {"$type": "com.example.deep", "n": _nested_maps(MAX_CBOR_DEPTH)}
    with pytest.raises(LimitExceeded):
        pcbor.encode_record(too_deep)
    with pytest.raises(LimitExceeded):
        pcbor.decode_record(encode_dag_cbor(too_deep))


def test_deeply_nested_maps_raise_limit_exceeded():
    inner: dict = {}
    record = {"$type": "com.example.deep", "n": inner}
    for _ in range(MAX_CBOR_DEPTH + 5):
        nxt: dict = {}
        inner["n"] = nxt
        inner = nxt
    with pytest.raises(LimitExceeded):
        pcbor.encode_record(record)


@pytest.mark.parametrize("levels", [1_000, 100_000, 500_000])
def test_extremely_deep_bytes_raise_limit_exceeded_not_recursion_error(levels):
    # {"n": [[[...]]], "$type": "a.b.c"} with `levels` nested arrays, built as bytes
    data = b"\xa2\x61n" + b"\x81" * levels + b"\x80" + TYPE_KV
    assert len(data) < MAX_RECORD_BYTES
    with pytest.raises(LimitExceeded):
        pcbor.decode_record(data)


def test_extremely_deep_python_value_raises_limit_exceeded_not_recursion_error():
    record = {"$type": "com.example.deep", "n": _nested_lists(200_000)}
    with pytest.raises(LimitExceeded):
        pcbor.encode_record(record)


def test_custom_depth_limit_is_honoured():
    record = {"$type": "com.example.deep", "n": [[1]]}
    pcbor.encode_record(record, limits=Limits(max_cbor_depth=3))
    with pytest.raises(LimitExceeded):
        pcbor.encode_record(record, limits=Limits(max_cbor_depth=2))


def _record_of_size(size: int) -> dict:
    base = {"$type": "com.example.big", "t": "x" * 70_000}  # long enough for the 4-byte length form
    overhead = len(pcbor.encode(base)) - 70_000
    record = {"$type": "com.example.big", "t": "x" * (size - overhead)}
    assert len(pcbor.encode(record)) == size
    return record


def test_record_of_exactly_1_mib_is_accepted():
    record = _record_of_size(MAX_RECORD_BYTES)
    data = pcbor.encode_record(record)
    assert len(data) == 1 << 20
    assert pcbor.decode_record(data) == record


def test_record_over_1_mib_raises_limit_exceeded():
    record = _record_of_size(MAX_RECORD_BYTES + 1)
    with pytest.raises(LimitExceeded) as info:
        pcbor.encode_record(record)
    assert info.value.limit == "max_record_bytes"
    with pytest.raises(LimitExceeded):
        pcbor.decode_record(pcbor.encode(record))


# -- encode errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"$type": "com.example.x", 1: "int key"}, id="int-key"),
        pytest.param({"$type": "com.example.x", "v": {1, 2}}, id="set"),
        pytest.param({"$type": "com.example.x", "v": (1, 2)}, id="tuple"),
        pytest.param({"$type": "com.example.x", "v": 1 << 63}, id="int-too-large"),
        pytest.param({"$type": "com.example.x", "v": -(1 << 63) - 1}, id="int-too-small"),
        pytest.param({"$type": "com.example.x", "v": bytearray(b"x")}, id="bytearray"),
    ],
)
def test_encode_record_rejects_values_outside_the_data_model(value):
    with pytest.raises(InvalidRecord):
        pcbor.encode_record(value)


def test_encode_raises_invalid_record_for_unencodable_values():
    with pytest.raises(InvalidRecord):
        pcbor.encode({"v": object()})


def test_int64_extremes_are_accepted():
    record = {"$type": "com.example.x", "hi": (1 << 63) - 1, "lo": -(1 << 63)}
    assert pcbor.decode_record(pcbor.encode_record(record)) == record


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_bytes_the_decoder_accepts_are_canonical(data):
    """decode_record relies on this: cbrrr accepts only bytes that re-encode to themselves."""
    record = {
        "$type": "app.example.record",
        "n": data.draw(st.integers(-(2**63), 2**63 - 1)),
        "s": "text",
        "l": [1, "a"],
    }
    raw = bytearray(encode_dag_cbor(record))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if kind == "set":
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            raw.insert(at, data.draw(st.integers(0, 255)))
        elif len(raw) > 1:
            del raw[at]
    try:
        value = decode_dag_cbor(bytes(raw), cid_ctor=pcbor.link_from_bytes)
    except (ValueError, TypeError, OverflowError, PypdsError):
        return
    assert encode_dag_cbor(value) == bytes(raw)
