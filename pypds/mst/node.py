"""MST nodes: the in-memory form, key heights, and the block encoding."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, Union

import cbrrr

from ..codec.cid import CID, DAG_CBOR_PREFIX, RAW_PREFIX
from ..errors import InvalidCbor, InvalidMst, LimitExceeded, shown
from ..limits import DEFAULT_LIMITS, Limits

Link = Union[CID, "Node", None]


class Node:
    """One MST node: sorted full keys, their values, and len(keys)+1 links.

    ``links[0]`` holds the keys before ``keys[0]``; ``links[i + 1]`` the keys
    between ``keys[i]`` and ``keys[i + 1]``. The encoding and CID are computed
    on first use and cached (the node is immutable).
    """

    __slots__ = ("_cid", "_data", "keys", "links", "persisted", "vals")

    def __init__(
        self,
        keys: tuple[bytes, ...],
        vals: tuple[CID, ...],
        links: tuple[Link, ...],
        *,
        cid: CID | None = None,
        data: bytes | None = None,
    ) -> None:
        self.keys = keys
        self.vals = vals
        self.links = links
        self._cid = cid
        self._data = data
        self.persisted = cid is not None

    @property
    def cid(self) -> CID:
        """The dag-cbor CID of this node's block."""
        if self._cid is None:
            self._encode()
        return self._cid  # type: ignore[return-value]

    @property
    def data(self) -> bytes:
        """This node's block bytes."""
        if self._data is None:
            self._encode()
        return self._data  # type: ignore[return-value]

    def _encode(self) -> None:
        data = encode_node(self)
        self._data = data
        self._cid = CID(DAG_CBOR_PREFIX + hashlib.sha256(data).digest())

    @property
    def is_empty(self) -> bool:
        """True for a node with no keys and no link (only valid as an empty root)."""
        return not self.keys and self.links[0] is None

    def __repr__(self) -> str:
        return f"Node({len(self.keys)} keys, {self.cid.encode()})"


def empty_node() -> Node:
    """A new empty node (the root of the empty tree).

    Always a fresh object: ``persisted`` is per block store, so an empty
    node must never be shared between repositories.
    """
    return Node((), (), (None,))


class NodeSource(Protocol):
    """Anything that turns a node CID into a :class:`Node` (usually via a cache)."""

    def load_node(self, cid: CID) -> Node: ...


def resolve(source: NodeSource, link: Link) -> Node | None:
    """The node a link points to, loading it from ``source`` if needed."""
    if link is None or isinstance(link, Node):
        return link
    return source.load_node(link)


def link_cid(link: Link) -> CID | None:
    """The CID a link stands for (computing it for in-memory nodes)."""
    return link.cid if isinstance(link, Node) else link


def key_height(key: bytes) -> int:
    """Layer of a key: leading zero bits of sha256(key), halved (rounded down)."""
    value = int.from_bytes(hashlib.sha256(key).digest(), "big")
    return (256 - value.bit_length()) >> 1


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Number of leading bytes shared by ``a`` and ``b``."""
    n = min(len(a), len(b))
    diff = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    if not diff:
        return n
    return n - 1 - (diff.bit_length() - 1) // 8


def encode_node(node: Node) -> bytes:
    """The canonical DAG-CBOR block of a node (maximal prefix compression)."""
    entries: list[Any] = []
    prev = b""
    links, vals = node.links, node.vals
    for i, key in enumerate(node.keys):
        shared = common_prefix_len(prev, key) if prev else 0
        entries.append({"k": key[shared:], "p": shared, "t": link_cid(links[i + 1]), "v": vals[i]})
        prev = key
    fields: dict[str, Any] = {"e": entries, "l": link_cid(links[0])}
    return cbrrr.encode_dag_cbor(fields, cid_type=CID)


class _Malformed(Exception):
    """Raised inside decoding; turned into a typed error naming the node's CID."""

    def __init__(self, error: type[Exception], message: str, limit: tuple[str, int, int] | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.limit = limit


def _check_link(value: object, what: str) -> CID | None:
    if value is None:
        return None
    if type(value) is not CID:
        raise _Malformed(InvalidMst, f"{what} is not a CID or null")
    raw = value.cid_bytes
    if len(raw) != 36 or raw[:4] != DAG_CBOR_PREFIX:
        raise _Malformed(InvalidMst, f"{what} is not a dag-cbor sha2-256 CID")
    return value


def _check_value(value: object, index: int) -> CID:
    if type(value) is not CID:
        raise _Malformed(InvalidMst, f"entry {index} value is not a CID")
    raw = value.cid_bytes
    if len(raw) != 36 or raw[:4] not in (DAG_CBOR_PREFIX, RAW_PREFIX):
        raise _Malformed(InvalidMst, f"entry {index} value is not a sha2-256 CIDv1")
    return value


def decode_links(data: bytes, cid: CID) -> tuple[CID | None, list[tuple[CID, CID | None]]]:
    """The left link and the ``(value, right link)`` of each entry of a node block.

    For walks over trees already stored and checked (export): keys are not
    rebuilt and MST rules are not re-checked, only what the walk relies on,
    that links and values are CIDs. :func:`decode_node` checks everything.
    """
    try:
        obj = cbrrr.decode_dag_cbor(data, cid_ctor=CID)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidCbor(f"MST node {cid.encode()}: invalid DAG-CBOR: {exc}") from None
    entries = obj.get("e") if type(obj) is dict else None
    left = obj.get("l") if type(obj) is dict else None
    if type(entries) is not list or not (left is None or type(left) is CID):
        raise InvalidMst(f"MST node {cid.encode()}: expected a map with a list 'e' and a link 'l'")
    out: list[tuple[CID, CID | None]] = []
    for entry in entries:
        value = entry.get("v") if type(entry) is dict else None
        right = entry.get("t") if type(entry) is dict else None
        if type(value) is not CID or not (right is None or type(right) is CID):
            raise InvalidMst(f"MST node {cid.encode()}: an entry lacks a value CID or has a bad link")
        out.append((value, right))
    return left, out


def decode_node(data: bytes, cid: CID | None = None, limits: Limits = DEFAULT_LIMITS) -> Node:
    """Decode and structurally check one MST node block.

    Checks the field set and types, link forms, prefix lengths, maximal
    compression and strict key order. Key heights and subtree ranges need
    the node's place in the tree and are checked by :func:`walk_tree`.
    """
    try:
        keys, vals, links = _decode_fields(data, limits)
    except _Malformed as bad:
        where = cid.encode() if cid is not None else "(unknown CID)"
        if bad.limit is not None:
            name, value, maximum = bad.limit
            raise LimitExceeded(name, value, maximum, f"MST node {where}") from None
        raise bad.error(f"MST node {where}: {bad}") from None
    return Node(keys, vals, links, cid=cid, data=data)


def _decode_fields(data: bytes, limits: Limits) -> tuple[tuple[bytes, ...], tuple[CID, ...], tuple[Link, ...]]:
    try:
        obj = cbrrr.decode_dag_cbor(data, cid_ctor=CID)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _Malformed(InvalidCbor, f"invalid DAG-CBOR: {exc}") from None
    if type(obj) is not dict or obj.keys() != {"e", "l"}:
        raise _Malformed(InvalidMst, "expected a map with exactly 'e' and 'l'")
    entries = obj["e"]
    if type(entries) is not list:
        raise _Malformed(InvalidMst, "'e' is not a list")
    if len(entries) > limits.max_mst_node_entries:
        limit = ("max_mst_node_entries", len(entries), limits.max_mst_node_entries)
        raise _Malformed(LimitExceeded, "too many entries", limit)
    links: list[Link] = [_check_link(obj["l"], "'l'")]
    keys: list[bytes] = []
    vals: list[CID] = []
    prev = b""
    max_key = limits.max_mst_key_bytes
    for i, entry in enumerate(entries):
        if type(entry) is not dict or entry.keys() != {"k", "p", "t", "v"}:
            raise _Malformed(InvalidMst, f"entry {i} must have exactly k, p, t, v")
        suffix, shared = entry["k"], entry["p"]
        if type(suffix) is not bytes or type(shared) is not int:
            raise _Malformed(InvalidMst, f"entry {i} has a non-bytes k or non-int p")
        if not 0 <= shared <= len(prev):
            raise _Malformed(InvalidMst, f"entry {i} prefix length {shared} out of range")
        key = prev[:shared] + suffix
        if len(key) > max_key:
            raise _Malformed(LimitExceeded, "key too long", ("max_mst_key_bytes", len(key), max_key))
        if key <= prev and i > 0:
            raise _Malformed(InvalidMst, f"keys not strictly sorted at entry {i} ({shown(key)})")
        if shared < len(prev) and suffix and suffix[0] == prev[shared]:  # one more byte was shared
            raise _Malformed(InvalidMst, f"entry {i} prefix compression is not maximal")
        keys.append(key)
        vals.append(_check_value(entry["v"], i))
        link = entry["t"]
        links.append(None if link is None else _check_link(link, f"entry {i} 't'"))
        prev = key
    return tuple(keys), tuple(vals), tuple(links)
