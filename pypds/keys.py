"""Signing keys, public keys and ``did:key``.

atproto signs with ECDSA over secp256k1 (ES256K) or NIST P-256 (ES256). A
signature is 64 raw bytes ``r || s`` (never DER) with ``s`` in the low half of
the curve order; verifiers reject anything else. Public keys travel as
``did:key:z<base58btc(multicodec prefix || 33-byte compressed point)>`` with
prefix ``e7 01`` (secp256k1) or ``80 24`` (P-256).

secp256k1 signing uses coincurve (libsecp256k1: deterministic, always low-S);
verification on both curves and P-256 signing use ``cryptography``. Both are
imported on first use, not with this module (``cryptography`` alone costs
about 10 ms of every start), and a signing key makes its library key the
first time it signs or gives its public key: opening a repository to read
it never loads them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING

from .errors import InvalidSigningKey, shown

if TYPE_CHECKING:
    import coincurve
    from cryptography.hazmat.primitives.asymmetric import ec

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
    "base58btc_encode",
    "base58btc_decode",
]

K256_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

#: curve -> (did:key multicodec prefix, group order)
_CURVES = {"k256": (b"\xe7\x01", K256_ORDER), "p256": (b"\x80\x24", P256_ORDER)}
_CURVE_NAMES = {"k256": "secp256k1", "p256": "P-256"}

#: Longest did:key accepted (the two pypds reads are 57 characters); bounds the base58 decoding.
MAX_DID_KEY_CHARS = 128
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_DIGITS = {char: value for value, char in enumerate(_BASE58)}


def base58btc_encode(raw: bytes) -> str:
    """The base58btc (Bitcoin alphabet) form of ``raw``, without a multibase prefix."""
    number = int.from_bytes(raw, "big")
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_BASE58[digit])
    zeros = len(raw) - len(raw.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def base58btc_decode(text: str, what: str = "base58btc text") -> bytes:
    """The bytes of a base58btc string (no multibase prefix); :class:`InvalidSigningKey` names
    ``what`` and the first character that is not base58."""
    number = 0
    for char in text:
        digit = _BASE58_DIGITS.get(char)
        if digit is None:
            raise InvalidSigningKey(f"{what}: {shown(char)} is not a base58 character (base58 has no 0, O, I or l)")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")


class PublicKey:
    """A secp256k1 or P-256 public key that verifies atproto signatures."""

    def __init__(self, curve: str, compressed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        if curve not in _CURVES:
            raise InvalidSigningKey(f"unsupported curve {shown(curve)}")
        prefix, order = _CURVES[curve]
        ec_curve = ec.SECP256K1() if curve == "k256" else ec.SECP256R1()
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec_curve, compressed)
        except ValueError:  # cryptography's reasons name its internals, not the user's mistake
            raise InvalidSigningKey(f"not a {_CURVE_NAMES[curve]} public key: not a point on the curve") from None
        self.curve = curve
        self.compressed = bytes(compressed)
        self._order = order
        self._prefix = prefix

    @property
    def did_key(self) -> str:
        """The ``did:key:z...`` form of this key."""
        return "did:key:z" + base58btc_encode(self._prefix + self.compressed)

    def verify(self, data: bytes, signature: bytes, *, allow_high_s: bool = False) -> bool:
        """True if ``signature`` is a 64-byte low-S ECDSA signature of sha256(data).

        ``allow_high_s`` also accepts ``s`` in the upper half of the curve
        order: only for commits written before the low-S rule (version 2).
        """
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

        if len(signature) != 64:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        top = self._order - 1 if allow_high_s else self._order // 2
        if not (0 < r < self._order and 0 < s <= top):
            return False
        digest = hashlib.sha256(data).digest()
        if self.curve == "k256":  # libsecp256k1: about ten times faster than OpenSSL's secp256k1
            low_s = s if s <= self._order // 2 else self._order - s  # (r, s) and (r, n - s) verify alike
            return self._k256.verify(encode_dss_signature(r, low_s), digest, hasher=None)
        try:
            self._key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            return False
        return True

    @cached_property
    def _k256(self) -> coincurve.PublicKey:
        import coincurve

        return coincurve.PublicKey(self.compressed)

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
        _check_secret(secret, "secp256k1", K256_ORDER)  # the range libsecp256k1 accepts
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> K256SigningKey:
        import coincurve

        return cls(coincurve.PrivateKey().secret)

    @cached_property
    def _key(self) -> coincurve.PrivateKey:
        import coincurve

        return coincurve.PrivateKey(self._secret)

    def sign(self, data: bytes) -> bytes:
        # libsecp256k1 signs deterministically (RFC 6979) and always low-S
        return self._key.sign_recoverable(hashlib.sha256(data).digest(), hasher=None)[:64]

    def to_bytes(self) -> bytes:
        return self._secret

    @cached_property
    def public_key(self) -> PublicKey:
        return PublicKey("k256", self._key.public_key.format(compressed=True))


class P256SigningKey(SigningKey):
    """NIST P-256 (ES256) private key."""

    curve = "p256"

    def __init__(self, secret: bytes) -> None:
        _check_secret(secret, "P-256", P256_ORDER)  # the range cryptography accepts
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> P256SigningKey:
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key.private_numbers().private_value.to_bytes(32, "big"))

    @cached_property
    def _key(self) -> ec.EllipticCurvePrivateKey:
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.derive_private_key(int.from_bytes(self._secret, "big"), ec.SECP256R1())

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        der = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        if s > P256_ORDER // 2:
            s = P256_ORDER - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def to_bytes(self) -> bytes:
        return self._secret

    @cached_property
    def public_key(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        encoding, form = serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        return PublicKey("p256", self._key.public_key().public_bytes(encoding, form))


def _check_secret(secret: object, curve: str, order: int) -> None:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != 32:
        raise InvalidSigningKey(f"a {curve} private key must be exactly 32 bytes")
    if not 0 < int.from_bytes(secret, "big") < order:
        raise InvalidSigningKey(f"not a valid {curve} private key: zero, or too large for the curve")


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
        if len(value) != 64:
            raise InvalidSigningKey(f"a private key is 64 hex characters (32 bytes), not {len(value)} characters")
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise InvalidSigningKey("a private key is 64 hex characters (32 bytes): this is not hex") from None
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
        raise InvalidSigningKey(f"not a base58btc did:key (did:key:z...): {shown(did_key)}")
    if len(did_key) > MAX_DID_KEY_CHARS:
        raise InvalidSigningKey(f"not a did:key pypds reads: longer than {MAX_DID_KEY_CHARS} characters")
    raw = base58btc_decode(did_key[len("did:key:z") :], f"did:key {shown(did_key)}")
    for curve, (prefix, _order) in _CURVES.items():
        if raw[:2] == prefix:
            if len(raw) != 35:
                raise InvalidSigningKey(
                    f"did:key {shown(did_key)} does not hold a compressed {_CURVE_NAMES[curve]} key "
                    f"({len(raw) - 2} bytes, not 33): is it complete?"
                )
            try:
                return PublicKey(curve, raw[2:])
            except InvalidSigningKey as exc:
                raise InvalidSigningKey(f"did:key {shown(did_key)}: {exc}") from None
    if raw[:2] == b"\xed\x01":
        raise InvalidSigningKey(f"did:key {shown(did_key)} is an Ed25519 key: atproto signs with secp256k1 or P-256")
    raise InvalidSigningKey(
        f"did:key {shown(did_key)} is not a secp256k1 (zQ3s...) or P-256 (zDna...) key: is it complete?"
    )


def load_public_key(value: PublicKey | SigningKey | str) -> PublicKey:
    """A public key from a PublicKey, a SigningKey or a ``did:key`` string."""
    if isinstance(value, PublicKey):
        return value
    if isinstance(value, SigningKey):
        return value.public_key
    return parse_did_key(value)
