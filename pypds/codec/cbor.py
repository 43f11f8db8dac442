"""DAG-CBOR encoding and decoding, and atproto record rules.

A thin, typed layer over cbrrr (canonical, non-recursive, strict). Decoding
errors of any kind become :class:`InvalidCbor`. On top of the codec:

* :func:`encode_record` / :func:`decode_record` apply the atproto record
  rules: the top level is a map with a non-empty string ``$type``, no floats
  anywhere, bounded nesting depth and size.
* :func:`check_data_model` walks a value iteratively (never recursively, so a
  deep input cannot cause ``RecursionError``).

Trap: a Python ``str`` may hold a lone surrogate (``"\ud800"``, from JSON
escapes or undecodable command-line bytes), which has no UTF-8 form. Map
keys are checked for it here (cbrrr reports one in a key as a
``SystemError`` while sorting keys); string values fail in the encoder,
which :func:`encode` turns into :class:`InvalidRecord`.
"""

from __future__ import annotations

from typing import Any

import cbrrr

from ..errors import InvalidCbor, InvalidRecord, LimitExceeded, shown
from ..limits import DEFAULT_LIMITS, Limits
from .cid import CID, is_well_formed_cid, link_from_bytes, relink

__all__ = [
    "encode",
    "decode",
    "encode_record",
    "decode_record",
    "check_data_model",
    "field_path",
]


def encode(value: Any, where: str = "") -> bytes:
    """Encode a value as canonical DAG-CBOR (map keys sorted, shortest ints); InvalidRecord if it cannot be.

    Links are :class:`~pypds.codec.cid.CID`s; plain ``cbrrr.CID``s (values
    decoded by cbrrr itself) are accepted too, at the cost of a copy.
    """
    try:
        return _encode_links(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecord(f"cannot encode as DAG-CBOR{_at(where)}: {exc}") from None
    except SystemError as exc:  # cbrrr loses an error raised while sorting map keys
        cause = exc.__context__ if isinstance(exc.__context__, (TypeError, ValueError)) else exc
        raise InvalidRecord(f"cannot encode as DAG-CBOR{_at(where)}: {cause}") from None


def _encode_links(value: Any) -> bytes:
    """cbrrr's encoder for values linking with :class:`CID`; on a type it refuses (a plain
    ``cbrrr.CID``, or a type no link makes valid), one more try with every link a ``CID``."""
    try:
        return cbrrr.encode_dag_cbor(value, cid_type=CID)
    except TypeError:
        return cbrrr.encode_dag_cbor(relink(value), cid_type=CID)


def decode(data: bytes, where: str = "") -> Any:
    """Decode one canonical DAG-CBOR value; anything else raises InvalidCbor."""
    try:
        return cbrrr.decode_dag_cbor(data, cid_ctor=link_from_bytes)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        at = f" in {where}" if where else ""
        raise InvalidCbor(f"invalid DAG-CBOR{at}: {exc}") from None


def check_data_model(value: Any, where: str = "", limits: Limits = DEFAULT_LIMITS) -> None:
    """Check a decoded value against the atproto data model.

    Floats are rejected, map keys must be strings, nesting is bounded by
    ``limits.max_cbor_depth``. Iterative: safe on arbitrarily deep input.
    Scalars are checked where they are found; only containers go on the stack.
    """
    max_depth = limits.max_cbor_depth
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        container, depth = stack.pop()
        if depth >= max_depth:
            raise LimitExceeded("max_cbor_depth", depth + 1, max_depth, where)
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    raise InvalidRecord(f"map key is not a string{_at(where)}: {shown(key)}")
                if not key.isascii():
                    _check_unicode(key, where)
            if "$type" in container:
                _check_typed_object(container, where)
            items: Any = container.values()
        elif type(container) is list:
            items = container
        else:
            _check_scalar(container, where, value)
            continue
        for item in items:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif not (kind is str or kind is bytes or kind is bool or item is None):  # those need no check
                _check_scalar(item, where, value)


def field_path(root: Any, target: Any) -> str:
    """Where ``target`` (this very object) is in ``root``, for messages: ``embed.images[0].alt``;
    "" if it is ``root`` itself or absent. Iterative; each map and list is visited once."""
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        item, path = stack.pop()
        if item is target:
            return path
        kind = type(item)
        if (kind is dict or kind is list) and id(item) not in seen:
            seen.add(id(item))
            if kind is dict:
                stack.extend((sub, f"{path}.{key}" if path else str(key)) for key, sub in item.items())
            else:
                stack.extend((sub, f"{path}[{index}]") for index, sub in enumerate(item))
    return ""


def _at(where: str) -> str:
    return f" in {where}" if where else ""


def _shown_at(root: Any, item: Any, text: str) -> str:
    """``text`` (how ``item`` is shown) preceded by the field that holds it in ``root``."""
    field = field_path(root, item)
    return f"{field} is {text}" if field else text


def _check_unicode(key: str, where: str) -> None:
    """A map key must have a UTF-8 form (no lone surrogates)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord(f"map key is not valid Unicode (a lone surrogate){_at(where)}: {shown(key)}") from None


def _check_scalar(item: Any, where: str, root: Any) -> None:
    """A non-container value: ints in range, well-formed links; floats and other types refused.
    Messages name the field of ``root`` that holds it."""
    kind = type(item)
    if kind is int:
        if not -(1 << 63) <= item < (1 << 63):
            raise InvalidRecord(
                f"integer out of the 64-bit signed range{_at(where)}: {_shown_at(root, item, str(item))}"
            )
    elif kind is CID or isinstance(item, cbrrr.CID):  # a plain cbrrr.CID is encoded as a CID
        if not is_well_formed_cid(item.cid_bytes):
            text = f"link {item.cid_bytes[:8].hex()}"
            raise InvalidRecord(f"link is not a valid CIDv1{_at(where)}: {_shown_at(root, item, text)}")
    elif kind is float:
        raise InvalidRecord(
            f"floats are not allowed in atproto records{_at(where)}: {_shown_at(root, item, shown(item))}"
        )
    elif not (item is None or kind is str or kind is bytes or kind is bool):
        text = f"a {kind.__name__}"
        raise InvalidRecord(f"unsupported value type {kind.__name__}{_at(where)}: {_shown_at(root, item, text)}")


def _check_typed_object(item: dict, where: str) -> None:
    """``$type`` must be a non-empty string; typed blob references must be well formed."""
    at = _at(where)
    type_name = item["$type"]
    if type(type_name) is not str or not type_name:
        raise InvalidRecord(f"$type must be a non-empty string{at}, not {shown(type_name)}")
    if type_name != "blob":
        return
    ref, mime, size = item.get("ref"), item.get("mimeType"), item.get("size")
    if not isinstance(ref, cbrrr.CID):
        raise InvalidRecord(f"blob reference{at} lacks a CID 'ref'")
    if type(mime) is not str or not mime:
        raise InvalidRecord(f"blob reference{at} lacks a string 'mimeType'")
    if type(size) is not int or size < 0:
        raise InvalidRecord(f"blob reference{at} has no valid integer 'size': {shown(size)}")


def _check_record_shape(value: Any, where: str) -> None:
    at = f" {where}" if where else ""
    if type(value) is not dict:
        raise InvalidRecord(f"record{at} is not a map but {type(value).__name__}")
    rtype = value.get("$type")
    if type(rtype) is not str or not rtype:
        raise InvalidRecord(f"record{at} lacks a non-empty string $type")


def encode_record(record: Any, where: str = "", limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Validate an atproto record (dict) and return its canonical DAG-CBOR bytes."""
    _check_record_shape(record, where)
    check_data_model(record, where, limits)
    data = encode(record, where)
    if len(data) > limits.max_record_bytes:
        raise LimitExceeded("max_record_bytes", len(data), limits.max_record_bytes, where)
    return data


def decode_record(data: bytes, where: str = "", limits: Limits = DEFAULT_LIMITS) -> dict:
    """Decode and validate record bytes; they must be canonical DAG-CBOR.

    cbrrr's decoder accepts canonical DAG-CBOR only (minimal integers and
    lengths, sorted unique map keys, no indefinite lengths, 64-bit floats,
    tag 42 only), so decoded bytes re-encode to themselves; the test suite
    checks that property against mutated input.
    """
    if len(data) > limits.max_record_bytes:
        raise LimitExceeded("max_record_bytes", len(data), limits.max_record_bytes, where)
    value = decode(data, where)
    _check_record_shape(value, where)
    check_data_model(value, where, limits)
    return value
