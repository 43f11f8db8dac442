"""Content identifiers.

``pypds.CID`` is a subclass of :class:`cbrrr.CID`, the DAG-CBOR codec's CID
class, whose ``str()`` is the canonical string form (``bafy...``), so a CID
written into a URL, a file name or JSON with ``f"{cid}"`` is right; ``repr()``
keeps ``CID(bafy...)``. Every CID pypds makes or decodes is one: the codec
builds it directly (``cid_ctor=CID``, as cheap as cbrrr's own class) and
encodes it (``cid_type=CID``), so no conversion happens on the hot paths.
``CID.decode("bafy...")`` parses the string form and ``cid.encode()``
produces it.

Plain ``cbrrr.CID`` objects (from values decoded by cbrrr itself) compare
and hash equal to ``CID``; :func:`parse_cid` and :func:`relink` turn them
into ``CID``. cbrrr's encoder recognises one CID class at a time: to encode
pypds values with cbrrr directly, pass ``cid_type=pypds.CID``.

atproto repositories use exactly two CID forms, both CIDv1 with a 32-byte
sha2-256 digest:

* ``01 71 12 20 <digest>``: dag-cbor (commits, MST nodes, records), ``bafyrei...``
* ``01 55 12 20 <digest>``: raw (blobs), ``bafkrei...``

Anything else read from untrusted input is rejected with :class:`InvalidCid`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Self

import cbrrr

from ..errors import BlockHashMismatch, InvalidCid, shown

__all__ = [
    "CID",
    "DAG_CBOR_PREFIX",
    "RAW_PREFIX",
    "cid_for_cbor",
    "cid_for_raw",
    "parse_cid",
    "check_cid_bytes",
    "verify_block",
    "is_dag_cbor",
    "relink",
]

DAG_CBOR_PREFIX = b"\x01\x71\x12\x20"
RAW_PREFIX = b"\x01\x55\x12\x20"
CID_LENGTH = 36


class CID(cbrrr.CID):
    """A CID whose ``str()`` (and ``format()``) is its canonical base32 string, as ``encode()`` returns.

    A :class:`cbrrr.CID` otherwise: same constructor (binary CID bytes),
    ``cid_bytes``, ``encode()``, ``CID.decode(text)``, ``repr()`` and
    equality and hash by bytes (so a plain ``cbrrr.CID`` of the same bytes is
    equal and finds the same dict entry).
    """

    __slots__ = ()

    def __str__(self) -> str:
        return self.encode()

    def __format__(self, spec: str) -> str:
        return format(self.encode(), spec)

    if TYPE_CHECKING:  # cbrrr's own annotations name its base class; these build a CID at run time too

        @classmethod
        def decode(cls, data: bytes | str) -> Self: ...

        @classmethod
        def cidv1_dag_cbor_sha256_32_from(cls, data: bytes) -> Self: ...

        @classmethod
        def cidv1_raw_sha256_32_from(cls, data: bytes) -> Self: ...


def cid_for_cbor(data: bytes) -> CID:
    """The dag-cbor CID of a DAG-CBOR block."""
    return CID(DAG_CBOR_PREFIX + hashlib.sha256(data).digest())


def cid_for_raw(data: bytes) -> CID:
    """The raw-codec CID of a blob."""
    return CID(RAW_PREFIX + hashlib.sha256(data).digest())


def is_dag_cbor(cid: CID) -> bool:
    """True if ``cid`` is a CIDv1 dag-cbor sha2-256 CID."""
    raw = cid.cid_bytes
    return len(raw) == CID_LENGTH and raw[:4] == DAG_CBOR_PREFIX


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(len(raw), pos + 9)):
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("bad varint")


def is_well_formed_cid(raw: bytes) -> bool:
    """True if ``raw`` is a structurally valid binary CIDv1 (any codec and hash).

    Records may link to any CIDv1; the repository structure itself (commit,
    MST) only uses the two sha2-256 forms, checked by :func:`check_cid_bytes`.
    """
    if len(raw) == CID_LENGTH and raw[:4] in (DAG_CBOR_PREFIX, RAW_PREFIX):
        return True
    try:
        version, pos = _read_varint(raw, 0)
        _codec, pos = _read_varint(raw, pos)
        _hash, pos = _read_varint(raw, pos)
        size, pos = _read_varint(raw, pos)
    except ValueError:
        return False
    return version == 1 and size > 0 and len(raw) - pos == size


def link_from_bytes(raw: bytes) -> CID:
    """CID constructor for decoding: rejects tag-42 payloads that are not CIDv1."""
    if not is_well_formed_cid(raw):
        raise ValueError(f"tag 42 link is not a valid CIDv1: {bytes(raw[:8]).hex()}")
    return CID(raw)


def check_cid_bytes(raw: bytes, where: str = "", *, allow_raw: bool = True) -> None:
    """Raise :class:`InvalidCid` unless ``raw`` is a binary CID pypds accepts."""
    if len(raw) == CID_LENGTH and (raw[:4] == DAG_CBOR_PREFIX or (allow_raw and raw[:4] == RAW_PREFIX)):
        return
    at = f" at {where}" if where else ""
    if raw[:2] == b"\x12\x20":
        raise InvalidCid(f"CIDv0 is not supported{at}")
    if raw[:1] != b"\x01":
        raise InvalidCid(f"unsupported CID version{at}: {raw[:4].hex()}")
    kinds = "dag-cbor or raw" if allow_raw else "dag-cbor"
    raise InvalidCid(
        f"unsupported CID{at}: expected CIDv1 {kinds} sha2-256 (36 bytes), "
        f"got {len(raw)} bytes starting {raw[:4].hex()}"
    )


def parse_cid(value: str | bytes | cbrrr.CID, *, allow_raw: bool = True) -> CID:
    """Parse a CID from its string form, binary form or a CID (a plain ``cbrrr.CID`` becomes a
    :class:`CID`), and check its form."""
    if isinstance(value, cbrrr.CID):
        raw = value.cid_bytes
    elif isinstance(value, str):
        if not value.startswith("b") or value != value.strip():
            raise InvalidCid(f"not a base32 CID string: {shown(value)}")
        try:
            raw = CID.decode(value).cid_bytes
        except ValueError as exc:
            raise InvalidCid(f"cannot decode CID string {shown(value)}: {exc}") from None
        if CID(raw).encode() != value:
            raise InvalidCid(f"CID string is not in canonical lower-case form: {shown(value)}")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise InvalidCid(f"expected a CID, got {type(value).__name__}")
    check_cid_bytes(raw, allow_raw=allow_raw)
    return value if type(value) is CID else CID(raw)


def verify_block(cid: CID, data: bytes, where: str = "") -> None:
    """Raise :class:`BlockHashMismatch` unless sha256(data) is the CID's digest."""
    if hashlib.sha256(data).digest() != cid.cid_bytes[4:]:
        at = f" at {where}" if where else ""
        raise BlockHashMismatch(f"block {cid.encode()}{at}: bytes do not hash to its CID")


def relink(value: Any) -> Any:
    """``value`` with every other ``cbrrr.CID`` in it (at any depth) replaced by a :class:`CID`.

    For data decoded by cbrrr itself. Maps and lists are copied, each once (a
    container shared by two places stays shared, a cycle does not loop);
    other values are kept as they are. Iterative: deep input is safe.
    """
    copies: dict[int, Any] = {}
    holder = [value]
    stack: list[tuple[Any, Any]] = [(holder, 0)]
    while stack:
        parent, slot = stack.pop()
        item = parent[slot]
        kind = type(item)
        if kind is dict or kind is list:
            copy = copies.get(id(item))
            if copy is None:
                copy = copies[id(item)] = item.copy()
                stack.extend((copy, key) for key in (copy if kind is dict else range(len(copy))))
            parent[slot] = copy
        elif kind is not CID and isinstance(item, cbrrr.CID):
            parent[slot] = CID(item.cid_bytes)
    return holder[0]
