"""Commits follow the v3 spec to the byte."""

from __future__ import annotations

import dag_cbor
import multiformats
import pytest

from pypds import (
    BadSignature,
    InvalidCommit,
    cid_for_cbor,
    decode_commit,
    generate_signing_key,
    sign_commit,
)
from pypds.keys import K256_ORDER, P256_ORDER
from pypds.tid import encode_tid

from .conftest import DID

EMPTY_ROOT = cid_for_cbor(dag_cbor.encode({"e": [], "l": None}))
REV = "3jzfcijpj2z2a"


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_signed_commit_has_v3_fields_in_canonical_order(curve):
    key = generate_signing_key(curve)
    _commit, block, cid = sign_commit(DID, EMPTY_ROOT, REV, key)
    decoded = dag_cbor.decode(block)
    assert list(decoded) == ["did", "rev", "sig", "data", "prev", "version"]
    assert decoded["version"] == 3 and decoded["prev"] is None and decoded["rev"] == REV
    assert dag_cbor.encode(decoded) == block
    assert cid == cid_for_cbor(block)


@pytest.mark.parametrize("curve,order", [("k256", K256_ORDER), ("p256", P256_ORDER)])
def test_signature_is_64_byte_low_s_over_unsigned_encoding(curve, order):
    key = generate_signing_key(curve)
    for i in range(20):
        commit, block, _ = sign_commit(DID, EMPTY_ROOT, encode_tid(1_700_000_000_000_000 + i), key)
        assert len(commit.sig) == 64
        assert int.from_bytes(commit.sig[32:], "big") <= order // 2
        unsigned = dag_cbor.decode(block)
        del unsigned["sig"]
        assert key.public_key.verify(dag_cbor.encode(unsigned), commit.sig)
        commit.verify(key.public_key)


def test_decode_commit_round_trips_and_verifies():
    key = generate_signing_key()
    commit, block, cid = sign_commit(DID, EMPTY_ROOT, REV, key)
    again = decode_commit(block, cid)
    assert again == commit
    again.verify(key.public_key)
    with pytest.raises(BadSignature):
        again.verify(generate_signing_key().public_key)


def _mutated(change):
    key = generate_signing_key()
    _, block, _ = sign_commit(DID, EMPTY_ROOT, REV, key)
    obj = dag_cbor.decode(block)
    change(obj)
    return dag_cbor.encode(obj)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(version=2),
        lambda c: c.update(version="3"),
        lambda c: c.pop("did"),
        lambda c: c.pop("sig"),
        lambda c: c.update(extra=1),
        lambda c: c.update(rev="not-a-tid"),
        lambda c: c.update(did="not a did"),
        lambda c: c.update(data="bafy"),
        lambda c: c.update(sig="abc"),
        lambda c: c.update(prev=5),
    ],
    ids=[
        "v2",
        "version-str",
        "no-did",
        "no-sig",
        "extra-field",
        "bad-rev",
        "bad-did",
        "data-str",
        "sig-str",
        "prev-int",
    ],
)
def test_malformed_commit_is_rejected(change):
    with pytest.raises(InvalidCommit):
        decode_commit(_mutated(change))


def test_commit_without_prev_is_read_and_its_signature_checked_without_it():
    key = generate_signing_key()
    unsigned = {"did": DID, "version": 3, "data": multiformats.CID.decode(EMPTY_ROOT.encode()), "rev": REV}
    sig = key.sign(dag_cbor.encode(unsigned))
    commit = decode_commit(dag_cbor.encode({**unsigned, "sig": sig}))
    assert commit.prev is None and not commit.has_prev
    commit.verify(key.public_key)
