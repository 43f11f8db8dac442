"""Signed repository commits: format version 3, and version 2 read-only.

A version 3 commit is the DAG-CBOR map ``{"did", "version": 3, "data":
<MST root>, "rev": <TID>, "prev": null, "sig": <64 bytes>}``. The signature
covers the canonical encoding of the same map without ``sig``: sha256 of
those bytes, ECDSA, low-S, raw ``r || s``. The commit's CID is the dag-cbor
CID of the signed encoding.

Version 2 (repositories written before the network moved to version 3) is
``{"did", "version": 2, "data", "prev", "sig"}``: no ``rev``, ``prev`` the
previous commit or null. Signing, the CID and the MST are the same. pypds
reads and verifies version 2 and writes only version 3. A version 2
signature may be high-S (written before the low-S rule): it is accepted for
version 2 only, and :attr:`Commit.high_s` says so.

Traps: ``Commit.rev`` is None for version 2, so code that orders commits by
rev must treat a missing rev as older than every rev (:func:`rev_key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbrrr

from .codec.cid import CID, cid_for_cbor, is_dag_cbor
from .errors import BadSignature, InvalidCommit, shown
from .keys import PublicKey, SigningKey, is_high_s
from .syntax import is_valid_did, is_valid_tid

__all__ = ["Commit", "READ_VERSIONS", "sign_commit", "decode_commit", "rev_is_newer", "rev_key"]

#: Repository format versions pypds reads (it writes only version 3).
READ_VERSIONS = (2, 3)
_REQUIRED = {
    2: {"did", "version", "data", "sig"},
    3: {"did", "version", "data", "rev", "sig"},
}
_ALLOWED = {version: fields | {"prev"} for version, fields in _REQUIRED.items()}


@dataclass(frozen=True)
class Commit:
    """A decoded commit (format version 3, or version 2 without a rev)."""

    did: str
    data: CID
    rev: str | None  # None only for version 2
    sig: bytes
    prev: CID | None = None
    version: int = 3
    #: False for a commit block that omitted ``prev`` (tolerated on read)
    has_prev: bool = True

    def unsigned(self) -> dict[str, Any]:
        """The commit map without ``sig``: what the signature covers."""
        fields: dict[str, Any] = {"did": self.did, "version": self.version, "data": self.data}
        if self.rev is not None:
            fields["rev"] = self.rev
        if self.has_prev:
            fields["prev"] = self.prev
        return fields

    def encode(self) -> bytes:
        """Canonical DAG-CBOR of the signed commit."""
        return cbrrr.encode_dag_cbor({**self.unsigned(), "sig": self.sig}, cid_type=CID)

    @property
    def label(self) -> str:
        """``rev <TID>`` or ``version 2`` (no rev), for messages."""
        return f"rev {self.rev}" if self.rev is not None else "version 2"

    def verify(self, key: PublicKey) -> None:
        """Raise BadSignature unless ``sig`` is a valid signature by ``key``.

        Version 3 needs a low-S signature; version 2 also accepts a high-S one.
        """
        unsigned = cbrrr.encode_dag_cbor(self.unsigned(), cid_type=CID)
        if key.verify(unsigned, self.sig):
            return
        what = f"commit {self.label} of {self.did}"
        if self.high_s(key) and key.verify(unsigned, self.sig, allow_high_s=True):
            if self.version == 2:
                return
            raise BadSignature(f"{what}: high-S signature, which version 3 commits must not carry")
        raise BadSignature(f"{what}: signature does not verify against {key.did_key}")

    def high_s(self, key: PublicKey) -> bool:
        """Whether the signature is high-S (valid only on a version 2 commit)."""
        return is_high_s(self.sig, key.curve)


def rev_key(rev: str | None) -> str:
    """A sort key for revs where a missing rev (version 2) comes before every rev."""
    return "" if rev is None else rev


def rev_is_newer(rev: str | None, than: str | None) -> bool:
    """True if ``rev`` is newer than ``than``; a missing rev (a version 2 commit) is older than any rev."""
    return rev_key(rev) > rev_key(than)


def sign_commit(did: str, data: CID, rev: str, key: SigningKey) -> tuple[Commit, bytes, CID]:
    """Build and sign a commit; returns (commit, block bytes, commit CID)."""
    unsigned: dict[str, Any] = {"did": did, "version": 3, "data": data, "rev": rev, "prev": None}
    sig = key.sign(cbrrr.encode_dag_cbor(unsigned, cid_type=CID))
    commit = Commit(did=did, data=data, rev=rev, sig=sig)
    block = commit.encode()
    return commit, block, cid_for_cbor(block)


def decode_commit(block: bytes, cid: CID | None = None) -> Commit:
    """Decode and structurally check a commit block (version 3, or version 2)."""
    where = f"commit {cid.encode()}" if cid is not None else "commit"
    try:
        obj = cbrrr.decode_dag_cbor(block, cid_ctor=CID)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidCommit(f"{where}: invalid DAG-CBOR: {exc}") from None
    if type(obj) is not dict:
        raise InvalidCommit(f"{where}: not a map")
    version = obj.get("version")
    if type(version) is not int or version not in READ_VERSIONS:
        raise InvalidCommit(
            f"{where}: unsupported repository format version {shown(version)} (pypds reads versions 2 and 3)"
        )
    missing = _REQUIRED[version] - obj.keys()
    if missing:
        raise InvalidCommit(f"{where}: missing field(s) {sorted(missing)} for a version {version} commit")
    extra = obj.keys() - _ALLOWED[version]
    if extra:
        raise InvalidCommit(f"{where}: unexpected field(s) {sorted(extra)} for a version {version} commit")
    did, data, rev, sig = obj["did"], obj["data"], obj.get("rev"), obj["sig"]
    prev = obj.get("prev")
    if not isinstance(did, str) or not is_valid_did(did):
        raise InvalidCommit(f"{where}: invalid did {shown(did)}")
    if not isinstance(data, CID) or not is_dag_cbor(data):
        raise InvalidCommit(f"{where}: 'data' is not a dag-cbor sha2-256 CID")
    if version == 3 and not (isinstance(rev, str) and is_valid_tid(rev)):
        raise InvalidCommit(f"{where}: rev {shown(rev)} is not a TID")
    if prev is not None and not isinstance(prev, CID):
        raise InvalidCommit(f"{where}: 'prev' is neither null nor a CID")
    if not isinstance(sig, bytes):
        raise InvalidCommit(f"{where}: 'sig' is not bytes")
    commit_rev = rev if isinstance(rev, str) else None
    return Commit(did=did, data=data, rev=commit_rev, sig=sig, prev=prev, version=version, has_prev="prev" in obj)
