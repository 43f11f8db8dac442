"""``com.atproto.sync.subscribeRepos`` served by pypds (pypds.net.subscribe_repos, pypds.net.event_log).

A real server (``start_server`` on 127.0.0.1, port 0, in a background
thread) and a real WebSocket client (aiohttp's, in its own thread) exchange
frames; writes go through other handles and another process, as a writer
beside the server would make them.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from pypds import (
    CarReader,
    EventStreamOptions,
    InvalidInput,
    Repo,
    StorageError,
    generate_signing_key,
    verify_commit_message,
)
from pypds.net.server import EVENT_STREAM, SHUTDOWN_TIMEOUT, make_app, start_server
from pypds.sync.event_stream import Frame, decode_frame

from .conftest import DID, POST, post
from .netstubs import LOOPBACK, ServerThread

OTHER = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
FAST = {"poll_interval": 0.02}
PATH = "/xrpc/com.atproto.sync.subscribeRepos"


class Subscription:
    """A WebSocket subscriber in a background thread; frames arrive in ``frames`` (None once closed)."""

    def __init__(self, url: str, cursor: int | None = None) -> None:
        query = "" if cursor is None else f"?cursor={cursor}"
        self.url = url.replace("http://", "ws://") + PATH + query
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.close_code: int | None = None
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._connected.wait(10), "could not connect"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
                self._connected.set()
                reading = asyncio.ensure_future(self._read(ws))
                stopping = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                reading.cancel()
                stopping.cancel()
                self.close_code = ws.close_code
        finally:
            self._connected.set()
            self.frames.put(None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                self.frames.put(decode_frame(message.data))

    def take(self, count: int, timeout: float = 5.0) -> list[Frame]:
        """The next ``count`` frames (fails if the stream ends or stalls first)."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            frame = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            assert frame is not None, f"stream ended after {got}"
            got.append(frame)
        return got

    def rest(self, timeout: float = 5.0) -> list[Frame]:
        """Every frame until the server closes the stream."""
        got = []
        while (frame := self.frames.get(timeout=timeout)) is not None:
            got.append(frame)
        return got

    def quiet(self, seconds: float = 0.3) -> bool:
        """Whether nothing arrives for ``seconds``."""
        try:
            frame = self.frames.get(timeout=seconds)
        except queue.Empty:
            return True
        self.frames.put(frame)
        return False

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(paths, tmp_path: Path, **options) -> ServerThread:
    opts = EventStreamOptions(event_log=tmp_path / "events.db", **{**FAST, **options})
    return ServerThread(make_app(paths, event_stream=opts))


@pytest.fixture
def alice(tmp_path):
    key = generate_signing_key()
    Repo.create(tmp_path / "alice", DID, signing_key=key, store_key=True).close()
    return tmp_path / "alice"


def seqs(frames: list[Frame]) -> list[int]:
    return [frame.body["seq"] for frame in frames]


def assert_commit(frame: Frame, repo: Repo) -> None:
    assert frame.type == "#commit"
    body = frame.body
    assert body["repo"] == repo.did and body["rebase"] is False and body["tooBig"] is False
    verified = verify_commit_message(body, key=repo.did_key)
    assert verified.prev_data_checked


# -- #commit ------------------------------------------------------------------------------------


def test_first_seen_repository_gets_identity_and_account(alice, tmp_path):
    with serve([alice], tmp_path) as server, Subscription(server.url, cursor=0) as sub:
        identity, account = sub.take(2)
    assert (identity.type, identity.body["did"], identity.body["seq"]) == ("#identity", DID, 1)
    assert (account.type, account.body["did"], account.body["active"]) == ("#account", DID, True)
    assert isinstance(account.body["time"], str) and account.body["seq"] == 2


def test_writes_through_another_handle_are_commit_frames_in_order(alice, tmp_path):
    with serve([alice], tmp_path) as server, Subscription(server.url) as sub, Repo.open(alice) as repo:
        repo.put(POST, "a", post(1))
        repo.put(POST, "a", post(2))
        repo.delete(POST, "a")
        with repo.batch() as batch:
            batch.put(POST, "b", post(3))
            batch.put(POST, "c", post(4))
        frames = sub.take(4)
        assert [frame.type for frame in frames] == ["#commit"] * 4
        assert seqs(frames) == sorted(set(seqs(frames)))
        for frame in frames:
            assert_commit(frame, repo)
        actions = [[(op["action"], op["path"]) for op in frame.body["ops"]] for frame in frames]
        assert actions == [
            [("create", f"{POST}/a")],
            [("update", f"{POST}/a")],
            [("delete", f"{POST}/a")],
            [("create", f"{POST}/b"), ("create", f"{POST}/c")],
        ]
        assert frames[-1].body["commit"] == repo.head and frames[-1].body["rev"] == repo.rev
        assert frames[1].body["since"] == frames[0].body["rev"]
        assert sub.quiet()


def test_commits_of_another_process_appear_without_a_restart(alice, tmp_path):
    script = (
        "import sys; from pypds import Repo\n"
        "with Repo.open(sys.argv[1]) as repo:\n"
        "    for i in range(3): repo.put('app.bsky.feed.post', f'p{i}', {'$type': 'app.bsky.feed.post', "
        "'text': str(i), 'createdAt': '2024-01-01T00:00:00Z'})\n"
    )
    with serve([alice], tmp_path) as server, Subscription(server.url) as sub:
        subprocess.run([sys.executable, "-c", script, str(alice)], check=True, timeout=60)
        frames = sub.take(3)
    with Repo.open(alice) as repo:
        for frame in frames:
            assert_commit(frame, repo)
        assert frames[-1].body["commit"] == repo.head
    assert [frame.body["ops"][0]["path"] for frame in frames] == [f"{POST}/p{i}" for i in range(3)]


def test_seq_increases_across_repositories(alice, tmp_path):
    Repo.create(tmp_path / "bob", OTHER, signing_key=generate_signing_key(), store_key=True).close()
    with (
        serve([alice, tmp_path / "bob"], tmp_path) as server,
        Subscription(server.url) as sub,
        Repo.open(alice) as a,
        Repo.open(tmp_path / "bob") as b,
    ):
        a.put(POST, "1", post(1))
        b.put(POST, "1", post(1))
        a.put(POST, "2", post(2))
        frames = sub.take(3)
        assert {frame.body["repo"] for frame in frames} == {DID, OTHER}
        for frame in frames:
            assert_commit(frame, a if frame.body["repo"] == DID else b)
    assert seqs(frames) == sorted(set(seqs(frames))) and seqs(frames)[0] > 4  # after 2 x (#identity, #account)


# -- #sync --------------------------------------------------------------------------------------


def test_set_head_back_and_a_whole_import_are_sync_frames(alice, tmp_path):
    with Repo.open(alice) as repo:
        repo.put(POST, "a", post(1))
        old = repo.head
        repo.put(POST, "b", post(2))
        car = repo.export_car(None)
    with serve([alice], tmp_path) as server, Subscription(server.url) as sub, Repo.open(alice) as repo:
        repo.set_head(old)
        (sync,) = sub.take(1)
        assert sync.type == "#sync" and sync.body["did"] == DID
        assert sync.body["rev"] == repo.rev and isinstance(sync.body["time"], str)
        with CarReader(sync.body["blocks"]) as reader:
            assert reader.roots == [old]
            assert [cid for cid, _data in reader] == [old]
        repo.put(POST, "c", post(3))  # chains on the HEAD announced: a #commit again
        (commit,) = sub.take(1)
        assert_commit(commit, repo)
        repo.import_car(car)  # a whole CAR: its predecessor is unknown
        (imported,) = sub.take(1)
        assert imported.type == "#sync" and imported.body["seq"] > commit.body["seq"]
        with CarReader(imported.body["blocks"]) as reader:
            assert reader.roots == [repo.head]


# -- cursors and the log ------------------------------------------------------------------------


def test_a_restarted_server_replays_exactly_the_missed_events(alice, tmp_path):
    with serve([alice], tmp_path) as server, Subscription(server.url, cursor=0) as sub, Repo.open(alice) as repo:
        repo.put(POST, "a", post(1))
        seen = sub.take(3)  # #identity, #account, #commit
    last = seen[-1].body["seq"]
    with serve([alice], tmp_path) as server, Repo.open(alice) as repo:
        repo.put(POST, "b", post(2))
        repo.put(POST, "c", post(3))
        with Subscription(server.url, cursor=last) as sub:
            missed = sub.take(2)
            assert sub.quiet()
        with Subscription(server.url) as live:
            assert live.quiet()  # no cursor: live only
        assert seqs(missed) == [last + 1, last + 2]
        assert [frame.body["ops"][0]["path"] for frame in missed] == [f"{POST}/b", f"{POST}/c"]
    # commits made while no server runs are announced when it starts
    with Repo.open(alice) as repo:
        repo.put(POST, "d", post(4))
    with serve([alice], tmp_path) as server, Subscription(server.url, cursor=last + 2) as sub:
        (frame,) = sub.take(1)
        assert frame.body["seq"] == last + 3 and frame.body["ops"][0]["path"] == f"{POST}/d"
        assert sub.quiet()  # no second #identity/#account for a repository the log knows


def test_an_outdated_cursor_gets_info_then_the_backlog(alice, tmp_path):
    with serve([alice], tmp_path, backlog=3) as server, Repo.open(alice) as repo:
        for i in range(5):
            repo.put(POST, f"p{i}", post(i))
        with Subscription(server.url) as sub:
            repo.put(POST, "last", post(9))
            sub.take(1)  # everything is logged
        with Subscription(server.url, cursor=1) as sub:
            info, *backlog = sub.take(4)
            assert sub.quiet()
            repo.put(POST, "live", post(10))
            (live,) = sub.take(1)
    assert (info.type, info.body["name"]) == ("#info", "OutdatedCursor") and "seq" not in info.body
    assert seqs(backlog) == [6, 7, 8] and live.body["seq"] == 9  # 1, 2: #identity, #account


def test_a_future_cursor_is_an_error_and_the_end(alice, tmp_path):
    with serve([alice], tmp_path) as server, Subscription(server.url, cursor=0) as sub:
        sub.take(2)
        with Subscription(server.url, cursor=99) as future:
            (error,) = future.rest()
    assert error.is_error and error.body["error"] == "FutureCursor"


@pytest.mark.parametrize("cursor", ["-1", "x", "1.5", "9" * 30])
def test_a_malformed_cursor_is_invalid_request(alice, tmp_path, cursor):
    with serve([alice], tmp_path) as server:

        async def connect() -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{server.url}{PATH}?cursor={cursor}") as response,
            ):
                return response.status

        assert asyncio.run(connect()) == 400


def test_the_event_log_is_owner_only(alice, tmp_path):
    with serve([alice], tmp_path) as server, Subscription(server.url, cursor=0) as sub:
        sub.take(2)
    for name in ("events.db", "events.db-wal"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_the_default_event_log_is_in_the_first_repository(alice, tmp_path):
    app = make_app([alice], event_stream=EventStreamOptions(**FAST))
    with ServerThread(app) as server, Subscription(server.url, cursor=0) as sub:
        sub.take(2)
    assert stat.S_IMODE((alice / "events.db").stat().st_mode) == 0o600


def test_a_default_log_that_cannot_be_opened_serves_the_repositories_without_the_stream(
    alice, tmp_path, monkeypatch, caplog
):
    """A read-only repository directory (say, a mounted backup) is still served; a named log must open."""

    def refuse(*_args, **_kwargs):
        raise StorageError(f"cannot open the event log {alice / 'events.db'}: read-only file system")

    monkeypatch.setattr("pypds.net.subscribe_repos.EventLog.open", refuse)
    with ServerThread(make_app([alice], event_stream=EventStreamOptions(**FAST))) as server:
        answer = urllib.request.urlopen(f"{server.url}/xrpc/com.atproto.sync.getLatestCommit?did={DID}")
        assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.url}/xrpc/com.atproto.sync.subscribeRepos")
        assert refused.value.code == 501
    assert "not serving subscribeRepos" in caplog.text and "read-only" in caplog.text
    with pytest.raises(StorageError):
        make_app([alice], event_stream=EventStreamOptions(event_log=tmp_path / "named.db", **FAST))


@pytest.mark.parametrize(
    "options",
    [{"backlog": 0}, {"backlog": True}, {"poll_interval": 0}, {"max_queue_frames": 0}, {"max_queue_bytes": -1}],
)
def test_bad_options_are_invalid_input(options):
    with pytest.raises(InvalidInput):
        EventStreamOptions(**options)


# -- slow consumers and stopping ----------------------------------------------------------------


def test_a_consumer_that_never_reads_is_cut_with_its_queue_bounded(alice, tmp_path):
    max_bytes = 40_000
    app = make_app([alice], event_stream=EventStreamOptions(tmp_path / "e.db", max_queue_bytes=max_bytes, **FAST))
    with ServerThread(app) as server, Repo.open(alice) as repo, silent_subscriber(server.url) as sock:
        stream = app[EVENT_STREAM]
        big = {**post(0), "text": "x" * 2000}
        deadline = time.monotonic() + 10
        subscriber = None
        while time.monotonic() < deadline:
            with repo.batch() as batch:
                for i in range(10):
                    batch.put(POST, f"{time.monotonic_ns()}{i}", big)
            subscriber = subscriber or next(iter(stream.subscribers), None)
            if subscriber is not None and subscriber.too_slow:
                break
        assert subscriber is not None and subscriber.too_slow
        assert subscriber.peak_bytes <= max_bytes and not subscriber.queue
        time.sleep(0.5)
        assert subscriber not in stream.subscribers
        del sock


class silent_subscriber:
    """A WebSocket handshake on a raw socket with a small receive buffer, then never a read."""

    def __init__(self, url: str) -> None:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        self.sock.sendall(
            f"GET {PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert self.sock.recv(12).startswith(b"HTTP/1.1 101")

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_subscribers_do_not_delay_stopping(alice, tmp_path):
    server = serve([alice], tmp_path)
    server.start()
    subs = [Subscription(server.url) for _ in range(3)]
    try:
        with silent_subscriber(server.url), Repo.open(alice) as repo:
            big = {**post(0), "text": "x" * 5000}
            for i in range(10):  # frames the silent one does not read wait in its queue and socket
                with repo.batch() as batch:
                    for j in range(20):
                        batch.put(POST, f"r{i}-{j}", big)
            subs[0].take(10)
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < SHUTDOWN_TIMEOUT
        assert [len(sub.rest()) for sub in subs] == [0, 10, 10]
        assert [sub.close_code for sub in subs] == [1001] * 3
    finally:
        for sub in subs:
            sub.close()


class ImpatientServer(ServerThread):
    """A server thread whose connections are cut after 0.3 s idle."""

    async def _main(self) -> None:
        runner = await start_server(self.app, LOOPBACK, 0, idle_timeout=0.3)
        try:
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def test_a_waiting_subscriber_outlives_the_idle_timeout(alice, tmp_path):
    app = make_app([alice], idle_timeout=0.3, event_stream=EventStreamOptions(tmp_path / "e.db", **FAST))
    with ImpatientServer(app) as server, Subscription(server.url) as sub, Repo.open(alice) as repo:
        time.sleep(0.8)
        repo.put(POST, "late", post(1))
        (frame,) = sub.take(1)
        assert_commit(frame, repo)


def test_pypds_serve_streams_with_its_event_log_and_stops_in_time_with_subscribers(alice, tmp_path):
    log_path = tmp_path / "cli-events.db"
    command = [sys.executable, "-m", "pypds.cli", "serve", str(alice), "--port", "0"]
    command += ["--event-log", str(log_path), "--backlog", "5"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        url = line.split(" at ", 1)[1].split()[0]
        with Subscription(url, cursor=0) as sub, Repo.open(alice) as repo:
            assert [frame.type for frame in sub.take(2)] == ["#identity", "#account"]
            repo.put(POST, "a", post(1))
            assert_commit(sub.take(1)[0], repo)
            assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - started < SHUTDOWN_TIMEOUT
            assert sub.rest() == []
    finally:
        process.kill()
        process.stderr.close()


def test_two_servers_sharing_a_log_announce_each_change_once(alice, tmp_path):
    with (
        serve([alice], tmp_path) as one,
        serve([alice], tmp_path) as two,
        Subscription(one.url) as sub_one,
        Subscription(two.url) as sub_two,
        Repo.open(alice) as repo,
    ):
        for i in range(5):
            repo.put(POST, f"p{i}", post(i))
        frames = sub_one.take(5)
        assert seqs(frames) == seqs(sub_two.take(5)) == list(range(3, 8))
        assert sub_one.quiet() and sub_two.quiet()


def test_commit_chain_follows_the_history(alice):
    with Repo.open(alice) as repo:
        start = repo.head
        made = [repo.put(POST, f"p{i}", post(i)) and repo.head for i in range(3)]
        assert repo.commit_chain(start) == made
        assert repo.commit_chain(made[0], made[2]) == made[1:]
        assert repo.commit_chain(made[2]) == []
        assert repo.commit_chain(made[2], made[0]) is None  # backwards
        assert repo.commit_chain(start, limit=2) is None
        with pytest.raises(InvalidInput):
            repo.commit_chain(start, limit=0)
