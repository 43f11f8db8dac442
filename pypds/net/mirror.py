"""Live mirrors: follow a PDS's or relay's ``subscribeRepos`` into an archive, and backfill one.

:class:`Mirror` keeps one copy per account under an archive directory
(:mod:`pypds.net.archive`: ``ARCHIVE/<shard>/<did>/``, plus ``archive.db``).

**Following** (:meth:`Mirror.run` / ``pypds follow``): each frame is decoded
with a size bound; for a ``#commit`` the account's signing key is looked up
(cached; dropped on ``#identity``, and looked up again once when a signature
fails), the message is verified the sync 1.1 way
(:func:`~pypds.sync.firehose.verify_commit_message`) and applied to the
copy in one transaction (:meth:`pypds.Repo.apply_commit`: HEAD's rev must
be the message's ``since`` and HEAD's MST root its ``prevData``; only the
new blocks are written). Then:

* an unknown account (its first ``#commit``, or an ``#account`` saying it
  is active), a gap (``since`` or ``prevData`` not what the copy holds), a
  ``#sync`` naming a newer commit, a ``tooBig`` commit or one that fails to
  apply: the account is **resynced** with ``getRepo`` (the
  downloader: the diff since the copy's rev, or the whole repository) from
  its PDS, or the stream's host if the PDS cannot be reached, in a
  background task (at most ``resync_concurrency`` at once). Its commits
  that arrive meanwhile wait in a bounded buffer and are applied after it.
* a bad signature, a DID mismatch, an altered block, a malformed message or
  frame, a commit not newer than the copy that the copy never held, or an
  event whose ``seq`` is not after the last one handled (the cursor never
  goes back):
  **rejected**, logged in the index, and the copy does not change.
* a commit the copy already holds (a replay after a restart): skipped
  quietly, counted as a duplicate.
* ``#account``: the status is recorded; a deleted account's copy is
  removed unless ``keep_deleted``.

Events are handled one at a time, in order, on the event loop's thread:
verifying and applying a commit takes well under a millisecond for a
typical one (a few for the largest, 2 MB), less than a handoff to a worker
thread would cost twice over; resyncs (downloads), removals and opening
copies run in worker threads.

**Crash safety.** A copy only changes in one SQLite transaction that moves
HEAD forward. The index (accounts and the cursor) is written after the
copies it describes, every ``flush_interval`` seconds and on stop, in one
transaction. A follower killed at any moment restarts from a cursor at or
before the last event it applied: the events it applied again are commits
the copies hold (duplicates: nothing changes), and an account whose resync
was interrupted is still marked and is resynced on start. Nothing is
missed, nothing is applied twice. The copies run with ``durability="normal"`` (no fsync per
commit); each flush first makes the copies it records durable
(:meth:`Repo.make_durable`, a WAL checkpoint), so after a power cut too
the cursor never runs ahead of the copies.

**Partitions.** ``partition=(k, n)`` applies only the accounts whose
:func:`~pypds.net.archive.partition_of` is ``k``; each partition keeps its
own cursor (``<host>#k/n``), so n followers can share one archive (their
accounts are disjoint; the index tolerates concurrent writers) or each use
their own.

**Backfill** (:meth:`Mirror.backfill` / ``pypds mirror``): the stream is
opened first and the ``seq`` of its first event noted; meanwhile every
repository the host lists (``listRepos``, paged) is downloaded (``since``
the copy's rev when there is one; a copy already at the listed rev is
skipped, so a rerun resumes); then the follower starts from just before the
noted event, so nothing written during the backfill is missed.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..errors import (
    BadSignature,
    CommitGap,
    DidMismatch,
    IntegrityError,
    InvalidFrame,
    InvalidInput,
    ListingTooLong,
    NetworkError,
    PypdsError,
    RollbackRefused,
    StreamError,
    shown,
)
from ..filesystem import TEMP_PREFIX
from ..keys import load_public_key
from ..limits import DEFAULT_LIMITS, Limits
from ..repo.repo import Repo
from ..storage.store import DB_NAME, is_unfinished_create
from ..sync.event_stream import MAX_FRAME_BYTES, Frame
from ..sync.firehose import VerifiedCommit, verify_commit_message
from ..syntax import is_valid_did, is_valid_tid
from .archive import AccountUpdate, Archive, partition_of
from .downloader import DownloadOptions, DownloadReport, download_async
from .identity import Identity, ResolverConfig, resolve_async
from .stream_client import host_url, subscribe
from .xrpc import XrpcClient, new_session

__all__ = [
    "BackfillReport",
    "IdentityLookup",
    "Mirror",
    "MirrorStats",
    "parse_partition",
]

log = logging.getLogger("pypds.net.mirror")

#: ``async lookup(did) -> Identity``: how a mirror finds an account's PDS and signing key.
IdentityLookup = Callable[[str], Awaitable[Identity]]
#: Commits of one account kept while it is being resynced (past this, the rest are dropped and the
#: resync is done again afterwards).
MAX_BUFFERED = 1000
#: listRepos: accounts asked per page, and the most pages read.
LIST_REPOS_PAGE = 1000
MAX_LIST_PAGES = 100_000
#: Identities cached (least recently used go first).
MAX_IDENTITIES = 100_000
#: Seconds following waits for the stream watched during a backfill to report its first event.
BACKFILL_WATCH_WAIT = 10.0
#: Rounds of resync for one account before it is left marked for the next start.
RESYNC_ROUNDS = 3
#: Seconds after a failed resync of an account before another is tried (its commits meanwhile are dropped;
#: it stays marked in the index).
RESYNC_RETRY_DELAY = 30.0
#: Seconds a stopping follower lets running resyncs finish before cancelling them.
RESYNC_STOP_GRACE = 30.0
#: ``#account`` statuses (an inactive account without one is "inactive").
ACCOUNT_STATUSES = {"takendown", "suspended", "deleted", "deactivated", "desynchronized", "throttled"}

APPLIED, DUPLICATE, REJECTED, RESYNC, DEFERRED, SKIPPED, IGNORED, ACCOUNT = (
    "applied",
    "duplicate",
    "rejected",
    "resync",
    "deferred",
    "skipped",
    "ignored",
    "account",
)


def parse_partition(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, 0 <= K < N; InvalidInput otherwise."""
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 0 <= int(k) < int(n):
        raise InvalidInput(f"a partition is K/N with 0 <= K < N, not {text!r}")
    return int(k), int(n)


@dataclass
class MirrorStats:
    """What a follower did (counts since it started)."""

    events: int = 0
    commits: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    resyncs: int = 0
    resync_failures: int = 0
    deleted: int = 0
    other_partition: int = 0
    frame_bytes: int = 0
    cursor: int | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def events_per_second(self) -> float:
        """Events handled per second since the start."""
        return self.events / max(time.monotonic() - self.started, 1e-9)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: every count (camelCase names) and ``eventsPerSecond``."""
        counts = {_camel(f.name): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "started"}
        return {**counts, "eventsPerSecond": round(self.events_per_second, 1)}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


@dataclass
class BackfillReport:
    """What a backfill did: accounts listed, downloaded, already current, inactive, failed."""

    listed: int = 0
    downloaded: int = 0
    current: int = 0
    inactive: int = 0
    failed: int = 0
    car_bytes: int = 0
    seconds: float = 0.0
    cursor: int | None = None  # the cursor following starts from (None: the stream's live end)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "listed": self.listed,
            "downloaded": self.downloaded,
            "current": self.current,
            "inactive": self.inactive,
            "failed": self.failed,
            "carBytes": self.car_bytes,
            "seconds": round(self.seconds, 3),
            "cursor": self.cursor,
            "errors": [{"did": did, "error": error} for did, error in self.errors],
        }


@dataclass
class _Pending:
    """A verified commit waiting for its account's resync."""

    verified: VerifiedCommit
    since: str | None
    seq: int | None
    car: bytes | None


class Mirror:
    """Follow event streams into an archive of repository copies (see the module docstring).

    ``identity`` replaces DID resolution (``async lookup(did) -> Identity``);
    by default DIDs are resolved with ``config``. ``durability`` is the
    copies' SQLite durability ("normal": safe against a killed process;
    "full": also against power loss, slower). ``open_repos`` bounds the open
    handles kept (least recently used are closed).
    """

    def __init__(
        self,
        archive: str | os.PathLike,
        *,
        config: ResolverConfig | None = None,
        identity: IdentityLookup | None = None,
        keep_deleted: bool = False,
        partition: tuple[int, int] = (0, 1),
        resync_concurrency: int = 4,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        blobs: bool = False,
        durability: str = "normal",
        open_repos: int = 64,
        flush_interval: float = 1.0,
        reconnect_delay: float = 1.0,
        download_options: DownloadOptions | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        k, n = partition
        if not 0 <= k < n:
            raise InvalidInput(f"partition must be (K, N) with 0 <= K < N, not {partition!r}")
        if resync_concurrency < 1 or open_repos < 1:
            raise InvalidInput("resync_concurrency and open_repos must be at least 1")
        self.archive = Archive.open(archive)
        self.root = self.archive.root
        self.config = dataclasses.replace(config or ResolverConfig(), verify_handle=False)
        self._lookup = identity
        self.keep_deleted = keep_deleted
        self.partition = (k, n)
        self.max_frame_bytes = max_frame_bytes
        self.blobs = blobs
        self.durability = durability
        self.open_repos = open_repos
        self.flush_interval = flush_interval
        self.reconnect_delay = reconnect_delay
        self.download_options = download_options or DownloadOptions(limits=limits)
        self.limits = limits
        self.stats = MirrorStats()
        self.host: str | None = None  # the stream's host (http(s) base URL), fallback for resyncs
        self.resync_concurrency = resync_concurrency
        self._resync_slots: asyncio.Semaphore | None = None
        self._repos: collections.OrderedDict[str, Repo] = collections.OrderedDict()
        self._identities: collections.OrderedDict[str, Identity] = collections.OrderedDict()
        self._resyncing: dict[str, list[_Pending]] = {}
        self._resync_seq: dict[str, int] = {}
        self._delete_after: set[str] = set()
        self._failed_at: dict[str, float] = {}
        #: seconds after a failed resync before the account's next commit tries again
        self.resync_retry_delay = RESYNC_RETRY_DELAY
        self._tasks: set[asyncio.Task[None]] = set()
        self._rows: dict[str, AccountUpdate] = {}
        self._synced_revs: dict[str, str] = {}
        self._cursor: int | None = None
        self._flushed = self._last_event = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self._stream_session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        #: during a backfill's follow: the task watching the stream since before the listing (first seq)
        self._backfill_watch: asyncio.Future[int | None] | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every open copy and the index."""
        while self._repos:
            self._repos.popitem()[1].close()
        self.archive.close()

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask a running :meth:`run` / :meth:`run_async` to stop (from any thread); it then flushes and returns."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)

    def stream_key(self, url: str) -> str:
        """The index's name of the cursor for ``url`` (and this follower's partition)."""
        k, n = self.partition
        base = host_url(url)
        return base if n == 1 else f"{base}#{k}/{n}"

    # -- following ---------------------------------------------------------------------------------

    def run(
        self,
        url: str,
        *,
        max_events: int | None = None,
        cursor: int | None = None,
        idle_timeout: float | None = None,
    ) -> MirrorStats:
        """Follow ``url``'s subscribeRepos until :meth:`stop`, ``max_events`` events or ``idle_timeout``
        seconds without one; see :meth:`run_async`."""
        return asyncio.run(self.run_async(url, max_events=max_events, cursor=cursor, idle_timeout=idle_timeout))

    async def run_async(
        self,
        url: str,
        *,
        max_events: int | None = None,
        cursor: int | None = None,
        reconnect: bool = True,
        idle_timeout: float | None = None,
    ) -> MirrorStats:
        """Follow ``url`` (``wss://host``, ``https://host``...) from the archive's cursor (or ``cursor``).

        Runs until :meth:`stop`, ``max_events`` events, or (with
        ``idle_timeout``) that many seconds without an event; a lost
        connection is opened again after ``reconnect_delay`` seconds (with
        ``reconnect=False`` its :class:`~pypds.errors.StreamError` is raised).
        Waits for running resyncs, then saves the cursor. Returns the stats.
        """
        self.host = host_url(url)
        stream = self.stream_key(url)
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._cursor = self.archive.cursor(stream) if cursor is None else cursor
        self._last_event = time.monotonic()
        start = self.stats.events
        async with self._own_session():
            for did in self.archive.pending_resyncs():
                if self._mine(did):
                    self._schedule_resync(did, "pending since an earlier run", None)
            try:
                while not self._stopping.is_set():
                    limit = None if max_events is None else start + max_events
                    try:
                        await self._follow_once(url, stream, limit, idle_timeout)
                    except StreamError as exc:
                        if not reconnect:
                            raise
                        if idle_timeout is not None and time.monotonic() - self._last_event > idle_timeout:
                            log.warning("%s; no event for %g s: stopping", exc, idle_timeout)
                            break
                        log.warning("%s; reconnecting in %g s", exc, self.reconnect_delay)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stopping.wait(), self.reconnect_delay)
            finally:
                await self.wait_resyncs(RESYNC_STOP_GRACE)
                self.flush(stream)
        return self.stats

    async def _follow_once(self, url: str, stream: str, limit: int | None, idle_timeout: float | None) -> None:
        """One connection's worth of events; returns when stopping (StreamError when the stream ends)."""
        assert self._stopping is not None
        assert self._stream_session is not None
        frames = subscribe(self._stream_session, url, self._cursor, max_frame_bytes=self.max_frame_bytes)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                step = asyncio.ensure_future(anext(frames))
                done, _ = await asyncio.wait({step, stopping}, timeout=idle_timeout, return_when="FIRST_COMPLETED")
                if step not in done:
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, StreamError):
                        await step
                    self._stopping.set()
                    return
                item = step.result()
                if await self._resume_from_backfill_watch(item):
                    return  # reconnect from the earlier cursor
                await self.handle(item)
                self._last_event = time.monotonic()
                if time.monotonic() - self._flushed >= self.flush_interval:
                    self.flush(stream)
                if limit is not None and self.stats.events >= limit:
                    self._stopping.set()
                    return
        finally:
            stopping.cancel()
            await frames.aclose()  # type: ignore[attr-defined]

    def flush(self, stream: str | None = None) -> None:
        """Write the pending account updates and (with ``stream``) the cursor to the index.

        The copies changed since the last flush are made durable first
        (:meth:`Repo.make_durable`), so that even after a power cut the
        index never says a copy holds more than it does.
        """
        for did in self._rows:
            repo = self._repos.get(did)
            if repo is not None:
                repo.make_durable()
        rows = list(self._rows.values())
        self._rows.clear()
        self.archive.flush(rows, stream, self._cursor)
        self._flushed = time.monotonic()

    async def wait_resyncs(self, timeout: float | None = None) -> None:
        """Wait until every running resync has finished; after ``timeout`` seconds, cancel the rest
        (they stay marked in the index and are done again on the next start)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            _done, pending = await asyncio.wait(list(self._tasks), timeout=left)
            if pending and deadline is not None and time.monotonic() >= deadline:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    # -- one frame ----------------------------------------------------------------------------------

    async def handle(self, item: Frame | InvalidFrame) -> str:
        """Handle one decoded frame (or the InvalidFrame a bad one raised); returns what was done."""
        self.stats.events += 1
        if isinstance(item, InvalidFrame):
            return self._reject(None, None, "frame", str(item))
        body = item.body
        seq = body.get("seq")
        seq = seq if type(seq) is int and seq >= 0 else None
        if seq is not None and self._cursor is not None and seq <= self._cursor:
            # A stream's seqs only go up: this is a replay, or the stream reordered or renumbered its
            # events. Handled, it would be applied out of order and after a cursor that no longer
            # says what was applied; rejected, nothing is lost (a commit missed shows as a gap on the
            # account's next one, and the account is resynced).
            return self._reject(None, seq, "seq", f"seq {seq} is not after {self._cursor}: the stream went back")
        handler = {
            "#commit": self._on_commit,
            "#sync": self._on_sync,
            "#identity": self._on_identity,
            "#account": self._on_account,
        }.get(item.type or "")
        outcome = IGNORED if handler is None else await handler(body, seq)
        if item.type == "#info":
            log.info("stream info: %s %s", shown(body.get("name")), shown(body.get("message")))
        if seq is not None and (self._cursor is None or seq > self._cursor):
            self._cursor = seq
            self.stats.cursor = seq
        return outcome

    def _mine(self, did: str) -> bool:
        k, n = self.partition
        return n == 1 or partition_of(did, n) == k

    def _did_of(self, body: dict, field_name: str, seq: int | None) -> str | None:
        did = body.get(field_name)
        if type(did) is not str or not is_valid_did(did):
            self._reject(None, seq, "message", f"'{field_name}' is not a DID: {shown(did)}")
            return None
        return did

    async def _on_commit(self, body: dict, seq: int | None) -> str:
        self.stats.commits += 1
        did = self._did_of(body, "repo", seq)
        if did is None:
            return REJECTED
        if not self._mine(did):
            self.stats.other_partition += 1
            return SKIPPED
        self.stats.frame_bytes += len(body.get("blocks") or b"") if type(body.get("blocks")) is bytes else 0
        verified = await self._verify(did, body, seq)
        if verified is None:
            return REJECTED
        since = body.get("since")
        pending = _Pending(verified, since if type(since) is str else None, seq, _car_bytes(body))
        if body.get("tooBig") is True:
            self._schedule_resync(did, "a tooBig commit", seq)
            return RESYNC
        return await self._apply(did, pending, buffered=False)

    async def _verify(self, did: str, body: dict, seq: int | None) -> VerifiedCommit | None:
        """The verified commit, or None (rejected and logged); a failed signature is checked once more
        against a freshly resolved key (the account may have rotated it)."""
        for fresh in (False, True):
            try:
                identity = await self.identity(did, fresh=fresh)
            except PypdsError as exc:
                self._reject(did, seq, "identity", str(exc))
                return None
            try:
                return verify_commit_message(body, key=identity.signing_key, limits=self.limits)
            except BadSignature as exc:
                if fresh:
                    self._reject(did, seq, "signature", str(exc))
                    return None
            except PypdsError as exc:
                self._reject(did, seq, "commit", str(exc))
                return None
        return None  # pragma: no cover - the loop always returns

    async def _apply(self, did: str, pending: _Pending, *, buffered: bool) -> str:
        """Apply a verified commit to the copy (or buffer it during a resync)."""
        if not buffered and did in self._resyncing:
            waiting = self._resyncing[did]
            if len(waiting) < MAX_BUFFERED:
                waiting.append(pending)
            return DEFERRED
        repo = await self._repo(did)
        if repo is None:
            self._schedule_resync(did, "an account this archive does not hold", pending.seq)
            return RESYNC
        verified = pending.verified
        try:
            outcome = repo.apply_commit(verified, pending.since, car=pending.car)
        except RollbackRefused as exc:
            if buffered or (verified.commit.rev or "") <= self._synced_rev(did):
                self.stats.duplicates += 1  # a commit a resync brought the copy past
                return DUPLICATE
            return self._reject(did, pending.seq, "rollback", str(exc))
        except DidMismatch as exc:
            return self._reject(did, pending.seq, "did", str(exc))
        except CommitGap as exc:
            if buffered:
                raise
            self._schedule_resync(did, str(exc), pending.seq)
            return RESYNC
        except IntegrityError as exc:  # verified, yet it does not apply: the copy needs the real state
            if buffered:
                raise CommitGap(str(exc)) from None
            self.archive.record_error(did, pending.seq, "apply", str(exc))
            self._schedule_resync(did, str(exc), pending.seq)
            return RESYNC
        applied = outcome == "applied"
        if applied:
            self.stats.applied += 1
        else:
            self.stats.duplicates += 1
        self._note(did, verified.commit.rev, verified.commit_cid.encode(), int(applied), pending.seq)
        return APPLIED if applied else DUPLICATE

    def _synced_rev(self, did: str) -> str:
        """The rev the last resync of ``did`` brought its copy to: older commits are covered, not rollbacks."""
        rev = self._synced_revs.get(did)
        if rev is None:
            rev = self.archive.synced_rev(did)
            self._synced_revs[did] = rev
        return rev

    def _note(self, did: str, rev: str | None, head: str, applied: int, seq: int | None) -> None:
        """Queue the index update for ``did`` (written by the next flush)."""
        earlier = self._rows.get(did)
        total = applied + (earlier[3] if earlier else 0)
        self._rows[did] = (did, rev, head, total, seq if seq is not None else (earlier[4] if earlier else None))

    def _reject(self, did: str | None, seq: int | None, kind: str, reason: str) -> str:
        self.stats.rejected += 1
        log.warning("rejected %s event%s (seq %s): %s", kind, f" of {did}" if did else "", seq, reason)
        self.archive.record_error(did, seq, kind, reason)
        return REJECTED

    async def _on_sync(self, body: dict, seq: int | None) -> str:
        """``#sync``: the account's current commit. Resync unless the copy holds it or something newer."""
        did = self._did_of(body, "did", seq)
        if did is None:
            return REJECTED
        if not self._mine(did):
            self.stats.other_partition += 1
            return SKIPPED
        try:
            identity = await self.identity(did)
            commit = _sync_commit(body, did, identity)
        except PypdsError as exc:
            return self._reject(did, seq, "sync", str(exc))
        repo = await self._repo(did)
        if repo is not None and (repo.head == commit[0] or not _newer(commit[1], repo.rev)):
            return IGNORED
        self._schedule_resync(did, "a #sync event", seq)
        return RESYNC

    async def _on_identity(self, body: dict, seq: int | None) -> str:
        """``#identity``: forget the cached identity (the key or PDS may have changed)."""
        did = self._did_of(body, "did", seq)
        if did is None:
            return REJECTED
        self._identities.pop(did, None)
        return IGNORED

    async def _on_account(self, body: dict, seq: int | None) -> str:
        """``#account``: record the status; remove a deleted account's copy unless ``keep_deleted``."""
        did = self._did_of(body, "did", seq)
        if did is None:
            return REJECTED
        if not self._mine(did):
            self.stats.other_partition += 1
            return SKIPPED
        active, status = body.get("active"), body.get("status")
        if type(active) is not bool:
            return self._reject(did, seq, "account", f"'active' is not a boolean: {shown(active)}")
        if active:
            status = "active"
        elif type(status) is not str or status not in ACCOUNT_STATUSES:
            status = "inactive"
        self.flush()  # the copies' state first, then the status
        self.archive.set_status(did, status)
        if status == "deleted" and not self.keep_deleted:
            if did in self._resyncing:
                self._delete_after.add(did)
            else:
                await self._delete_copy(did)
        elif status == "active" and did not in self._resyncing and await self._repo(did) is None:
            # a new account (or one a server saw for the first time) may make no commit for long
            self._schedule_resync(did, "an active account this archive does not hold", seq)
            return RESYNC
        return ACCOUNT

    async def _delete_copy(self, did: str) -> None:
        """Remove an account's copy: renamed aside first (atomic), then removed."""
        repo = self._repos.pop(did, None)
        if repo is not None:
            repo.close()
        path = self.archive.repo_path(did)
        if path.exists():
            aside = path.parent / f"{TEMP_PREFIX}deleted-{secrets.token_hex(6)}"
            os.replace(path, aside)
            await asyncio.to_thread(shutil.rmtree, aside, True)
        self.archive.forget(did)
        self._rows.pop(did, None)
        self.stats.deleted += 1

    # -- copies and identities --------------------------------------------------------------------

    async def _repo(self, did: str) -> Repo | None:
        """The open copy of ``did`` (kept in an LRU of handles), or None if the archive has none."""
        repo = self._repos.get(did)
        if repo is not None:
            self._repos.move_to_end(did)
            return repo
        path = self.archive.repo_path(did)
        if not (path / DB_NAME).exists() or is_unfinished_create(path):
            return None
        repo = await asyncio.to_thread(Repo.open, path, durability=self.durability, limits=self.limits)
        self._repos[did] = repo
        while len(self._repos) > self.open_repos:
            _did, oldest = self._repos.popitem(last=False)
            oldest.make_durable()  # its index row may be written by the next flush
            oldest.close()
        return repo

    async def identity(self, did: str, *, fresh: bool = False) -> Identity:
        """The account's identity (PDS, signing key): cached, or looked up (``fresh``: always)."""
        cached = None if fresh else self._identities.get(did)
        if cached is not None:
            self._identities.move_to_end(did)
            return cached
        if self._lookup is not None:
            found = await self._lookup(did)
        else:
            found = await resolve_async(did, config=self.config, session=self._session)
        if found.did != did:
            raise DidMismatch(f"the identity looked up for {did} is for {found.did}")
        self._identities[did] = found
        while len(self._identities) > MAX_IDENTITIES:
            self._identities.popitem(last=False)
        return found

    # -- resyncs ------------------------------------------------------------------------------------

    def _schedule_resync(self, did: str, reason: str, seq: int | None) -> None:
        """Start a background resync of ``did`` (at most one per account), marked durably first."""
        if seq is not None:
            self._resync_seq[did] = max(seq, self._resync_seq.get(did, 0))
        if did in self._resyncing:
            return
        failed = self._failed_at.get(did)
        if failed is not None and time.monotonic() - failed < self.resync_retry_delay:
            return  # still marked in the index; tried again later, or on the next start
        log.info("resyncing %s: %s", did, reason)
        self.archive.mark_resync(did)
        self._resyncing[did] = []
        task = asyncio.ensure_future(self._resync(did))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, did: str) -> None:
        try:
            if self._resync_slots is None:  # bound to the running event loop
                self._resync_slots = asyncio.Semaphore(self.resync_concurrency)
            async with self._resync_slots:
                for _round in range(RESYNC_ROUNDS):
                    report = await self._download(did)
                    if report is None:
                        return
                    if await self._replay_buffer(did):
                        self.archive.mark_resync(did, False)
                        return
                log.warning("resync of %s: commits still do not apply after %d rounds", did, RESYNC_ROUNDS)
        finally:
            self._resyncing.pop(did, None)
            if did in self._delete_after:
                self._delete_after.discard(did)
                await self._delete_copy(did)

    async def _download(self, did: str) -> DownloadReport | None:
        """getRepo into the copy (the diff since its rev, or whole); None on failure (logged, left marked)."""
        try:
            identity = await self.identity(did, fresh=True)
            report = await self._fetch(did, identity)
        except PypdsError as exc:
            self._failed_at[did] = time.monotonic()
            self.stats.resync_failures += 1
            log.warning("resync of %s failed: %s", did, exc)
            self.archive.record_error(did, None, "resync", str(exc))
            return None
        self._failed_at.pop(did, None)
        self.stats.resyncs += 1
        seq = self._resync_seq.pop(did, None)
        self.flush()
        self._resynced(did, report)
        self.archive.record_sync(did, report.rev, report.head.encode(), seq=seq)
        return report

    def _resynced(self, did: str, report: DownloadReport) -> None:
        """Remember (durably, before the cursor passes the events it covers) the rev a download reached."""
        rev = report.rev or ""
        if rev > self._synced_rev(did):
            self.archive.resynced(did, rev)
            self._synced_revs[did] = rev

    async def _fetch(self, did: str, identity: Identity) -> DownloadReport:
        """Download from the account's PDS; if it cannot be reached, from the stream's host."""
        path = self.archive.repo_path(did)
        self.archive.shard_dir(did)
        since = (path / DB_NAME).exists()
        fetch = functools.partial(
            download_async,
            did,
            path,
            since=since,
            blobs=self.blobs,
            config=self.config,
            options=self.download_options,
            session=self._session,
        )
        try:
            return await fetch(identity=identity)
        except NetworkError:
            if self.host is None or host_url(identity.pds) == self.host:
                raise
            return await fetch(identity=dataclasses.replace(identity, pds=self.host))

    async def _replay_buffer(self, did: str) -> bool:
        """Apply the commits that arrived during the resync; False if one shows another gap."""
        waiting = self._resyncing.get(did, [])
        while waiting:
            pending = waiting.pop(0)
            try:
                await self._apply(did, pending, buffered=True)
            except CommitGap:
                return False
        return True

    # -- backfill -------------------------------------------------------------------------------------

    def backfill(self, url: str, *, follow: bool = True, **kwargs: Any) -> BackfillReport:
        """Download every repository ``url`` lists, then follow it; see :meth:`backfill_async`."""
        return asyncio.run(self.backfill_async(url, follow=follow, **kwargs))

    async def backfill_async(
        self,
        url: str,
        *,
        follow: bool = True,
        concurrency: int = 4,
        progress: Callable[[int, int, int], None] | None = None,
        max_events: int | None = None,
        idle_timeout: float | None = None,
    ) -> BackfillReport:
        """Note the stream's position, download every listed repository, then follow from that position.

        ``progress(done, total, car_bytes)`` is called after each account.
        A rerun skips the accounts already at the listed rev. With
        ``follow=False`` it returns after the downloads (the cursor is
        saved, so a later :meth:`run` continues from it).
        """
        if concurrency < 1:
            raise InvalidInput(f"concurrency must be at least 1: {concurrency}")
        started = time.monotonic()
        self.host = host_url(url)
        stream = self.stream_key(url)
        report = BackfillReport()
        async with self._own_session():
            connected = asyncio.Event()
            watch = asyncio.ensure_future(self._first_seq(url, connected))
            await asyncio.wait({watch, asyncio.ensure_future(connected.wait())}, return_when="FIRST_COMPLETED")
            listing = [entry for entry in await self._list_repos(self.host) if self._mine(entry[0])]
            report.listed = len(listing)
            slots = asyncio.Semaphore(concurrency)

            async def one(entry: tuple[str, str | None, str]) -> None:
                async with slots:
                    await self._backfill_one(entry, report)
                if progress is not None:
                    done = report.downloaded + report.current + report.inactive + report.failed
                    progress(done, report.listed, report.car_bytes)

            await asyncio.gather(*(one(entry) for entry in listing))
            noted = watch.result() if watch.done() else None
            if noted is None and follow and not watch.done():
                self._backfill_watch = watch  # a quiet stream so far: following compares with it
            else:
                await _cancelled(watch)
            if noted is not None and self.archive.cursor(stream) is None:
                self.archive.flush([], stream, noted - 1)
            report.cursor = self.archive.cursor(stream)
            report.seconds = time.monotonic() - started
            if follow:
                try:
                    await self.run_async(url, max_events=max_events, idle_timeout=idle_timeout)
                finally:
                    if self._backfill_watch is not None:
                        await _cancelled(self._backfill_watch)
                        self._backfill_watch = None
        return report

    async def _resume_from_backfill_watch(self, item: Frame | InvalidFrame) -> bool:
        """Whether following must go back: the stream watched since before the backfill listed the
        repositories sent an event before ``item`` (the first one this connection sent). Then the
        cursor is set just before it and True returned (the caller reconnects), so no commit made
        between the downloads and this connection is missed."""
        watch = self._backfill_watch
        if watch is None or not isinstance(item, Frame) or type(item.body.get("seq")) is not int:
            return False
        seq: int = item.body["seq"]
        self._backfill_watch = None
        try:  # the watch is still connected, so it sees this event or an earlier one
            first = await asyncio.wait_for(watch, BACKFILL_WATCH_WAIT)
        except (TimeoutError, PypdsError):
            first = None
            log.warning("backfill: the stream watched during the downloads fell silent; following from seq %d", seq)
        await _cancelled(watch)
        if first is None or first >= seq:
            return False
        self._cursor = first - 1
        return True

    async def _backfill_one(self, entry: tuple[str, str | None, str], report: BackfillReport) -> None:
        did, rev, status = entry
        if status != "active":
            self.archive.set_status(did, status)
            report.inactive += 1
            return
        row = self.archive.account(did)
        held = (self.archive.repo_path(did) / DB_NAME).exists()
        if held and row is not None and rev is not None and row.rev == rev and not row.needs_resync:
            report.current += 1
            return
        self.archive.mark_resync(did)
        try:
            result = await self._fetch(did, await self.identity(did, fresh=True))
        except PypdsError as exc:
            report.failed += 1
            report.errors.append((did, str(exc)))
            self.archive.record_error(did, None, "backfill", str(exc))
            return
        self._resynced(did, result)
        self.archive.record_sync(did, result.rev, result.head.encode())
        self.archive.mark_resync(did, False)
        report.downloaded += 1
        report.car_bytes += result.car_bytes

    async def _first_seq(self, url: str, connected: asyncio.Event) -> int | None:
        """The seq of the first event the stream sends from now (None if it cannot be opened)."""
        assert self._stream_session is not None
        try:
            async for item in subscribe(self._stream_session, url, None, connected=connected):
                if isinstance(item, Frame) and type(item.body.get("seq")) is int:
                    return int(item.body["seq"])
        except StreamError as exc:
            log.warning("backfill: %s; following will start at the stream's live end", exc)
        return None

    async def _list_repos(self, host: str) -> list[tuple[str, str | None, str]]:
        """Every ``(did, rev, status)`` the host's listRepos names, paged and bounded."""
        client = XrpcClient(self._session, host, retries=self.download_options.retries)  # type: ignore[arg-type]
        found: dict[str, tuple[str, str | None, str]] = {}
        cursor: str | None = None
        for _page in range(MAX_LIST_PAGES):
            params = {"limit": str(LIST_REPOS_PAGE)}
            if cursor is not None:
                params["cursor"] = cursor
            answer = await client.query_json("com.atproto.sync.listRepos", params)
            repos = answer.get("repos")
            if type(repos) is not list or len(repos) > LIST_REPOS_PAGE:
                raise NetworkError(f"listRepos of {host} answered {shown(repos)} for 'repos'")
            for entry in repos:
                parsed = _listed(entry)
                if parsed is not None:
                    found.setdefault(parsed[0], parsed)
            following = answer.get("cursor")
            if not repos or type(following) is not str or following == cursor:
                return list(found.values())
            cursor = following
        raise ListingTooLong("MAX_LIST_PAGES", MAX_LIST_PAGES + 1, MAX_LIST_PAGES, f"listRepos of {host}")

    # -- sessions ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _own_session(self) -> Any:
        """The HTTP session (resolution, downloads) and the stream session, for one run."""
        if self._session is not None:
            yield
            return
        self._resync_slots = None  # a new one for this run's event loop
        async with (
            new_session(self.config.timeout, policy=self.config.address_policy()) as session,
            aiohttp.ClientSession() as stream_session,
        ):
            self._session, self._stream_session = session, stream_session
            try:
                yield
            finally:
                self._session = self._stream_session = None


async def _cancelled(task: asyncio.Future) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, PypdsError):
        await task


def _car_bytes(body: dict) -> bytes | None:
    blocks = body.get("blocks")
    if type(blocks) is bytes:
        return blocks
    if isinstance(blocks, dict) and isinstance(blocks.get("$bytes"), str):
        text = blocks["$bytes"]
        with contextlib.suppress(ValueError):
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    return None


def _newer(rev: str | None, than: str | None) -> bool:
    return (rev or "") > (than or "")


def _sync_commit(body: dict, did: str, identity: Identity) -> tuple[Any, str]:
    """A ``#sync`` body's commit (CID, rev), checked: the CAR's root, the DID, the rev and the signature."""
    from ..car.reader import CarReader
    from ..commit import decode_commit

    car = _car_bytes(body)
    if car is None:
        raise IntegrityError("#sync 'blocks' is not a CAR")
    with CarReader(car) as reader:
        root = reader.roots[0]
        blocks = {cid.cid_bytes: data for cid, data in reader}
    data = blocks.get(root.cid_bytes)
    if data is None:
        raise IntegrityError(f"#sync CAR lacks its root commit {root.encode()}")
    commit = decode_commit(data, root)
    if commit.did != did:
        raise DidMismatch(f"#sync commit {root.encode()} is for {commit.did}, not {did}")
    if commit.rev != body.get("rev"):
        raise IntegrityError(f"#sync commit has rev {commit.rev}, the message says {shown(body.get('rev'))}")
    commit.verify(load_public_key(identity.signing_key))
    return root, commit.rev or ""


def _listed(entry: object) -> tuple[str, str | None, str] | None:
    """A listRepos entry as ``(did, rev, status)``, or None if it is not usable."""
    if not isinstance(entry, dict):
        return None
    did, rev = entry.get("did"), entry.get("rev")
    if type(did) is not str or not is_valid_did(did):
        return None
    active = entry.get("active", True)
    status = entry.get("status")
    if active is False:
        state = status if type(status) is str and status in ACCOUNT_STATUSES else "inactive"
    else:
        state = "active"
    return did, rev if type(rev) is str and is_valid_tid(rev) else None, state
