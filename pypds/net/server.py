"""Serve repositories read-only over the atproto sync API (XRPC over HTTP, on aiohttp).

:func:`make_app` returns an :class:`aiohttp.web.Application` answering
``GET /xrpc/com.atproto.sync.<method>`` for one or more repositories, keyed by
DID; :func:`serve` runs it (``pypds serve``). Methods:

================  ======================================================================
getRepo           ``did``, ``since``: the repository CAR (or the diff after rev ``since``)
getBlocks         ``did``, ``cids`` (repeated): a CAR (no roots) of exactly those blocks
getRecord         ``did``, ``collection``, ``rkey``: the proof CAR (inclusion or exclusion)
getLatestCommit   ``did``: ``{cid, rev}``
getRepoStatus     ``did``: ``{did, active, rev}``
listRepos         ``cursor``, ``limit``: ``{repos: [{did, head, rev, active}], cursor}``
listBlobs         ``did``, ``since``, ``cursor``, ``limit``: ``{cids, cursor}``
getBlob           ``did``, ``cid``: the blob's bytes
subscribeRepos    ``cursor``: the event stream, over WebSocket (:mod:`pypds.net.subscribe_repos`)
================  ======================================================================

Errors follow the reference PDS (``@atproto/xrpc-server``): ``400
InvalidRequest`` for a missing or malformed parameter or a path under
``/xrpc/`` that is not an NSID, ``400`` with the lexicon's name
(``RepoNotFound``, ``BlobNotFound``, ``BlockNotFound``) for something absent,
``501 MethodNotImplemented`` for an unknown method, ``500
InternalServerError`` otherwise; any other path answers ``404 NotFound``, in
the same JSON shape. ``getRecord`` for an absent record answers with the
exclusion proof, as the lexicon describes it ("prove the existence or
non-existence") and as the reference PDS does. ``listBlobs`` and ``getBlob``
know only the blobs records at HEAD reference (:meth:`Repo.list_blobs`).

Tricky bits:

* Nothing is built whole in memory: CARs stream from :meth:`Repo.iter_car`
  chunk by chunk, blobs from their files a segment at a time. Every
  blocking call runs in the default thread pool, so a large export never
  stalls the event loop; the handle's lock serialises the repository calls
  (each chunk is one call).
* No byte of a blob is sent before it is checked: the whole file is hashed
  against its CID first (a segment per step), then read again and each
  segment sent only if it still has the digest it had
  (:class:`~pypds.storage.blobs.BlobFile`). Blob files are opened without following
  links or blocking, and only regular files are read, so a link or FIFO
  planted in ``blobs/`` answers ``500`` at once.
* Once a streamed response has started, an error can no longer become an
  XRPC error body: the connection is cut, and the client's length or CAR
  checks fail.
* aiohttp has no timeout for a request's headers, so :func:`start_server`
  listens itself and wraps aiohttp's protocol for each connection
  (:class:`_ConnectionGuard`): a connection is cut when its request headers
  are not complete ``header_timeout`` seconds after their first byte, when
  it has no request in progress and sends nothing for ``idle_timeout``
  seconds, or when a write waits that long on a client that does not read.
  Stopping lets running responses finish for :data:`SHUTDOWN_GRACE` seconds,
  then cuts them: the whole stop takes under :data:`SHUTDOWN_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web

from ..car.writer import CarWriter
from ..codec.cid import CID, RAW_PREFIX, parse_cid
from ..errors import BlockHashMismatch, IntegrityError, InvalidInput, LimitExceeded, PypdsError, StorageError, shown
from ..repo.repo import Repo
from ..storage.blobs import BlobFile, BlobStore
from ..syntax import is_valid_did, is_valid_nsid, is_valid_record_key, is_valid_tid
from .identity_server import IDENTITY, WILDCARD_HOSTS, IdentityOptions, mount_identity
from .subscribe_repos import SUBSCRIBE_REPOS, EventStreamOptions, RepoEventStream
from .xrpc import (
    BLOB_NOT_FOUND,
    BLOCK_NOT_FOUND,
    CAR_MIME,
    INTERNAL_SERVER_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_IMPLEMENTED,
    REPO_NOT_FOUND,
)

__all__ = ["DEFAULT_PORT", "EventStreamOptions", "RunningServer", "make_app", "serve", "start_server"]

log = logging.getLogger("pypds.net.server")

#: The port a PDS conventionally listens on.
DEFAULT_PORT = 2583
#: Bytes per chunk of a streamed CAR (blobs go a checked segment, 1 MiB, at a time).
CHUNK_SIZE = 1 << 16
#: Seconds a connection has to complete a request's headers, from their first byte.
HEADER_TIMEOUT = 10.0
#: Seconds a connection may stay with no request in progress and nothing arriving, and a
#: write may wait on a client that does not read, before the connection is cut.
IDLE_TIMEOUT = 60.0
#: Seconds a stopping server lets running responses (a CAR download, say) finish before cutting them.
SHUTDOWN_GRACE = 1.0
#: Seconds aiohttp then waits for each cut handler before cancelling it (twice, at most).
_CUT_WAIT = 0.25
#: Bound on the whole stop (grace, cuts, closing the repositories), with margin.
SHUTDOWN_TIMEOUT = 2.0
#: How many listBlobs ``since`` answers are kept for paging.
BLOBS_SINCE_CACHE = 16
#: Default and largest page of listRepos / listBlobs (as in the lexicons).
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
#: Most CIDs one getBlocks call may ask for.
MAX_GET_BLOCKS = 1000
#: The error name for a path outside ``/xrpc/`` (in the XRPC error shape; no lexicon names one).
NOT_FOUND = "NotFound"
#: aiohttp request-parser settings of the application: a getBlocks URL with
#: ``MAX_GET_BLOCKS`` CIDs is ~70 KB, past aiohttp's default 8 KiB request line.
HANDLER_ARGS = {"max_line_size": 1 << 17, "max_field_size": 1 << 15}

RepoSource = str | os.PathLike | Repo
#: The default ``event_stream`` of :func:`make_app`: ``subscribeRepos`` served, the log in the first repository.
DEFAULT_EVENT_STREAM = EventStreamOptions()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class XrpcFailure(Exception):
    """An XRPC error answer: HTTP ``status`` with ``{"error": error, "message": message}``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def xrpc_error(status: int, error: str, message: str) -> web.Response:
    """The JSON error response of the XRPC spec."""
    return web.json_response({"error": error, "message": message}, status=status)


def make_app(
    repos: RepoSource | Iterable[RepoSource],
    *,
    chunk_size: int = CHUNK_SIZE,
    idle_timeout: float = IDLE_TIMEOUT,
    identity: IdentityOptions | None = None,
    event_stream: EventStreamOptions | None = DEFAULT_EVENT_STREAM,
) -> web.Application:
    """An aiohttp application serving ``repos`` (directories or open :class:`Repo` handles) read-only.

    Paths are opened here and closed when the application shuts down;
    handles passed in stay open (they belong to the caller). Two
    repositories with the same DID raise :class:`InvalidInput`.
    ``idle_timeout`` becomes aiohttp's keep-alive timeout, which closes a
    connection that completes no request for that long whatever runs the
    application; the header timeout and write stalls need
    :func:`start_server` (or :func:`serve`), which sees the connections.
    With ``identity``, the application also answers DID documents and
    handles for the repositories (:mod:`pypds.identity_server`).
    ``event_stream`` says how ``com.atproto.sync.subscribeRepos`` is served
    (:class:`EventStreamOptions`: the event log file, backlog, poll interval,
    per-subscriber queue bound); None serves no stream, nor does the default
    with no repository (it keeps the log in the first one).

    >>> from aiohttp import web
    >>> web.run_app(make_app(["./alice", "./bob"]), host="127.0.0.1", port=2583)  # doctest: +SKIP
    """
    _check_timeout("idle_timeout", idle_timeout)
    service = SyncService(_open_repos(repos), chunk_size=chunk_size)
    app = web.Application(handler_args={**HANDLER_ARGS, "keepalive_timeout": idle_timeout})
    app[SERVICE] = service
    try:
        if identity is not None:
            mount_identity(app, service.repos, identity)
        if event_stream is not None and (service.repos or event_stream.event_log is not None):
            _mount_stream(app, service, event_stream)
    except BaseException:
        service.close_now()
        raise
    app.router.add_route("*", "/{path:.*}", service.dispatch)
    app.on_response_prepare.append(_cors)
    app.on_cleanup.append(service.close)
    return app


def _mount_stream(app: web.Application, service: SyncService, options: EventStreamOptions) -> None:
    """Serve subscribeRepos: the stream starts with the application and stops (log closed) before the
    repositories are closed. When the default log (in the first repository's directory) cannot be
    opened, a read-only directory say, the repositories are served without the stream, with a warning;
    a log the caller named must open."""
    try:
        stream = RepoEventStream(list(service.repos.values()), options)
    except StorageError as exc:
        if options.event_log is not None:
            raise
        log.warning("not serving subscribeRepos: %s (give an event log to serve the stream)", exc)
        return
    app[EVENT_STREAM] = stream
    service.methods[SUBSCRIBE_REPOS] = stream.subscribe
    app.on_startup.append(stream.start)
    app.on_shutdown.append(stream.stop)
    app.on_cleanup.append(stream.close)


def _check_timeout(name: str, seconds: float) -> None:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds < float("inf"):
        raise InvalidInput(f"{name} must be a positive number of seconds: {shown(seconds)}")


async def _cors(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Access-Control-Allow-Origin", "*")


def _open_repos(sources: RepoSource | Iterable[RepoSource]) -> list[tuple[Repo, bool]]:
    """``(repo, owned)`` for each source; paths are opened (and owned), handles are used as given."""
    if isinstance(sources, (str, os.PathLike, Repo)):
        sources = [sources]
    opened: list[tuple[Repo, bool]] = []
    try:
        for source in sources:
            if isinstance(source, Repo):
                opened.append((source, False))
            else:
                opened.append((Repo.open(Path(source)), True))
        _check_unique(opened)
    except BaseException:
        for repo, owned in opened:
            if owned:
                repo.close()
        raise
    return opened


def _check_unique(repos: list[tuple[Repo, bool]]) -> None:
    seen: dict[str, Repo] = {}
    for repo, _owned in repos:
        if repo.did in seen:
            raise InvalidInput(f"two repositories for {repo.did}: {seen[repo.did].path} and {repo.path}")
        seen[repo.did] = repo


class SyncService:
    """The sync methods over a set of repositories (what :func:`make_app` mounts)."""

    def __init__(self, repos: list[tuple[Repo, bool]], *, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise InvalidInput(f"chunk_size must be positive: {chunk_size}")
        self._owned = [repo for repo, owned in repos if owned]
        self.repos = {repo.did: repo for repo, _owned in repos}
        self.chunk_size = chunk_size
        # listBlobs with ``since`` diffs the tree (O(records changed since)); the full answer is kept
        # per (DID, HEAD, since) so paging through it does that work once, not once per page.
        self._blobs_since: dict[tuple[str, bytes, str], list[CID]] = {}
        # The first listBlobs or getBlob at a HEAD may count the blobs of every record (seconds for
        # a big repository): per repository one worker thread does that, other requests wait here
        # without holding one, so the thread pool stays free for everything else.
        self._blob_locks = {did: asyncio.Lock() for did in self.repos}
        self.methods: dict[str, Handler] = {
            "com.atproto.sync.getRepo": self.get_repo,
            "com.atproto.sync.getBlocks": self.get_blocks,
            "com.atproto.sync.getRecord": self.get_record,
            "com.atproto.sync.getLatestCommit": self.get_latest_commit,
            "com.atproto.sync.getRepoStatus": self.get_repo_status,
            "com.atproto.sync.listRepos": self.list_repos,
            "com.atproto.sync.listBlobs": self.list_blobs,
            "com.atproto.sync.getBlob": self.get_blob,
        }

    async def close(self, _app: web.Application | None = None) -> None:
        """Close the repositories this service opened."""
        self.close_now()

    def close_now(self) -> None:
        """:meth:`close`, outside an event loop."""
        for repo in self._owned:
            repo.close()

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route ``/xrpc/<nsid>`` to its method; every failure before a stream starts is an XRPC error."""
        path = request.path
        if not path.startswith("/xrpc/"):
            return xrpc_error(404, NOT_FOUND, f"nothing at {shown(path)}: methods are at /xrpc/<nsid>")
        nsid = path[len("/xrpc/") :]
        nsid = nsid[:-1] if nsid.endswith("/") else nsid
        if not is_valid_nsid(nsid):
            return xrpc_error(400, INVALID_REQUEST, f"invalid xrpc path: {shown(path)}")
        handler = self.methods.get(nsid)
        if handler is None:
            return xrpc_error(501, METHOD_NOT_IMPLEMENTED, f"method {nsid} is not implemented by this server")
        if request.method != "GET":
            return xrpc_error(400, INVALID_REQUEST, f"{nsid} is a query: use GET, not {request.method}")
        try:
            return await handler(request)
        except XrpcFailure as exc:
            return xrpc_error(exc.status, exc.error, exc.message)
        except InvalidInput as exc:
            return xrpc_error(400, INVALID_REQUEST, str(exc))
        except Exception:
            log.exception("%s failed", nsid)
            return xrpc_error(500, INTERNAL_SERVER_ERROR, f"{nsid} failed on the server")

    # -- the methods ---------------------------------------------------------------------

    async def get_repo(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        since = _since(request)
        chunks = await _blocking(partial(repo.iter_car, since=since, chunk_size=self.chunk_size))
        return await self._stream(request, chunks, _car_response())

    async def get_blocks(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        cids = _cid_list(request)
        missing = await _blocking(lambda: [cid.encode() for cid in cids if not repo.blockstore.has(cid)])
        if missing:
            raise XrpcFailure(400, BLOCK_NOT_FOUND, f"could not find blocks: {', '.join(missing[:10])}")
        return await self._stream(request, _block_car(repo, cids), _car_response())

    async def get_record(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        collection = _required(request, "collection")
        rkey = _required(request, "rkey")
        if not is_valid_nsid(collection):
            raise XrpcFailure(400, INVALID_REQUEST, f"collection is not an NSID: {collection!r}")
        if not is_valid_record_key(rkey):
            raise XrpcFailure(400, INVALID_REQUEST, f"invalid record key: {rkey!r}")
        proof = await _blocking(partial(repo.prove, collection, rkey))
        return web.Response(body=proof, content_type=CAR_MIME)

    async def get_latest_commit(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        head, rev = await _blocking(lambda: (repo.head, repo.rev))
        return web.json_response({"cid": head.encode(), "rev": rev})

    async def get_repo_status(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        rev = await _blocking(lambda: repo.rev)
        return web.json_response({"did": repo.did, "active": True, "rev": rev})

    async def list_repos(self, request: web.Request) -> web.StreamResponse:
        limit = _limit(request)
        cursor = request.query.get("cursor") or ""
        dids = sorted(did for did in self.repos if did > cursor)
        page, more = dids[:limit], len(dids) > limit

        def describe() -> list[dict[str, Any]]:
            return [self._describe(self.repos[did]) for did in page]

        body: dict[str, Any] = {"repos": await _blocking(describe)}
        if more:
            body["cursor"] = page[-1]
        return web.json_response(body)

    @staticmethod
    def _describe(repo: Repo) -> dict[str, Any]:
        return {"did": repo.did, "head": repo.head.encode(), "rev": repo.rev, "active": True}

    async def list_blobs(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        since = _since(request)
        limit = _limit(request)
        cursor = request.query.get("cursor") or None
        if cursor is not None:
            cursor = _parse_cid(cursor, "cursor").encode()
        if since is None:
            async with self._blob_locks[repo.did]:
                cids = await _blocking(partial(repo.list_blobs, cursor=cursor, limit=limit + 1))
        else:
            every = await self._blobs_changed_since(repo, since)
            cids = [cid for cid in every if cursor is None or cid.encode() > cursor][: limit + 1]
        page = [cid.encode() for cid in cids[:limit]]
        body: dict[str, Any] = {"cids": page}
        if len(cids) > limit:
            body["cursor"] = page[-1]
        return web.json_response(body)

    async def _blobs_changed_since(self, repo: Repo, since: str) -> list[CID]:
        key = (repo.did, repo.head.cid_bytes, since)
        cids = self._blobs_since.get(key)
        if cids is None:
            async with self._blob_locks[repo.did]:
                cids = await _blocking(partial(repo.list_blobs, since=since))
            if len(self._blobs_since) >= BLOBS_SINCE_CACHE:
                self._blobs_since.pop(next(iter(self._blobs_since)))
            self._blobs_since[key] = cids
        return cids

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        cid = _parse_cid(_required(request, "cid"), "cid")
        if cid.cid_bytes[:4] != RAW_PREFIX:
            raise XrpcFailure(400, BLOB_NOT_FOUND, f"{cid.encode()} is not a blob CID (raw codec)")
        not_found = XrpcFailure(400, BLOB_NOT_FOUND, f"blob {cid.encode()} not found in {repo.did}")
        async with self._blob_locks[repo.did]:
            referenced = await _blocking(partial(repo.blob_referenced, cid))
        if not referenced:
            raise not_found  # stored or not: no record at HEAD references it
        try:
            blob = await _blocking(partial(BlobStore(repo.path / "blobs").open, cid))
        except (IntegrityError, LimitExceeded) as exc:
            raise _damaged(cid, exc) from None
        if blob is None:
            raise not_found
        try:
            return await self._send_blob(request, blob)
        finally:
            await _blocking(blob.close)  # in the pool: it waits for a read in progress

    # -- helpers ---------------------------------------------------------------------------

    def _repo(self, request: web.Request) -> Repo:
        did = _required(request, "did")
        if not is_valid_did(did):
            raise XrpcFailure(400, INVALID_REQUEST, f"invalid DID: {did!r}")
        repo = self.repos.get(did)
        if repo is None:
            raise XrpcFailure(400, REPO_NOT_FOUND, f"could not find repo for DID: {did}")
        return repo

    async def _stream(
        self, request: web.Request, chunks: Iterator[bytes], response: web.StreamResponse
    ) -> web.StreamResponse:
        """Send ``chunks`` (each pulled in the thread pool) as ``response``; a failure cuts the connection."""
        await response.prepare(request)
        try:
            while (chunk := await _blocking(partial(next, chunks, None))) is not None:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:  # aiohttp raises ConnectionResetError or a plain "Connection lost"
            log.debug("%s: the client went away", request.path)
        except Exception as exc:
            log.warning("%s: response cut: %s", request.path, exc, exc_info=not isinstance(exc, PypdsError))
            if request.transport is not None:
                request.transport.abort()
        return response

    async def _send_blob(self, request: web.Request, blob: BlobFile) -> web.StreamResponse:
        """Hash the whole blob file against its CID, then send it, each segment re-checked (see BlobFile)."""
        checking = blob.check()
        try:
            while await _blocking(partial(next, checking, None)) is not None:
                pass
        except BlockHashMismatch as exc:
            raise _damaged(blob.cid, exc) from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            }
        )
        response.content_length = blob.size
        return await self._stream(request, blob.segments(), response)


SERVICE = web.AppKey("pypds_sync_service", SyncService)
EVENT_STREAM = web.AppKey("pypds_event_stream", RepoEventStream)


def _car_response() -> web.StreamResponse:
    return web.StreamResponse(headers={"Content-Type": CAR_MIME})


def _damaged(cid: CID, exc: PypdsError) -> XrpcFailure:
    """The answer for a blob whose file cannot be served (a link, FIFO, oversized or corrupt file)."""
    log.warning("getBlob %s: %s", cid.encode(), exc)
    return XrpcFailure(500, INTERNAL_SERVER_ERROR, f"blob {cid.encode()} is damaged on this server")


async def _blocking(call: Callable[[], Any]) -> Any:
    """Run a blocking repository call in the default thread pool."""
    return await asyncio.get_running_loop().run_in_executor(None, call)


def _block_car(repo: Repo, cids: list[CID]) -> Iterator[bytes]:
    """A CAR with no roots holding ``cids``' blocks, one block per chunk."""
    buffer = io.BytesIO()
    writer = CarWriter(buffer, [])
    for cid in cids:
        data = repo.blockstore.get(cid)
        if data is None:  # removed since the check (gc): the stream is cut
            raise BlockHashMismatch(f"block {cid.encode()} vanished while it was being sent")
        writer.write_block(cid, data)
        yield _take(buffer)
    if buffer.tell():
        yield _take(buffer)


def _take(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


# -- parameters ------------------------------------------------------------------------------


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise XrpcFailure(400, INVALID_REQUEST, f"missing required parameter {name}")
    return value


def _since(request: web.Request) -> str | None:
    since = request.query.get("since") or None
    if since is not None and not is_valid_tid(since):
        raise XrpcFailure(400, INVALID_REQUEST, f"since is not a rev (TID): {since!r}")
    return since


def _limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None or text == "":
        return DEFAULT_LIMIT
    # ASCII digits only (str.isdigit also accepts "²" and other scripts' digits), and few of them
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= MAX_LIMIT:
        raise XrpcFailure(400, INVALID_REQUEST, f"limit must be an integer from 1 to {MAX_LIMIT}: {shown(text)}")
    return int(text)


def _parse_cid(text: str, name: str) -> CID:
    try:
        return parse_cid(text)
    except PypdsError as exc:
        raise XrpcFailure(400, INVALID_REQUEST, f"{name}: {exc}") from None


def _cid_list(request: web.Request) -> list[CID]:
    texts = request.query.getall("cids", [])
    if not texts:
        raise XrpcFailure(400, INVALID_REQUEST, "missing required parameter cids")
    if len(texts) > MAX_GET_BLOCKS:
        raise XrpcFailure(400, INVALID_REQUEST, f"at most {MAX_GET_BLOCKS} cids per call, got {len(texts)}")
    return [_parse_cid(text, "cids") for text in texts]


# -- running ---------------------------------------------------------------------------------


class _Timeouts(NamedTuple):
    header: float
    idle: float


class _ConnectionGuard(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped to cut the connection when it stalls.

    With no request in progress the connection may stay silent for
    ``idle`` seconds; once bytes of a request arrive, its headers must be
    complete within ``header`` seconds of the first (more bytes do not
    extend that); a write may wait ``idle`` seconds on a client that does
    not read. A request is in progress from the moment aiohttp hands it to
    the application (its headers are complete) until the handler returns.
    """

    def __init__(self, inner: web.RequestHandler, timeouts: _Timeouts, live: dict) -> None:
        self.inner = inner
        self.busy = 0
        self._timeouts = timeouts
        self._live = live
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._reading_headers = False

    # -- asyncio's side: everything goes on to aiohttp's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._live[self.inner] = self
        self._await_request()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self._reading_headers:
            self._reading_headers = True
            self._timer = self._arm(self._timer, self._timeouts.header)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()  # aiohttp's handler closes the transport itself
        return None

    def pause_writing(self) -> None:
        self._write_timer = self._arm(self._write_timer, self._timeouts.idle)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._write_timer = self._arm(self._write_timer, None)
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer = self._arm(self._timer, None)
        self._write_timer = self._arm(self._write_timer, None)
        self._live.pop(self.inner, None)
        self._transport = None
        self.inner.connection_lost(exc)

    # -- the application's side

    def request_started(self) -> None:
        self.busy += 1
        self._reading_headers = False
        self._timer = self._arm(self._timer, None)

    def request_done(self) -> None:
        self.busy -= 1
        if not self.busy and self._transport is not None:
            self._await_request()

    def abort(self) -> None:
        """Cut the connection now (unsent data is dropped)."""
        if self._transport is not None:
            self._transport.abort()

    def _await_request(self) -> None:
        self._reading_headers = False
        self._timer = self._arm(self._timer, self._timeouts.idle)

    def _arm(self, timer: asyncio.TimerHandle | None, seconds: float | None) -> asyncio.TimerHandle | None:
        """Cancel ``timer``; with ``seconds``, a new one that aborts the connection then."""
        if timer is not None:
            timer.cancel()
        return None if seconds is None else asyncio.get_running_loop().call_later(seconds, self.abort)


def _tracking(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], live: dict) -> Callable:
    """``handler``, telling the connection's guard when a request starts and ends."""

    async def tracked(request: web.BaseRequest) -> web.StreamResponse:
        guard = live.get(request.protocol)
        if guard is None:
            return await handler(request)
        guard.request_started()
        try:
            return await handler(request)
        finally:
            guard.request_done()

    return tracked


class RunningServer:
    """A server started by :func:`start_server`: where it listens, and :meth:`cleanup` to stop it."""

    def __init__(self, runner: web.AppRunner, listener: asyncio.Server, live: dict) -> None:
        self._runner = runner
        self._listener = listener
        self._live: dict[Any, _ConnectionGuard] = live

    @property
    def addresses(self) -> list[Any]:
        """The socket addresses listened on (``(host, port)`` for IPv4)."""
        return [sock.getsockname() for sock in self._listener.sockets]

    @property
    def url(self) -> str:
        """``http://host:port`` of the first address."""
        host, port = self.addresses[0][:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def cleanup(self) -> None:
        """Stop, in under :data:`SHUTDOWN_TIMEOUT` seconds.

        New connections are refused and open ones take no further request.
        Responses still running after :data:`SHUTDOWN_GRACE` seconds are
        cut; then the application is cleaned up (closing the repositories
        :func:`make_app` opened).
        """
        loop = asyncio.get_running_loop()
        self._listener.close()
        stream = self._runner.app.get(EVENT_STREAM)
        if stream is not None:
            await stream.stop()  # subscribers are closed, not left for the grace period
        server = self._runner.server
        if server is not None:
            server.pre_shutdown()  # idle connections close, busy ones after their response
        deadline = loop.time() + SHUTDOWN_GRACE
        while any(guard.busy for guard in self._live.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for guard in list(self._live.values()):
            if guard.busy:
                guard.abort()
        await self._runner.cleanup()
        for guard in list(self._live.values()):
            guard.abort()  # a finished response a client does not read: not flushed


async def start_server(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
) -> RunningServer:
    """Start ``app`` listening on ``host:port`` (0: any free port); ``.url`` tells where.

    Connections are guarded by ``header_timeout`` and ``idle_timeout``
    (see :class:`_ConnectionGuard`), and a handler is cancelled when its
    client goes away (no blob is hashed for nobody). Stop it with ``await
    server.cleanup()``, which also closes the repositories :func:`make_app`
    opened.
    """
    timeouts = _Timeouts(header_timeout, idle_timeout)
    for name, seconds in timeouts._asdict().items():
        _check_timeout(f"{name}_timeout", seconds)
    identity = app.get(IDENTITY)
    if identity is not None and identity.public_url is None and host in WILDCARD_HOSTS:
        raise InvalidInput(f"serving identities on {host or 'every address'} needs a public URL (--public-url)")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CUT_WAIT, handler_cancellation=True)
    await runner.setup()
    try:
        server = runner.server
        assert server is not None
        live: dict[Any, _ConnectionGuard] = {}
        server.request_handler = _tracking(server.request_handler, live)
        listener = await asyncio.get_running_loop().create_server(
            lambda: _ConnectionGuard(server(), timeouts, live), host, port
        )
    except BaseException:
        await runner.cleanup()
        raise
    running = RunningServer(runner, listener, live)
    if identity is not None:
        identity.listening_at(running.url)
    return running


def serve(
    repos: RepoSource | Iterable[RepoSource],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    identity: IdentityOptions | None = None,
    event_stream: EventStreamOptions | None = DEFAULT_EVENT_STREAM,
    on_ready: Callable[[str, list[str]], None] | None = None,
) -> None:
    """Serve ``repos`` on ``host:port`` until SIGINT or SIGTERM, then stop within :data:`SHUTDOWN_TIMEOUT`.

    ``on_ready(url, dids)`` is called once the server listens (with port 0,
    ``url`` carries the port chosen). The timeouts are those of
    :func:`start_server`; ``identity`` and ``event_stream`` are those of :func:`make_app`.
    """
    _check_timeout("header_timeout", header_timeout)
    app = make_app(repos, idle_timeout=idle_timeout, identity=identity, event_stream=event_stream)
    asyncio.run(_serve(app, host, port, _Timeouts(header_timeout, idle_timeout), on_ready))


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    timeouts: _Timeouts,
    on_ready: Callable[[str, list[str]], None] | None,
) -> None:
    try:
        server = await start_server(app, host, port, header_timeout=timeouts.header, idle_timeout=timeouts.idle)
    except BaseException:
        stream = app.get(EVENT_STREAM)
        if stream is not None:
            stream.close_now()
        await app[SERVICE].close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signum, stop.set)
    try:
        if on_ready is not None:
            on_ready(server.url, sorted(app[SERVICE].repos))
        await stop.wait()
    finally:
        await server.cleanup()
