"""The consuming side of ``com.atproto.sync.subscribeRepos``: a WebSocket of event-stream frames.

:func:`subscribe` connects (``?cursor=`` when resuming) and yields each
binary message decoded by :func:`~pypds.sync.event_stream.decode_frame`, or
the :class:`~pypds.errors.InvalidFrame` it raised: a bad frame is the
caller's to log, and the stream goes on. An error frame (``op`` -1), a close
or a lost connection end the iteration with :class:`~pypds.errors.StreamError`.

Frames are bounded twice: aiohttp refuses a WebSocket message over
``4 * max_frame_bytes`` (the connection is closed: nothing that large is
read into memory), and :func:`decode_frame` refuses one over
``max_frame_bytes`` (rejected, the stream goes on).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from ..errors import InvalidFrame, InvalidInput, StreamError
from ..sync.event_stream import MAX_FRAME_BYTES, Frame, decode_frame

__all__ = ["SUBSCRIBE_REPOS", "host_url", "stream_url", "subscribe"]

SUBSCRIBE_REPOS = "com.atproto.sync.subscribeRepos"
#: Seconds between WebSocket pings (a peer that does not answer one is gone).
HEARTBEAT = 30.0
#: Seconds to wait for the server's answer to our close.
CLOSE_TIMEOUT = 2.0


def host_url(url: str) -> str:
    """The http(s) base URL of a host given as ``http(s)://`` or ``ws(s)://`` (no path)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise InvalidInput(f"not an http(s) or ws(s) URL: {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def stream_url(url: str, cursor: int | None) -> str:
    """The ``subscribeRepos`` WebSocket URL of a host, resuming after ``cursor`` when given."""
    parts = urlsplit(host_url(url))
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = "" if cursor is None else urlencode({"cursor": cursor})
    return urlunsplit((scheme, parts.netloc, f"{parts.path}/xrpc/{SUBSCRIBE_REPOS}", query, ""))


async def subscribe(
    session: aiohttp.ClientSession,
    url: str,
    cursor: int | None = None,
    *,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    connect_timeout: float = 10.0,
    connected: asyncio.Event | None = None,
) -> AsyncIterator[Frame | InvalidFrame]:
    """Yield the frames of ``url``'s subscribeRepos (a bad one as its InvalidFrame); StreamError when it ends.

    ``connected`` is set once the WebSocket is open (events from then on will be delivered).
    """
    address = stream_url(url, cursor)
    try:
        async with asyncio.timeout(connect_timeout):
            ws = await session.ws_connect(
                address,
                max_msg_size=4 * max_frame_bytes,
                heartbeat=HEARTBEAT,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
                autoping=True,
            )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise StreamError(f"cannot open the event stream {address}: {exc or type(exc).__name__}") from None
    if connected is not None:
        connected.set()
    async with ws:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                try:
                    frame = decode_frame(message.data, max_bytes=max_frame_bytes)
                except InvalidFrame as exc:
                    yield exc
                    continue
                if frame.is_error:
                    error, text = frame.body.get("error"), frame.body.get("message")
                    raise StreamError(f"the event stream {address} sent error {error}: {text or ''}".rstrip(": "))
                yield frame
            elif message.type == aiohttp.WSMsgType.TEXT:
                yield InvalidFrame("a text message where a binary frame was expected")
            elif message.type == aiohttp.WSMsgType.ERROR:
                raise StreamError(f"the event stream {address} failed: {ws.exception()}")
    code = ws.close_code
    raise StreamError(f"the event stream {address} was closed (code {code})")
