"""Signing keys, did:key and atproto's strict (64-byte, low-S) ECDSA signatures."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import multibase

from pypds import (
    InvalidSigningKey,
    K256SigningKey,
    P256SigningKey,
    PublicKey,
    generate_signing_key,
    load_signing_key,
    parse_did_key,
)
from pypds.keys import K256_ORDER, P256_ORDER, load_public_key

from .conftest import INTEROP, load_json

CRYPTO = INTEROP / "crypto"
ORDERS = {"k256": K256_ORDER, "p256": P256_ORDER}
EC_CURVES = {"k256": ec.SECP256K1(), "p256": ec.SECP256R1()}
K256_HEX = "9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c"


def b64decode(text: str) -> bytes:
    """Standard-alphabet base64 without padding, as used by the interop fixtures."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def split_sig(sig: bytes) -> tuple[int, int]:
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def join_sig(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def plain_ecdsa_accepts(public: PublicKey, data: bytes, r: int, s: int) -> bool:
    """Whether textbook ECDSA (no low-S rule) accepts (r, s): proves a rejection is pypds's own rule."""
    key = ec.EllipticCurvePublicKey.from_encoded_point(EC_CURVES[public.curve], public.compressed)
    try:
        key.verify(encode_dss_signature(r, s), hashlib.sha256(data).digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


@pytest.fixture(params=["k256", "p256"])
def curve(request):
    return request.param


@pytest.fixture
def key(curve):
    return generate_signing_key(curve)


# -- interop fixtures ---------------------------------------------------------------------

SIGNATURE_CASES = load_json(CRYPTO / "signature-fixtures.json")


@pytest.mark.parametrize("case", SIGNATURE_CASES, ids=[c["comment"] for c in SIGNATURE_CASES])
def test_interop_signature_verification_matches_fixture(case):
    public = parse_did_key(case["publicKeyDid"])
    assert public.curve == {"ES256": "p256", "ES256K": "k256"}[case["algorithm"]]
    message = b64decode(case["messageBase64"])
    signature = b64decode(case["signatureBase64"])
    assert public.verify(message, signature) is case["validSignature"]


@pytest.mark.parametrize("case", SIGNATURE_CASES, ids=[c["comment"] for c in SIGNATURE_CASES])
def test_interop_public_key_multibase_matches_did_key(case):
    # publicKeyMultibase is the bare compressed point (no multicodec prefix)
    public = parse_did_key(case["publicKeyDid"])
    point = multibase.decode(case["publicKeyMultibase"])
    assert point == public.compressed
    assert PublicKey(public.curve, point).did_key == case["publicKeyDid"]


def test_interop_signature_fixtures_cover_high_s_and_der():
    tags = {t for c in SIGNATURE_CASES for t in c["tags"]}
    assert {"high-s", "der-encoded"} <= tags
    assert {c["validSignature"] for c in SIGNATURE_CASES} == {True, False}


@pytest.mark.parametrize("case", [c for c in SIGNATURE_CASES if "high-s" in c["tags"]], ids=lambda c: c["algorithm"])
def test_interop_high_s_signature_is_mathematically_valid_but_rejected(case):
    public = parse_did_key(case["publicKeyDid"])
    message = b64decode(case["messageBase64"])
    r, s = split_sig(b64decode(case["signatureBase64"]))
    assert s > ORDERS[public.curve] // 2
    assert plain_ecdsa_accepts(public, message, r, s)
    assert not public.verify(message, join_sig(r, s))


K256_DIDKEYS = load_json(CRYPTO / "w3c_didkey_K256.json")
P256_DIDKEYS = load_json(CRYPTO / "w3c_didkey_P256.json")


@pytest.mark.parametrize("case", K256_DIDKEYS, ids=[c["publicDidKey"][-8:] for c in K256_DIDKEYS])
def test_w3c_k256_private_key_hex_gives_did_key(case):
    key = load_signing_key(case["privateKeyBytesHex"])
    assert isinstance(key, K256SigningKey)
    assert key.did_key == case["publicDidKey"]
    assert key.to_bytes().hex() == case["privateKeyBytesHex"]
    assert parse_did_key(case["publicDidKey"]) == key.public_key


@pytest.mark.parametrize("case", P256_DIDKEYS, ids=[c["publicDidKey"][-8:] for c in P256_DIDKEYS])
def test_w3c_p256_private_key_base58_gives_did_key(case):
    secret = multibase.decode("z" + case["privateKeyBytesBase58"])
    assert len(secret) == 32
    key = P256SigningKey(secret)
    assert key.did_key == case["publicDidKey"]
    assert load_signing_key(secret, curve="p256").did_key == case["publicDidKey"]
    assert key.to_bytes() == secret
    assert parse_did_key(case["publicDidKey"]) == key.public_key


# -- sign / verify ----------------------------------------------------------------------


def test_sign_verify_round_trip(key):
    data = b"atproto commit bytes"
    sig = key.sign(data)
    assert key.public_key.verify(data, sig)
    assert parse_did_key(key.did_key).verify(data, sig)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=256))
def test_k256_signatures_are_64_bytes_low_s_and_verify(data):
    key = load_signing_key(K256_HEX)
    sig = key.sign(data)
    assert len(sig) == 64
    r, s = split_sig(sig)
    assert 0 < r < K256_ORDER
    assert 0 < s <= K256_ORDER // 2
    assert key.public_key.verify(data, sig)


_P256_KEY = P256SigningKey(bytes.fromhex(K256_HEX))  # any scalar below both orders


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=256))
def test_p256_signatures_are_64_bytes_low_s_and_verify(data):
    # P-256 signing is randomized: about half of raw signatures come out high-S
    # and must be normalized, so many messages exercise both branches
    sig = _P256_KEY.sign(data)
    assert len(sig) == 64
    r, s = split_sig(sig)
    assert 0 < r < P256_ORDER
    assert 0 < s <= P256_ORDER // 2
    assert _P256_KEY.public_key.verify(data, sig)


def test_k256_signing_is_deterministic():
    key = load_signing_key(K256_HEX)
    assert key.sign(b"abc") == key.sign(b"abc")


def test_high_s_signature_is_rejected(key, curve):
    order = ORDERS[curve]
    data = b"high-s test"
    r, s = split_sig(key.sign(data))
    high = order - s
    assert high > order // 2
    # the flipped signature is valid textbook ECDSA ...
    assert plain_ecdsa_accepts(key.public_key, data, r, high)
    # ... but atproto requires low-S
    assert not key.public_key.verify(data, join_sig(r, high))


def test_der_signature_is_rejected(key):
    data = b"der test"
    r, s = split_sig(key.sign(data))
    der = encode_dss_signature(r, s)
    assert plain_ecdsa_accepts(key.public_key, data, r, s)
    assert not key.public_key.verify(data, der)


def test_signature_with_wrong_key_is_rejected(curve):
    signer, other = generate_signing_key(curve), generate_signing_key(curve)
    data = b"who signed this?"
    sig = signer.sign(data)
    assert signer.public_key.verify(data, sig)
    assert not other.public_key.verify(data, sig)


def test_signature_over_other_data_is_rejected(key):
    sig = key.sign(b"original")
    assert not key.public_key.verify(b"0riginal", sig)


def test_signature_from_other_curve_key_is_rejected():
    secret = bytes.fromhex(K256_HEX)
    k, p = K256SigningKey(secret), P256SigningKey(secret)
    data = b"same scalar, different curves"
    assert not p.public_key.verify(data, k.sign(data))
    assert not k.public_key.verify(data, p.sign(data))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda sig, n: sig[:63], id="63-bytes"),
        pytest.param(lambda sig, n: sig + b"\x00", id="65-bytes"),
        pytest.param(lambda sig, n: b"", id="empty"),
        pytest.param(lambda sig, n: bytes(32) + sig[32:], id="r-zero"),
        pytest.param(lambda sig, n: sig[:32] + bytes(32), id="s-zero"),
        pytest.param(lambda sig, n: n.to_bytes(32, "big") + sig[32:], id="r-equals-order"),
        pytest.param(lambda sig, n: sig[:31] + bytes([sig[31] ^ 1]) + sig[32:], id="r-bit-flip"),
        pytest.param(lambda sig, n: sig[:63] + bytes([sig[63] ^ 1]), id="s-bit-flip"),
    ],
)
def test_malformed_signature_is_rejected(key, curve, mangle):
    data = b"mangled"
    sig = key.sign(data)
    assert key.public_key.verify(data, sig)
    assert not key.public_key.verify(data, mangle(sig, ORDERS[curve]))


# -- key loading -------------------------------------------------------------------------


def test_did_key_round_trips_through_parse(key, curve):
    public = parse_did_key(key.did_key)
    assert public == key.public_key
    assert public.curve == curve
    assert public.did_key == key.did_key
    assert hash(public) == hash(key.public_key)
    assert key.did_key.startswith({"k256": "did:key:zQ3s", "p256": "did:key:zDna"}[curve])


def test_private_key_bytes_round_trip(key):
    again = load_signing_key(key.to_bytes(), curve=key.curve)
    assert again.did_key == key.did_key
    assert load_signing_key(key.to_bytes().hex(), curve=key.curve).did_key == key.did_key


def test_load_signing_key_passes_key_objects_through(key):
    assert load_signing_key(key) is key


def test_load_public_key_accepts_all_forms(key):
    assert load_public_key(key) == key.public_key
    assert load_public_key(key.public_key) is key.public_key
    assert load_public_key(key.did_key) == key.public_key


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x01" * 31, id="31-bytes"),
        pytest.param(b"\x01" * 33, id="33-bytes"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param("01" * 31, id="62-hex-chars"),
        pytest.param("01" * 33, id="66-hex-chars"),
        pytest.param("zz" * 32, id="non-hex-string"),
        pytest.param("0x" + "01" * 31, id="0x-prefixed"),
        pytest.param(b"\x00" * 32, id="zero-scalar"),
        pytest.param(K256_ORDER.to_bytes(32, "big"), id="scalar-equals-k256-order"),
        pytest.param(None, id="none"),
        pytest.param(12345, id="int"),
    ],
)
def test_load_signing_key_rejects_bad_k256_input(value):
    with pytest.raises(InvalidSigningKey):
        load_signing_key(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x01" * 31, id="31-bytes"),
        pytest.param(b"\x00" * 32, id="zero-scalar"),
        pytest.param(P256_ORDER.to_bytes(32, "big"), id="scalar-equals-p256-order"),
        pytest.param(b"\xff" * 32, id="scalar-above-order"),
    ],
)
def test_load_signing_key_rejects_bad_p256_input(value):
    with pytest.raises(InvalidSigningKey):
        load_signing_key(value, curve="p256")


def test_unsupported_curve_is_rejected():
    with pytest.raises(InvalidSigningKey):
        load_signing_key(K256_HEX, curve="ed25519")
    with pytest.raises(InvalidSigningKey):
        generate_signing_key("ed25519")
    with pytest.raises(InvalidSigningKey):
        PublicKey("ed25519", b"\x02" + bytes(32))


@pytest.mark.parametrize(
    "length",
    [
        0,
        31,
        33,
    ],
)
def test_k256_signing_key_constructor_rejects_wrong_length(length):
    # a small non-zero scalar, padded with leading zeros to the given length
    with pytest.raises(InvalidSigningKey):
        K256SigningKey(b"\x00" * (length - 1) + b"\x01" if length else b"")


@pytest.mark.parametrize(
    "length",
    [
        0,
        31,
        33,
    ],
)
def test_p256_signing_key_constructor_rejects_wrong_length(length):
    # a small non-zero scalar, padded with leading zeros to the given length
    with pytest.raises(InvalidSigningKey):
        P256SigningKey(b"\x00" * (length - 1) + b"\x01" if length else b"")


def _did_key(raw: bytes) -> str:
    return "did:key:" + multibase.encode(raw, "base58btc")


VALID_K256_DID = "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc"
VALID_K256_POINT = multibase.decode(VALID_K256_DID[len("did:key:") :])[2:]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("did:key:zgarbage0OIl", id="not-base58"),
        pytest.param("did:key:", id="empty"),
        pytest.param("did:key:z", id="empty-payload"),
        pytest.param("did:web:example.com", id="not-did-key"),
        pytest.param("DID:KEY:" + VALID_K256_DID[8:], id="upper-case-prefix"),
        pytest.param(VALID_K256_DID + " ", id="trailing-space"),
        pytest.param(VALID_K256_DID[:-1], id="truncated"),
        pytest.param("did:key:f" + (b"\xe7\x01" + VALID_K256_POINT).hex(), id="base16-multibase"),
        pytest.param(_did_key(b"\xed\x01" + bytes(32)), id="ed25519-multicodec"),
        pytest.param(_did_key(b"\x12\x00" + VALID_K256_POINT), id="unknown-multicodec-prefix"),
        pytest.param(_did_key(b"\xe7\x01" + b"\x04" + bytes(64)), id="uncompressed-point"),
        pytest.param(_did_key(b"\xe7\x01" + VALID_K256_POINT[:-1]), id="short-point"),
        pytest.param(_did_key(b"\xe7\x01" + b"\x02" + bytes(32)), id="k256-point-not-on-curve"),
        pytest.param(_did_key(b"\x80\x24" + b"\x05" + bytes(32)), id="p256-bad-point-tag"),
        pytest.param(None, id="none"),
        pytest.param(VALID_K256_DID.encode(), id="bytes"),
    ],
)
def test_parse_did_key_rejects_garbage(value):
    with pytest.raises(InvalidSigningKey):
        parse_did_key(value)


def test_invalid_signing_key_is_a_value_error():
    with pytest.raises(ValueError):
        load_signing_key("nope")
