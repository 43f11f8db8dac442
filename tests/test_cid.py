"""CIDs: only CIDv1 dag-cbor / raw with a sha2-256 digest are accepted."""

from __future__ import annotations

import hashlib

import multiformats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pypds import CID, BlockHashMismatch, IntegrityError, InvalidCid, cid_for_cbor, cid_for_raw, parse_cid
from pypds.codec.cid import DAG_CBOR_PREFIX, RAW_PREFIX, check_cid_bytes, is_dag_cbor, verify_block

from .conftest import syntax_lines

CBOR_CID = cid_for_cbor(b"\xa1\x61a\x01")
RAW_CID = cid_for_raw(b"blob bytes")
CBOR_STR = CBOR_CID.encode()
RAW_STR = RAW_CID.encode()
DIGEST = hashlib.sha256(b"anything").digest()
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def test_well_known_cids():
    # sha2-256 of the empty string, as a raw-codec CIDv1
    assert cid_for_raw(b"").encode() == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert CBOR_STR.startswith("bafyrei")
    assert RAW_STR.startswith("bafkrei")
    assert bytes(CBOR_CID) == DAG_CBOR_PREFIX + hashlib.sha256(b"\xa1\x61a\x01").digest()
    assert bytes(RAW_CID) == RAW_PREFIX + hashlib.sha256(b"blob bytes").digest()


@pytest.mark.parametrize("cid", [CBOR_CID, RAW_CID], ids=["dag-cbor", "raw"])
def test_parse_cid_accepts_string_binary_and_cid_forms(cid):
    text, raw = cid.encode(), bytes(cid)
    assert parse_cid(text) == cid
    assert parse_cid(text).encode() == text
    assert parse_cid(raw) == cid
    assert bytes(parse_cid(raw)) == raw
    assert parse_cid(bytearray(raw)) == cid
    assert parse_cid(memoryview(raw)) == cid
    assert parse_cid(cid) is cid


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100), st.booleans())
def test_parse_cid_round_trips_any_block_cid(data, raw_codec):
    cid = cid_for_raw(data) if raw_codec else cid_for_cbor(data)
    text = cid.encode()
    assert parse_cid(text) == cid
    assert parse_cid(text).encode() == text
    assert parse_cid(bytes(cid)) == cid
    parsed = multiformats.CID.decode(text)  # an independent reading of the string form
    assert parsed.version == 1
    assert parsed.codec.name == ("raw" if raw_codec else "dag-cbor")
    assert parsed.hashfun.name == "sha2-256"
    assert parsed.raw_digest == hashlib.sha256(data).digest()


def test_is_dag_cbor_distinguishes_codecs():
    assert is_dag_cbor(CBOR_CID)
    assert not is_dag_cbor(RAW_CID)


def test_raw_cid_is_rejected_when_not_allowed():
    with pytest.raises(InvalidCid):
        parse_cid(RAW_STR, allow_raw=False)
    with pytest.raises(InvalidCid):
        parse_cid(bytes(RAW_CID), allow_raw=False)
    assert parse_cid(CBOR_STR, allow_raw=False) == CBOR_CID


# -- rejected forms -------------------------------------------------------------------------


@pytest.mark.parametrize("line", [line for line in syntax_lines("cid_syntax_valid.txt") if line])
def test_valid_but_unsupported_interop_cids_are_rejected(line):
    # all of these are well-formed CIDs, but none is CIDv1 dag-cbor/raw sha2-256
    with pytest.raises(InvalidCid):
        parse_cid(line)


@pytest.mark.parametrize("line", [line for line in syntax_lines("cid_syntax_invalid.txt") if line])
def test_invalid_interop_cids_are_rejected(line):
    with pytest.raises(InvalidCid):
        parse_cid(line)


@pytest.mark.parametrize(
    "line",
    [
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "zdj7WWeQ43G6JJvLWQWZpyHuAMq6uYWRjkBXFad11vE2LHhQ7",
        "f017012202c5f688262e0ece8569aa6f94d60aad55ca8d9d83734e4a7430d0cff6588ec2b",
    ],
)
def test_binary_form_of_dag_pb_cid_is_rejected(line):
    raw = bytes(multiformats.CID.decode(line))
    assert len(raw) == 36  # same length and hash as ours: only the codec differs
    with pytest.raises(InvalidCid):
        parse_cid(raw)
    with pytest.raises(InvalidCid):
        parse_cid(CID(raw))


CIDV0_RAW = b"\x12\x20" + DIGEST
UNSUPPORTED_RAW = {
    "cidv0-binary": CIDV0_RAW,
    "dag-pb": b"\x01\x70\x12\x20" + DIGEST,
    "dag-json": b"\x01\xa9\x02\x12\x20" + DIGEST,
    "sha2-512": b"\x01\x71\x13\x40" + hashlib.sha512(b"anything").digest(),
    "sha2-256-truncated-digest": b"\x01\x71\x12\x1f" + DIGEST[:31],
    "blake2b-256": b"\x01\x71\xa0\xe4\x02\x20" + DIGEST,
    "identity-hash": b"\x01\x55\x00\x05hello",
    "cidv2": b"\x02\x71\x12\x20" + DIGEST,
    "short-digest": DAG_CBOR_PREFIX + DIGEST[:31],
    "long-digest": DAG_CBOR_PREFIX + DIGEST + b"\x00",
    "prefix-only": DAG_CBOR_PREFIX,
    "multibase-zero-prefix": b"\x00" + DAG_CBOR_PREFIX + DIGEST,
    "empty": b"",
}


@pytest.mark.parametrize("raw", UNSUPPORTED_RAW.values(), ids=UNSUPPORTED_RAW.keys())
def test_unsupported_binary_cid_is_rejected(raw):
    with pytest.raises(InvalidCid):
        parse_cid(raw)
    with pytest.raises(InvalidCid):
        check_cid_bytes(raw)


@pytest.mark.parametrize(
    "raw",
    [v for k, v in UNSUPPORTED_RAW.items() if k not in ("empty", "multibase-zero-prefix")],
    ids=[k for k in UNSUPPORTED_RAW if k not in ("empty", "multibase-zero-prefix")],
)
def test_unsupported_cid_in_base32_string_form_is_rejected(raw):
    text = "b" + multiformats.multibase.encode(raw, "base32")[1:]
    assert text == CID(raw).encode()
    with pytest.raises(InvalidCid):
        parse_cid(text)


@pytest.mark.parametrize(
    "raw",
    [v for k, v in UNSUPPORTED_RAW.items() if k not in ("empty", "multibase-zero-prefix")],
    ids=[k for k in UNSUPPORTED_RAW if k not in ("empty", "multibase-zero-prefix")],
)
def test_unsupported_cid_object_is_rejected(raw):
    with pytest.raises(InvalidCid):
        parse_cid(CID(raw))


def test_cidv0_string_is_rejected():
    qm = multiformats.multibase.encode(CIDV0_RAW, "base58btc")[1:]
    assert qm.startswith("Qm")
    with pytest.raises(InvalidCid):
        parse_cid(qm)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(CBOR_STR.upper(), id="upper-case"),
        pytest.param("B" + CBOR_STR[1:].upper(), id="base32-upper-multibase"),
        pytest.param("b" + CBOR_STR[1:].upper(), id="upper-case-body"),
        pytest.param(CBOR_STR[:10] + CBOR_STR[10:].upper(), id="mixed-case"),
        pytest.param(" " + CBOR_STR, id="leading-space"),
        pytest.param(CBOR_STR + " ", id="trailing-space"),
        pytest.param(CBOR_STR + "\n", id="trailing-newline"),
        pytest.param(CBOR_STR[:20] + " " + CBOR_STR[20:], id="inner-space"),
        pytest.param(CBOR_STR[:-1], id="truncated"),
        pytest.param(CBOR_STR + "a", id="extended"),
        pytest.param(CBOR_STR + "=", id="padded"),
        pytest.param(CBOR_STR[:-1] + "1", id="non-base32-digit"),
        pytest.param(CBOR_STR[:-1] + BASE32[BASE32.index(CBOR_STR[-1]) ^ 1], id="non-zero-pad-bits"),
        pytest.param("z" + multiformats.multibase.encode(bytes(CBOR_CID), "base58btc")[1:], id="base58btc"),
        pytest.param("f" + bytes(CBOR_CID).hex(), id="base16"),
        pytest.param("", id="empty"),
        pytest.param("b", id="multibase-prefix-only"),
        pytest.param("bafyrei", id="prefix-only"),
        pytest.param("not a cid", id="garbage"),
        pytest.param("ipfs://" + CBOR_STR, id="url"),
    ],
)
def test_malformed_cid_string_is_rejected(text):
    with pytest.raises(InvalidCid):
        parse_cid(text)


@pytest.mark.parametrize("value", [None, 42, 1.5, ["bafy"], {"$link": CBOR_STR}])
def test_parse_cid_rejects_other_types(value):
    with pytest.raises(InvalidCid):
        parse_cid(value)


def test_invalid_cid_is_an_integrity_error_and_value_error():
    with pytest.raises(IntegrityError):
        parse_cid("nope")
    with pytest.raises(ValueError):
        parse_cid("nope")


# -- verify_block ---------------------------------------------------------------------------


BLOCK = b"\xa2\x61a\x01\x61b\x02"


def test_verify_block_accepts_matching_bytes():
    verify_block(cid_for_cbor(BLOCK), BLOCK)
    verify_block(cid_for_raw(b"blob"), b"blob")
    verify_block(cid_for_raw(b""), b"")


@pytest.mark.parametrize(
    "altered",
    [
        pytest.param(b"\xa2\x61a\x01\x61b\x03", id="last-byte-changed"),
        pytest.param(bytes([BLOCK[0] ^ 0x80]) + BLOCK[1:], id="first-bit-flipped"),
        pytest.param(BLOCK[:-1], id="truncated"),
        pytest.param(BLOCK + b"\x00", id="extended"),
        pytest.param(b"", id="empty"),
    ],
)
def test_verify_block_raises_on_altered_bytes(altered):
    with pytest.raises(BlockHashMismatch):
        verify_block(cid_for_cbor(BLOCK), altered)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_verify_block_detects_any_single_bit_flip(data, draw):
    cid = cid_for_cbor(data)
    verify_block(cid, data)
    pos = draw.draw(st.integers(min_value=0, max_value=len(data) * 8 - 1))
    flipped = bytearray(data)
    flipped[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(BlockHashMismatch):
        verify_block(cid, bytes(flipped))


def test_verify_block_names_the_cid():
    cid = cid_for_cbor(BLOCK)
    with pytest.raises(BlockHashMismatch, match=cid.encode()):
        verify_block(cid, b"other", where="test.car")
    with pytest.raises(IntegrityError):
        verify_block(cid, b"other")
