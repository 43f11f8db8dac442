"""Shared test helpers: fixture paths and small repository builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbrrr
import pytest

from pypds import CID

FIXTURES = Path(__file__).parent / "fixtures"
INTEROP = FIXTURES / "atproto-interop"
REFERENCE = FIXTURES / "reference"
REALWORLD = FIXTURES / "realworld"

DID = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
POST = "app.bsky.feed.post"


def encode_dag_cbor(value: Any, **options: Any) -> bytes:
    """cbrrr's encoder, for values linking with pypds CIDs (cbrrr's default is its own CID class)."""
    return cbrrr.encode_dag_cbor(value, cid_type=CID, **options)


def decode_dag_cbor(data: bytes, **options: Any) -> Any:
    """cbrrr's decoder, making pypds CIDs (unless ``cid_ctor`` says otherwise)."""
    return cbrrr.decode_dag_cbor(data, **{"cid_ctor": CID, **options})


def load_json(path: Path):
    return json.loads(path.read_text())


def syntax_lines(name: str) -> list[str]:
    """Non-comment lines of an interop syntax fixture (blank lines are kept as '')."""
    lines = (INTEROP / "syntax" / name).read_text().split("\n")
    return [line for line in lines if not line.startswith("#")]


def read_uvarint(stream) -> int:
    """Read one unsigned LEB128 varint (a CAR length) from a binary stream, without pypds."""
    value = shift = 0
    while True:
        byte = stream.read(1)[0]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value


def post(i: int, text: str | None = None) -> dict:
    return {
        "$type": POST,
        "text": text if text is not None else f"post number {i}",
        "createdAt": f"2024-01-01T00:00:{i % 60:02d}.000Z",
        "langs": ["en"],
    }


@pytest.fixture
def repo(tmp_path):
    from pypds import Repo

    with Repo.create(tmp_path / "repo", DID) as r:
        yield r
