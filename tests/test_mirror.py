"""Live mirrors (pypds.Mirror, `pypds follow`, `pypds mirror`, `pypds archive-status`).

A loopback WebSocket server (:class:`StreamServer`) serves ``subscribeRepos``
frames built here from real repositories' ``commit_event``; the sources are
also served by the real sync server (``make_app``) for resyncs and
backfills; identities come from a lookup hook (or, for the command line, a
PLC stub). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pypds import CarWriter, DownloadOptions, Identity, Mirror, Repo, ResolverConfig, generate_signing_key
from pypds.cli import main
from pypds.keys import load_public_key
from pypds.net.archive import Archive, partition_of, shard_of
from pypds.net.mirror import parse_partition
from pypds.net.server import make_app
from pypds.net.subscribe_repos import EventStreamOptions
from pypds.sync.event_stream import Frame, encode_frame

from .conftest import POST, load_json, post
from .netstubs import ServerThread, WebStub, did_document

ROOT = Path(__file__).resolve().parent.parent
FAST = DownloadOptions(retries=0, backoff=0.0)
DIDS = [
    "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
    "did:plc:w4xbfzo7kqfes5zb7r6qv3rw",
    "did:plc:44ybard66vv44zksje25o7dz",
    "did:plc:vvpy7d6y2li5yo73cgbszibl",
]


# -- the loopback event stream ------------------------------------------------------------------


class StreamServer:
    """subscribeRepos on 127.0.0.1: frames kept in order; ``?cursor=N`` replays those after N, then live."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream  # other XRPC calls are passed to it (a PDS serves both)
        self.frames: list[tuple[float, bytes]] = []
        self.seq = 0
        self.lock = threading.Lock()
        self.connections: list[int | None] = []
        app = web.Application()
        app.router.add_get("/xrpc/com.atproto.sync.subscribeRepos", self._subscribe)
        app.router.add_get("/xrpc/{nsid}", self._forward)
        self.server = ServerThread(app)

    @property
    def url(self) -> str:
        return self.server.url

    def push(self, message_type: str, body: dict) -> int:
        with self.lock:
            self.seq += 1
            self.frames.append((self.seq, encode_frame(message_type, {**body, "seq": self.seq})))
            return self.seq

    def push_raw(self, data: bytes) -> None:
        """A frame sent as is, between the last event and the next."""
        with self.lock:
            self.frames.append((self.seq + 0.5, data))

    async def _forward(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as session:
            url = f"{self.upstream}/xrpc/{request.match_info['nsid']}"
            async with session.get(url, params=list(request.query.items())) as answer:
                body = await answer.read()
                return web.Response(status=answer.status, body=body, content_type=answer.content_type)

    async def _subscribe(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        text = request.query.get("cursor")
        cursor = None if text is None else int(text)
        self.connections.append(cursor)
        with self.lock:
            index = len(self.frames) if cursor is None else sum(1 for seq, _ in self.frames if seq <= cursor)

        async def send() -> None:
            nonlocal index
            while not ws.closed:
                with self.lock:
                    batch = self.frames[index:]
                for _seq, data in batch:
                    await ws.send_bytes(data)
                index += len(batch)
                await asyncio.sleep(0.01)

        sender = asyncio.ensure_future(send())
        try:
            async for _message in ws:  # answers the client's close at once
                pass
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        return ws

    def __enter__(self) -> StreamServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


class Source:
    """An account's repository on the loopback PDS, and the events its commits make."""

    def __init__(self, path: Path, did: str) -> None:
        self.did = did
        self.key = generate_signing_key()
        self.repo = Repo.create(path, did, signing_key=self.key, store_key=True)
        self.count = 0

    def write(self, stream: StreamServer | None, n: int = 1, *, text: str | None = None) -> None:
        """``n`` commits (a post each; every third commit deletes the post before), each sent to ``stream``."""
        for _ in range(n):
            self.count += 1
            i = self.count
            if i % 3 == 0:
                self.repo.delete(POST, f"3jui7kd5{i - 1:05d}")
            else:
                self.repo.put(POST, f"3jui7kd5{i:05d}", post(i, text))
            if stream is not None:
                stream.push("#commit", dict(self.repo.commit_event()))

    def identity(self, pds: str) -> Identity:
        return Identity(self.did, None, pds, self.key.public_key, {})


@pytest.fixture
def net(tmp_path):
    """Three sources on a loopback PDS, an event stream, and a Mirror factory."""
    sources = [Source(tmp_path / f"src{i}", did) for i, did in enumerate(DIDS[:3])]
    pds = ServerThread(make_app([s.repo for s in sources]))
    pds.start()
    stream = StreamServer(pds.url).__enter__()
    mirrors: list[Mirror] = []

    async def lookup(did: str) -> Identity:
        source = next(s for s in sources if s.did == did)
        return source.identity(pds.url)

    def mirror(archive: Path | None = None, **options) -> Mirror:
        options.setdefault("identity", lookup)
        options.setdefault("download_options", FAST)
        options.setdefault("flush_interval", 0.05)
        options.setdefault("config", ResolverConfig(allow_private_network=True, timeout=2.0))
        made = Mirror(archive or tmp_path / "archive", **options)
        mirrors.append(made)
        return made

    yield type("Net", (), {"sources": sources, "pds": pds, "stream": stream, "mirror": staticmethod(mirror)})
    for made in mirrors:
        made.close()
    stream.__exit__()
    pds.stop()
    for s in sources:
        s.repo.close()


def copy_of(archive: Path, did: str) -> Repo:
    return Repo.open(archive / shard_of(did) / did)


def same_as_source(archive: Path, source: Source) -> bool:
    with copy_of(archive, source.did) as copy:
        return copy.export_car() == source.repo.export_car()


def follow(mirror: Mirror, url: str, events: int):
    """Follow ``events`` events, from the stream's first when the archive has no cursor yet."""
    saved = mirror.archive.cursor(mirror.stream_key(url))
    return mirror.run(url, max_events=events, cursor=0 if saved is None else None)


# -- following -------------------------------------------------------------------------------------


def test_unknown_account_is_resynced_then_commits_apply_without_a_walk(net, tmp_path):
    alice = net.sources[0]
    alice.write(net.stream, 4)
    mirror = net.mirror()
    stats = follow(mirror, net.stream.url, 4)
    assert stats.resyncs == 1 and stats.rejected == 0
    assert same_as_source(tmp_path / "archive", alice)
    alice.write(net.stream, 6)
    stats = follow(mirror, net.stream.url, 6)
    assert stats.applied == 6 and stats.resyncs == 1 and stats.rejected == 0
    assert same_as_source(tmp_path / "archive", alice)
    with Archive.open(tmp_path / "archive") as archive:
        row = archive.account(alice.did)
        assert row is not None and row.rev == alice.repo.rev and row.head == alice.repo.head.encode()
        assert archive.cursor(net.stream.url) == net.stream.seq


def test_gap_and_sync_trigger_a_resync(net, tmp_path):
    alice = net.sources[0]
    alice.write(net.stream, 1)
    mirror = net.mirror()
    follow(mirror, net.stream.url, 1)
    alice.write(None, 2)  # never announced: the next commit's since is not the copy's rev
    alice.write(net.stream, 1)
    stats = follow(mirror, net.stream.url, 1)
    assert stats.resyncs == 2 and same_as_source(tmp_path / "archive", alice)
    alice.write(None, 1)
    net.stream.push("#sync", sync_body(alice.repo))
    stats = follow(mirror, net.stream.url, 1)
    assert stats.resyncs == 3 and same_as_source(tmp_path / "archive", alice)
    net.stream.push("#sync", sync_body(alice.repo))  # what the copy holds already: nothing to do
    assert follow(mirror, net.stream.url, 1).resyncs == 3


def sync_body(repo: Repo) -> dict:
    out = io.BytesIO()
    writer = CarWriter(out, [repo.head])
    writer.write_block(repo.head, repo.blockstore.get(repo.head))
    return {"did": repo.did, "rev": repo.rev, "blocks": out.getvalue(), "time": "2025-01-01T00:00:00Z"}


def test_hostile_events_are_rejected_logged_and_change_nothing(net, tmp_path):
    alice, bob = net.sources[0], net.sources[1]
    alice.write(net.stream, 1)
    bob.write(net.stream, 1)
    mirror = net.mirror(max_frame_bytes=6000)
    follow(mirror, net.stream.url, 2)  # both resynced
    sideways = fork(tmp_path / "fork", alice, alice.key)
    sideways.put(POST, "3zzzzzzzzzzzz", post(99))  # a signed commit the copy will never hold...
    rollback = dict(sideways.commit_event())
    alice.write(net.stream, 2)  # ...older than the two the copy applies next
    follow(mirror, net.stream.url, 2)
    archive = tmp_path / "archive"
    before = copy_of(archive, alice.did).export_car()

    alice.write(None, 1)
    good = dict(alice.repo.commit_event())
    impostor = fork(tmp_path / "impostor", alice, generate_signing_key())  # same DID, another key
    impostor.put(POST, "3zzzzzzzzzzzy", post(98))
    forged = dict(impostor.commit_event())
    altered = dict(good)
    altered["blocks"] = good["blocks"].replace(b"post number", b"post NUMBER")
    other_did = {**good, "repo": bob.did}
    net.stream.push("#commit", rollback)  # older rev, never held: a rollback
    net.stream.push("#commit", forged)  # signed by the wrong key
    net.stream.push("#commit", altered)  # a block that does not hash to its CID
    net.stream.push("#commit", other_did)  # the commit is alice's, the message says bob
    net.stream.push_raw(b"\xa2bopx\x01at\xff\xff")  # not DAG-CBOR
    big = fork(tmp_path / "big", alice, alice.key)
    big.put(POST, "3zzzzzzzzzzzx", post(97, "x" * 20_000))
    net.stream.push("#commit", dict(big.commit_event()))  # over max_frame_bytes
    stats = follow(mirror, net.stream.url, 6)
    assert stats.rejected == 6 and stats.applied == 2 and stats.resyncs == 2
    assert copy_of(archive, alice.did).export_car() == before
    with Archive.open(archive) as index:
        kinds = sorted(r["kind"] for r in index.rejections())
        assert kinds == ["commit", "commit", "frame", "frame", "rollback", "signature"]
        assert index.account(alice.did).errors == 3  # type: ignore[union-attr]
    for repo in (sideways, impostor, big):
        repo.close()


def fork(path: Path, source: Source, key) -> Repo:
    """A repository of the source's DID at its HEAD, writing with ``key``."""
    Repo.create(path, source.did, signing_key=key).close()
    with Repo.open(path) as made:
        made.import_car(source.repo.export_car())
    return Repo.open(path, signing_key=key, rotate_key=True)


def test_an_active_account_the_archive_does_not_hold_is_resynced(net, tmp_path):
    """A server announces a repository it sees for the first time with #identity and #account only:
    its copy must not wait for a #commit that may never come."""
    alice = net.sources[0]
    alice.write(None, 2)
    net.stream.push("#identity", {"did": alice.did, "time": "2025-01-01T00:00:00Z"})
    net.stream.push("#account", {"did": alice.did, "time": "2025-01-01T00:00:00Z", "active": True})
    mirror = net.mirror()
    stats = follow(mirror, net.stream.url, 2)
    assert stats.resyncs == 1 and stats.rejected == 0 and same_as_source(tmp_path / "archive", alice)
    net.stream.push("#account", {"did": alice.did, "time": "2025-01-01T00:00:00Z", "active": True})
    assert follow(mirror, net.stream.url, 1).resyncs == 1  # held already: nothing to do


def test_seq_going_back_is_rejected_and_the_cursor_stays(net, tmp_path):
    alice = net.sources[0]
    alice.write(net.stream, 2)
    mirror = net.mirror()
    follow(mirror, net.stream.url, 2)
    archive = tmp_path / "archive"
    before = copy_of(archive, alice.did).export_car()
    alice.write(None, 1)
    net.stream.push_raw(encode_frame("#commit", {**alice.repo.commit_event(), "seq": 1}))  # genuine, seq back
    stats = follow(mirror, net.stream.url, 1)
    assert stats.rejected == 1 and stats.applied == 0 and stats.cursor == 2  # counts since the mirror started
    assert copy_of(archive, alice.did).export_car() == before
    with Archive.open(archive) as index:
        assert index.cursor(net.stream.url) == 2 and [r["kind"] for r in index.rejections()] == ["seq"]
    alice.write(net.stream, 1)  # the commit it skipped shows as a gap: resynced
    stats = follow(mirror, net.stream.url, 2)  # the stub sends the renumbered frame again first
    assert stats.resyncs == 2 and stats.rejected == 2 and same_as_source(archive, alice)


def test_account_deleted_removes_the_copy_unless_kept(net, tmp_path):
    alice, bob = net.sources[0], net.sources[1]
    alice.write(net.stream, 1)
    bob.write(net.stream, 1)
    mirror = net.mirror()
    follow(mirror, net.stream.url, 2)
    archive = tmp_path / "archive"
    net.stream.push("#account", {"did": alice.did, "active": False, "status": "takendown"})
    follow(mirror, net.stream.url, 1)
    assert (archive / shard_of(alice.did) / alice.did).is_dir()
    net.stream.push("#account", {"did": alice.did, "active": False, "status": "deleted"})
    follow(mirror, net.stream.url, 1)
    assert not (archive / shard_of(alice.did) / alice.did).exists()
    with Archive.open(archive) as index:
        assert index.account(alice.did).status == "deleted"  # type: ignore[union-attr]
    keeper = net.mirror(keep_deleted=True)
    net.stream.push("#account", {"did": bob.did, "active": False, "status": "deleted"})
    follow(keeper, net.stream.url, 1)
    assert same_as_source(archive, bob)
    with Archive.open(archive) as index:
        assert index.account(bob.did).status == "deleted"  # type: ignore[union-attr]


def test_restart_resumes_from_the_cursor_and_a_replay_applies_nothing_twice(net, tmp_path):
    alice, bob = net.sources[0], net.sources[1]
    alice.write(net.stream, 1)
    bob.write(net.stream, 1)
    follow(net.mirror(), net.stream.url, 2)
    for _ in range(5):
        alice.write(net.stream, 1)
        bob.write(net.stream, 1)
    first = net.mirror()
    assert follow(first, net.stream.url, 4).applied == 4
    first.close()
    second = net.mirror()
    stats = follow(second, net.stream.url, 6)
    assert stats.applied == 6 and stats.duplicates == 0 and net.stream.connections[-1] == 6
    replay = net.mirror()
    stats = replay.run(net.stream.url, max_events=12, cursor=0)
    assert stats.duplicates == 12 and stats.applied == 0 and stats.rejected == 0 and stats.resyncs == 0
    assert same_as_source(tmp_path / "archive", alice) and same_as_source(tmp_path / "archive", bob)


def test_stop_from_another_thread_returns_after_saving_the_cursor(net, tmp_path):
    alice = net.sources[0]
    alice.write(net.stream, 2)
    mirror = net.mirror()
    timer = threading.Timer(1.0, mirror.stop)
    timer.start()
    started = time.monotonic()
    stats = mirror.run(net.stream.url, cursor=0)  # no limit: only stop() ends it
    assert time.monotonic() - started < 5 and stats.events == 2
    assert mirror.archive.cursor(net.stream.url) == 2 and same_as_source(tmp_path / "archive", alice)


def test_partitions_apply_only_their_accounts(net, tmp_path):
    for source in net.sources:
        source.write(net.stream, 2)
    parts = [net.mirror(partition=(k, 2)) for k in range(2)]
    for part in parts:
        follow(part, net.stream.url, 6)
    archive = tmp_path / "archive"
    with Archive.open(archive) as index:
        assert set(index.cursors()) == {f"{net.stream.url}#0/2", f"{net.stream.url}#1/2"}
    for source in net.sources:
        assert same_as_source(archive, source)
        mine = parts[partition_of(source.did, 2)].stats
        assert mine.resyncs >= 1
    assert sum(p.stats.other_partition for p in parts) == 6
    assert parse_partition("1/4") == (1, 4)


def test_backfill_lists_downloads_then_follows_from_the_noted_cursor(net, tmp_path):
    alice, _bob, carol = net.sources
    for source in net.sources:
        source.write(net.stream, 2)
    wrote = []
    original = net.mirror

    async def lookup(did: str) -> Identity:
        if not wrote:  # commits made while the backfill runs must not be missed
            wrote.append(did)
            alice.write(net.stream, 1)
            carol.write(net.stream, 2)
        return next(s for s in net.sources if s.did == did).identity(net.pds.url)

    mirror = original(identity=lookup)
    seen: list[tuple[int, int, int]] = []
    report = asyncio.run(
        mirror.backfill_async(net.stream.url, progress=lambda *a: seen.append(a), max_events=3, concurrency=2)
    )
    assert report.listed == 3 and report.downloaded == 3 and report.failed == 0
    assert report.cursor == 6 and seen[-1][:2] == (3, 3)
    for source in net.sources:
        assert same_as_source(tmp_path / "archive", source)
    again = original().backfill(net.stream.url, follow=False)
    assert again.current == 3 and again.downloaded == 0


# -- against pypds serve's own subscribeRepos ---------------------------------------------------------


def test_following_and_backfilling_a_pypds_serve(tmp_path):
    sources = [Source(tmp_path / f"src{i}", did) for i, did in enumerate(DIDS[:2])]
    options = EventStreamOptions(event_log=tmp_path / "events.db", poll_interval=0.05)
    with ServerThread(make_app([s.repo for s in sources], event_stream=options)) as pds:

        async def lookup(did: str) -> Identity:
            return next(s for s in sources if s.did == did).identity(pds.url)

        def mirror(name: str) -> Mirror:
            config = ResolverConfig(allow_private_network=True)
            return Mirror(tmp_path / name, identity=lookup, download_options=FAST, flush_interval=0.05, config=config)

        for source in sources:
            source.write(None, 3)
        time.sleep(0.3)  # the server notices the new HEADs and logs their commits
        with mirror("followed") as follower:
            stats = follower.run(pds.url, cursor=0, idle_timeout=1.0)
            assert stats.rejected == 0 and stats.resyncs == 2 and stats.events >= 4
            for source in sources:
                source.write(None, 4)
            stats = follower.run(pds.url, idle_timeout=1.0)
            assert stats.rejected == 0 and stats.applied == 8 and stats.resyncs == 2
        with mirror("backfilled") as backfiller:
            report = backfiller.backfill(pds.url, follow=False)
            assert report.downloaded == 2 and report.failed == 0
    for source in sources:
        assert same_as_source(tmp_path / "followed", source) and same_as_source(tmp_path / "backfilled", source)
        source.repo.close()


# -- the command line --------------------------------------------------------------------------


def test_archive_status_and_follow_commands(net, tmp_path, capsys):
    alice = net.sources[0]
    with WebStub() as plc:
        plc.plc[alice.did] = did_document(alice.did, key=alice.key.public_key, pds=net.pds.url)
        alice.write(net.stream, 2)
        args = ["--plc-url", plc.url, "--allow-private-network", "--idle-timeout", "1", "--json", "-q", "--cursor", "0"]
        assert main(["follow", net.stream.url, str(tmp_path / "archive"), *args]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["resyncs"] == 1 and out["cursor"] == 2
    assert main(["archive-status", str(tmp_path / "archive"), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["copies"] == 1 and status["cursors"] == {net.stream.url: 2}
    assert main(["archive-status", str(tmp_path / "archive")]) == 0
    text = capsys.readouterr().out
    assert alice.did in text and "cursor" in text
    mode = stat.S_IMODE(os.stat(tmp_path / "archive" / "archive.db").st_mode)
    assert mode == 0o600 and stat.S_IMODE(os.stat(tmp_path / "archive").st_mode) == 0o700
    assert main(["archive-status", str(tmp_path / "nothing")]) == 2


def test_a_follower_killed_at_random_points_converges(net, tmp_path):
    rng = random.Random(7)
    with WebStub() as plc:
        for source in net.sources:
            plc.plc[source.did] = did_document(source.did, key=source.key.public_key, pds=net.pds.url)
            source.write(net.stream, 1)
        archive = tmp_path / "archive"
        with Archive.open(archive) as index:
            index.flush([], net.stream.url, 0)  # follow from the stream's first event
        command = [sys.executable, "-m", "pypds.cli", "follow", net.stream.url, str(archive)]
        command += ["--plc-url", plc.url, "--allow-private-network", "-q"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for _round in range(4):
            for source in net.sources:
                source.write(net.stream, 15)
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.6, 1.6))
            process.send_signal(signal.SIGKILL)
            process.wait()
        done = subprocess.run([*command, "--idle-timeout", "1.5", "--json"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    for source in net.sources:
        assert same_as_source(archive, source)
    with Archive.open(archive) as index:
        assert index.rejections() == [] and index.pending_resyncs() == []
        assert index.cursor(net.stream.url) == net.stream.seq


# -- recorded relay streams --------------------------------------------------------------------------

STREAMS = sorted((ROOT / "tests/fixtures/realworld/indigo-relay-streams").glob("*.json"))


@pytest.mark.parametrize("path", STREAMS, ids=[p.stem for p in STREAMS])
def test_recorded_relay_streams_get_the_outcome_the_relay_expects(path, tmp_path):
    recorded = load_json(path)
    identities = {}
    for account in recorded["accounts"]:  # their keys from the fixture; a PDS nobody listens at (resyncs fail)
        ident = account["identity"]
        key = load_public_key("did:key:" + ident["keys"]["atproto"]["publicKeyMultibase"])
        identities[ident["did"]] = Identity(ident["did"], ident["handle"], "http://127.0.0.1:9", key, {})

    async def lookup(did: str) -> Identity:
        return identities[did]

    async def replay() -> list[str]:
        with Mirror(tmp_path / "archive", identity=lookup, download_options=FAST) as mirror:
            outcomes = []
            for message in recorded["messages"]:
                header, body = message["frame"]["header"], message["frame"]["body"]
                outcomes.append(await mirror.handle(Frame(header["op"], header["t"], body)))
            await mirror.wait_resyncs()
            return outcomes

    outcomes = asyncio.run(replay())
    for message, outcome in zip(recorded["messages"], outcomes, strict=True):
        expected_bad = message["invalid"] or message["drop"]
        assert (outcome == "rejected") == expected_bad, (message["frame"]["header"], outcome)
    with Archive.open(tmp_path / "archive") as index:
        for message in recorded["messages"]:
            body = message["frame"]["body"]
            if message["frame"]["header"]["t"] == "#account" and body.get("status") == "deleted":
                assert index.account(body["did"]).status == "deleted"  # type: ignore[union-attr]


def test_each_flush_makes_the_copies_it_records_durable_first(net, tmp_path, monkeypatch):
    """The copies skip the per-commit fsync: the index (cursor, revs) must never run ahead of them."""
    events: list[tuple[str, str]] = []
    original_durable, original_flush = Repo.make_durable, Archive.flush

    def durable(repo: Repo) -> None:
        events.append(("durable", repo.did))
        original_durable(repo)

    def flush(archive: Archive, rows, stream, cursor) -> None:
        events.extend(("recorded", row[0]) for row in rows)
        original_flush(archive, rows, stream, cursor)

    monkeypatch.setattr(Repo, "make_durable", durable)
    monkeypatch.setattr(Archive, "flush", flush)
    alice = net.sources[0]
    alice.write(net.stream, 1)
    mirror = net.mirror()
    follow(mirror, net.stream.url, 1)  # the resync downloads the copy (durably)
    alice.write(net.stream, 3)
    events.clear()
    assert follow(mirror, net.stream.url, 3).applied == 3
    recorded = [i for i, event in enumerate(events) if event == ("recorded", alice.did)]
    assert recorded, events
    for i in recorded:
        assert ("durable", alice.did) in events[:i], events


def test_backfill_of_a_quiet_stream_catches_commits_made_before_following_connects(net, tmp_path, monkeypatch):
    """No event while the downloads ran, so no cursor was noted: the stream watched since before the
    listing still tells following where to start, and commits made in between are not missed."""
    alice = net.sources[0]
    alice.write(None, 2)
    original = Mirror._follow_once
    calls: list[int] = []

    async def connect_late(self, *args):
        if not calls:  # after the downloads, before following connects: only the watch sees these
            alice.write(net.stream, 2)
            await asyncio.sleep(0.3)
            threading.Timer(0.5, alice.write, (net.stream, 1)).start()  # the first event following sees
        calls.append(1)
        return await original(self, *args)

    monkeypatch.setattr(Mirror, "_follow_once", connect_late)
    mirror = net.mirror()
    report = mirror.backfill(net.stream.url, max_events=3, idle_timeout=5.0)  # without the watch: no event
    assert report.downloaded == 3 and report.cursor is None  # nothing noted during the downloads
    assert len(calls) == 2 and net.stream.connections[-1] == 0  # went back to the watch's first event
    assert mirror.stats.applied == 3 and mirror.stats.rejected == 0 and mirror.stats.resyncs == 0
    assert same_as_source(tmp_path / "archive", alice)
