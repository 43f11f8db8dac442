"""Signed repository commits (repo format version 3).

A commit is the DAG-CBOR map ``{"did", "version": 3, "data": <MST root>,
"rev": <TID>, "prev": null, "sig": <64 bytes>}``. The signature covers the
canonical encoding of the same map without ``sig``: sha256 of those bytes,
ECDSA, low-S, raw ``r || s``. The commit's CID is the dag-cbor CID of the
signed encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import cbrrr

from .cid import CID, cid_for_cbor, is_dag_cbor
from .errors import BadSignature, InvalidCommit, shown
from .keys import PublicKey, SigningKey
from .syntax import is_valid_did, is_valid_tid

__all__ = ["Commit", "sign_commit", "decode_commit"]

_REQUIRED = {"did", "version", "data", "rev", "sig"}
_ALLOWED = _REQUIRED | {"prev"}


@dataclass(frozen=True)
class Commit:
    """A decoded v3 commit."""

    did: str
    data: CID
    rev: str
    sig: bytes
    prev: CID | None = None
    version: int = 3
    #: False for a commit block that omitted ``prev`` (tolerated on read)
    has_prev: bool = True

    def unsigned(self) -> dict:
        """The commit map without ``sig``: what the signature covers."""
        fields = {"did": self.did, "version": self.version, "data": self.data, "rev": self.rev}
        if self.has_prev:
            fields["prev"] = self.prev
        return fields

    def encode(self) -> bytes:
        """Canonical DAG-CBOR of the signed commit."""
        return cbrrr.encode_dag_cbor({**self.unsigned(), "sig": self.sig})

    def verify(self, key: PublicKey) -> None:
        """Raise BadSignature unless ``sig`` is a valid signature by ``key``."""
        if not key.verify(cbrrr.encode_dag_cbor(self.unsigned()), self.sig):
            raise BadSignature(f"commit rev {self.rev} of {self.did}: signature does not verify against {key.did_key}")


def sign_commit(did: str, data: CID, rev: str, key: SigningKey) -> tuple[Commit, bytes, CID]:
    """Build and sign a commit; returns (commit, block bytes, commit CID)."""
    unsigned = {"did": did, "version": 3, "data": data, "rev": rev, "prev": None}
    sig = key.sign(cbrrr.encode_dag_cbor(unsigned))
    commit = Commit(did=did, data=data, rev=rev, sig=sig)
    block = commit.encode()
    return commit, block, cid_for_cbor(block)


def decode_commit(block: bytes, cid: CID | None = None) -> Commit:
    """Decode and structurally check a commit block (v3 field set and types)."""
    where = f"commit {cid.encode()}" if cid is not None else "commit"
    try:
        obj = cbrrr.decode_dag_cbor(block)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidCommit(f"{where}: invalid DAG-CBOR: {exc}") from None
    if type(obj) is not dict:
        raise InvalidCommit(f"{where}: not a map")
    missing = _REQUIRED - obj.keys()
    if missing:
        raise InvalidCommit(f"{where}: missing field(s) {sorted(missing)}")
    extra = obj.keys() - _ALLOWED
    if extra:
        raise InvalidCommit(f"{where}: unexpected field(s) {sorted(extra)}")
    version = obj["version"]
    if type(version) is not int or version != 3:
        raise InvalidCommit(f"{where}: unsupported version {shown(version)} (expected 3)")
    did, data, rev, sig = obj["did"], obj["data"], obj["rev"], obj["sig"]
    prev = obj.get("prev")
    if not is_valid_did(did):
        raise InvalidCommit(f"{where}: invalid did {shown(did)}")
    if type(data) is not CID or not is_dag_cbor(data):
        raise InvalidCommit(f"{where}: 'data' is not a dag-cbor sha2-256 CID")
    if not is_valid_tid(rev):
        raise InvalidCommit(f"{where}: rev {shown(rev)} is not a TID")
    if prev is not None and type(prev) is not CID:
        raise InvalidCommit(f"{where}: 'prev' is neither null nor a CID")
    if type(sig) is not bytes:
        raise InvalidCommit(f"{where}: 'sig' is not bytes")
    return Commit(did=did, data=data, rev=rev, sig=sig, prev=prev, has_prev="prev" in obj)
