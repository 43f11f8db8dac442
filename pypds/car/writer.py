"""CAR v1: a streaming writer (the layout is described in :mod:`pypds.car.reader`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

import cbrrr

from ..codec.cid import CID, relink
from ..filesystem import atomic_file

__all__ = ["CarWriter", "Writable", "encode_varint", "write_car_file"]


class Writable(Protocol):
    """A binary sink: anything with ``write(bytes)`` (a file, a buffer, a counting wrapper)."""

    def write(self, data: bytes, /) -> object: ...


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``value``."""
    if value < 0x4000:  # every section under 16 KiB: one or two bytes
        return bytes((value,)) if value < 0x80 else bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class CarWriter:
    """Write a CAR v1 stream: the header at construction, then blocks."""

    def __init__(self, stream: Writable, roots: list[CID]) -> None:
        self._stream = stream
        fields: dict[str, Any] = {"roots": relink(roots), "version": 1}  # a plain cbrrr.CID root too
        header = cbrrr.encode_dag_cbor(fields, cid_type=CID)
        stream.write(encode_varint(len(header)) + header)

    def write_block(self, cid: CID, data: bytes) -> None:
        raw = cid.cid_bytes
        self._stream.write(encode_varint(len(raw) + len(data)) + raw + data)


def write_car_file(path: str | os.PathLike, roots: list[CID], blocks: Iterator[tuple[CID, bytes]]) -> None:
    """Write a CAR to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_file(path) as stream:
        writer = CarWriter(stream, roots)
        for cid, data in blocks:
            writer.write_block(cid, data)
