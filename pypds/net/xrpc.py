"""XRPC, the atproto HTTP API: shared names, and the client side pypds uses to fetch repositories.

A query is ``GET /xrpc/<NSID>?param=value`` (an array parameter repeats its
name); the answer is JSON or, for the sync methods that return repository
data, a CAR (``application/vnd.ipld.car``) or a blob's bytes. A failure is a
non-2xx status with the JSON body ``{"error": "<Name>", "message": "..."}``.

What the reference implementation answers, and :mod:`pypds.net.server` mirrors:
``400`` with ``InvalidRequest`` for a bad or missing parameter, ``400`` with
the method's lexicon error name (``RepoNotFound``, ``BlobNotFound``,
``BlockNotFound``) when the thing asked for does not exist, ``501``
``MethodNotImplemented`` for a method the server does not have, ``500``
``InternalServerError`` for its own failures.

The client here never trusts a length: every body is read against a cap
(:func:`read_capped`, :func:`iter_body`), and :func:`retrying` retries only
what may succeed later (no connection, a timeout, a too slow transfer, a 5xx
or 429), a bounded number of times with exponential backoff.

Nor does it trust the clock of the other side: a :class:`Pace` sets the
slowest average rate a body may arrive at (a server dripping a byte a
second is cut off after one averaging window) and an optional overall
deadline for every request, read and retry.

Nor where it connects: an :class:`AddressPolicy` refuses non-public
addresses (loopback, private, link-local, CGNAT, multicast, reserved, and
the IPv6 forms that embed them) for endpoints learned from the network.
:meth:`AddressPolicy.check_url` checks an IP literal before a request;
a session made by :func:`new_session` with a policy checks the addresses a
host name resolves to when it connects (so a name re-bound to 127.0.0.1 is
refused too). Redirects are never followed by aiohttp itself: the callers
that follow them check each hop.

Trap: aiohttp raises plain ``aiohttp.ClientError`` / ``TimeoutError`` for
transport failures; everything leaving this module is a
:class:`pypds.errors.NetworkError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ..errors import (
    AddressRefused,
    DeadlineExceeded,
    InvalidInput,
    NetworkError,
    PypdsError,
    RemoteError,
    ResponseTooLarge,
    TransferTooSlow,
    shown,
)
from ..version import __version__

__all__ = [
    "CAR_MIME",
    "JSON_MIME",
    "USER_AGENT",
    "AddressPolicy",
    "Pace",
    "XrpcClient",
    "is_public_address",
    "iter_body",
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


def new_session(timeout: float, *, policy: AddressPolicy | None = None) -> aiohttp.ClientSession:
    """A client session with pypds' User-Agent and a per-read timeout of ``timeout`` seconds.

    There is no total timeout (a large CAR may take long; see :class:`Pace`);
    a connection, or a pause between two reads, longer than ``timeout``
    fails. With a ``policy`` that does not allow private networks, host
    names are resolved through :class:`PublicOnlyResolver`.
    """
    limits = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
    connector = None
    if policy is not None and not policy.allow_private:
        connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(policy))
    return aiohttp.ClientSession(timeout=limits, headers={"User-Agent": USER_AGENT}, connector=connector)


# -- where connections may go ---------------------------------------------------------------

#: The NAT64 well-known prefix: its addresses carry an IPv4 address in their last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address; False for loopback, private, link-local,
    CGNAT (100.64/10), multicast, reserved, unspecified and documentation ranges, and for IPv6
    addresses embedding one of those (IPv4-mapped, 6to4, NAT64). Raises ValueError for a non-address.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
        if ip.is_site_local:
            return False
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (special or ip.is_reserved or ip.is_unspecified)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Where connections to endpoints learned from the network may go.

    ``allow_private``: allow every address (tests, local setups). Otherwise
    only public addresses (:func:`is_public_address`) are allowed, except on
    ``trusted``: the ``(host, port)`` pairs the user named explicitly (a PLC
    directory, a fixed web base), which are the user's choice.
    """

    allow_private: bool = False
    trusted: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def trusting(cls, urls: Sequence[str], *, allow_private: bool = False) -> AddressPolicy:
        """A policy that trusts the hosts and ports of ``urls``."""
        return cls(allow_private, frozenset(pair for pair in map(_host_port, urls) if pair is not None))

    def is_trusted(self, host: str, port: int | None) -> bool:
        return self.allow_private or (host.lower().rstrip("."), port or 0) in self.trusted

    def check_url(self, url: str, what: str) -> None:
        """Raise :class:`AddressRefused` if ``url``'s host is a non-public IP literal (names are
        checked when they are resolved, by a session from :func:`new_session`)."""
        pair = _host_port(url)
        if pair is None or self.is_trusted(*pair):
            return
        try:
            public = is_public_address(pair[0])
        except ValueError:
            return
        if not public:
            raise AddressRefused(f"refusing to connect to {what} {url}: {pair[0]} is not a public address; {_OPT_IN}")


_OPT_IN = "allow it with --allow-private-network (allow_private_network=True)"


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        parsed = URL(url)
        host, port = parsed.raw_host, parsed.port
    except (ValueError, TypeError):
        return None
    if not host:
        return None
    return host.lower().rstrip("."), port or 0


class PublicOnlyResolver(AbstractResolver):
    """An aiohttp resolver that drops non-public addresses from every untrusted answer, and
    raises :class:`AddressRefused` when none is left. Runs at connect time, for every request
    and redirect, so a host name that resolves (or is re-bound) to 127.0.0.1 is refused."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        if self.policy.is_trusted(host, port):
            return answers
        public = [answer for answer in answers if _is_public_text(answer["host"])]
        if not public:
            found = ", ".join(sorted({answer["host"] for answer in answers})) or "nothing"
            raise AddressRefused(f"{host} resolves only to non-public addresses ({found}); {_OPT_IN}")
        return public

    async def close(self) -> None:
        await self.inner.close()


def _is_public_text(address: str) -> bool:
    try:
        return is_public_address(address.split("%", 1)[0])
    except ValueError:
        return False


# -- how slow a transfer may be ---------------------------------------------------------------

#: Slowest average rate, in bytes per second, a response body may arrive at (0: no minimum).
MIN_RATE = 4096
#: Seconds over which that average is taken.
RATE_WINDOW = 30.0


@dataclass(frozen=True)
class Pace:
    """How slow transfers may be.

    ``min_rate``: each response body must arrive at ``min_rate`` bytes per
    second or more on average over every ``window`` seconds (0: no minimum),
    else :class:`TransferTooSlow` (retryable, like a timeout). ``deadline``:
    a :func:`time.monotonic` instant by which every request, read and retry
    must be done (None: none), else :class:`DeadlineExceeded` (final).
    """

    min_rate: float = MIN_RATE
    window: float = RATE_WINDOW
    deadline: float | None = None

    def __post_init__(self) -> None:
        if not self.min_rate >= 0:
            raise InvalidInput(f"min_rate must not be negative: {shown(self.min_rate)}")
        if not self.window > 0:
            raise InvalidInput(f"rate window must be positive: {shown(self.window)}")

    @classmethod
    def within(cls, seconds: float | None, *, min_rate: float = MIN_RATE, window: float = RATE_WINDOW) -> Pace:
        """A pace whose deadline is ``seconds`` from now (None: no deadline)."""
        if seconds is not None and not seconds > 0:
            raise InvalidInput(f"deadline must be positive: {shown(seconds)}")
        deadline = None if seconds is None else time.monotonic() + seconds
        return cls(min_rate, window, deadline)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None without one)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self, what: str) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"{what}: the download's deadline has passed")

    def timeout(self, base: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
        """``base`` with its total time cut to what is left before the deadline."""
        remaining = self.remaining()
        if remaining is None:
            return base
        total = max(remaining, 0.001) if base.total is None else min(base.total, max(remaining, 0.001))
        return aiohttp.ClientTimeout(
            total=total,
            connect=base.connect,
            sock_read=base.sock_read,
            sock_connect=base.sock_connect,
            ceil_threshold=base.ceil_threshold,
        )


class _RateMeter:
    """Counts a body's bytes per window and fails a window that falls short of the minimum rate."""

    def __init__(self, pace: Pace, what: str) -> None:
        self.pace = pace
        self.what = what
        self.started = time.monotonic()
        self.count = 0

    def add(self, size: int) -> None:
        self.pace.check_deadline(self.what)
        if not self.pace.min_rate:
            return
        self.count += size
        now = time.monotonic()
        elapsed = now - self.started
        if elapsed < self.pace.window:
            return
        if self.count < self.pace.min_rate * elapsed:
            raise TransferTooSlow(
                f"{self.what}: {self.count} bytes in {elapsed:.1f} s, slower than the minimum "
                f"{self.pace.min_rate:g} bytes/s"
            )
        self.started, self.count = now, 0


async def iter_body(
    response: aiohttp.ClientResponse, max_bytes: int, limit: str, *, pace: Pace | None = None
) -> AsyncIterator[bytes]:
    """The body of ``response`` in chunks, refused with :class:`ResponseTooLarge` past ``max_bytes``
    and, with a ``pace``, with :class:`TransferTooSlow` / :class:`DeadlineExceeded`.

    A declared Content-Length over the cap fails before anything is read;
    otherwise reading stops as soon as the cap is passed.
    """
    where = str(response.url)
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise ResponseTooLarge(limit, declared, max_bytes, where)
    meter = None if pace is None else _RateMeter(pace, where)
    size = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(limit, size, max_bytes, where)
        if meter is not None:
            meter.add(len(chunk))
        yield chunk


async def read_capped(
    response: aiohttp.ClientResponse, max_bytes: int, limit: str, *, pace: Pace | None = None
) -> bytes:
    """The whole body of ``response``, read through :func:`iter_body`."""
    return b"".join([chunk async for chunk in iter_body(response, max_bytes, limit, pace=pace)])


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


async def remote_error(response: aiohttp.ClientResponse, *, pace: Pace | None = None) -> RemoteError:
    """A :class:`RemoteError` for a failed response, named by its XRPC error body when it has one."""
    status = response.status
    name, message = f"HTTP{status}", response.reason or ""
    try:
        body = await read_capped(response, MAX_ERROR_BODY_BYTES, "max_error_body_bytes", pace=pace)
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
    """True for failures a later attempt may not see: transport errors, timeouts, too slow
    transfers, 5xx (but 501 Not Implemented) and 429."""
    if isinstance(exc, RemoteError):
        return (exc.status >= 500 and exc.status != 501) or exc.status == 429
    if isinstance(exc, ResponseTooLarge):
        return False
    return isinstance(exc, (aiohttp.ClientError, TimeoutError, ConnectionError, TransferTooSlow))


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    retries: int = 3,
    backoff: float = 0.5,
    pace: Pace | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, retrying retryable failures at most ``retries`` times.

    Waits ``backoff * 2**n`` seconds (capped at 30) before retry ``n``. The
    last failure is raised as a :class:`NetworkError` naming ``what`` and the
    number of attempts; other exceptions pass through at once. With a
    ``pace`` whose deadline passes, :class:`DeadlineExceeded` ends the retries.
    """
    if retries < 0:
        raise ValueError(f"retries must not be negative: {retries}")
    for n in range(retries + 1):
        if pace is not None:
            pace.check_deadline(what)
        try:
            return await attempt()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if pace is not None:
                _deadline_passed(pace, what, exc)
            if n == retries:
                raise _final_error(exc, what, n + 1) from exc
        await asyncio.sleep(_backoff_delay(backoff * 2**n, pace))
    raise AssertionError("unreachable")


def _backoff_delay(delay: float, pace: Pace | None) -> float:
    """``delay`` capped at 30 s and at what is left before the deadline."""
    remaining = None if pace is None else pace.remaining()
    return min(delay, _MAX_BACKOFF) if remaining is None else max(0.0, min(delay, _MAX_BACKOFF, remaining))


def _deadline_passed(pace: Pace, what: str, exc: BaseException) -> None:
    remaining = pace.remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded(f"{what}: the download's deadline has passed") from exc


def _final_error(exc: BaseException, what: str, attempts: int) -> NetworkError:
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if isinstance(exc, RemoteError):
        return RemoteError(f"{exc} ({tries})", status=exc.status, error=exc.error, url=exc.url, detail=exc.detail)
    if isinstance(exc, TransferTooSlow):
        return TransferTooSlow(f"{what} failed {tries}: {exc}")
    return NetworkError(f"{what} failed {tries}: {failure_reason(exc)}")


def failure_reason(exc: BaseException) -> str:
    """What a transport failure was, in words: a timeout, or the host and the system's reason
    for a failed connection (aiohttp's own text says ``ssl:default`` even for plain HTTP)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError):
        error = exc.os_error
        why = os.strerror(error.errno) if isinstance(error.errno, int) and error.errno > 0 else error.strerror
        return f"cannot connect to {exc.host}:{exc.port}: {why or error}"
    return str(exc) or type(exc).__name__


class XrpcClient:
    """Queries and procedures of one XRPC service (a PDS) over a shared :class:`aiohttp.ClientSession`.

    ``retries`` and ``backoff`` apply to :meth:`query_json` and
    :meth:`procedure`; streaming callers wrap their whole attempt in
    :func:`retrying` themselves, so a transfer cut half way starts again from
    the beginning. ``headers`` (for example ``Authorization``) go with every
    request; :meth:`authorize` sets the bearer token. ``pace`` (when given)
    bounds every request's total time by its deadline and the bodies read
    here by its minimum rate; streaming callers pass it to :func:`iter_body`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        pace: Pace | None = None,
    ):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.pace = pace
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
        if self.pace is not None:
            timeout = self.pace.timeout(timeout or self.session.timeout)
        async with self.session.get(
            self.url(method),
            params=params,
            headers=self.headers,
            allow_redirects=False,
            timeout=self.session.timeout if timeout is None else timeout,
        ) as response:
            if not 200 <= response.status < 300:
                raise await remote_error(response, pace=self.pace)
            yield response

    async def query_json(self, method: str, params: Params, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
        """GET ``method`` and parse its JSON object answer, with retries."""

        async def attempt() -> dict[str, Any]:
            async with self.open(method, params, timeout=small_answer_timeout(self.session)) as response:
                body = await read_capped(response, max_bytes, "max_json_bytes", pace=self.pace)
            return json_object(body, NetworkError, f"the answer of {self.url(method)}")

        return await self.retrying(attempt, what=f"GET {self.url(method)}")

    async def retrying(self, attempt: Callable[[], Awaitable[T]], *, what: str) -> T:
        """:func:`retrying` with this client's retries, backoff and pace."""
        return await retrying(attempt, what=what, retries=self.retries, backoff=self.backoff, pace=self.pace)

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
                        raise await remote_error(response, pace=self.pace)
                    answer = await read_capped(response, max_bytes, "max_json_bytes", pace=self.pace)
            finally:
                if hasattr(data, "close"):
                    data.close()
            return json_object(answer, NetworkError, f"the answer of {self.url(method)}") if answer.strip() else {}

        return await self.retrying(attempt, what=f"POST {self.url(method)}")
