"""XRPC, the atproto HTTP API: shared names, and the client side pypds uses to fetch repositories.

A query is ``GET /xrpc/<NSID>?param=value`` (an array parameter repeats its
name); the answer is JSON or, for the sync methods that return repository
data, a CAR (``application/vnd.ipld.car``) or a blob's bytes. A failure is a
non-2xx status with the JSON body ``{"error": "<Name>", "message": "..."}``.

What the reference implementation answers, and :mod:`pypds.server` mirrors:
``400`` with ``InvalidRequest`` for a bad or missing parameter, ``400`` with
the method's lexicon error name (``RepoNotFound``, ``BlobNotFound``,
``BlockNotFound``) when the thing asked for does not exist, ``501``
``MethodNotImplemented`` for a method the server does not have, ``500``
``InternalServerError`` for its own failures.

The client here never trusts a length: every body is read against a cap
(:func:`read_capped`), and :func:`retrying` retries only what may succeed
later (no connection, a timeout, a 5xx or 429), a bounded number of times
with exponential backoff.

Trap: aiohttp raises plain ``aiohttp.ClientError`` / ``TimeoutError`` for
transport failures; everything leaving this module is a
:class:`pypds.errors.NetworkError`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp

from . import __version__
from .errors import NetworkError, PypdsError, RemoteError, ResponseTooLarge, shown

__all__ = [
    "CAR_MIME",
    "JSON_MIME",
    "USER_AGENT",
    "XrpcClient",
    "read_capped",
    "retrying",
    "new_session",
]

T = TypeVar("T")

#: Content type of every CAR response.
CAR_MIME = "application/vnd.ipld.car"
JSON_MIME = "application/json"
USER_AGENT = f"pypds/{__version__}"

#: Error names used by the sync methods (lexicon ``errors`` and the XRPC spec).
INVALID_REQUEST = "InvalidRequest"
METHOD_NOT_IMPLEMENTED = "MethodNotImplemented"
INTERNAL_SERVER_ERROR = "InternalServerError"
REPO_NOT_FOUND = "RepoNotFound"
BLOB_NOT_FOUND = "BlobNotFound"
BLOCK_NOT_FOUND = "BlockNotFound"

#: Largest error body read from a failed response.
MAX_ERROR_BODY_BYTES = 64 << 10
#: Largest JSON answer read from an XRPC query (listBlobs pages, getLatestCommit).
MAX_JSON_BYTES = 16 << 20
_READ_CHUNK = 1 << 16
_MAX_BACKOFF = 30.0

Params = Sequence[tuple[str, str]] | dict[str, str]


#: A small answer (a DID document, an ``atproto-did``, an XRPC JSON object) must arrive whole within this
#: many per-read timeouts, so a server dripping a byte at a time cannot hold a lookup open for ever.
SMALL_ANSWER_TIMEOUTS = 3


def small_answer_timeout(session: aiohttp.ClientSession) -> aiohttp.ClientTimeout:
    """The session's timeouts plus a total cap, for requests whose answer is small."""
    per_read = session.timeout.sock_read or 10.0
    return aiohttp.ClientTimeout(
        total=per_read * SMALL_ANSWER_TIMEOUTS, connect=per_read, sock_connect=per_read, sock_read=per_read
    )


def new_session(timeout: float) -> aiohttp.ClientSession:
    """A client session with pypds' User-Agent and a per-read timeout of ``timeout`` seconds.

    There is no total timeout (a large CAR may take long); a connection, or a
    pause between two reads, longer than ``timeout`` fails.
    """
    limits = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
    return aiohttp.ClientSession(timeout=limits, headers={"User-Agent": USER_AGENT})


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int, limit: str) -> bytes:
    """The body of ``response``, refused with :class:`ResponseTooLarge` past ``max_bytes``.

    A declared Content-Length over the cap fails before anything is read;
    otherwise reading stops as soon as the cap is passed.
    """
    where = str(response.url)
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise ResponseTooLarge(limit, declared, max_bytes, where)
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(limit, size, max_bytes, where)
        parts.append(chunk)
    return b"".join(parts)


def json_object(body: bytes, error: type[PypdsError], what: str) -> dict[str, Any]:
    """Parse an untrusted answer that must be a JSON object; anything else raises ``error`` naming ``what``.

    Deep nesting makes the stdlib parser raise RecursionError: that is bad input too.
    """
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise error(f"{what} is not valid JSON: {reason}") from None
    if not isinstance(value, dict):
        raise error(f"{what} is {shown(value)}, not a JSON object")
    return value


async def remote_error(response: aiohttp.ClientResponse) -> RemoteError:
    """A :class:`RemoteError` for a failed response, named by its XRPC error body when it has one."""
    status = response.status
    name, message = f"HTTP{status}", response.reason or ""
    try:
        body = await read_capped(response, MAX_ERROR_BODY_BYTES, "max_error_body_bytes")
        parsed = json.loads(body)
    except (NetworkError, aiohttp.ClientError, TimeoutError, ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        if isinstance(parsed.get("error"), str) and parsed["error"]:
            name = parsed["error"][:100]
        if isinstance(parsed.get("message"), str):
            message = parsed["message"][:500]
    text = f"{response.method} {response.url} failed: {status} {name}"
    return RemoteError(
        f"{text}: {message}" if message else text, status=status, error=name, url=str(response.url), detail=message
    )


def is_retryable(exc: BaseException) -> bool:
    """True for failures a later attempt may not see: transport errors, timeouts, 5xx and 429."""
    if isinstance(exc, RemoteError):
        return exc.status >= 500 or exc.status == 429
    if isinstance(exc, ResponseTooLarge):
        return False
    return isinstance(exc, (aiohttp.ClientError, TimeoutError, ConnectionError))


async def retrying(attempt: Callable[[], Awaitable[T]], *, what: str, retries: int = 3, backoff: float = 0.5) -> T:
    """Run ``attempt`` until it succeeds, retrying retryable failures at most ``retries`` times.

    Waits ``backoff * 2**n`` seconds (capped at 30) before retry ``n``. The
    last failure is raised as a :class:`NetworkError` naming ``what`` and the
    number of attempts; other exceptions pass through at once.
    """
    if retries < 0:
        raise ValueError(f"retries must not be negative: {retries}")
    for n in range(retries + 1):
        try:
            return await attempt()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if n == retries:
                raise _final_error(exc, what, n + 1) from exc
        await asyncio.sleep(min(backoff * 2**n, _MAX_BACKOFF))
    raise AssertionError("unreachable")


def _final_error(exc: BaseException, what: str, attempts: int) -> NetworkError:
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if isinstance(exc, RemoteError):
        return RemoteError(f"{exc} ({tries})", status=exc.status, error=exc.error, url=exc.url, detail=exc.detail)
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        reason = "timed out"
    return NetworkError(f"{what} failed {tries}: {reason}")


class XrpcClient:
    """Queries and procedures of one XRPC service (a PDS) over a shared :class:`aiohttp.ClientSession`.

    ``retries`` and ``backoff`` apply to :meth:`query_json` and
    :meth:`procedure`; streaming callers wrap their whole attempt in
    :func:`retrying` themselves, so a transfer cut half way starts again from
    the beginning. ``headers`` (for example ``Authorization``) go with every
    request; :meth:`authorize` sets the bearer token.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, retries: int = 3, backoff: float = 0.5):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.headers: dict[str, str] = {}

    def authorize(self, token: str) -> None:
        """Send ``Authorization: Bearer <token>`` with every later request."""
        self.headers["Authorization"] = f"Bearer {token}"

    def url(self, method: str) -> str:
        return f"{self.base_url}/xrpc/{method}"

    @asynccontextmanager
    async def open(
        self, method: str, params: Params, *, timeout: aiohttp.ClientTimeout | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One GET of ``method``; yields the response once its status is 2xx (else raises RemoteError)."""
        extra = {} if timeout is None else {"timeout": timeout}
        async with self.session.get(
            self.url(method), params=params, headers=self.headers, allow_redirects=False, **extra
        ) as response:
            if not 200 <= response.status < 300:
                raise await remote_error(response)
            yield response

    async def query_json(self, method: str, params: Params, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
        """GET ``method`` and parse its JSON object answer, with retries."""

        async def attempt() -> dict[str, Any]:
            async with self.open(method, params, timeout=small_answer_timeout(self.session)) as response:
                body = await read_capped(response, max_bytes, "max_json_bytes")
            return json_object(body, NetworkError, f"the answer of {self.url(method)}")

        return await retrying(attempt, what=f"GET {self.url(method)}", retries=self.retries, backoff=self.backoff)

    async def procedure(
        self,
        method: str,
        body: Callable[[], Any] | dict[str, Any],
        *,
        content_type: str = JSON_MIME,
        headers: dict[str, str] | None = None,
        max_bytes: int = MAX_JSON_BYTES,
    ) -> dict[str, Any]:
        """POST ``method`` with retries; returns its JSON object answer ({} for an empty body).

        ``body`` is a JSON object, or a function giving the request body
        (bytes or a fresh file object) for each attempt. ``headers`` add to
        (or override) the client's.
        """

        async def attempt() -> dict[str, Any]:
            data = json.dumps(body).encode() if isinstance(body, dict) else body()
            sent = {**self.headers, "Content-Type": content_type, **(headers or {})}
            try:
                async with self.session.post(
                    self.url(method), data=data, headers=sent, allow_redirects=False
                ) as response:
                    if not 200 <= response.status < 300:
                        raise await remote_error(response)
                    answer = await read_capped(response, max_bytes, "max_json_bytes")
            finally:
                if hasattr(data, "close"):
                    data.close()
            return json_object(answer, NetworkError, f"the answer of {self.url(method)}") if answer.strip() else {}

        return await retrying(attempt, what=f"POST {self.url(method)}", retries=self.retries, backoff=self.backoff)
