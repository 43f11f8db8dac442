"""The queue of writes waiting for a handle's next group commit (see :mod:`pypds.repo.writer`).

A write is queued, then its thread waits until either its write is done
or no group is being written: then it leads the next group, taking every
write queued so far. Threads wait on a condition, not on the handle's lock,
so writes keep queueing while a group's transaction is being written (and
fsynced); the next leader takes them all.
"""

from __future__ import annotations

import threading

from ..codec.cid import CID
from ..operation import WriteOp

__all__ = ["CommitQueue", "Request"]


class Request:
    """One queued write: its ops, then its commit or its error (``finished`` once decided)."""

    __slots__ = ("error", "expect_root", "finished", "ops", "result")

    def __init__(self, ops: list[WriteOp], expect_root: CID | None = None) -> None:
        self.ops = ops
        self.expect_root = expect_root  # the new tree's root must be this (a revert)
        self.result: CID | None = None
        self.error: BaseException | None = None
        self.finished = False


class CommitQueue:
    """Writes waiting for the next group commit of one handle, and who leads it."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Request] = []
        self._leading = False

    def submit(self, ops: list[WriteOp], expect_root: CID | None = None) -> Request:
        """Queue a write."""
        request = Request(ops, expect_root)
        with self._cond:
            self._pending.append(request)
        return request

    def wait_turn(self, request: Request) -> list[Request] | None:
        """Wait until ``request`` is finished (None) or this thread leads: then the group to write.

        A leader must call :meth:`done_leading` once its group is finished.
        """
        with self._cond:
            while not request.finished:
                if not self._leading:
                    self._leading = True
                    group, self._pending = self._pending, []
                    return group
                self._cond.wait()
        return None

    def done_leading(self) -> None:
        """The group is written (or failed): wake every waiter (finished ones return, one leads next)."""
        with self._cond:
            self._leading = False
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)
