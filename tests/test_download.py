"""End to end: serve a repository on loopback, resolve it through stubs, download it, keep it current.

The source repository is served by the real server (``make_app``, and once
by the ``pypds serve`` command in a subprocess); its DID document and handle
records live in loopback DNS and HTTP stubs. A proxy in front of the server
alters, fails or cuts answers to show that tampering is refused and leaves
the local copy as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import apsw
import pytest
from aiohttp import web

from pypds import (
    AddressRefused,
    BadSignature,
    BlockHashMismatch,
    CarWriter,
    DeadlineExceeded,
    DidMismatch,
    DownloadOptions,
    InvalidInput,
    ListingTooLong,
    NetworkError,
    RemoteError,
    Repo,
    ResponseTooLarge,
    RollbackRefused,
    TransferTooSlow,
    cid_for_cbor,
    cid_for_raw,
    download,
    generate_signing_key,
)
from pypds.cli import main
from pypds.commit import rev_is_newer
from pypds.net.server import make_app

from .conftest import DID, POST, post
from .netstubs import DnsStub, PdsProxy, ServerThread, WebStub, cut_short, did_document, free_port, stub_config

HANDLE = "alice.test"
OTHER_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
ROOT = Path(__file__).resolve().parent.parent
FAST = {"options": DownloadOptions(retries=1, backoff=0.0)}


@pytest.fixture(scope="module")
def stubs():
    with WebStub() as web_stub, DnsStub() as dns_stub:
        yield web_stub, dns_stub


def image(i: int) -> bytes:
    return f"image {i} ".encode() * (500 + 300 * i)


@pytest.fixture
def source(tmp_path, stubs):
    """A repository with records, three blobs and a like, served on loopback and published as alice.test."""
    web_stub, dns_stub = stubs
    for table in (web_stub.plc, web_stub.handles, dns_stub.records):
        table.clear()
    path = tmp_path / "source"
    with Repo.create(path, DID) as repo:
        refs = [repo.put_blob(image(i), "image/jpeg") for i in range(3)]
        with repo.batch() as batch:
            for i in range(25):
                batch.put(POST, f"p{i:03d}", post(i))
            for i, ref in enumerate(refs):
                batch.put(POST, f"img{i}", {**post(i), "embed": {"images": [{"image": ref.to_record()}]}})
        key = repo.signing_key.public_key
    with ServerThread(make_app([path])) as server:
        world = SimpleNamespace(path=path, url=server.url, key=key, web=web_stub, dns=dns_stub, blobs=refs)
        publish(world, server.url)
        dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
        world.config = stub_config(web_stub, dns_stub)
        yield world


def publish(world, pds: str, key=None) -> None:
    """Point the DID document at ``pds`` (and at ``key``, default the source's own)."""
    world.web.plc[DID] = did_document(DID, key=key or world.key, pds=pds, handle=HANDLE)


@pytest.fixture
def proxy(source):
    with PdsProxy(source.url) as running:
        publish(source, running.url)
        yield running


def snapshot(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """A repository's full CAR and every blob's bytes."""
    with Repo.open(path) as repo:
        return repo.export_car(), {cid.encode(): repo.blob(cid) for cid in repo.list_blobs()}


def assert_identical(source: Path, copy: Path) -> None:
    car, blobs = snapshot(source)
    copy_car, copy_blobs = snapshot(copy)
    assert copy_car == car
    assert copy_blobs == blobs


def add_commits(world, n: int = 5, blob: bytes | None = None) -> None:
    with Repo.open(world.path) as repo:
        oldest_post = next(rkey for rkey, _cid in repo.list(POST) if rkey.startswith("p"))
        with repo.batch() as batch:
            for i in range(n):
                batch.put(POST, f"new{i:03d}-{repo.rev}", post(100 + i))
            batch.delete(POST, oldest_post)
        if blob is not None:
            ref = repo.put_blob(blob, "image/png")
            repo.put(POST, f"newimg-{repo.rev}", {**post(7), "embed": {"images": [{"image": ref.to_record()}]}})


def no_temp_files(directory: Path) -> bool:
    return not list(directory.glob(".tmp-*"))


# -- downloading ------------------------------------------------------------------------------


def test_download_by_handle_with_blobs_is_byte_identical(source, tmp_path):
    events = []
    report = download(HANDLE, tmp_path / "copy", blobs=True, config=source.config, progress=lambda *e: events.append(e))
    assert report.ok and report.action == "created"
    assert report.identity.did == DID and report.identity.handle == HANDLE
    assert report.identity.pds == source.url
    assert len(report.blobs_fetched) == 3 and report.blobs_present == 0 and report.blobs_listed == 3
    assert_identical(source.path, tmp_path / "copy")
    repo_events = [event for event in events if event[0] == "repo"]
    assert repo_events and repo_events[-1][1] == report.car_bytes
    assert events[-1] == ("blobs", 3, 3)
    assert no_temp_files(tmp_path)


def test_download_by_did_then_update_with_since(source, tmp_path):
    copy = tmp_path / "copy"
    first = download(DID, copy, blobs=True, config=source.config)
    assert first.action == "created" and first.identity.handle == HANDLE
    add_commits(source, blob=b"a brand new picture" * 100)
    update = download(DID, copy, blobs=True, since=True, config=source.config)
    assert update.action == "updated"
    assert 0 < update.car_bytes < first.car_bytes
    assert len(update.blobs_fetched) == 1 and update.blobs_present == 3
    assert_identical(source.path, copy)
    again = download(DID, copy, blobs=True, since=True, config=source.config)
    assert again.action == "unchanged" and again.blobs_fetched == [] and again.car_bytes == 0


def test_a_download_killed_while_creating_the_copy_is_redone_by_the_next_run(source, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    conn = apsw.Connection(str(copy / "pds.db"))  # what a create killed before its commit leaves
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    old = time.time() - 60
    os.utime(copy / "pds.db", (old, old))
    report = download(DID, copy, blobs=True, config=source.config)
    assert report.action == "created"
    assert_identical(source.path, copy)


def test_download_without_since_reimports_the_whole_repository(source, tmp_path):
    copy = tmp_path / "copy"
    download(HANDLE, copy, config=source.config)
    add_commits(source)
    report = download(HANDLE, copy, config=source.config)
    assert report.action == "replaced"
    assert snapshot(copy)[0] == snapshot(source.path)[0]


def test_since_without_a_copy_downloads_the_whole_repository(source, tmp_path):
    assert download(HANDLE, tmp_path / "a" / "b", since=True, config=source.config).action == "created"
    assert snapshot(tmp_path / "a" / "b")[0] == snapshot(source.path)[0]


def test_an_unchanged_copy_is_not_downloaded_again(source, proxy, tmp_path):
    download(HANDLE, tmp_path / "copy", config=source.config)
    assert download(HANDLE, tmp_path / "copy", config=source.config).action == "unchanged"
    assert proxy.hits["getRepo"] == 1 and proxy.hits["getLatestCommit"] == 1


def test_a_diff_that_needs_blocks_the_copy_lacks_falls_back_to_the_full_car(source, proxy, tmp_path):
    copy = tmp_path / "copy"
    download(HANDLE, copy, config=source.config)
    add_commits(source)
    with Repo.open(source.path) as repo:
        middle = repo.rev
    add_commits(source)
    with Repo.open(source.path) as repo:
        too_short = repo.export_car(since=middle)  # lacks what the copy never got

    def short_diff(request, _status, _body):
        if "since" in request.query:
            return web.Response(body=too_short, content_type="application/vnd.ipld.car")
        return None

    proxy.before["getRepo"] = short_diff
    report = download(HANDLE, copy, since=True, config=source.config)
    assert report.action == "replaced"
    assert proxy.hits["getRepo"] == 3  # the first download, the short diff, the full CAR
    assert snapshot(copy)[0] == snapshot(source.path)[0]


# -- through the command line ----------------------------------------------------------------------


def cli_args(world) -> list[str]:
    """Options pointing ``pypds download`` at the stubs, opted in to the loopback PDS."""
    return [
        "--plc-url",
        world.web.url,
        "--web-base",
        world.web.url,
        "--dns",
        world.dns.address,
        "--allow-private-network",
    ]


def start_cli_server(path: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pypds.cli", "serve", str(path), "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    ready, _, _ = select.select([process.stderr], [], [], 20)
    line = process.stderr.readline() if ready else ""
    found = re.search(r" at (http://127\.0\.0\.1:\d+) ", line)
    if found is None:
        process.kill()
        raise AssertionError(f"pypds serve did not start: {line!r}")
    return process, found.group(1)


def test_pypds_serve_and_pypds_download_end_to_end(source, tmp_path, capsys):
    process, url = start_cli_server(source.path)
    try:
        publish(source, url)
        copy = tmp_path / "copy"
        common = [*cli_args(source), "--json"]
        assert main(["download", HANDLE, "-o", str(copy), "--blobs", *common]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["action"] == "created" and report["did"] == DID and report["pds"] == url
        assert len(report["blobs"]["fetched"]) == 3
        add_commits(source, blob=b"fresh" * 999)
        assert main(["download", DID, "-o", str(copy), "--since", "--blobs", *common]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["action"] == "updated" and len(report["blobs"]["fetched"]) == 1
        assert_identical(source.path, copy)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        process.stderr.close()


def test_cli_download_prints_a_summary(source, tmp_path, capsys):
    args = cli_args(source)
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), "--blobs", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"created {tmp_path / 'copy'}: {DID} ({HANDLE}) from {source.url}")
    assert "blobs: 3 fetched, 0 already present, 0 failed" in out


def test_cli_does_not_claim_a_check_it_did_not_make_for_an_unchanged_copy(source, tmp_path, capsys):
    args = cli_args(source)
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), *args]) == 0
    capsys.readouterr()
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), "--since", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unchanged") and "signature valid" not in out and "already the PDS's latest commit" in out


def test_cli_download_of_a_tampered_repository_fails_with_status_1(source, proxy, tmp_path, capsys):
    proxy.after["getRepo"] = lambda _request, _status, body: web.Response(body=flip_last_byte(body))
    args = cli_args(source)
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pypds: block ") and "do not hash to its CID" in err and err.count("\n") == 1
    assert not (tmp_path / "copy").exists()


def test_cli_download_of_an_unknown_handle_fails_with_status_3(source, tmp_path, capsys):
    args = cli_args(source)
    assert main(["download", "nobody.test", "-o", str(tmp_path / "copy"), *args]) == 3  # a network failure
    assert capsys.readouterr().err.startswith("pypds: handle nobody.test did not resolve")


def test_cli_reports_failed_blobs_and_exits_1(source, proxy, tmp_path, capsys):
    proxy.after["getBlob"] = lambda _request, _status, body: web.Response(body=body + b"!")
    args = [*cli_args(source), "--retries", "0"]
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), "--blobs", *args]) == 1
    captured = capsys.readouterr()
    assert "blobs: 0 fetched, 0 already present, 3 failed" in captured.out
    assert captured.err.startswith("pypds: 3 of 3 blobs failed") and "run the command again" in captured.err


# -- tampering ---------------------------------------------------------------------------------------


def flip_last_byte(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 0x01])


def test_an_altered_block_is_refused_and_leaves_no_directory(source, proxy, tmp_path):
    proxy.after["getRepo"] = lambda _request, _status, body: web.Response(body=flip_last_byte(body))
    with pytest.raises(BlockHashMismatch):
        download(HANDLE, tmp_path / "new" / "copy", config=source.config)
    assert not (tmp_path / "new").exists()
    assert no_temp_files(tmp_path)


def test_an_altered_diff_leaves_the_copy_exactly_as_it_was(source, proxy, tmp_path):
    copy = tmp_path / "copy"
    download(HANDLE, copy, blobs=True, config=source.config)
    before = snapshot(copy)
    add_commits(source, blob=b"new blob" * 50)
    proxy.after["getRepo"] = lambda _request, _status, body: web.Response(body=flip_last_byte(body))
    with pytest.raises(BlockHashMismatch):
        download(HANDLE, copy, since=True, blobs=True, config=source.config)
    assert snapshot(copy) == before


def test_a_did_document_with_another_key_is_refused(source, tmp_path):
    publish(source, source.url, key=generate_signing_key().public_key)
    with pytest.raises(BadSignature):
        download(HANDLE, tmp_path / "copy", config=source.config)
    assert not (tmp_path / "copy").exists()


def test_an_update_signed_by_another_key_leaves_the_copy_as_it_was(source, tmp_path):
    copy = tmp_path / "copy"
    download(HANDLE, copy, config=source.config)
    before = snapshot(copy)
    add_commits(source)
    publish(source, source.url, key=generate_signing_key("p256").public_key)
    for since in (True, False):
        with pytest.raises(BadSignature):
            download(HANDLE, copy, since=since, config=source.config)
        assert snapshot(copy) == before


def test_a_car_of_another_repository_is_refused(source, proxy, tmp_path):
    with Repo.create(tmp_path / "mallory", OTHER_DID, signing_key=generate_signing_key()) as mallory:
        mallory.put(POST, "p000", post(0))
        other_car = mallory.export_car()
    proxy.after["getRepo"] = lambda _request, _status, _body: web.Response(body=other_car)
    with pytest.raises(DidMismatch, match=OTHER_DID):
        download(HANDLE, tmp_path / "copy", config=source.config)
    assert not (tmp_path / "copy").exists()


def test_a_copy_of_another_did_is_not_overwritten(source, tmp_path):
    with Repo.create(tmp_path / "copy", OTHER_DID):
        pass
    before = snapshot(tmp_path / "copy")
    with pytest.raises(DidMismatch):
        download(HANDLE, tmp_path / "copy", config=source.config)
    assert snapshot(tmp_path / "copy") == before


def test_wrong_blob_bytes_are_refused_and_the_other_blobs_kept(source, proxy, tmp_path):
    bad = source.blobs[1].cid.encode()

    def corrupt(request, _status, body):
        return web.Response(body=body[::-1]) if request.query["cid"] == bad else None

    proxy.after["getBlob"] = corrupt
    report = download(HANDLE, tmp_path / "copy", blobs=True, config=source.config, **FAST)
    assert not report.ok
    assert [failure.cid.encode() for failure in report.blobs_failed] == [bad]
    assert isinstance(report.blobs_failed[0].error, BlockHashMismatch)
    assert proxy.hits["getBlob"] == 3  # a hash mismatch is not retried
    with Repo.open(tmp_path / "copy") as copy:
        assert copy.blob(source.blobs[1].cid) is None
        assert [copy.blob(ref.cid) for ref in (source.blobs[0], source.blobs[2])] == [image(0), image(2)]


# -- resuming, retries, limits -----------------------------------------------------------------------------


def test_an_interrupted_blob_download_resumes_with_only_the_rest(source, proxy, tmp_path):
    failing = {source.blobs[0].cid.encode(), source.blobs[2].cid.encode()}

    def unavailable(request, _status, _body):
        return web.Response(status=503) if request.query["cid"] in failing else None

    proxy.before["getBlob"] = unavailable
    first = download(HANDLE, tmp_path / "copy", blobs=True, config=source.config, **FAST)
    assert sorted(failure.cid.encode() for failure in first.blobs_failed) == sorted(failing)
    assert all(isinstance(failure.error, RemoteError) for failure in first.blobs_failed)
    assert "after 2 attempts" in str(first.blobs_failed[0].error)
    assert [cid.encode() for cid in first.blobs_fetched] == [source.blobs[1].cid.encode()]

    proxy.before.clear()
    second = download(HANDLE, tmp_path / "copy", blobs=True, config=source.config)
    assert second.action == "unchanged" and second.ok
    assert sorted(cid.encode() for cid in second.blobs_fetched) == sorted(failing)
    assert second.blobs_present == 1
    assert_identical(source.path, tmp_path / "copy")


def test_retries_are_bounded(source, proxy, tmp_path):
    proxy.before["getRepo"] = lambda _request, _status, _body: web.Response(status=500)
    started = time.monotonic()
    with pytest.raises(RemoteError, match="after 3 attempts") as caught:
        download(HANDLE, tmp_path / "copy", config=source.config, options=DownloadOptions(retries=2, backoff=0.01))
    assert caught.value.status == 500
    assert proxy.hits["getRepo"] == 3
    assert time.monotonic() - started < 5
    assert not (tmp_path / "copy").exists()


def test_a_car_cut_half_way_is_fetched_again(source, proxy, tmp_path):
    def cut_first_time(request, _status, body):
        return cut_short(request, body) if proxy.hits["getRepo"] == 1 else None

    proxy.after["getRepo"] = cut_first_time
    report = download(HANDLE, tmp_path / "copy", config=source.config, options=DownloadOptions(retries=2, backoff=0.0))
    assert report.action == "created" and proxy.hits["getRepo"] == 2
    assert snapshot(tmp_path / "copy")[0] == snapshot(source.path)[0]


def test_an_xrpc_error_is_final_at_once(source, proxy, tmp_path):
    proxy.before["getRepo"] = lambda _r, _s, _b: web.json_response(
        {"error": "RepoTakendown", "message": "gone"}, status=400
    )
    with pytest.raises(RemoteError, match="RepoTakendown: gone") as caught:
        download(HANDLE, tmp_path / "copy", config=source.config)
    assert (caught.value.status, caught.value.error) == (400, "RepoTakendown")
    assert proxy.hits["getRepo"] == 1


def test_an_unreachable_pds_fails_after_the_retries(source, tmp_path):
    publish(source, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(NetworkError, match="after 2 attempts"):
        download(HANDLE, tmp_path / "copy", config=source.config, **FAST)
    assert not (tmp_path / "copy").exists()


def test_a_car_over_the_size_cap_is_refused(source, tmp_path):
    with pytest.raises(ResponseTooLarge, match="max_car_bytes"):
        download(HANDLE, tmp_path / "copy", config=source.config, options=DownloadOptions(max_car_bytes=1000))
    assert not (tmp_path / "copy").exists()
    assert no_temp_files(tmp_path)


def test_a_file_in_the_way_is_refused(source, tmp_path):
    (tmp_path / "copy").write_text("not a repository")
    with pytest.raises(InvalidInput, match="is a file"):
        download(HANDLE, tmp_path / "copy", config=source.config)


def test_pypds_serve_stops_promptly_while_a_client_stalls_a_download(tmp_path):
    """SIGTERM must not wait for a slow client to finish a large CAR (aiohttp's default waits 60 s)."""
    import socket
    from urllib.parse import urlsplit

    with Repo.create(tmp_path / "big", DID) as repo, repo.batch() as batch:
        for i in range(40_000):
            batch.put(POST, f"3kzfcijp{i:05d}", {**post(i), "text": f"{i:06d}" + "x" * 400})
    process, url = start_cli_server(tmp_path / "big")
    address = urlsplit(url)
    reading = threading.Event()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so the server's writes soon block
    client.connect((address.hostname, address.port))
    try:
        request = f"GET /xrpc/com.atproto.sync.getRepo?did={DID} HTTP/1.1\r\nHost: x\r\n\r\n"
        client.sendall(request.encode())
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        reading = threading.Event()
        reading.set()

        def read_slowly() -> None:  # ~300 KB/s: the 20 MB CAR would take a minute
            with contextlib.suppress(OSError):
                while reading.is_set() and client.recv(16384):
                    time.sleep(0.05)

        reader = threading.Thread(target=read_slowly, daemon=True)
        reader.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(15) == 0
        assert time.monotonic() - started < 8
    finally:
        reading.clear()
        client.close()
        if process.poll() is None:
            process.kill()
        process.stderr.close()


# -- issue 12.1: a download never moves a copy back --------------------------------------------------------

NEWEST_TID = "jzzzzzzzzzzzz"  # the largest valid TID: a lying getLatestCommit claims it


def older_state(source, proxy, tmp_path) -> SimpleNamespace:
    """A copy at the source's newest commit, and the CAR of an older commit the same key signed."""
    with Repo.open(source.path) as repo:
        old = SimpleNamespace(head=repo.head, rev=repo.rev, car=repo.export_car())
    add_commits(source)
    copy = tmp_path / "copy"
    download(HANDLE, copy, config=source.config)
    with Repo.open(copy) as repo:
        old.copy, old.copy_head, old.copy_rev = copy, repo.head, repo.rev
    proxy.hits.clear()
    return old


def latest_commit_answer(kind: str, old: SimpleNamespace):
    """What a hostile getLatestCommit says: the older commit, nothing (501), or a lie that passes the pre-check."""
    answers = {
        "older": {"cid": old.head.encode(), "rev": old.rev},
        "lying": {"cid": cid_for_cbor(b"\xa0").encode(), "rev": NEWEST_TID},
    }
    if kind == "not implemented":
        return lambda _r, _s, _b: web.json_response({"error": "MethodNotImplemented"}, status=501)
    return lambda _r, _s, _b: web.json_response(answers[kind])


def car_answer(body: bytes):
    return lambda _r, _s, _b: web.Response(body=body, content_type="application/vnd.ipld.car")


def header_only_car(root) -> bytes:
    out = io.BytesIO()
    CarWriter(out, [root])
    return out.getvalue()


def assert_names_both_sides(error: RollbackRefused, old: SimpleNamespace) -> None:
    message = str(error)
    assert old.head.encode() in message and old.rev in message  # what the server offered
    assert old.copy_head.encode() in message and old.copy_rev in message  # what the copy holds
    assert "pypds head" in message and "--set" in message  # how to move back on purpose


def assert_copy_kept_its_head_through_gc(old: SimpleNamespace) -> None:
    with Repo.open(old.copy) as repo:
        assert (repo.head, repo.rev) == (old.copy_head, old.copy_rev)
        repo.gc()
        assert repo.head == old.copy_head and repo.verify().ok


@pytest.mark.parametrize("latest", ["older", "not implemented", "lying"])
def test_an_older_validly_signed_commit_never_replaces_a_newer_copy(source, proxy, tmp_path, latest):
    old = older_state(source, proxy, tmp_path)
    before = snapshot(old.copy)
    proxy.before["getLatestCommit"] = latest_commit_answer(latest, old)
    proxy.before["getRepo"] = car_answer(old.car)
    with pytest.raises(RollbackRefused) as caught:
        download(HANDLE, old.copy, config=source.config)
    assert_names_both_sides(caught.value, old)
    assert proxy.hits["getRepo"] == (0 if latest == "older" else 1)  # an honest "older" is refused before the CAR
    assert snapshot(old.copy) == before
    assert_copy_kept_its_head_through_gc(old)


@pytest.mark.parametrize("diff", ["header only", "older commit"])
def test_since_never_moves_a_copy_back_not_even_through_the_full_car_fallback(source, proxy, tmp_path, diff):
    old = older_state(source, proxy, tmp_path)
    before = snapshot(old.copy)
    diff_car = header_only_car(old.head) if diff == "header only" else old.car

    def get_repo(request, _status, _body):
        return web.Response(body=diff_car if "since" in request.query else old.car)

    proxy.before["getLatestCommit"] = latest_commit_answer("lying", old)
    proxy.before["getRepo"] = get_repo
    with pytest.raises(RollbackRefused) as caught:
        download(HANDLE, old.copy, since=True, config=source.config)
    assert_names_both_sides(caught.value, old)
    assert proxy.hits["getRepo"] == (2 if diff == "header only" else 1)  # MissingBlock falls back to the full CAR
    assert snapshot(old.copy) == before
    assert_copy_kept_its_head_through_gc(old)


def test_the_copys_own_commit_served_again_is_unchanged(source, proxy, tmp_path):
    copy = tmp_path / "copy"
    download(HANDLE, copy, config=source.config)
    with Repo.open(copy) as repo:
        old = SimpleNamespace(head=repo.head, rev=repo.rev)
    proxy.before["getLatestCommit"] = latest_commit_answer("lying", old)
    for since in (False, True):
        report = download(HANDLE, copy, since=since, config=source.config)
        assert report.action == "unchanged" and report.head == old.head and report.rev == old.rev


def test_a_copy_updated_while_downloading_is_not_moved_back(source, proxy, tmp_path):
    """The rev is checked again inside the import transaction, not only before the download."""
    copy = tmp_path / "copy"
    download(HANDLE, copy, config=source.config)
    add_commits(source)
    with Repo.open(source.path) as repo:
        middle = repo.export_car()
    add_commits(source)
    with Repo.open(source.path) as repo:
        newest, newest_head = repo.export_car(), repo.head

    def update_the_copy_then_answer_the_middle(_request, _status, _body):
        with Repo.open(copy) as other:  # another process brings the copy to the newest commit meanwhile
            other.import_car(newest)
        return web.Response(body=middle, content_type="application/vnd.ipld.car")

    proxy.before["getRepo"] = update_the_copy_then_answer_the_middle
    with pytest.raises(RollbackRefused):
        download(HANDLE, copy, config=source.config)
    with Repo.open(copy) as repo:
        assert repo.head == newest_head


def test_cli_refuses_a_rollback_with_status_1(source, proxy, tmp_path, capsys):
    old = older_state(source, proxy, tmp_path)
    proxy.before["getLatestCommit"] = latest_commit_answer("not implemented", old)
    proxy.before["getRepo"] = car_answer(old.car)
    assert main(["download", HANDLE, "-o", str(old.copy), *cli_args(source)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pypds: refusing to move HEAD back: the PDS ") and old.rev in err and old.copy_rev in err


@pytest.mark.parametrize(
    ("rev", "than", "newer"),
    [("3kb", "3ka", True), ("3ka", "3ka", False), ("3ka", "3kb", False), (None, "3ka", False), ("", "3ka", False)]
    + [("3ka", None, True), ("3ka", "", True), (None, None, False)],
)
def test_a_missing_rev_is_older_than_any_rev(rev, than, newer):
    assert rev_is_newer(rev, than) is newer


# -- issue 12.2: blobs are streamed, never held whole ----------------------------------------------------------

# The peak RSS of this process image (VmHWM): ru_maxrss would include the parent's, inherited through fork.
MEASURE_BLOB_DOWNLOAD = """
import json, sys
from pypds import DownloadOptions, ResolverConfig, download
def peak():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
plc, copy, did = sys.argv[1:]
config = ResolverConfig(plc_url=plc, dns=False, well_known=False, verify_handle=False, allow_private_network=True)
download(did, copy, config=config)  # everything but the blobs, so that only they count below
before = peak()
report = download(did, copy, blobs=True, config=config)
print(json.dumps({"growth": peak() - before, "fetched": len(report.blobs_fetched), "ok": report.ok}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc/self/status")
def test_peak_memory_of_a_blob_download_does_not_depend_on_blob_size(stubs, tmp_path):
    web_stub, _dns = stubs
    size = 64 << 20
    data = os.urandom(size)
    with Repo.create(tmp_path / "big", DID) as repo:
        ref = repo.put_blob(data, "video/mp4")
        repo.put(POST, "video", {**post(0), "embed": {"video": ref.to_record()}})
        key = repo.signing_key.public_key
    with ServerThread(make_app([tmp_path / "big"])) as server:
        web_stub.plc[DID] = did_document(DID, key=key, pds=server.url)
        command = [sys.executable, "-c", MEASURE_BLOB_DOWNLOAD, web_stub.url, str(tmp_path / "copy"), DID]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["fetched"] == 1 and measured["ok"]
    assert measured["growth"] < size // 4, f"peak RSS grew {measured['growth'] >> 20} MiB for a 64 MiB blob"
    with Repo.open(tmp_path / "copy") as copy:
        assert copy.blob(ref.cid) == data
    assert not list((tmp_path / "copy" / "blobs").glob("*/.tmp-*"))


def test_a_blob_that_does_not_match_leaves_no_file_behind(source, proxy, tmp_path):
    proxy.after["getBlob"] = lambda _request, _status, body: web.Response(body=body[:-1] + b"?")
    report = download(HANDLE, tmp_path / "copy", blobs=True, config=source.config, **FAST)
    assert len(report.blobs_failed) == 3 and all(isinstance(f.error, BlockHashMismatch) for f in report.blobs_failed)
    assert [path.name for path in (tmp_path / "copy" / "blobs").glob("*/*")] == []


# -- issue 12.3: blob listings are bounded -------------------------------------------------------------------------


def listing(cids: list[str], cursor: str) -> web.Response:
    return web.json_response({"cids": cids, "cursor": cursor})


@pytest.mark.parametrize(
    ("attack", "limit", "pages"),
    [
        ("fresh cursor, same cid", "list_blobs_pages", 12),  # 3 blobs referenced: 2 * 3 + 1000 CIDs, 12 pages
        ("fresh cursor, new cids", "max_listed_blobs", 2),
        ("one page of 231k cids", "list_blobs_page", 1),
    ],
)
def test_an_endless_blob_listing_stops_with_a_clear_error(source, proxy, tmp_path, attack, limit, pages):
    real = [ref.cid.encode() for ref in source.blobs]
    counter = itertools.count()

    def answer(_request, _status, _body):
        n = next(counter)
        if n == 50:  # so that an unbounded client ends (and fails this test) instead of hanging
            return listing([], "")
        if attack.endswith("same cid"):
            return listing(real[:1], f"cursor-{n}")
        if attack.endswith("new cids"):
            return listing([cid_for_raw(f"{n}/{i}".encode()).encode() for i in range(1000)], f"cursor-{n}")
        return listing(real * 77_000, "cursor")

    proxy.before["listBlobs"] = answer
    started = time.monotonic()
    with pytest.raises(ListingTooLong, match=f"limit {limit} exceeded at listBlobs of {DID}"):
        download(HANDLE, tmp_path / "copy", blobs=True, config=source.config)
    assert proxy.hits["listBlobs"] == pages and proxy.hits["getBlob"] == 0
    assert time.monotonic() - started < 10


def test_a_listing_a_little_longer_than_the_references_is_fine(source, proxy, tmp_path):
    extra = [cid_for_raw(f"orphan {i}".encode()).encode() for i in range(900)]
    pages = iter([listing([ref.cid.encode() for ref in source.blobs] + extra, "next"), listing([], "end")])
    proxy.before["listBlobs"] = lambda _r, _s, _b: next(pages)
    proxy.before["getBlob"] = lambda request, _s, _b: (
        None if request.query["cid"] not in extra else web.Response(status=400)
    )
    report = download(HANDLE, tmp_path / "copy", blobs=True, config=source.config, **FAST)
    assert report.blobs_listed == 903 and len(report.blobs_fetched) == 3 and len(report.blobs_failed) == 900


# -- issue 12.4: slow servers are given up on ---------------------------------------------------------------------


def drip(content_type: str = "application/vnd.ipld.car", every: float = 0.05, stop_after: float = 10.0, first=b""):
    """A hook answering 200, ``first``, and then one byte every ``every`` seconds (for ``stop_after`` seconds)."""

    async def answer(request, _status, _body):
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = 10_000_000
        await response.prepare(request)
        await response.write(first)
        ends = time.monotonic() + stop_after
        with contextlib.suppress(ConnectionError, RuntimeError):
            while time.monotonic() < ends:
                await response.write(b" ")
                await asyncio.sleep(every)
        return response

    return answer


SLOW = {"options": DownloadOptions(min_rate=1000, rate_window=0.3, retries=1, backoff=0.0)}


@pytest.mark.parametrize("method", ["getRepo", "getLatestCommit", "listBlobs"])
def test_a_server_dripping_bytes_is_given_up_on_within_the_bound(source, proxy, tmp_path, method):
    copy = tmp_path / "copy"
    if method != "getRepo":
        download(HANDLE, copy, config=source.config)
        add_commits(source)
    proxy.before[method] = drip("application/json" if method != "getRepo" else "application/vnd.ipld.car")
    started = time.monotonic()
    with pytest.raises(TransferTooSlow, match=r"after 2 attempts.*slower than the minimum 1000 bytes/s"):
        download(HANDLE, copy, blobs=True, config=source.config, **SLOW)
    assert time.monotonic() - started < 3  # two windows of 0.3 s, not the 10 s the drip lasts
    assert proxy.hits[method] == 2
    assert no_temp_files(tmp_path)


def test_blobs_dripped_a_byte_at_a_time_fail_within_the_bound(source, proxy, tmp_path):
    proxy.before["getBlob"] = drip("image/jpeg")
    started = time.monotonic()
    report = download(HANDLE, tmp_path / "copy", blobs=True, config=source.config, **SLOW)
    assert time.monotonic() - started < 3
    assert len(report.blobs_failed) == 3 and all(isinstance(f.error, TransferTooSlow) for f in report.blobs_failed)
    assert not list((tmp_path / "copy" / "blobs").glob("*/*"))


def test_the_deadline_bounds_the_whole_download_and_is_not_retried(source, proxy, tmp_path):
    proxy.before["getRepo"] = drip(every=0.01)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="deadline"):
        download(
            HANDLE,
            tmp_path / "copy",
            config=source.config,
            options=DownloadOptions(min_rate=0, deadline=0.8, retries=3, backoff=0),
        )
    assert time.monotonic() - started < 2.5
    assert proxy.hits["getRepo"] == 1
    assert not (tmp_path / "copy").exists() and no_temp_files(tmp_path)


def test_backoff_never_waits_past_the_deadline(source, proxy, tmp_path):
    proxy.before["getRepo"] = lambda _request, _status, _body: web.Response(status=503)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        download(
            HANDLE,
            tmp_path / "copy",
            config=source.config,
            options=DownloadOptions(retries=3, backoff=10.0, deadline=0.5),
        )
    assert time.monotonic() - started < 2


def test_cli_download_gives_up_on_a_dripping_pds(source, proxy, tmp_path, capsys):
    proxy.before["getRepo"] = drip()
    started = time.monotonic()
    args = [*cli_args(source), "--retries", "0", "--min-rate", "0", "--deadline", "0.5"]
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), *args]) == 3
    assert time.monotonic() - started < 3
    assert "deadline has passed" in capsys.readouterr().err


@pytest.mark.parametrize("settings", [{"min_rate": -1}, {"rate_window": 0}, {"deadline": 0}])
def test_bad_pace_settings_are_refused(source, tmp_path, settings):
    with pytest.raises(InvalidInput):
        download(HANDLE, tmp_path / "copy", config=source.config, options=DownloadOptions(**settings))


# -- issue 12.5: the CAR size cap, and temporary CARs of killed runs -------------------------------------------------


def test_cli_caps_the_car_size(source, tmp_path, capsys):
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), *cli_args(source), "--max-car-size", "1K"]) == 3
    err = capsys.readouterr().err
    assert "limit max_car_bytes exceeded" in err and "> 1024" in err
    assert not (tmp_path / "copy").exists() and no_temp_files(tmp_path)


@pytest.mark.parametrize(
    ("text", "size"), [("1048576", 1 << 20), ("512k", 512 << 10), ("16G", 16 << 30), ("2MiB", 2 << 20)]
)
def test_car_size_option_reads_binary_units(text, size):
    from pypds.cli.net import SizeType

    assert SizeType().convert(text, None, None) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5G", "G", "12X", "١٢"])
def test_car_size_option_refuses_anything_else(text):
    import click

    from pypds.cli.net import SizeType

    with pytest.raises(click.BadParameter):
        SizeType().convert(text, None, None)


def stale_car(directory: Path, name: str, age: float) -> Path:
    path = directory / f".tmp-pypds-download-{name}.car"
    path.write_bytes(b"partial CAR")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_temporary_cars_of_dead_downloads_go_and_live_ones_stay(source, tmp_path):
    import fcntl

    dead = stale_car(tmp_path, "copy-dead", 3600)
    young = stale_car(tmp_path, "copy-starting", 5)
    live = stale_car(tmp_path, "other-live", 3600)
    with open(live, "rb+") as holder:  # a concurrent download in the same directory holds its CAR's lock
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert download(HANDLE, tmp_path / "copy", config=source.config).action == "created"
        assert not dead.exists() and young.exists() and live.exists()
    assert sorted(path.name for path in tmp_path.glob(".tmp-*")) == sorted([young.name, live.name])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_download_leaves_a_temporary_car_the_next_run_removes(source, proxy, tmp_path):
    proxy.before["getRepo"] = drip(stop_after=30, first=b" " * (1 << 20))
    command = [sys.executable, "-m", "pypds.cli", "download", HANDLE, "-o", str(tmp_path / "copy"), *cli_args(source)]
    process = subprocess.Popen([*command, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            left = list(tmp_path.glob(".tmp-pypds-download-*.car"))
            if left and left[0].stat().st_size:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the download never started writing its CAR")
    finally:
        process.kill()
        process.wait(10)
    [left] = tmp_path.glob(".tmp-pypds-download-*.car")
    then = time.time() - 120
    os.utime(left, (then, then))
    proxy.before.clear()
    assert download(HANDLE, tmp_path / "copy", config=source.config).action == "created"
    assert not left.exists() and no_temp_files(tmp_path)


# -- issue 12.6: endpoints learned from the network must be public ---------------------------------------------------


def test_a_pds_at_a_loopback_address_needs_the_opt_in(source, proxy, tmp_path, capsys):
    config = stub_config(source.web, source.dns, allow_private_network=False)
    with pytest.raises(AddressRefused, match=r"the PDS of .* 127\.0\.0\.1 is not a public address.*allow-private"):
        download(HANDLE, tmp_path / "copy", config=config)
    args = [a for a in cli_args(source) if a != "--allow-private-network"]
    assert main(["download", HANDLE, "-o", str(tmp_path / "copy"), *args]) == 3
    assert "--allow-private-network" in capsys.readouterr().err
    assert sum(proxy.hits.values()) == 0 and not (tmp_path / "copy").exists()


def test_a_pds_name_resolving_to_loopback_is_refused_when_connecting(source, proxy, tmp_path):
    """The name is not an address: the check happens on what it resolves to, as DNS rebinding would."""
    publish(source, proxy.url.replace("127.0.0.1", "localhost"))
    config = stub_config(source.web, source.dns, allow_private_network=False)
    with pytest.raises(AddressRefused, match="localhost resolves only to non-public addresses"):
        download(HANDLE, tmp_path / "copy", config=config)
    assert sum(proxy.hits.values()) == 0
    assert download(HANDLE, tmp_path / "copy", config=source.config).action == "created"  # opted in
