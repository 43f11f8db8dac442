"""The atproto JSON data model <-> DAG-CBOR values.

In JSON a link is ``{"$link": "<CID string>"}`` and bytes are
``{"$bytes": "<base64, standard alphabet, no padding>"}``; both objects
carry exactly that one key. A blob reference is ``{"$type": "blob", "ref":
{"$link": ...}, "mimeType": str, "size": int}``; the legacy form ``{"cid":
str, "mimeType": str}`` is plain data and passes through unchanged.

:func:`from_json` takes a parsed JSON object (a dict) and returns the
DAG-CBOR value (``CID`` links, ``bytes``), checking the data-model rules: a
map at the top level, no floats (an integral float such as ``123.0``, which
JSON cannot tell from ``123``, becomes an int), ``$type`` a non-empty
string, typed blobs well formed. :func:`to_json` goes the other way for any
DAG-CBOR value. Both are iterative: deep input cannot exhaust the stack.

:func:`loads` parses JSON text straight to DAG-CBOR values in one pass (for
bulk input: no second walk over every value); the data model is then
checked where the value is encoded (``cbor.encode_record``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import cbrrr

from ..errors import InvalidRecord, LimitExceeded, shown
from ..limits import DEFAULT_LIMITS, Limits
from .cbor import check_data_model, field_path
from .cid import CID, is_well_formed_cid

__all__ = ["to_json", "from_json", "loads"]


def to_json(value: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Convert a DAG-CBOR value to the atproto JSON form (``$link``, ``$bytes``)."""
    return _transform(value, _leaf_to_json, None, limits)


def from_json(obj: Any, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Convert a parsed atproto JSON object to a DAG-CBOR value, checking the data model."""
    if type(obj) is not dict:
        raise InvalidRecord(f"atproto data must be an object at the top level, not {type(obj).__name__}")
    value = _transform(obj, _leaf_from_json, _special_from_json, limits)
    check_data_model(value, "", limits)
    return value


def _leaf_to_json(value: Any, field: str = "") -> Any:
    kind = type(value)
    if kind is CID or isinstance(value, cbrrr.CID):
        return {"$link": value.encode()}
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode().rstrip("=")}
    if kind is float:
        raise InvalidRecord(f"floats are not part of the atproto data model: {_is(field, repr(value))}")
    if value is None or kind in (str, int, bool):
        return value
    raise InvalidRecord(f"cannot convert {kind.__name__} to atproto JSON{_in(field)}")


def _leaf_from_json(value: Any, field: str = "") -> Any:
    if type(value) is float:
        if value.is_integer():
            return int(value)
        raise InvalidRecord(f"floats are not allowed in atproto data: {_is(field, repr(value))}")
    if value is None or type(value) in (str, int, bool):
        return value
    raise InvalidRecord(f"not a JSON value{_in(field)}: {type(value).__name__}")


def _is(field: str, text: str) -> str:
    return f"{field} is {text}" if field else text


def _in(field: str) -> str:
    return f" in {field}" if field else ""


_MISSING = object()


def _special_from_json(obj: dict) -> Any:
    """The value of a ``$link`` / ``$bytes`` object, or _MISSING for an ordinary map."""
    if "$link" in obj:
        link = obj["$link"]
        if len(obj) != 1 or type(link) is not str:
            raise InvalidRecord(f"a $link object holds exactly one string: {shown(obj)}")
        try:
            cid = CID.decode(link)
        except (ValueError, binascii.Error):
            raise InvalidRecord(f"$link is not a CID: {shown(link)}") from None
        if not link.startswith("b") or not is_well_formed_cid(cid.cid_bytes) or cid.encode() != link:
            raise InvalidRecord(f"$link is not a base32 CIDv1: {shown(link)}")
        return cid
    if "$bytes" in obj:
        text = obj["$bytes"]
        if len(obj) != 1 or type(text) is not str:
            raise InvalidRecord(f"a $bytes object holds exactly one string: {shown(obj)}")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (ValueError, binascii.Error):
            raise InvalidRecord(f"$bytes is not standard base64: {shown(text)}") from None
    return _MISSING


def _transform(
    value: Any,
    leaf: Callable[[Any, str], Any],
    special: Callable[[dict], Any] | None,
    limits: Limits,
) -> Any:
    """Rebuild ``value`` with ``leaf`` applied to scalars, iteratively. A leaf that fails is
    given again the field that holds it, for its message."""
    holder: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, holder, 0, 0)]
    max_depth = limits.max_cbor_depth
    while stack:
        item, parent, slot, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            if special is not None:
                replaced = special(item)
                if replaced is not _MISSING:
                    parent[slot] = replaced
                    continue
            if depth >= max_depth:
                raise LimitExceeded("max_cbor_depth", depth + 1, max_depth)
            out = dict.fromkeys(item)
            for key, sub in item.items():
                if type(key) is not str:
                    raise InvalidRecord(f"map key is not a string: {shown(key)}")
                stack.append((sub, out, key, depth + 1))
            parent[slot] = out
        elif kind is list:
            if depth >= max_depth:
                raise LimitExceeded("max_cbor_depth", depth + 1, max_depth)
            out_list: list[Any] = [None] * len(item)
            stack.extend((sub, out_list, i, depth + 1) for i, sub in enumerate(item))
            parent[slot] = out_list
        else:
            try:
                parent[slot] = leaf(item, "")
            except InvalidRecord:
                leaf(item, field_path(value, item))
                raise
    return holder[0]


def loads(text: str) -> Any:
    """Parse atproto JSON text to DAG-CBOR values in one pass: ``$link`` and ``$bytes`` objects become
    CIDs and bytes, an integral number written as a float an int.

    A repeated key in an object, any other float, or a malformed ``$link`` /
    ``$bytes`` raises :class:`InvalidRecord`; malformed JSON raises
    :class:`json.JSONDecodeError` (or RecursionError when nested past the
    interpreter's limit). Not checked here: the rest of the data model
    (nesting depth, integer range, ``$type``), which ``cbor.encode_record``
    checks.
    """
    return _DECODER.decode(text)


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> Any:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise InvalidRecord(f"duplicate key {shown(key)} in a JSON object")
            seen.add(key)
    special = _special_from_json(obj)
    return obj if special is _MISSING else special


def _number_from_json(text: str) -> int:
    return _leaf_from_json(float(text))


_DECODER = json.JSONDecoder(object_pairs_hook=_object_from_pairs, parse_float=_number_from_json)
