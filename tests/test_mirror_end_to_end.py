"""Live mirrors end to end, with the real command-line processes, on loopback.

``pypds serve --identity --event-log`` (a subprocess) serves repositories,
their DID documents and their ``subscribeRepos``; ``pypds mirror`` and
``pypds follow`` (subprocesses) keep an archive of them while the test
writes to the sources (puts, a batch, deletes, ``head --set`` back then a
new write, a new account across a restart of the server). The archive must
converge: every copy's ``export_car()`` equal to its source's, nothing
pending, nothing rejected. A follower killed with SIGKILL at random points
converges too and applies nothing twice. A hostile stream replaying the real
server's frames, altered (seq going back, an altered block, a truncated or
oversized frame, an old commit again), leaves the copies and the cursor as
they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
from aiohttp import web

from pypds import DownloadOptions, Mirror, PypdsError, Repo, ResolverConfig, generate_signing_key
from pypds.cli import main
from pypds.net.archive import Archive, shard_of
from pypds.net.event_log import EventLog
from pypds.sync.event_stream import decode_frame, encode_frame

from .conftest import POST, post
from .netstubs import ServerThread

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "pypds.cli"]
DIDS = [
    "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
    "did:plc:w4xbfzo7kqfes5zb7r6qv3rw",
    "did:plc:44ybard66vv44zksje25o7dz",
    "did:plc:vvpy7d6y2li5yo73cgbszibl",
]
SUBSCRIBE = "/xrpc/com.atproto.sync.subscribeRepos"


class Source:
    """A served repository (stores its key: ``serve --identity`` publishes it) and the commits it made."""

    def __init__(self, path: Path, did: str) -> None:
        self.path = path
        self.did = did
        self.repo = Repo.create(path, did, signing_key=generate_signing_key(), store_key=True)
        self.count = 0
        self.commits = 0

    def write(self, n: int = 1, *, text: str | None = None) -> None:
        """``n`` commits: a post each, every third one deleting the post before."""
        for _ in range(n):
            self.count += 1
            i = self.count
            if i % 3 == 0 and self.repo.find_cid(POST, f"3jui7kd5{i - 1:05d}") is not None:
                self.repo.delete(POST, f"3jui7kd5{i - 1:05d}")
            else:
                self.repo.put(POST, f"3jui7kd5{i:05d}", post(i, text))
            self.commits += 1

    def export(self) -> bytes:
        return self.repo.export_car()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.1)


class Serve:
    """``pypds serve PATHS --identity --event-log LOG --port PORT`` in a subprocess."""

    def __init__(self, sources: list[Source], log: Path, port: int, tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.errors = tmp / f"serve-{port}-{len(sources)}-{time.monotonic_ns()}.err"
        command = [*CLI, "serve", *(str(s.path) for s in sources), "--identity", "--event-log", str(log)]
        command += ["--port", str(port)]
        with open(self.errors, "w") as err:
            self.process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        wait_until(lambda: "serving" in self.errors.read_text() or self.process.poll() is not None, what="serve")
        assert self.process.poll() is None, self.errors.read_text()
        assert f" at {self.url} " in self.errors.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def resolver_args(url: str) -> list[str]:
    return ["--plc-url", url, "--allow-private-network"]


def copy_path(archive: Path, did: str) -> Path:
    return archive / shard_of(did) / did


def copy_export(archive: Path, did: str) -> bytes | None:
    """The copy's export, or None when there is no (finished) copy yet."""
    path = copy_path(archive, did)
    if not (path / "pds.db").exists():
        return None
    try:
        with Repo.open(path) as copy:
            return copy.export_car()
    except PypdsError:
        return None


def converged(archive: Path, sources: list[Source]) -> bool:
    return all(copy_export(archive, s.did) == s.export() for s in sources)


def wait_converged(archive: Path, sources: list[Source], timeout: float = 20.0) -> None:
    wait_until(lambda: converged(archive, sources), timeout, "the archive to converge")


def last_seq(log: Path) -> int:
    events = EventLog.open(log)
    try:
        return events.last_seq()
    finally:
        events.close()


def status_of(archive: Path) -> dict:
    with Archive.open(archive, create=False) as index:
        return index.status()


@contextlib.contextmanager
def background(command: list[str], errors: Path) -> Iterator[subprocess.Popen]:
    """A long-running pypds command; stopped with SIGTERM (a clean stop) at the end."""
    with open(errors, "w") as err:
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def follow_to_the_end(url: str, archive: Path) -> dict:
    """``pypds follow URL ARCHIVE --idle-timeout 1 --json``: what the stream still has, then its report."""
    command = [*CLI, "follow", url, str(archive), *resolver_args(url), "--idle-timeout", "1", "--json"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rejected" not in done.stderr, done.stderr
    return json.loads(done.stdout)


# -- a mirror of a pypds serve, through writes, a head --set back and a new account ---------------------


def test_mirror_of_a_pypds_serve_converges_through_writes_head_set_and_a_new_account(tmp_path):
    archive, log, port = tmp_path / "archive", tmp_path / "events.db", free_port()
    sources = [Source(tmp_path / f"src{i}", did) for i, did in enumerate(DIDS[:3])]
    alice, bob, carol = sources
    for source in sources:
        source.write(3)
    server = Serve(sources, log, port, tmp_path)
    try:
        url = server.url
        mirror_command = [*CLI, "mirror", str(archive), "--from", url, *resolver_args(url), "-q"]
        with background(mirror_command, tmp_path / "mirror.err") as mirroring:
            wait_converged(archive, sources)

            # writes: puts, a batch (puts and a delete in one commit), deletes
            alice.write(2)
            older = alice.repo.head  # HEAD goes back here later
            alice.write(2)
            with bob.repo.batch() as batch:
                for i in range(3):
                    batch.put(POST, f"3jui7kdbatch{i}", post(100 + i))
                batch.delete(POST, "3jui7kd500001")
            bob.commits += 1
            carol.repo.delete(POST, "3jui7kd500001")
            carol.commits += 1
            wait_converged(archive, sources)

            # head --set back: the copy does not go back in time...
            ahead = copy_export(archive, alice.did)
            assert main(["head", str(alice.path), "--set", older.encode()]) == 0
            seq = last_seq(log)
            wait_until(lambda: last_seq(log) > seq, what="the #sync of the move back")
            time.sleep(0.8)  # the follower has the #sync: it keeps the newer commit
            assert copy_export(archive, alice.did) == ahead != alice.export()
            # ...and the next write (a newer commit on the older tree) is the copy's too
            alice.write(1)
            wait_converged(archive, sources)

            # the server stops; meanwhile a write, and a new account; it restarts with four
            server.stop()
            bob.write(1)
            dave = Source(tmp_path / "src3", DIDS[3])
            dave.write(2)
            sources.append(dave)
            server = Serve(sources, log, port, tmp_path)
            wait_converged(archive, sources)  # dave's copy although dave wrote nothing since
            dave.write(2)
            carol.write(1)
            wait_converged(archive, sources)
            assert mirroring.poll() is None
        assert mirroring.returncode == 0
        errors = (tmp_path / "mirror.err").read_text()
        assert "rejected" not in errors, errors

        report = follow_to_the_end(url, archive)
        assert report["rejected"] == 0 and report["applied"] == 0
        assert main(["archive-status", str(archive), "--json"]) == 0
        status = status_of(archive)
        assert status["pendingResyncs"] == [] and status["rejections"] == 0
        assert status["copies"] == 4 and status["cursors"] == {url: last_seq(log)}
        assert converged(archive, sources)
        with Archive.open(archive) as index:
            for source in sources:
                row = index.account(source.did)
                assert row is not None and row.head == source.repo.head.encode() and row.rev == source.repo.rev
                assert row.status == "active" and row.errors == 0
    finally:
        server.stop()
        for source in sources:
            source.repo.close()


# -- a follower killed at random points -------------------------------------------------------------------


def test_a_follow_process_killed_at_random_points_converges_and_applies_nothing_twice(tmp_path):
    rng = random.Random(20261203)
    archive, log = tmp_path / "archive", tmp_path / "events.db"
    sources = [Source(tmp_path / f"src{i}", did) for i, did in enumerate(DIDS[:3])]
    for source in sources:
        source.write(2)
    with Serve(sources, log, free_port(), tmp_path) as server:
        url = server.url
        unannounced = {source.did: source.commits for source in sources}  # before the server: no #commit
        with Archive.open(archive) as index:
            index.flush([], url, 0)  # follow from the stream's first event
        command = [*CLI, "follow", url, str(archive), *resolver_args(url), "-q"]
        try:
            for _round in range(6):
                for source in sources:
                    source.write(rng.randint(1, 5))
                process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.3, 1.0))
                rng.choice(sources).write(rng.randint(1, 3))  # while it runs
                time.sleep(rng.uniform(0.0, 0.6))
                process.send_signal(signal.SIGKILL)
                process.wait()
            assert follow_to_the_end(url, archive)["rejected"] == 0  # converges (a cut resync is done again)
            last = {source.did: rng.randint(1, 3) for source in sources}  # then commits apply one by one
            for source in sources:
                source.write(last[source.did])
            report = follow_to_the_end(url, archive)
        finally:
            for source in sources:
                source.repo.close()
        assert report["rejected"] == 0 and report["resyncs"] == 0 and report["applied"] == sum(last.values())
        with Archive.open(archive) as index:
            assert index.rejections() == [] and index.pending_resyncs() == []
            assert index.cursor(url) == last_seq(log)
            for did, made in unannounced.items():
                row = index.account(did)
                assert row is not None
                with Repo.open(tmp_path / f"src{DIDS.index(did)}") as source:
                    assert copy_export(archive, did) == source.export_car()
                    assert row.head == source.head.encode()
                # the applied-commits counter: each commit the stream announced at most once
                announced = commits_announced(log, did)
                # (a killed follower's last counts may be lost, never counted again: a replay is a duplicate)
                assert last[did] <= row.applied <= announced, (did, row.applied, announced, made)


def commits_announced(log: Path, did: str) -> int:
    events = EventLog.open(log)
    try:
        return sum(1 for _seq, frame in events.read(0, 100_000) if _is_commit_of(frame, did))
    finally:
        events.close()


def _is_commit_of(frame: bytes, did: str) -> bool:
    decoded = decode_frame(frame)
    return decoded.type == "#commit" and decoded.body.get("repo") == did


# -- a hostile stream replaying the real server's frames, altered -----------------------------------------


class HostileStream:
    """subscribeRepos on 127.0.0.1 sending ``script`` (raw frames, as given) to each connection."""

    def __init__(self) -> None:
        self.script: list[bytes] = []
        self.cursors: list[str | None] = []
        app = web.Application()
        app.router.add_get(SUBSCRIBE, self._subscribe)
        self.server = ServerThread(app)

    async def _subscribe(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.cursors.append(request.query.get("cursor"))
        for data in list(self.script):
            await ws.send_bytes(data)
        async for _message in ws:  # until the client closes
            pass
        return ws

    def __enter__(self) -> HostileStream:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url


def real_frames(url: str, after: int, count: int) -> list[bytes]:
    """The next ``count`` raw frames the real server sends after seq ``after``."""

    async def read() -> list[bytes]:
        got: list[bytes] = []
        address = url.replace("http://", "ws://") + f"{SUBSCRIBE}?cursor={after}"
        async with aiohttp.ClientSession() as session, session.ws_connect(address) as ws:
            async with asyncio.timeout(10):
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        got.append(message.data)
                    if len(got) == count:
                        break
        return got

    return asyncio.run(read())


def renumbered(data: bytes, seq: int) -> bytes:
    frame = decode_frame(data)
    assert frame.type is not None
    return encode_frame(frame.type, {**frame.body, "seq": seq})


def seq_of(data: bytes) -> int:
    return int(decode_frame(data).body["seq"])


def test_a_hostile_stream_of_the_real_servers_frames_altered_changes_nothing(tmp_path):
    log, archive = tmp_path / "events.db", tmp_path / "archive"
    sources = [Source(tmp_path / f"src{i}", did) for i, did in enumerate(DIDS[:2])]
    alice, bob = sources
    for source in sources:
        source.write(1)
    with Serve(sources, log, free_port(), tmp_path) as server, HostileStream() as hostile:
        wait_until(lambda: last_seq(log) == 4, what="#identity and #account of both")
        alice.write(2)
        bob.write(1)
        wait_until(lambda: last_seq(log) == 7, what="three #commit")
        first = real_frames(server.url, 0, 7)
        config = ResolverConfig(plc_url=server.url, allow_private_network=True, timeout=5.0)
        mirror = Mirror(
            archive,
            config=config,
            download_options=DownloadOptions(retries=0, backoff=0.0),
            flush_interval=0.05,
            max_frame_bytes=12_000,
        )
        stream = mirror.stream_key(hostile.url)

        def run(script: list[bytes], **expected: int) -> None:
            hostile.script = script
            before = mirror.stats.to_json()
            mirror.run(hostile.url, max_events=len(script), cursor=None if mirror.archive.cursor(stream) else 0)
            after = mirror.stats.to_json()
            for name, count in expected.items():
                assert after[name] - before[name] == count, (name, before, after)

        def state() -> tuple[bytes | None, bytes | None, int | None]:
            return copy_export(archive, alice.did), copy_export(archive, bob.did), mirror.archive.cursor(stream)

        try:
            run(first, rejected=0, resyncs=2)  # the first #commit of each account is a resync
            assert converged(archive, sources) and mirror.archive.cursor(stream) == 7

            # seq going back, in one connection: an old frame again, a new commit numbered back
            alice.write(2)
            wait_until(lambda: last_seq(log) == 9, what="two #commit")
            newer = real_frames(server.url, 7, 2)
            run([newer[0]], applied=1)
            held = state()
            assert held[2] == 8
            run([first[5], renumbered(newer[1], 3)], rejected=2, applied=0, duplicates=0)
            assert state() == held  # the copies and the cursor as they were
            run([newer[1]], applied=1, rejected=0)
            assert converged(archive, sources) and mirror.archive.cursor(stream) == 9

            # the real frames altered, one at a time
            alice.repo.put(POST, "3jui7kdaltered", post(200))  # a record block to alter
            alice.repo.put(POST, "3jui7kdbig", post(201, "y" * 14_000))  # its frame is over the follower's 12,000 bytes
            alice.write(1)
            wait_until(lambda: last_seq(log) == 12, what="three #commit")
            h1, big, h3 = real_frames(server.url, 9, 3)
            held = state()
            altered = decode_frame(h1)
            blocks = altered.body["blocks"].replace(b"post number", b"post NUMBER")
            assert blocks != altered.body["blocks"]
            run([encode_frame("#commit", {**altered.body, "blocks": blocks})], rejected=1)  # an altered block
            assert state()[:2] == held[:2] and state()[2] == 10  # only the cursor moved, past it
            held = state()
            run([h1[: len(h1) // 2]], rejected=1)  # malformed CBOR: a truncated frame
            run([big], rejected=1)  # oversized
            run([renumbered(h1, 2)], rejected=1)  # the genuine commit, seq going back
            run([renumbered(first[4], 11)], rejected=0, applied=0, duplicates=1)  # an old commit (rev back)
            assert state()[:2] == held[:2] and state()[2] == 11
            run([h3], rejected=0, resyncs=1)  # a gap: resynced to the source
            assert converged(archive, sources) and mirror.archive.cursor(stream) == 12
            kinds = sorted(r["kind"] for r in mirror.archive.rejections())
            assert kinds == ["commit", "frame", "frame", "seq", "seq", "seq"]
            assert hostile.cursors[1:] == [str(c) for c in (7, 8, 8, 9, 10, 10, 10, 10, 11)]
        finally:
            mirror.close()
            for source in sources:
                source.repo.close()
