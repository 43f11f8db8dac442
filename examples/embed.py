"""A small app that keeps its own records in a pypds repository and serves them.

    python examples/embed.py ./bookmarks --port 8080
    curl -X POST http://127.0.0.1:8080/bookmarks -d '{"url": "https://atproto.com", "title": "AT Protocol"}'
    curl http://127.0.0.1:8080/bookmarks
    curl -o bookmarks.car 'http://127.0.0.1:8080/xrpc/com.atproto.sync.getRepo?did=did:web:bookmarks.example'

A bookmark is a record (``com.example.bookmark``, keyed by a TID) and every
change a signed commit, so the app's whole history can be exported, verified
and mirrored by any atproto tool: the app mounts pypds' sync API under
``/xrpc/`` next to its own JSON routes.

Repository calls block (SQLite, fsync), so the handlers run them in a worker
thread; one ``Repo`` handle is safe to share between threads.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

import pypds
from pypds.net.server import HANDLER_ARGS, start_server
from pypds.tid import TidClock

COLLECTION = "com.example.bookmark"
REPO = web.AppKey("repo", pypds.Repo)
CLOCK = TidClock()  # record keys: time-ordered, unique


def bookmark(body: Any) -> dict[str, Any]:
    """The record for a posted bookmark, or a 400 naming what is wrong with it."""
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    url, title = body.get("url"), body.get("title", "")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2000:
        raise web.HTTPBadRequest(text="url must be an http(s) URL of at most 2000 characters")
    if not isinstance(title, str) or len(title) > 300:
        raise web.HTTPBadRequest(text="title must be a string of at most 300 characters")
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"$type": COLLECTION, "url": url, "title": title, "createdAt": created}


async def add_bookmark(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="expected JSON") from None
    record, rkey = bookmark(body), CLOCK.next()
    repo = request.app[REPO]
    cid = await asyncio.to_thread(repo.put, COLLECTION, rkey, record)  # one signed commit
    return web.json_response({"uri": f"at://{repo.did}/{COLLECTION}/{rkey}", "cid": cid.encode()}, status=201)


async def list_bookmarks(request: web.Request) -> web.Response:
    repo = request.app[REPO]

    def newest_first() -> list[dict[str, Any]]:
        keys = repo.list(COLLECTION, limit=100, reverse=True)  # [(rkey, CID)], TIDs sort by time
        return [{"rkey": rkey, **repo.find(COLLECTION, rkey)} for rkey, _cid in keys]

    return web.json_response(await asyncio.to_thread(newest_first))


async def delete_bookmark(request: web.Request) -> web.Response:
    repo = request.app[REPO]
    try:
        await asyncio.to_thread(repo.delete, COLLECTION, request.match_info["rkey"])
    except pypds.InvalidInput:
        raise web.HTTPBadRequest(text="not a record key") from None
    except pypds.RecordNotFound:
        raise web.HTTPNotFound(text="no such bookmark") from None
    return web.Response(status=204)


def make_bookmarks_app(repo: pypds.Repo) -> web.Application:
    # HANDLER_ARGS: the request-line size the sync API needs (a getBlocks URL with 1000 CIDs).
    app = web.Application(handler_args=HANDLER_ARGS)
    app[REPO] = repo
    app.router.add_get("/bookmarks", list_bookmarks)
    app.router.add_post("/bookmarks", add_bookmark)
    app.router.add_delete("/bookmarks/{rkey}", delete_bookmark)
    app.add_subapp("/xrpc/", pypds.make_app([repo]))  # read-only com.atproto.sync.* for this repository
    return app


async def run(repo: pypds.Repo, host: str, port: int) -> None:
    server = await start_server(make_bookmarks_app(repo), host, port)  # header and idle timeouts included
    print(f"serving bookmarks at {server.url} ({repo.did}, {repo.did_key}); Ctrl-C to stop", file=sys.stderr)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="A bookmarks app whose data is an atproto repository.")
    parser.add_argument("path", help="the app's repository directory (created on first run)")
    parser.add_argument("--did", default="did:web:bookmarks.example", help="the repository's DID when created")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    args = parser.parse_args()

    path = Path(args.path)
    # The first run creates the repository and a signing key, stored in it (pds.db, mode 0600).
    repo = pypds.Repo.open(path) if (path / "pds.db").exists() else pypds.Repo.create(path, args.did)
    with repo:
        asyncio.run(run(repo, args.host, args.port))


if __name__ == "__main__":
    main()
