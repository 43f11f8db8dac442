"""Signing keys, public keys and ``did:key``.

atproto signs with ECDSA over secp256k1 (ES256K) or NIST P-256 (ES256). A
signature is 64 raw bytes ``r || s`` (never DER) with ``s`` in the low half of
the curve order; verifiers reject anything else. Public keys travel as
``did:key:z<base58btc(multicodec prefix || 33-byte compressed point)>`` with
prefix ``e7 01`` (secp256k1) or ``80 24`` (P-256).

secp256k1 signing uses coincurve (libsecp256k1: deterministic, always low-S);
verification on both curves and P-256 signing use ``cryptography``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import coincurve
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from multiformats import multibase

from .errors import InvalidSigningKey, shown

__all__ = [
    "SigningKey",
    "K256SigningKey",
    "P256SigningKey",
    "PublicKey",
    "generate_signing_key",
    "load_signing_key",
    "parse_did_key",
    "load_public_key",
    "is_high_s",
]

K256_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_CURVES = {
    "k256": (b"\xe7\x01", K256_ORDER, ec.SECP256K1()),
    "p256": (b"\x80\x24", P256_ORDER, ec.SECP256R1()),
}


class PublicKey:
    """A secp256k1 or P-256 public key that verifies atproto signatures."""

    def __init__(self, curve: str, compressed: bytes) -> None:
        if curve not in _CURVES:
            raise InvalidSigningKey(f"unsupported curve {shown(curve)}")
        prefix, order, ec_curve = _CURVES[curve]
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec_curve, compressed)
        except ValueError as exc:
            raise InvalidSigningKey(f"invalid {curve} public key: {exc}") from None
        self.curve = curve
        self.compressed = bytes(compressed)
        self._order = order
        self._prefix = prefix

    @property
    def did_key(self) -> str:
        """The ``did:key:z...`` form of this key."""
        return "did:key:" + multibase.encode(self._prefix + self.compressed, "base58btc")

    def verify(self, data: bytes, signature: bytes, *, allow_high_s: bool = False) -> bool:
        """True if ``signature`` is a 64-byte low-S ECDSA signature of sha256(data).

        ``allow_high_s`` also accepts ``s`` in the upper half of the curve
        order: only for commits written before the low-S rule (version 2).
        """
        if len(signature) != 64:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        top = self._order - 1 if allow_high_s else self._order // 2
        if not (0 < r < self._order and 0 < s <= top):
            return False
        digest = hashlib.sha256(data).digest()
        try:
            self._key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.curve, self.compressed) == (
            other.curve,
            other.compressed,
        )

    def __hash__(self) -> int:
        return hash((self.curve, self.compressed))

    def __repr__(self) -> str:
        return f"PublicKey({self.did_key})"


class SigningKey(ABC):
    """A private key that produces atproto signatures."""

    curve: str

    @abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign sha256(data); returns 64 bytes r || s with low S."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The 32-byte private scalar."""

    @property
    @abstractmethod
    def public_key(self) -> PublicKey:
        """The matching public key."""

    @property
    def did_key(self) -> str:
        """The ``did:key`` of the matching public key."""
        return self.public_key.did_key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.did_key})"


class K256SigningKey(SigningKey):
    """secp256k1 (ES256K) private key."""

    curve = "k256"

    def __init__(self, secret: bytes) -> None:
        _check_secret(secret, "secp256k1")
        try:
            self._key = coincurve.PrivateKey(bytes(secret))
        except (ValueError, TypeError) as exc:
            raise InvalidSigningKey(f"invalid secp256k1 private key: {exc}") from None
        self._public = PublicKey("k256", self._key.public_key.format(compressed=True))

    @classmethod
    def generate(cls) -> K256SigningKey:
        return cls(coincurve.PrivateKey().secret)

    def sign(self, data: bytes) -> bytes:
        # libsecp256k1 signs deterministically (RFC 6979) and always low-S
        return self._key.sign_recoverable(hashlib.sha256(data).digest(), hasher=None)[:64]

    def to_bytes(self) -> bytes:
        return self._key.secret

    @property
    def public_key(self) -> PublicKey:
        return self._public


class P256SigningKey(SigningKey):
    """NIST P-256 (ES256) private key."""

    curve = "p256"

    def __init__(self, secret: bytes) -> None:
        _check_secret(secret, "P-256")
        try:
            self._key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
        except (ValueError, TypeError) as exc:
            raise InvalidSigningKey(f"invalid P-256 private key: {exc}") from None
        compressed = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        self._public = PublicKey("p256", compressed)

    @classmethod
    def generate(cls) -> P256SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key.private_numbers().private_value.to_bytes(32, "big"))

    def sign(self, data: bytes) -> bytes:
        der = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        if s > P256_ORDER // 2:
            s = P256_ORDER - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def to_bytes(self) -> bytes:
        return self._key.private_numbers().private_value.to_bytes(32, "big")

    @property
    def public_key(self) -> PublicKey:
        return self._public


def _check_secret(secret: object, curve: str) -> None:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != 32:
        raise InvalidSigningKey(f"a {curve} private key must be exactly 32 bytes")


KeyInput = SigningKey | bytes | str


def generate_signing_key(curve: str = "k256") -> SigningKey:
    """A fresh random private key on ``curve`` (``"k256"`` or ``"p256"``)."""
    if curve == "k256":
        return K256SigningKey.generate()
    if curve == "p256":
        return P256SigningKey.generate()
    raise InvalidSigningKey(f"unsupported curve {shown(curve)}")


def load_signing_key(value: KeyInput, curve: str = "k256") -> SigningKey:
    """A signing key from a key object, 32 raw private bytes or their hex form."""
    if isinstance(value, SigningKey):
        return value
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise InvalidSigningKey("private key string is not hex") from None
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise InvalidSigningKey("a private key must be 32 bytes (or 64 hex characters)")
    if curve == "k256":
        return K256SigningKey(bytes(value))
    if curve == "p256":
        return P256SigningKey(bytes(value))
    raise InvalidSigningKey(f"unsupported curve {shown(curve)}")


def is_high_s(signature: bytes, curve: str) -> bool:
    """Whether a 64-byte signature's ``s`` is in the upper half of ``curve``'s order."""
    order = _CURVES[curve][1]
    return len(signature) == 64 and int.from_bytes(signature[32:], "big") > order // 2


def parse_did_key(did_key: str) -> PublicKey:
    """The public key named by a ``did:key:z...`` string."""
    if not isinstance(did_key, str) or not did_key.startswith("did:key:z"):
        raise InvalidSigningKey(f"not a base58btc did:key: {shown(did_key)}")
    try:
        raw = multibase.decode(did_key[len("did:key:") :])
    except Exception as exc:  # multiformats raises assorted types
        raise InvalidSigningKey(f"cannot decode did:key {shown(did_key)}: {exc}") from None
    for curve, (prefix, _order, _ec) in _CURVES.items():
        if raw[:2] == prefix:
            if len(raw) != 35:
                raise InvalidSigningKey(f"did:key {shown(did_key)} is not a compressed point")
            return PublicKey(curve, raw[2:])
    raise InvalidSigningKey(f"did:key {shown(did_key)} uses an unsupported key type")


def load_public_key(value: PublicKey | SigningKey | str) -> PublicKey:
    """A public key from a PublicKey, a SigningKey or a ``did:key`` string."""
    if isinstance(value, PublicKey):
        return value
    if isinstance(value, SigningKey):
        return value.public_key
    return parse_did_key(value)
