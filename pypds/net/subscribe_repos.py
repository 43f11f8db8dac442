"""``com.atproto.sync.subscribeRepos``: the served repositories' event stream over WebSocket.

:class:`RepoEventStream` watches every served repository and writes an event
to the :class:`~pypds.net.event_log.EventLog` for each change, then sends the
stored frames to the subscribers (one binary WebSocket message per frame):

* ``#commit`` for every new commit, whoever wrote it: each served HEAD is
  polled (every ``poll_interval`` seconds, in the thread pool; a HEAD that
  did not move costs one ``PRAGMA data_version``). When HEAD moved forward
  along the commit history (:meth:`Repo.commit_chain`) from the HEAD last
  announced, there is one ``#commit`` per new commit, in order, built by
  :meth:`Repo.commit_event` (diff CAR with covering proof).
* ``#sync`` when HEAD moved in a way a diff cannot express: a CAR imported
  whole, HEAD set back or to another branch, more than
  :data:`MAX_CHAIN` commits at once, or a commit whose event cannot be
  built. Its CAR holds just the signed commit block.
* ``#identity`` and ``#account`` (active) the first time a repository is
  seen by the log. The log remembers the HEAD it announced for each DID, so
  a restart emits them again only for a new repository, and commits made
  while the server was down are announced when it starts.

Subscribers: no ``cursor`` is the live stream only; ``cursor=N`` replays the
stored events with seq > N first (a page at a time), preceded by an
``#info`` ``OutdatedCursor`` frame when events after N were pruned; a cursor
past the last seq gets a ``FutureCursor`` error frame and the connection is
closed. Each subscriber has a bounded queue (frames and bytes): one that
falls further behind gets a ``ConsumerTooSlow`` error frame and is
disconnected, so a consumer that does not read never grows the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from ..car.writer import CarWriter
from ..codec.cid import CID
from ..errors import InvalidInput, PypdsError, shown
from ..repo.repo import Repo
from ..sync.event_stream import encode_error_frame, encode_frame
from ..tid import utc_timestamp
from .event_log import DEFAULT_BACKLOG, EVENT_LOG_NAME, EventLog, check_backlog

__all__ = ["EventStreamOptions", "RepoEventStream", "Subscriber"]

log = logging.getLogger("pypds.net.subscribe_repos")

#: The method's NSID.
SUBSCRIBE_REPOS = "com.atproto.sync.subscribeRepos"
#: Most commits announced one by one when a HEAD moved; more at once is a ``#sync``.
MAX_CHAIN = 1000
#: Frames read from the log per page (replay and broadcast).
PAGE = 64
#: Seconds between WebSocket pings (a peer that does not answer within half of it is cut).
HEARTBEAT = 30.0
#: Seconds a disconnecting subscriber gets to take its last frame and the close.
CLOSE_WAIT = 0.3
#: Largest message a subscriber may send (it has nothing to say).
MAX_INCOMING = 1 << 12
OUTDATED_CURSOR, FUTURE_CURSOR, CONSUMER_TOO_SLOW = "OutdatedCursor", "FutureCursor", "ConsumerTooSlow"


@dataclass(frozen=True)
class EventStreamOptions:
    """How :func:`pypds.net.server.make_app` serves ``subscribeRepos``.

    ``event_log``: the SQLite file of stored frames (default ``events.db``
    in the first repository's directory); ``backlog``: events kept for
    replay; ``poll_interval``: seconds between looks at each HEAD;
    ``max_queue_frames`` / ``max_queue_bytes``: what a subscriber may have
    waiting before it is disconnected with ``ConsumerTooSlow``.
    """

    event_log: str | os.PathLike | None = None
    backlog: int = DEFAULT_BACKLOG
    poll_interval: float = 0.15
    max_queue_frames: int = 500
    max_queue_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        check_backlog(self.backlog)
        interval = self.poll_interval
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not 0 < interval <= 60:
            raise InvalidInput(f"poll_interval must be a number of seconds in (0, 60]: {shown(interval)}")
        for name in ("max_queue_frames", "max_queue_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be a positive integer: {shown(value)}")

    def log_path(self, repos: list[Repo]) -> Path:
        """Where the event log is: ``event_log``, or ``events.db`` in the first repository's directory."""
        if self.event_log is not None:
            return Path(self.event_log)
        if not repos:
            raise InvalidInput("no repository to keep the event log in: give event_log")
        return repos[0].path / EVENT_LOG_NAME


class Subscriber:
    """One connected consumer: its bounded queue of ``(seq, frame)`` waiting to be sent."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.queue: deque[tuple[int, bytes]] = deque()
        self.queued_bytes = 0
        self.peak_bytes = 0  # the most ever queued (what the bound holds)
        self.too_slow = False
        self.wake = asyncio.Event()
        self.sender: asyncio.Future | None = None  # the task sending to it: cancelled to cut it off

    def cut(self) -> None:
        """Stop sending to this subscriber now, even in the middle of a send it is not reading."""
        if self.sender is not None:
            self.sender.cancel()

    def offer(self, seq: int, frame: bytes) -> None:
        """Queue a frame; past the bound the queue is dropped and the subscriber marked too slow."""
        if self.too_slow:
            return
        if self.queue and (len(self.queue) >= self.max_frames or self.queued_bytes + len(frame) > self.max_bytes):
            self.too_slow = True
            self.queue.clear()
            self.queued_bytes = 0
            self.cut()
        else:
            self.queue.append((seq, frame))
            self.queued_bytes += len(frame)
            self.peak_bytes = max(self.peak_bytes, self.queued_bytes)
        self.wake.set()

    def take(self) -> tuple[int, bytes] | None:
        """The next queued frame, or None."""
        if not self.queue:
            return None
        seq, frame = self.queue.popleft()
        self.queued_bytes -= len(frame)
        return seq, frame


class RepoEventStream:
    """Watches the served repositories, logs their events and streams them to subscribers."""

    def __init__(self, repos: list[Repo], options: EventStreamOptions) -> None:
        self.repos = repos
        self.options = options
        self.log = EventLog.open(options.log_path(repos), backlog=options.backlog)
        self.subscribers: set[Subscriber] = set()
        self.sent = self.log.last_seq()  # the last seq handed to the subscribers
        self._watcher: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()
        self._stopping = False
        self._tick: asyncio.Future | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, _app: web.Application | None = None) -> None:
        """Start watching (an aiohttp ``on_startup`` hook).

        The first look happens here, before the server listens: what
        changed while no server ran (and a new repository's ``#identity``
        and ``#account``) is logged before anyone subscribes.
        """
        if self._watcher is not None or self._stopping:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.look)
        self.sent = await loop.run_in_executor(None, self.log.last_seq)
        self._watcher = loop.create_task(self._watch())

    async def stop(self, _app: web.Application | None = None) -> None:
        """Stop watching and close every subscriber (in about 2 x :data:`CLOSE_WAIT` seconds at most)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        for subscriber in self.subscribers:
            subscriber.cut()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=CLOSE_WAIT * 2 + 0.05)

    def close_now(self) -> None:
        """Close the event log."""
        self.log.close()

    async def close(self, _app: web.Application | None = None) -> None:
        """:meth:`stop`, let a look in progress end, close the event log (an aiohttp ``on_cleanup`` hook).

        Runs before the repositories are closed: the look uses them.
        """
        await self.stop()
        if self._tick is not None:  # a look at the repositories running in a worker thread
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._tick), CLOSE_WAIT)
        self.close_now()

    # -- watching --------------------------------------------------------------------

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(self.options.poll_interval)
            try:
                self._tick = loop.run_in_executor(None, self.look)
                await self._tick
                await self._broadcast()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("subscribeRepos: looking at the repositories failed")

    def look(self) -> None:
        """Log the events of every served repository whose HEAD moved since it was last announced."""
        for repo in self.repos:
            if self._stopping:
                return
            try:
                self._look_at(repo)
            except PypdsError as exc:
                log.warning("subscribeRepos: %s: %s", repo.did, exc)

    def _look_at(self, repo: Repo) -> None:
        previous = self.log.announced(repo.did)
        head = repo.head
        if previous == head.cid_bytes:
            return
        rev = repo.commit(head).rev
        if previous is None:
            messages = _first_seen(repo.did)
        elif rev is None:  # a version 2 commit: no event can describe it
            messages = []
        else:
            messages = _changes(repo, previous, head)
        self.log.append(repo.did, previous, head.cid_bytes, rev, messages)

    async def _broadcast(self) -> None:
        """Hand every stored frame after the last one handed out to each subscriber's queue."""
        loop = asyncio.get_running_loop()
        while True:
            rows = await loop.run_in_executor(None, self.log.read, self.sent, PAGE)
            for seq, frame in rows:
                for subscriber in self.subscribers:
                    subscriber.offer(seq, frame)
                self.sent = seq
            if len(rows) < PAGE:
                return

    # -- subscribers -----------------------------------------------------------------

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        """The WebSocket handler: replay from ``cursor`` if given, then the live stream."""
        cursor = _cursor(request)
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, compress=False, max_msg_size=MAX_INCOMING, timeout=CLOSE_WAIT)
        if not ws.can_prepare(request).ok:
            raise InvalidInput(f"{SUBSCRIBE_REPOS} is a WebSocket endpoint: connect with a WebSocket client")
        subscriber = Subscriber(self.options.max_queue_frames, self.options.max_queue_bytes)
        position = self.sent  # the queue gets every frame after this one
        task = asyncio.current_task()
        assert task is not None
        self.subscribers.add(subscriber)
        self._handlers.add(task)
        try:
            await ws.prepare(request)
            await self._serve(ws, subscriber, cursor, position)
        finally:
            self.subscribers.discard(subscriber)
            self._handlers.discard(task)
        return ws

    async def _serve(
        self, ws: web.WebSocketResponse, subscriber: Subscriber, cursor: int | None, position: int
    ) -> None:
        sender = subscriber.sender = asyncio.ensure_future(self._send(ws, subscriber, cursor, position))
        if self._stopping:
            sender.cancel()
        receiver = asyncio.ensure_future(_ignore_incoming(ws))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        error = sender.result() if sender.done() and not sender.cancelled() and not sender.exception() else None
        if subscriber.too_slow:
            error = encode_error_frame(CONSUMER_TOO_SLOW, "too far behind: reconnect with a cursor")
        if error is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.send_bytes(error), CLOSE_WAIT)
        with contextlib.suppress(Exception):
            code = 1008 if error is not None else 1001 if self._stopping else 1000
            await asyncio.wait_for(ws.close(code=code), CLOSE_WAIT)

    async def _send(
        self, ws: web.WebSocketResponse, subscriber: Subscriber, cursor: int | None, position: int
    ) -> bytes | None:
        """Send the replay, then the queue (frames after ``position``), until stopped; returns an error
        frame to end with, if any."""
        if cursor is not None:
            last = await _blocking(self.log.last_seq)
            if cursor > last:
                return encode_error_frame(FUTURE_CURSOR, f"cursor {cursor} is past the last event ({last})")
            oldest = await _blocking(self.log.oldest_seq)
            if oldest is not None and cursor + 1 < oldest:
                info = {"name": OUTDATED_CURSOR, "message": f"events before {oldest} are no longer kept"}
                await ws.send_bytes(encode_frame("#info", info))
            position = await self._replay(ws, subscriber, cursor)
        while not self._stopping and not subscriber.too_slow:
            item = subscriber.take()
            if item is None:
                subscriber.wake.clear()
                await subscriber.wake.wait()
                continue
            seq, frame = item
            if seq > position:
                await ws.send_bytes(frame)
                position = seq
        return None

    async def _replay(self, ws: web.WebSocketResponse, subscriber: Subscriber, cursor: int) -> int:
        """Send the stored frames after ``cursor`` a page at a time, until the live queue takes over."""
        position = cursor
        while not self._stopping and not subscriber.too_slow:
            rows = await _blocking(partial(self.log.read, position, PAGE))
            for seq, frame in rows:
                await ws.send_bytes(frame)
                position = seq
            if len(rows) < PAGE or position >= self.sent:
                break
        return position


def _first_seen(did: str) -> list[tuple[str, dict[str, Any]]]:
    time = utc_timestamp()
    return [("#identity", {"did": did, "time": time}), ("#account", {"did": did, "time": time, "active": True})]


def _changes(repo: Repo, previous: bytes, head: CID) -> list[tuple[str, dict[str, Any]]]:
    """One ``#commit`` per commit from ``previous`` to ``head``, or one ``#sync`` when that cannot be."""
    try:
        chain = repo.commit_chain(CID(previous), head, limit=MAX_CHAIN)
        if chain is not None:
            return [("#commit", dict(repo.commit_event(cid))) for cid in chain]
    except PypdsError as exc:
        log.info("subscribeRepos: %s: no #commit for the move to %s (%s): #sync", repo.did, head.encode(), exc)
    return [("#sync", _sync_body(repo, head))]


def _sync_body(repo: Repo, head: CID) -> dict[str, Any]:
    """A ``#sync`` body: a CAR of just the signed commit block, rooted at it."""
    block = repo.blockstore.get(head)
    buffer = io.BytesIO()
    writer = CarWriter(buffer, [head])
    if block is not None:
        writer.write_block(head, block)
    return {"did": repo.did, "blocks": buffer.getvalue(), "rev": repo.commit(head).rev, "time": utc_timestamp()}


def _cursor(request: web.Request) -> int | None:
    text = request.query.get("cursor")
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 15):
        raise InvalidInput(f"cursor must be a non-negative integer: {shown(text)}")
    return int(text)


async def _ignore_incoming(ws: web.WebSocketResponse) -> None:
    """Read (and drop) what the subscriber sends, so pings, pongs and its close are seen."""
    async for message in ws:
        if message.type == WSMsgType.ERROR:
            return


async def _blocking(call: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, call)
