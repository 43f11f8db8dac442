"""Record operations: the one public type for "this record was created, updated or deleted".

:class:`RecordChange` is what :meth:`pypds.Repo.diff` returns, what a
firehose ``#commit`` message's ``ops`` hold (:meth:`RecordChange.to_op` /
:meth:`RecordChange.from_op`), and what undoing a commit needs
(:meth:`RecordChange.inverted`). Its fields follow the diff: ``old`` is the
record CID before (the op's ``prev``), ``new`` the CID after (the op's
``cid``).

A batch being filled keeps its writes in a packed internal form instead,
:data:`WriteOp`: a plain tuple of bytes that CPython's cyclic garbage
collector stops tracking, so a batch of a million writes adds nothing to
every collection pass (a NamedTuple or dataclass would stay tracked; the
first performance round measured 4.1 s against 2.2 s for 300k puts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

from .codec.cid import CID
from .errors import InvalidCommitMessage, PypdsError, shown
from .syntax import split_repo_path

__all__ = ["Action", "CommitOp", "RecordChange", "WriteOp"]

Action = Literal["create", "update", "delete"]
_ACTIONS = ("create", "update", "delete")

#: One pending write of a batch, ``(key, cid, data)``: the repo path (UTF-8),
#: the raw CID bytes and the record block for a put; ``(key, None, None)`` for
#: a delete.
WriteOp = tuple[bytes, bytes | None, bytes | None]


class CommitOp(TypedDict, total=False):
    """One op of a firehose ``#commit`` message, as DAG-CBOR values."""

    action: Action
    path: str
    cid: CID | None
    prev: CID  # absent for a create (and in messages before sync 1.1)


@dataclass(frozen=True)
class RecordChange:
    """One record operation: ``action`` is "create", "update" or "delete".

    ``old`` is the record CID before (None for a create), ``new`` after
    (None for a delete).
    """

    path: str
    action: Action
    old: CID | None
    new: CID | None

    def inverted(self) -> RecordChange:
        """The operation that undoes this one."""
        undo: Action = "delete" if self.action == "create" else "create" if self.action == "delete" else "update"
        return RecordChange(self.path, undo, self.new, self.old)

    def to_op(self) -> CommitOp:
        """The firehose ``#commit`` op: ``{action, path, cid, prev}`` (``prev`` only when known)."""
        op: CommitOp = {"action": self.action, "path": self.path, "cid": self.new}
        if self.old is not None:
            op["prev"] = self.old
        return op

    @classmethod
    def from_op(cls, op: object, index: int = 0) -> RecordChange:
        """Parse and check a firehose op (DAG-CBOR values); InvalidCommitMessage names what is wrong.

        ``prev`` is optional (messages before sync 1.1 omit it); ``cid`` must
        be null exactly for a delete.
        """
        if type(op) is not dict:
            raise InvalidCommitMessage(f"op {index} is not a map")
        action, path, cid, prev = op.get("action"), op.get("path"), op.get("cid"), op.get("prev")
        if action not in _ACTIONS:
            raise InvalidCommitMessage(f"op {index}: unknown action {shown(action)}")
        try:
            if not isinstance(path, str):
                raise InvalidCommitMessage(f"op {index}: path {shown(path)} is not a string")
            split_repo_path(path)
        except PypdsError as exc:
            raise InvalidCommitMessage(f"op {index}: {exc}") from None
        if (action == "delete") != (cid is None) or (cid is not None and type(cid) is not CID):
            raise InvalidCommitMessage(f"op {index} ({action} {path}): 'cid' must be a CID, or null for a delete")
        if prev is not None and type(prev) is not CID:
            raise InvalidCommitMessage(f"op {index} ({action} {path}): 'prev' is not a CID")
        return cls(path, action, prev, cid)
