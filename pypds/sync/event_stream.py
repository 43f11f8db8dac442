"""Event-stream frames (``com.atproto.sync.subscribeRepos``): a DAG-CBOR header, then a DAG-CBOR body.

Each WebSocket binary message is one frame: the header ``{"op": 1, "t":
"#commit"}`` (a message of the type ``t``) or ``{"op": -1}`` (an error, whose
body is ``{"error": name, "message": text}``), immediately followed by the
body, a map. Nothing may follow the body. Frames from the network are hostile:
:func:`decode_frame` checks the size first, decodes strictly (canonical
DAG-CBOR only) and raises :class:`~pypds.errors.InvalidFrame` naming what was
wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbrrr

from ..codec.cbor import encode
from ..codec.cid import link_from_bytes
from ..errors import InvalidFrame, shown

__all__ = ["MAX_FRAME_BYTES", "Frame", "decode_frame", "encode_error_frame", "encode_frame"]

#: Largest frame accepted (the reference relay caps a #commit's blocks at 2 MiB; headroom for the rest).
MAX_FRAME_BYTES = 5 << 20


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``op`` 1 with the message ``type`` (``"#commit"``...), or ``op`` -1 (an error)."""

    op: int
    type: str | None
    body: dict[str, Any]

    @property
    def is_error(self) -> bool:
        """Whether this is an error frame (``op`` -1); its body holds ``error`` and ``message``."""
        return self.op == -1


def encode_frame(message_type: str, body: dict[str, Any]) -> bytes:
    """The frame for a message: header ``{op: 1, t: message_type}`` then ``body`` (DAG-CBOR values)."""
    return encode({"op": 1, "t": message_type}) + encode(body, message_type)


def encode_error_frame(error: str, message: str | None = None) -> bytes:
    """An error frame: header ``{op: -1}`` then ``{error, message}``."""
    body: dict[str, Any] = {"error": error}
    if message is not None:
        body["message"] = message
    return encode({"op": -1}) + encode(body)


def decode_frame(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Decode one frame; raises InvalidFrame for an oversized, malformed or non-canonical one."""
    if type(data) is not bytes:
        raise InvalidFrame(f"a frame is a binary message, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise InvalidFrame(f"frame of {len(data)} bytes is over the {max_bytes}-byte limit")
    header, body = _two_values(data)
    if type(header) is not dict:
        raise InvalidFrame("frame header is not a map")
    op, message_type = header.get("op"), header.get("t")
    if op == -1:
        if type(body) is not dict or type(body.get("error")) is not str:
            raise InvalidFrame("error frame body has no 'error' string")
        return Frame(-1, None, body)
    if op != 1 or type(message_type) is not str:
        raise InvalidFrame(f"frame header has op {shown(op)} and t {shown(message_type)} (want op 1 and a type)")
    if type(body) is not dict:
        raise InvalidFrame(f"{message_type} frame body is not a map")
    return Frame(1, message_type, body)


def _two_values(data: bytes) -> tuple[Any, Any]:
    values = cbrrr.decode_multi_dag_cbor_in_violation_of_the_spec(data, cid_ctor=link_from_bytes)
    try:
        header = next(values, _MISSING)
        body = next(values, _MISSING)
        extra = next(values, _MISSING)
    except (ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise InvalidFrame(f"frame is not canonical DAG-CBOR: {exc}") from None
    if header is _MISSING or body is _MISSING:
        raise InvalidFrame("frame needs a header and a body")
    if extra is not _MISSING:
        raise InvalidFrame("frame has bytes after its body")
    return header, body


_MISSING: Any = object()
