"""Loopback stand-ins for the network: every server here listens on 127.0.0.1 only.

* :class:`ServerThread` runs any aiohttp application on a random port in a
  background thread with its own event loop.
* :class:`DnsStub` answers ``TXT`` queries over UDP from a dict (built with
  dnspython's ``dns.message``); ``drop = True`` makes it swallow queries.
* :class:`WebStub` serves PLC documents (``/<did>``) and, by ``Host``
  header, ``/.well-known/atproto-did`` and ``/.well-known/did.json``.
* :class:`PdsProxy` forwards XRPC calls to a real server and lets a test
  alter, fail or cut any answer.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web

from pypds import ResolverConfig
from pypds.keys import PublicKey
from pypds.net.server import start_server

LOOPBACK = "127.0.0.1"


class ServerThread:
    """An aiohttp application served on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> str:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self.url

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        runner = await start_server(self.app, LOOPBACK, 0)
        try:
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DnsStub:
    """A UDP DNS server on 127.0.0.1 answering TXT queries from ``records`` (name -> strings)."""

    def __init__(self, records: dict[str, list[str]] | None = None) -> None:
        self.records: dict[str, list[str]] = dict(records or {})
        self.queries: list[str] = []
        self.drop = False
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, 0))
        self._socket.settimeout(0.05)
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self._socket.getsockname()[1]}"

    def _serve(self) -> None:
        while self._running:
            try:
                data, peer = self._socket.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            if self.drop:
                continue
            reply = self._answer(data)
            if reply is not None:
                self._socket.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append(name)
        values = self.records.get(name)
        if values is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT and values:
            texts = [json.dumps(value) for value in values]  # a quoted character-string each
            rrset = dns.rrset.from_text_list(question.name, 60, dns.rdataclass.IN, dns.rdatatype.TXT, texts)
            response.answer.append(rrset)
        return response.to_wire()

    def start(self) -> DnsStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        self._thread.join(5)
        self._socket.close()

    def __enter__(self) -> DnsStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Answer = dict | list | str | bytes | int | Callable[[web.Request], Awaitable[web.StreamResponse]] | None


async def respond(value: Answer, request: web.Request) -> web.StreamResponse:
    """A response for a stub answer: None 404, int a bare status, dict/list JSON, str text, bytes raw."""
    if value is None:
        return web.Response(status=404, text="not found")
    if callable(value):
        return await value(request)
    if isinstance(value, int):
        return web.Response(status=value)
    if isinstance(value, (dict, list)):
        return web.json_response(value)
    if isinstance(value, str):
        return web.Response(text=value)
    return web.Response(body=value, content_type="application/octet-stream")


class WebStub:
    """PLC documents at ``/<did>``; per-Host ``/.well-known/atproto-did`` and ``/.well-known/did.json``."""

    def __init__(self) -> None:
        self.plc: dict[str, Answer] = {}
        self.handles: dict[str, Answer] = {}
        self.did_web: dict[str, Answer] = {}
        self.requests: list[tuple[str, str]] = []
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._server = ServerThread(app)

    @property
    def url(self) -> str:
        return self._server.url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host, path = request.host, request.path
        self.requests.append((host, path))
        if path == "/.well-known/atproto-did":
            return await respond(self.handles.get(host), request)
        if path == "/.well-known/did.json":
            return await respond(self.did_web.get(host), request)
        return await respond(self.plc.get(path.lstrip("/")), request)

    def start(self) -> WebStub:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> WebStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Hook = Callable[[web.Request, int, bytes], Awaitable[web.StreamResponse | None] | web.StreamResponse | None]


class PdsProxy:
    """Forwards ``/xrpc/<nsid>`` to ``upstream``. Hooks and counts are keyed by the method's last
    segment (``"getRepo"``): ``before[name]`` may answer instead of the upstream, ``after[name]`` may
    replace its answer (``hook(request, status, body)``, None to pass); ``hits`` counts calls."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.before: dict[str, Hook] = {}
        self.after: dict[str, Hook] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        app = web.Application()
        app.router.add_route("GET", "/xrpc/{nsid}", self._handle)
        app.on_cleanup.append(self._close)
        self._session: aiohttp.ClientSession | None = None
        self._server = ServerThread(app)

    @property
    def url(self) -> str:
        return self._server.url

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        nsid = request.match_info["nsid"]
        name = nsid.rsplit(".", 1)[-1]
        self.hits[name] += 1
        if name in self.before:
            answer = await _maybe_await(self.before[name](request, 0, b""))
            if answer is not None:
                return answer
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"{self.upstream}/xrpc/{nsid}"
        async with self._session.get(url, params=list(request.query.items())) as upstream:
            status, body = upstream.status, await upstream.read()
            content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        if name in self.after:
            answer = await _maybe_await(self.after[name](request, status, body))
            if answer is not None:
                return answer
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    def start(self) -> PdsProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> PdsProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


async def cut_short(request: web.Request, body: bytes) -> web.StreamResponse:
    """Declare the full length, send half of ``body``, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.car"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.close()
    return response


def did_document(
    did: str,
    *,
    key: PublicKey | str,
    pds: str,
    handle: str | None = None,
    key_type: str = "Multikey",
) -> dict[str, Any]:
    """An atproto DID document: ``#atproto`` key (multibase), ``#atproto_pds`` service, ``at://`` handle."""
    did_key = key if isinstance(key, str) else key.did_key
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": [f"at://{handle}"] if handle else [],
        "verificationMethod": [
            {
                "id": f"{did}#atproto",
                "type": key_type,
                "controller": did,
                "publicKeyMultibase": did_key.removeprefix("did:key:"),
            }
        ],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    }


def stub_config(web_stub: WebStub, dns_stub: DnsStub | None = None, **overrides: Any) -> ResolverConfig:
    """A resolver config sending every lookup to the stubs (and nowhere else), opted in to
    loopback PDS endpoints (``allow_private_network=False`` to test the address policy)."""
    settings: dict[str, Any] = {
        "plc_url": web_stub.url,
        "web_base": web_stub.url,
        "nameservers": (dns_stub.address,) if dns_stub is not None else (),
        "dns": dns_stub is not None,
        "timeout": 2.0,
        "allow_private_network": True,
    }
    settings.update(overrides)
    return ResolverConfig(**settings)


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


__all__ = [
    "DnsStub",
    "PdsProxy",
    "ServerThread",
    "WebStub",
    "cut_short",
    "did_document",
    "free_port",
    "stub_config",
]
