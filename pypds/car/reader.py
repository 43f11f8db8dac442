"""CAR v1: a streaming reader that verifies every block (the writer is :mod:`pypds.car.writer`).

Layout: ``varint(len(header)) header`` where the header is the DAG-CBOR map
``{"roots": [CID, ...], "version": 1}``, then sections
``varint(len(cid) + len(data)) cid data``. Varints are unsigned LEB128.

The reader never trusts a length: the header and every section length is
checked against :mod:`pypds.limits` before it is read, a truncated stream is
reported with its byte offset, and every block's bytes are hashed against
its CID before they are handed out. Only the two atproto CID forms (CIDv1
sha2-256, dag-cbor or raw) are accepted.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from typing import Protocol

import cbrrr

from ..codec.cid import CID, DAG_CBOR_PREFIX, RAW_PREFIX, check_cid_bytes
from ..errors import BlockHashMismatch, CarFormatError, LimitExceeded, shown
from ..limits import DEFAULT_LIMITS, Limits

__all__ = ["CarSource", "CarReader", "open_car_source"]


class Readable(Protocol):
    """A binary stream: anything with ``read(size)`` (a file, a socket file, a wrapper)."""

    def read(self, size: int = -1, /) -> bytes: ...


#: A CAR as bytes, a file path, or a binary stream.
CarSource = bytes | bytearray | memoryview | str | os.PathLike | Readable

_CHUNK = 1 << 20
_MAX_VARINT_BYTES = 9  # enough for any length below 2**63


class _Input:
    """Buffered reads from a file object, tracking the byte offset."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self.offset = 0  # offset of self._buf[self._pos] in the stream

    def _fill(self, need: int) -> bool:
        """Make at least ``need`` bytes available; False if the stream ends first.

        Short reads are collected in a list and joined once, so a stream that
        drips a few bytes at a time costs linear, not quadratic, time.
        """
        available = len(self._buf) - self._pos
        if available >= need:
            return True
        parts = [self._buf[self._pos :]]
        while available < need:
            chunk = self._stream.read(_CHUNK)  # never sized by an untrusted length
            if not chunk:
                break
            parts.append(chunk)
            available += len(chunk)
        self._buf = b"".join(parts)
        self._pos = 0
        return available >= need

    def at_end(self) -> bool:
        return not self._fill(1)

    def read_varint(self, what: str) -> int:
        start = self.offset
        if len(self._buf) - self._pos < _MAX_VARINT_BYTES:
            self._fill(_MAX_VARINT_BYTES)
        buf, pos = self._buf, self._pos
        value = shift = 0
        for i in range(_MAX_VARINT_BYTES):
            if pos + i >= len(buf):
                raise CarFormatError(f"CAR truncated inside the {what} varint at byte {start}")
            byte = buf[pos + i]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if i and not byte:
                    raise CarFormatError(f"CAR {what} varint at byte {start} is not minimal")
                self._pos += i + 1
                self.offset += i + 1
                return value
            shift += 7
        raise CarFormatError(f"CAR {what} varint at byte {start} is too long")

    def read_exact(self, size: int, what: str) -> bytes:
        start = self.offset
        if not self._fill(size):
            raise CarFormatError(
                f"CAR truncated in the {what} at byte {start}: wanted {size} bytes, {len(self._buf) - self._pos} left"
            )
        data = self._buf[self._pos : self._pos + size]
        self._pos += size
        self.offset += size
        return data

    def read_block(self, size: int, what: str) -> tuple[bytes, bytes]:
        """A section of ``size`` bytes (at least 36) as its 36 CID bytes and its block."""
        if len(self._buf) - self._pos < size and not self._fill(size):
            self.read_exact(size, what)  # raises: the stream ends inside the section
        pos = self._pos
        self._pos += size
        self.offset += size
        return self._buf[pos : pos + 36], self._buf[pos + 36 : pos + size]


def open_car_source(source: CarSource) -> tuple[Readable, Callable[[], None] | None]:
    """A binary stream for ``source``, and how to close it when the reader opened it (else None)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), None  # nothing to release
    if isinstance(source, (str, os.PathLike)):
        stream = open(source, "rb")  # noqa: SIM115 (closed through the returned closer)
        return stream, stream.close
    if hasattr(source, "read"):
        return source, None
    raise TypeError(f"CAR source must be bytes, a path or a binary file, not {type(source).__name__}")


class CarReader:
    """Iterate the verified blocks of a CAR v1 stream.

    ``reader.roots`` holds the header roots; iterating yields ``(cid, data)``
    with every block already checked against its CID. Use as a context
    manager (or call :meth:`close`) when the source is a path.
    """

    def __init__(self, source: CarSource, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self._stream, self._closer = open_car_source(source)
        self._input = _Input(self._stream)
        self._limits = limits
        try:
            self.roots = self._read_header()
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> list[CID]:
        if self._input.at_end():
            raise CarFormatError("CAR is empty: no header at byte 0")
        size = self._input.read_varint("header length")
        if size == 0:
            raise CarFormatError("CAR header at byte 0 has length 0")
        if size > self._limits.max_car_header_bytes:
            raise LimitExceeded("max_car_header_bytes", size, self._limits.max_car_header_bytes, "byte 0")
        raw = self._input.read_exact(size, "header")
        try:
            header = cbrrr.decode_dag_cbor(raw, cid_ctor=CID)
        except (ValueError, TypeError, OverflowError) as exc:
            raise CarFormatError(f"CAR header is not valid DAG-CBOR: {exc}") from None
        if type(header) is not dict:
            raise CarFormatError("CAR header is not a map")
        if header.get("version") != 1 or type(header.get("version")) is not int:
            raise CarFormatError(f"unsupported CAR version {shown(header.get('version'))} (expected 1)")
        roots = header.get("roots")
        if type(roots) is not list or not roots:
            raise CarFormatError("CAR header has no roots")
        cids = [root for root in roots if isinstance(root, CID)]
        if len(cids) != len(roots):
            raise CarFormatError("CAR header root is not a CID")
        check_cid_bytes(cids[0].cid_bytes, "the first CAR root", allow_raw=False)
        return cids

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        source = self._input
        max_section = self._limits.max_car_section_bytes
        sha256 = hashlib.sha256
        while not source.at_end():
            start = source.offset
            size = source.read_varint("section length")
            if size > max_section:
                raise LimitExceeded("max_car_section_bytes", size, max_section, f"byte {start}")
            if size < 36:
                raise CarFormatError(f"CAR section at byte {start} is too short ({size} bytes) to hold a CID")
            cid_bytes, data = source.read_block(size, "section")
            prefix = cid_bytes[:4]
            if prefix != DAG_CBOR_PREFIX and prefix != RAW_PREFIX:
                check_cid_bytes(cid_bytes, f"CAR section at byte {start}")
            if sha256(data).digest() != cid_bytes[4:]:
                raise BlockHashMismatch(
                    f"block {CID(cid_bytes).encode()} at byte {start}: bytes do not hash to its CID"
                )
            yield CID(cid_bytes), data

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> CarReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
