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
================  ======================================================================

Errors follow the reference PDS (``@atproto/xrpc-server``): ``400
InvalidRequest`` for a missing or malformed parameter, ``400`` with the
lexicon's name (``RepoNotFound``, ``BlobNotFound``, ``BlockNotFound``) for
something absent, ``501 MethodNotImplemented`` for an unknown method, ``500
InternalServerError`` otherwise. ``getRecord`` for an absent record answers
with the exclusion proof, as the lexicon describes it ("prove the existence
or non-existence") and as the reference PDS does.

Tricky bits:

* Nothing is built whole in memory: CARs stream from :meth:`Repo.iter_car`
  chunk by chunk, blobs from their files. Every blocking repository call
  runs in the default thread pool, so a large export never stalls the event
  loop; the handle's lock serialises the calls (each chunk is one call).
* A blob is checked against its CID while it is sent, and its last chunk is
  held back until the whole file has hashed: a corrupt file is never
  delivered complete (the connection is cut instead).
* Once a streamed response has started, an error can no longer become an
  XRPC error body: the connection is closed, and the client's length or
  CAR checks fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from .blobs import BlobStore
from .car import CarWriter
from .cid import CID, RAW_PREFIX, parse_cid
from .errors import BlockHashMismatch, InvalidInput, PypdsError, shown
from .repo import Repo
from .syntax import is_valid_did, is_valid_nsid, is_valid_record_key, is_valid_tid
from .xrpc import (
    BLOB_NOT_FOUND,
    BLOCK_NOT_FOUND,
    CAR_MIME,
    INTERNAL_SERVER_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_IMPLEMENTED,
    REPO_NOT_FOUND,
)

__all__ = ["DEFAULT_PORT", "make_app", "serve", "start_server"]

log = logging.getLogger("pypds.server")

#: The port a PDS conventionally listens on.
DEFAULT_PORT = 2583
#: Bytes per chunk of a streamed CAR or blob.
CHUNK_SIZE = 1 << 16
#: Seconds a stopping server gives open responses (a CAR download, say) before cutting them.
SHUTDOWN_TIMEOUT = 2.0
#: How many listBlobs ``since`` answers are kept for paging.
BLOBS_SINCE_CACHE = 16
#: Default and largest page of listRepos / listBlobs (as in the lexicons).
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
#: Most CIDs one getBlocks call may ask for.
MAX_GET_BLOCKS = 1000
#: aiohttp request-parser settings of the application: a getBlocks URL with
#: ``MAX_GET_BLOCKS`` CIDs is ~70 KB, past aiohttp's default 8 KiB request line.
HANDLER_ARGS = {"max_line_size": 1 << 17, "max_field_size": 1 << 15}

RepoSource = str | os.PathLike | Repo
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


def make_app(repos: RepoSource | Iterable[RepoSource], *, chunk_size: int = CHUNK_SIZE) -> web.Application:
    """An aiohttp application serving ``repos`` (directories or open :class:`Repo` handles) read-only.

    Paths are opened here and closed when the application shuts down;
    handles passed in stay open (they belong to the caller). Two
    repositories with the same DID raise :class:`InvalidInput`.

    >>> from aiohttp import web
    >>> web.run_app(make_app(["./alice", "./bob"]), host="127.0.0.1", port=2583)  # doctest: +SKIP
    """
    service = SyncService(_open_repos(repos), chunk_size=chunk_size)
    app = web.Application(handler_args=HANDLER_ARGS)
    app[SERVICE] = service
    app.router.add_route("*", "/xrpc/{nsid}", service.dispatch)
    app.on_response_prepare.append(_cors)
    app.on_cleanup.append(service.close)
    return app


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
        for repo in self._owned:
            repo.close()

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route ``/xrpc/<nsid>`` to its method; every failure before a stream starts is an XRPC error."""
        nsid = request.match_info["nsid"]
        handler = self.methods.get(nsid)
        if handler is None:
            return xrpc_error(501, METHOD_NOT_IMPLEMENTED, f"method {nsid} is not implemented by this server")
        if request.method != "GET":
            return xrpc_error(400, INVALID_REQUEST, f"{nsid} is a query: use GET, not {request.method}")
        try:
            return await handler(request)
        except XrpcFailure as exc:
            return xrpc_error(exc.status, exc.error, exc.message)
        except StreamAborted:
            raise
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
        return await self._stream(request, chunks, CAR_MIME)

    async def get_blocks(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        cids = _cid_list(request)
        missing = await _blocking(lambda: [cid.encode() for cid in cids if not repo.blockstore.has(cid)])
        if missing:
            raise XrpcFailure(400, BLOCK_NOT_FOUND, f"could not find blocks: {', '.join(missing[:10])}")
        return await self._stream(request, _block_car(repo, cids), CAR_MIME)

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
        path = BlobStore(repo.path / "blobs").path_for(cid)
        try:
            stream = await _blocking(partial(open, path, "rb"))
        except FileNotFoundError:
            raise XrpcFailure(400, BLOB_NOT_FOUND, f"blob {cid.encode()} not found in {repo.did}") from None
        try:
            return await self._send_blob(request, cid, stream)
        finally:
            stream.close()

    # -- helpers ---------------------------------------------------------------------------

    def _repo(self, request: web.Request) -> Repo:
        did = _required(request, "did")
        if not is_valid_did(did):
            raise XrpcFailure(400, INVALID_REQUEST, f"invalid DID: {did!r}")
        repo = self.repos.get(did)
        if repo is None:
            raise XrpcFailure(400, REPO_NOT_FOUND, f"could not find repo for DID: {did}")
        return repo

    async def _stream(self, request: web.Request, chunks: Iterator[bytes], mime: str) -> web.StreamResponse:
        """Send ``chunks`` (pulled one by one in the thread pool) as a chunked response."""
        response = web.StreamResponse(headers={"Content-Type": mime})
        await response.prepare(request)
        try:
            while True:
                chunk = await _blocking(partial(next, chunks, None))
                if chunk is None:
                    break
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:  # aiohttp raises ConnectionResetError or a plain "Connection lost"
            log.debug("%s: the client went away", request.path)
        except Exception as exc:
            raise StreamAborted(request.path) from exc
        return response

    async def _send_blob(self, request: web.Request, cid: CID, stream: io.BufferedReader) -> web.StreamResponse:
        """Send a blob file, hashing as it goes; the last chunk goes only if the whole file matches ``cid``."""
        size = os.fstat(stream.fileno()).st_size
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            }
        )
        response.content_length = size
        await response.prepare(request)
        try:
            digest = hashlib.sha256()
            held = b""
            while chunk := await _blocking(partial(stream.read, self.chunk_size)):
                digest.update(chunk)
                if held:
                    await response.write(held)
                held = chunk
            if digest.digest() != cid.cid_bytes[4:]:
                raise BlockHashMismatch(f"blob {cid.encode()} file is corrupt: not sent")
            await response.write(held)
            await response.write_eof()
        except ConnectionError:
            log.debug("%s: the client went away", request.path)
        except Exception as exc:
            raise StreamAborted(request.path) from exc
        return response


class StreamAborted(Exception):
    """A streamed response failed after it started: the connection is closed without an error body."""


SERVICE = web.AppKey("pypds_sync_service", SyncService)


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


async def start_server(app: web.Application, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> web.AppRunner:
    """Start ``app`` listening on ``host:port`` (0: any free port); ``runner.addresses`` tells where.

    Stop it with ``await runner.cleanup()``, which also closes the repositories it opened.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def server_url(runner: web.AppRunner) -> str:
    """``http://host:port`` of the first address a started runner listens on."""
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    repos: RepoSource | Iterable[RepoSource],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    on_ready: Callable[[str, list[str]], None] | None = None,
) -> None:
    """Serve ``repos`` on ``host:port`` until SIGINT or SIGTERM, then shut down cleanly.

    ``on_ready(url, dids)`` is called once the server listens (with port 0,
    ``url`` carries the port chosen).
    """
    asyncio.run(_serve(make_app(repos), host, port, on_ready))


async def _serve(app: web.Application, host: str, port: int, on_ready: Callable[[str, list[str]], None] | None) -> None:
    try:
        runner = await start_server(app, host, port)
    except BaseException:
        await app[SERVICE].close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signum, stop.set)
    try:
        if on_ready is not None:
            on_ready(server_url(runner), sorted(app[SERVICE].repos))
        await stop.wait()
    finally:
        await runner.cleanup()
