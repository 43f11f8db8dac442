"""Measure a mirror: verified #commit events per second, verified and applied, and backfill throughput.

    python -m benchmarks.mirror [--accounts 50] [--commits 5000] [--records 200] [--profile]

* A generated stream: ``--accounts`` repositories (each starting with a few
  records), then ``--commits`` single-record commits spread over them in
  turn (creates, and every third commit a delete), each turned into a
  ``#commit`` frame with :meth:`Repo.commit_event` and ``encode_frame``.
* **(a) verify**: ``decode_frame`` + ``verify_commit_message`` (signature
  against the account's key) for every frame, nothing stored.
* **(b) verify + apply**: a :class:`pypds.Mirror` over an archive holding
  every account's starting copy handles every frame (``Mirror.handle``:
  decode, key lookup, verify, ``Repo.apply_commit``, index), with
  durability ``normal`` and ``full``; then (b') the same through a loopback
  WebSocket (``Mirror.run`` against a small aiohttp server sending the
  frames). Each copy is then compared with its source.
* **(c) backfill**: ``--accounts`` repositories of ``--records`` records
  served by ``make_app`` on loopback, mirrored with ``Mirror.backfill``
  (listRepos, then getRepo of each, 4 at once): repositories/s and MB/s.

``--profile`` prints the top of a cProfile of (b). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import pstats
import shutil
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web

from pypds import Identity, Mirror, Repo, ResolverConfig, generate_signing_key, verify_commit_message
from pypds.net.archive import shard_of
from pypds.net.server import make_app, start_server
from pypds.sync.event_stream import decode_frame, encode_frame

POST = "app.bsky.feed.post"


def did_for(i: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    digest = hashlib.sha256(f"account {i}".encode()).digest()
    return "did:plc:" + "".join(alphabet[b % 32] for b in digest[:24])


def record(i: int) -> dict:
    return {"$type": POST, "text": f"post {i} " + "lorem ipsum " * 8, "createdAt": "2024-01-01T00:00:00.000Z"}


class Stream:
    """The generated accounts and frames."""

    def __init__(self, root: Path, accounts: int, commits: int, records: int) -> None:
        self.root = root
        self.keys = {}
        self.repos: list[Repo] = []
        self.starts: dict[str, bytes] = {}
        for i in range(accounts):
            did = did_for(i)
            key = generate_signing_key()
            repo = Repo.create(root / "sources" / did, did, signing_key=key, store_key=True, durability="normal")
            with repo.batch() as batch:
                for j in range(records):
                    batch.put(POST, f"3kaaaaa{j:06d}", record(j))
            self.keys[did] = key.public_key
            self.repos.append(repo)
            self.starts[did] = repo.export_car() or b""
        self.frames: list[bytes] = []
        for n in range(commits):
            repo = self.repos[n % accounts]
            k = n // accounts
            if k % 3 == 2:
                repo.delete(POST, f"3kbbbbb{k - 1:06d}")
            else:
                repo.put(POST, f"3kbbbbb{k:06d}", record(k))
            self.frames.append(encode_frame("#commit", {**repo.commit_event(), "seq": n + 1}))

    def identity(self, did: str) -> Identity:
        return Identity(did, None, "http://127.0.0.1:9", self.keys[did], {})


def bench_verify(stream: Stream) -> float:
    keys = stream.keys
    started = time.perf_counter()
    for data in stream.frames:
        body = decode_frame(data).body
        verify_commit_message(body, key=keys[body["repo"]])
    return time.perf_counter() - started


def archive_with_starts(stream: Stream, path: Path) -> Path:
    for did, car in stream.starts.items():
        Repo.from_car(path / shard_of(did) / did, car).close()
    return path


def bench_apply(stream: Stream, path: Path, durability: str, profile: bool = False) -> float:
    archive_with_starts(stream, path)

    async def lookup(did: str) -> Identity:
        return stream.identity(did)

    async def run(mirror: Mirror) -> float:
        started = time.perf_counter()
        for data in stream.frames:
            await mirror.handle(decode_frame(data))
        mirror.flush("bench")
        return time.perf_counter() - started

    with Mirror(path, identity=lookup, durability=durability) as mirror:
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        seconds = asyncio.run(run(mirror))
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        assert mirror.stats.applied == len(stream.frames), mirror.stats
    check_copies(stream, path)
    return seconds


def check_copies(stream: Stream, path: Path) -> None:
    for repo in stream.repos:
        with Repo.open(path / shard_of(repo.did) / repo.did) as copy:
            assert copy.head == repo.head, repo.did


class Server:
    """An aiohttp application on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, app: web.Application) -> None:
        self.app, self.url = app, ""
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.stop_event: asyncio.Event | None = None

    async def _main(self) -> None:
        runner = await start_server(self.app, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        self.url, self.loop, self.stop_event = f"http://{host}:{port}", asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        await self.stop_event.wait()
        await runner.cleanup()

    def __enter__(self) -> Server:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


def bench_websocket(stream: Stream, path: Path) -> float:
    archive_with_starts(stream, path)

    async def subscribe(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for data in stream.frames:
            await ws.send_bytes(data)
        async for _message in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/xrpc/com.atproto.sync.subscribeRepos", subscribe)

    async def lookup(did: str) -> Identity:
        return stream.identity(did)

    with Server(app) as server, Mirror(path, identity=lookup) as mirror:
        started = time.perf_counter()
        stats = mirror.run(server.url, max_events=len(stream.frames), cursor=0)
        seconds = time.perf_counter() - started
        assert stats.applied == len(stream.frames), stats
    check_copies(stream, path)
    return seconds


def bench_backfill(stream: Stream, path: Path) -> tuple[float, int]:
    with Server(make_app(stream.repos)) as server:

        async def lookup(did: str) -> Identity:
            return Identity(did, None, server.url, stream.keys[did], {})

        with Mirror(path, identity=lookup, config=ResolverConfig(allow_private_network=True)) as mirror:
            started = time.perf_counter()
            report = mirror.backfill(server.url, follow=False, concurrency=4)
            seconds = time.perf_counter() - started
    assert report.downloaded == len(stream.repos), report
    check_copies(stream, path)
    return seconds, report.car_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--commits", type=int, default=5000)
    parser.add_argument("--records", type=int, default=200, help="records each account starts with")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of verify + apply")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pypds-bench-mirror-"))
    try:
        started = time.perf_counter()
        stream = Stream(root, args.accounts, args.commits, args.records)
        size = sum(len(f) for f in stream.frames)
        n = len(stream.frames)
        print(f"stream: {args.accounts} accounts x {args.records} records, {n} #commit frames, {size / n:.0f} B each")
        print(f"  (generated in {time.perf_counter() - started:.1f} s)")
        seconds = bench_verify(stream)
        print(f"(a) verify only:              {n / seconds:8.0f} events/s  ({seconds:.2f} s)")
        for durability in ("normal", "full"):
            profile = args.profile and durability == "normal"
            seconds = bench_apply(stream, root / f"archive-{durability}", durability, profile)
            print(f"(b) verify + apply, {durability:6s}:   {n / seconds:8.0f} events/s  ({seconds:.2f} s)")
        seconds = bench_websocket(stream, root / "archive-ws")
        print(f"(b') over a loopback WebSocket: {n / seconds:6.0f} events/s  ({seconds:.2f} s, durability normal)")
        seconds, car_bytes = bench_backfill(stream, root / "archive-backfill")
        print(
            f"(c) backfill {len(stream.repos)} repositories: {len(stream.repos) / seconds:.1f} repos/s, "
            f"{car_bytes / seconds / 1e6:.2f} MB/s ({car_bytes / 1e6:.1f} MB in {seconds:.2f} s)"
        )
    finally:
        for repo in locals().get("stream", Stream.__new__(Stream)).__dict__.get("repos", []):
            repo.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
