"""Write batches: puts and deletes collected for one commit.

``Repo.batch()`` hands out a :class:`Batch`; each ``put`` validates and
encodes its record at once (so a bad record fails inside the ``with``
block), and the repository applies every collected write (a ``WriteOp``) in
one signed commit when the block ends.
"""

from __future__ import annotations

import hashlib

from ..codec import cbor
from ..codec.cid import CID, DAG_CBOR_PREFIX
from ..errors import InvalidCbor, InvalidRecord
from ..limits import Limits
from ..operation import WriteOp
from ..syntax import repo_path


class Batch:
    """Writes collected by ``with repo.batch() as b:`` and committed as one commit.

    After the block ends without an exception, ``b.commit`` is the new
    commit's CID (None if the batch was empty).
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.ops: list[WriteOp] = []
        self.commit: CID | None = None

    def put(self, collection: str, rkey: str, record: dict | bytes) -> CID:
        """Create or replace a record; returns the record's CID."""
        op = put_op(collection, rkey, record, self._limits)
        self.ops.append(op)
        return CID(op[1])

    def delete(self, collection: str, rkey: str) -> None:
        """Delete a record (the commit fails with RecordNotFound if it is absent)."""
        self.ops.append(delete_op(collection, rkey))


def put_op(collection: str, rkey: str, record: dict | bytes, limits: Limits) -> tuple[bytes, bytes, bytes]:
    """The write that creates or replaces a record: its path checked, the record checked and encoded."""
    path = repo_path(collection, rkey)
    data = record_bytes(record, path, limits)
    return path.encode(), DAG_CBOR_PREFIX + hashlib.sha256(data).digest(), data


def delete_op(collection: str, rkey: str) -> WriteOp:
    """The write that deletes a record (its path checked)."""
    return repo_path(collection, rkey).encode(), None, None


def record_bytes(record: dict | bytes, path: str, limits: Limits) -> bytes:
    if isinstance(record, (bytes, bytearray, memoryview)):
        data = bytes(record)
        try:
            cbor.decode_record(data, path, limits)
        except InvalidCbor as exc:
            raise InvalidRecord(str(exc)) from None
        return data
    if isinstance(record, dict):
        return cbor.encode_record(record, path, limits)
    raise InvalidRecord(f"record {path} must be a dict or DAG-CBOR bytes, not {type(record).__name__}")
