"""The sync API server (pypds.net.server): every method, its parameters and its XRPC errors,
hostile blob files, stalling clients, and stopping.

Requests go through the standard library's HTTP client (or a raw socket,
for clients that misbehave) to a real aiohttp server on 127.0.0.1, so what
is tested is what goes over the wire.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pypds import CID, InvalidInput, Repo, cid_for_cbor, cid_for_raw, verify_proof
from pypds.car.reader import CarReader
from pypds.net.server import SHUTDOWN_TIMEOUT, make_app, start_server
from pypds.repo import referenced_blobs as referenced_module
from pypds.storage.blobs import SEGMENT_BYTES, BlobFile, BlobStore

from .conftest import DID, POST, decode_dag_cbor, post, read_uvarint
from .hostile_blobs import HOSTILE, plant
from .netstubs import LOOPBACK, ServerThread

OTHER_DIDS = ["did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"]
SYNC = "com.atproto.sync."
BIG_BLOB = bytes(range(256)) * (10 << 10)  # 2.5 MiB: three checked segments of 1 MiB


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three repositories served with small chunks; the first has 60 posts, a rev to diff from,
    and three blobs: two referenced by posts, the third stored and referenced by none."""
    base = tmp_path_factory.mktemp("server")
    with Repo.create(base / "alice", DID) as alice:
        with alice.batch() as batch:
            for i in range(30):
                batch.put(POST, f"p{i:03d}", post(i))
        first_rev = alice.rev
        blobs = [alice.put_blob(data, "image/png") for data in (b"small blob", BIG_BLOB, b"third, unreferenced")]
        with alice.batch() as batch:
            for i in range(30, 60):
                batch.put(POST, f"p{i:03d}", post(i))
            batch.put(POST, "withblob", with_image(99, blobs[0]))
            batch.put(POST, "withbigblob", with_image(98, blobs[1]))
    for did in OTHER_DIDS:
        Repo.create(base / did.rsplit(":", 1)[1], did).close()
    paths = [base / "alice", *(base / did.rsplit(":", 1)[1] for did in OTHER_DIDS)]
    with ServerThread(make_app(paths, chunk_size=4096)) as server, Repo.open(base / "alice") as repo:
        yield {"url": server.url, "repo": repo, "first_rev": first_rev, "blobs": blobs, "base": base}


def with_image(i: int, ref) -> dict:
    return {**post(i), "embed": {"images": [{"image": ref.to_record()}]}}


def repo_with_blob(path: Path, data: bytes) -> CID:
    """A repository at ``path`` with one post referencing blob ``data``; returns the blob's CID."""
    with Repo.create(path, DID) as repo:
        ref = repo.put_blob(data, "image/png")
        repo.put(POST, "b", with_image(1, ref))
    return ref.cid


def call(url: str, method: str, params=(), *, http_method: str = "GET") -> tuple[int, dict, bytes]:
    """One request; returns (status, headers, body) for success and error statuses alike."""
    query = urllib.parse.urlencode(list(params.items()) if isinstance(params, dict) else list(params))
    request = urllib.request.Request(f"{url}/xrpc/{method}?{query}", method=http_method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def call_json(url: str, method: str, params=()) -> dict:
    status, headers, body = call(url, SYNC + method, params)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def assert_xrpc_error(world, method: str, params, status: int, name: str, http_method: str = "GET") -> str:
    code, headers, body = call(
        world["url"], method if "." in method else SYNC + method, params, http_method=http_method
    )
    assert code == status, body
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)
    assert error["error"] == name and isinstance(error["message"], str) and error["message"]
    return error["message"]


# -- getRepo -------------------------------------------------------------------------------


def test_get_repo_streams_exactly_export_car(world):
    status, headers, body = call(world["url"], SYNC + "getRepo", {"did": DID})
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.ipld.car"
    assert headers.get("Transfer-Encoding") == "chunked"  # streamed, not built whole
    assert body == world["repo"].export_car()


def test_get_repo_since_is_the_diff_car(world):
    status, _headers, body = call(world["url"], SYNC + "getRepo", {"did": DID, "since": world["first_rev"]})
    assert status == 200
    assert body == world["repo"].export_car(since=world["first_rev"])
    assert len(body) < len(world["repo"].export_car())


@pytest.mark.parametrize("since", ["yesterday", "3jzfcijpj2z2aa", "0000000000000"])
def test_get_repo_bad_since_is_invalid_request(world, since):
    assert "since" in assert_xrpc_error(world, "getRepo", {"did": DID, "since": since}, 400, "InvalidRequest")


@pytest.mark.parametrize("method", ["getRepo", "getLatestCommit", "getRepoStatus", "listBlobs"])
def test_unknown_did_is_repo_not_found(world, method):
    message = assert_xrpc_error(world, method, {"did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}, 400, "RepoNotFound")
    assert "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa" in message


@pytest.mark.parametrize("method", ["getRepo", "getLatestCommit", "getRepoStatus", "listBlobs", "getBlob", "getRecord"])
@pytest.mark.parametrize("did", [None, "", "alice", "did:plc:", "did:PLC:abc"])
def test_missing_or_malformed_did_is_invalid_request(world, method, did):
    params = {"cid": world["blobs"][0].cid.encode(), "collection": POST, "rkey": "p000"}
    if did is not None:
        params["did"] = did
    assert_xrpc_error(world, method, params, 400, "InvalidRequest")


# -- getLatestCommit, getRepoStatus, listRepos ----------------------------------------------------


def test_get_latest_commit_is_head_and_rev(world):
    repo = world["repo"]
    assert call_json(world["url"], "getLatestCommit", {"did": DID}) == {"cid": repo.head.encode(), "rev": repo.rev}


def test_get_repo_status_is_active_with_rev(world):
    assert call_json(world["url"], "getRepoStatus", {"did": DID}) == {
        "did": DID,
        "active": True,
        "rev": world["repo"].rev,
    }


def test_list_repos_pages_in_did_order(world):
    first = call_json(world["url"], "listRepos", {"limit": "2"})
    assert [entry["did"] for entry in first["repos"]] == sorted([DID, *OTHER_DIDS])[:2]
    assert first["cursor"] == first["repos"][-1]["did"]
    second = call_json(world["url"], "listRepos", {"limit": "2", "cursor": first["cursor"]})
    assert [entry["did"] for entry in second["repos"]] == sorted([DID, *OTHER_DIDS])[2:]
    assert "cursor" not in second
    alice = next(entry for entry in first["repos"] + second["repos"] if entry["did"] == DID)
    assert alice == {"did": DID, "head": world["repo"].head.encode(), "rev": world["repo"].rev, "active": True}
    assert len(call_json(world["url"], "listRepos")["repos"]) == 3


@pytest.mark.parametrize(
    "limit", ["0", "1001", "-1", "ten", "1.5", "\u00b2", "\u0661\u0660", "9" * 5000, "0" * 50 + "5"]
)
def test_bad_limit_is_invalid_request(world, limit):
    assert "limit" in assert_xrpc_error(world, "listRepos", {"limit": limit}, 400, "InvalidRequest")
    assert "limit" in assert_xrpc_error(world, "listBlobs", {"did": DID, "limit": limit}, 400, "InvalidRequest")


# -- listBlobs, getBlob ----------------------------------------------------------------------------


def test_list_blobs_pages_through_every_referenced_blob(world):
    expected = sorted(ref.cid.encode() for ref in world["blobs"][:2])
    seen, cursor = [], None
    for _ in range(5):
        params = {"did": DID, "limit": "1", **({"cursor": cursor} if cursor else {})}
        page = call_json(world["url"], "listBlobs", params)
        seen += page["cids"]
        cursor = page.get("cursor")
        if cursor is None:
            break
    assert seen == expected
    assert call_json(world["url"], "listBlobs", {"did": DID})["cids"] == expected


def test_list_blobs_since_lists_the_blobs_of_newer_records(world):
    page = call_json(world["url"], "listBlobs", {"did": DID, "since": world["first_rev"]})
    assert page["cids"] == sorted(ref.cid.encode() for ref in world["blobs"][:2])


def test_list_blobs_since_pages_through_the_same_answer(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo:
        repo.put(POST, "first", post(0))
        since = repo.rev
        for i in range(5):
            ref = repo.put_blob(b"blob %d" % i, "image/png")
            repo.put(POST, f"b{i}", {**post(i), "embed": {"images": [{"image": ref.to_record()}]}})
        expected = [cid.encode() for cid in repo.list_blobs(since=since)]
    assert len(expected) == 5
    with ServerThread(make_app([tmp_path / "r"])) as server:
        seen, cursor = [], None
        for _ in range(10):
            params = {"did": DID, "since": since, "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = call_json(server.url, "listBlobs", params)
            seen += page["cids"]
            cursor = page.get("cursor")
            if cursor is None:
                break
    assert seen == expected


def test_list_blobs_bad_cursor_is_invalid_request(world):
    assert_xrpc_error(world, "listBlobs", {"did": DID, "cursor": "not-a-cid"}, 400, "InvalidRequest")


@pytest.mark.parametrize("index", [0, 1])
def test_get_blob_streams_the_bytes(world, index):
    ref = world["blobs"][index]
    status, headers, body = call(world["url"], SYNC + "getBlob", {"did": DID, "cid": ref.cid.encode()})
    assert status == 200 and body == world["repo"].blob(ref.cid)
    assert headers["Content-Length"] == str(len(body))
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_missing_blob_is_blob_not_found(world):
    cid = cid_for_raw(b"never stored").encode()
    assert cid in assert_xrpc_error(world, "getBlob", {"did": DID, "cid": cid}, 400, "BlobNotFound")


def test_a_dag_cbor_cid_is_not_a_blob(world):
    assert_xrpc_error(world, "getBlob", {"did": DID, "cid": world["repo"].head.encode()}, 400, "BlobNotFound")


@pytest.mark.parametrize("cid", [None, "nope", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "BAFYREI"])
def test_bad_blob_cid_is_invalid_request(world, cid):
    params = {"did": DID} if cid is None else {"did": DID, "cid": cid}
    assert_xrpc_error(world, "getBlob", params, 400, "InvalidRequest")


def test_a_stored_blob_no_record_references_is_neither_listed_nor_served(world):
    unreferenced = world["blobs"][2].cid
    assert unreferenced.encode() not in call_json(world["url"], "listBlobs", {"did": DID})["cids"]
    params = {"did": DID, "cid": unreferenced.encode()}
    assert unreferenced.encode() in assert_xrpc_error(world, "getBlob", params, 400, "BlobNotFound")
    assert world["repo"].blob(unreferenced) == b"third, unreferenced"  # still stored: a local read finds it


def test_a_blob_leaves_the_listing_with_the_last_record_referencing_it(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo, ServerThread(make_app([tmp_path / "r"])) as server:
        ref = repo.put_blob(b"shared image", "image/png")
        repo.put(POST, "a", with_image(1, ref))
        repo.put(POST, "b", with_image(2, ref))
        since = repo.rev
        params = {"did": DID, "cid": ref.cid.encode()}
        listed = lambda: call_json(server.url, "listBlobs", {"did": DID})["cids"]  # noqa: E731
        assert listed() == [ref.cid.encode()]
        repo.delete(POST, "a")
        assert listed() == [ref.cid.encode()]  # "b" still references it
        assert call(server.url, SYNC + "getBlob", params)[2] == b"shared image"
        repo.delete(POST, "b")
        assert listed() == []
        status, _headers, body = call(server.url, SYNC + "getBlob", params)
        assert status == 400 and json.loads(body)["error"] == "BlobNotFound"
        assert call_json(server.url, "listBlobs", {"did": DID, "since": since})["cids"] == []
        assert repo.blob(ref.cid) == b"shared image"  # the file stays until gc
        repo.put(POST, "c", with_image(3, ref))
        assert listed() == [ref.cid.encode()]
        assert call(server.url, SYNC + "getBlob", params)[2] == b"shared image"


@pytest.mark.parametrize("data", [b"a corrupt small blob", BIG_BLOB[::-1]])
def test_a_corrupt_blob_file_is_an_error_before_any_byte_is_sent(tmp_path, data):
    cid = repo_with_blob(tmp_path / "r", data)
    path = BlobStore(tmp_path / "r" / "blobs").path_for(cid)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, last byte (last segment) altered
    with ServerThread(make_app([tmp_path / "r"], chunk_size=4096)) as server:
        status, headers, body = call(server.url, SYNC + "getBlob", {"did": DID, "cid": cid.encode()})
        assert status == 500 and headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["error"] == "InternalServerError" and len(body) < 200
        # the server survives and answers the next request
        assert call(server.url, SYNC + "getLatestCommit", {"did": DID})[0] == 200


# -- hostile blob files (issue 12, item 7) ----------------------------------------------------------


@pytest.mark.parametrize("how", HOSTILE)
def test_a_hostile_blob_file_answers_an_error_at_once_and_sends_none_of_it(tmp_path, how):
    cid = repo_with_blob(tmp_path / "r", BIG_BLOB)
    plant(BlobStore(tmp_path / "r" / "blobs").path_for(cid), how, BIG_BLOB, tmp_path / "outside")
    with ServerThread(make_app([tmp_path / "r"])) as server:
        started = time.monotonic()
        status, headers, body = call(server.url, SYNC + "getBlob", {"did": DID, "cid": cid.encode()})
        assert time.monotonic() - started < 2
        assert status == 500 and headers["Content-Type"].startswith("application/json"), body[:100]
        assert json.loads(body) == {
            "error": "InternalServerError",
            "message": f"blob {cid.encode()} is damaged on this server",
        }
        assert call(server.url, SYNC + "getLatestCommit", {"did": DID})[0] == 200


def test_fifos_in_blobs_do_not_hold_the_worker_threads(tmp_path):
    cid = repo_with_blob(tmp_path / "r", b"image")
    plant(BlobStore(tmp_path / "r" / "blobs").path_for(cid), "fifo", b"image", tmp_path / "outside")
    with ServerThread(make_app([tmp_path / "r"])) as server:
        started = time.monotonic()
        params = {"did": DID, "cid": cid.encode()}
        with ThreadPoolExecutor(40) as pool:  # far more requests than the server's worker threads
            statuses = list(pool.map(lambda _: call(server.url, SYNC + "getBlob", params)[0], range(40)))
        assert statuses == [500] * 40
        assert call(server.url, SYNC + "getLatestCommit", {"did": DID})[0] == 200
        assert time.monotonic() - started < 5


def test_a_slow_first_count_of_referenced_blobs_holds_one_worker_thread(tmp_path, monkeypatch):
    cid = repo_with_blob(tmp_path / "r", b"image")
    release = threading.Event()
    counted = referenced_module.blob_names_in

    def slow(record, data):
        release.wait(10)  # a repository with a million records
        return counted(record, data)

    monkeypatch.setattr(referenced_module, "blob_names_in", slow)
    with ServerThread(make_app([tmp_path / "r"])) as server, ThreadPoolExecutor(20) as pool:
        params = {"did": DID, "cid": cid.encode()}
        waiting = [pool.submit(call, server.url, SYNC + "getBlob", params) for _ in range(20)]
        time.sleep(0.3)
        try:
            started = time.monotonic()
            assert call(server.url, SYNC + "getLatestCommit", {"did": DID})[0] == 200
            assert time.monotonic() - started < 1
        finally:
            release.set()
        assert [future.result()[2] for future in waiting] == [b"image"] * 20


def test_a_blob_file_changed_after_its_check_is_cut_before_the_changed_bytes(tmp_path, monkeypatch):
    cid = repo_with_blob(tmp_path / "r", BIG_BLOB)
    checked_segments = BlobFile.segments

    def segments_after_a_change(self):  # the file changes in place between the check and the send
        with open(self.path, "r+b") as stream:
            stream.seek(SEGMENT_BYTES + 10)
            stream.write(b"CHANGED")
        return checked_segments(self)

    monkeypatch.setattr(BlobFile, "segments", segments_after_a_change)
    with ServerThread(make_app([tmp_path / "r"])) as server:
        url = f"{server.url}/xrpc/{SYNC}getBlob?did={DID}&cid={cid.encode()}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Length"] == str(len(BIG_BLOB))
            with pytest.raises(http.client.IncompleteRead) as cut:
                response.read()
    assert cut.value.partial == BIG_BLOB[:SEGMENT_BYTES]  # the first segment, checked again; nothing after


# -- stalling clients, paths, stopping (issue 12, item 8) ---------------------------------------------

HEADER_TIMEOUT, IDLE_TIMEOUT = 0.5, 1.5
REQUEST_HEAD = b"GET /xrpc/com.atproto.sync.listRepos HTTP/1.1\r\nHost: pypds\r\n"


class TimedServer(ServerThread):
    """:class:`ServerThread` with :func:`start_server`'s timeouts."""

    def __init__(self, app, **timeouts) -> None:
        super().__init__(app)
        self.timeouts = timeouts

    async def _main(self) -> None:
        server = await start_server(self.app, LOOPBACK, 0, **self.timeouts)
        try:
            self.url = server.url
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
        finally:
            await server.cleanup()


@pytest.fixture(scope="module")
def strict(world):
    """The world's repositories behind short timeouts."""
    app = make_app([world["base"] / "alice"])
    with TimedServer(app, header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT) as server:
        yield server.url


def raw_connection(url: str, receive_buffer: int | None = None) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((parts.hostname, parts.port))
    return sock


def read_until_cut(sock: socket.socket) -> int:
    """Read (and drop) until the server closes the connection; returns the bytes read."""
    total = 0
    try:
        while chunk := sock.recv(1 << 16):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def test_a_client_that_never_finishes_its_headers_is_cut_after_the_header_timeout(strict):
    with raw_connection(strict) as sock:
        started = time.monotonic()
        sock.sendall(REQUEST_HEAD)  # no blank line: the headers never end
        assert read_until_cut(sock) == 0
        assert HEADER_TIMEOUT - 0.05 < time.monotonic() - started < HEADER_TIMEOUT + 1


def test_trickled_header_bytes_do_not_extend_the_header_timeout(strict):
    with raw_connection(strict) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):  # the connection is cut mid-trickle
            for _ in range(200):  # 10 s of trickle if nothing cut it
                sock.sendall(b"X-Slow: a\r\n" if _ else REQUEST_HEAD)
                time.sleep(0.05)
        assert HEADER_TIMEOUT - 0.05 < time.monotonic() - started < HEADER_TIMEOUT + 1


def test_a_silent_connection_is_cut_after_the_idle_timeout(strict):
    with raw_connection(strict) as sock:
        started = time.monotonic()
        assert read_until_cut(sock) == 0
        assert IDLE_TIMEOUT - 0.05 < time.monotonic() - started < IDLE_TIMEOUT + 1  # not the header timeout


def test_a_kept_alive_connection_serves_requests_then_is_cut_when_idle(strict):
    parts = urllib.parse.urlsplit(strict)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    for _ in range(3):  # each request restarts the idle clock
        connection.request("GET", f"/xrpc/{SYNC}getLatestCommit?did={DID}")
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["rev"]
        time.sleep(IDLE_TIMEOUT / 2)
    started = time.monotonic()
    assert read_until_cut(connection.sock) == 0
    assert IDLE_TIMEOUT / 2 - 0.3 < time.monotonic() - started < IDLE_TIMEOUT / 2 + 1  # from the last response
    connection.close()


def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(tmp_path):
    data = bytes(range(256)) * (96 << 10)  # 24 MiB: more than every buffer between the two ends
    cid = repo_with_blob(tmp_path / "r", data)
    with TimedServer(make_app([tmp_path / "r"]), idle_timeout=IDLE_TIMEOUT) as server:
        with raw_connection(server.url, receive_buffer=16 << 10) as sock:
            sock.sendall(f"GET /xrpc/{SYNC}getBlob?did={DID}&cid={cid.encode()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            time.sleep(IDLE_TIMEOUT + 1)  # reads nothing
            started = time.monotonic()
            received = read_until_cut(sock)
            assert received < len(data) // 2  # cut mid-response: the write waited on this client
            assert time.monotonic() - started < 5
        assert call(server.url, SYNC + "getLatestCommit", {"did": DID})[0] == 200


def test_a_blob_is_not_hashed_for_a_client_that_went_away(tmp_path, monkeypatch):
    cid = repo_with_blob(tmp_path / "r", bytes(range(256)) * (32 << 10))  # 8 MiB: 8 check steps
    steps = []
    checking = BlobFile.check

    def slow_check(self):
        for done in checking(self):
            steps.append(done)
            time.sleep(0.1)
            yield done

    monkeypatch.setattr(BlobFile, "check", slow_check)
    with ServerThread(make_app([tmp_path / "r"])) as server:
        with raw_connection(server.url) as sock:
            sock.sendall(f"GET /xrpc/{SYNC}getBlob?did={DID}&cid={cid.encode()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while not steps:
                time.sleep(0.01)
        time.sleep(0.5)
        seen = len(steps)
        time.sleep(0.5)
        assert len(steps) == seen < 8


def test_stalling_clients_do_not_keep_others_waiting(strict):
    stallers = [raw_connection(strict) for _ in range(50)]
    try:
        for sock in stallers:
            sock.sendall(REQUEST_HEAD)
        started = time.monotonic()
        assert call(strict, SYNC + "listRepos")[0] == 200
        assert time.monotonic() - started < 1
    finally:
        for sock in stallers:
            sock.close()


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "10", True])
def test_timeouts_must_be_positive_numbers(world, timeout):
    with pytest.raises(InvalidInput, match="idle_timeout"):
        make_app([world["base"] / "alice"], idle_timeout=timeout)

    async def start() -> None:
        await start_server(make_app([]), LOOPBACK, 0, header_timeout=timeout)

    with pytest.raises(InvalidInput, match="header_timeout"):
        asyncio.run(start())


def start_serving(*args: str) -> tuple[subprocess.Popen, str]:
    """``pypds serve ARGS --port 0`` in a subprocess; returns it and its URL once it listens."""
    command = [sys.executable, "-m", "pypds.cli", "serve", *args, "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    line = process.stderr.readline()
    match = re.search(r" at (http://\S+) ", line)
    if match is None:
        process.kill()
        raise AssertionError(f"pypds serve did not start: {line}{process.stderr.read()}")
    return process, match.group(1)


def open_streams(url: str, cid: CID) -> list[socket.socket]:
    """Connections in every state: blob downloads that stopped reading, a CAR download,
    a client stalled in its headers, an idle one."""
    streams = []
    for path in [f"getBlob?did={DID}&cid={cid.encode()}"] * 3 + [f"getRepo?did={DID}"]:
        sock = raw_connection(url, receive_buffer=16 << 10)
        sock.sendall(f"GET /xrpc/{SYNC}{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        streams.append(sock)
    streams.append(raw_connection(url))
    streams[-1].sendall(REQUEST_HEAD)
    streams.append(raw_connection(url))
    return streams


def test_sigterm_with_open_streams_stops_within_the_documented_time(tmp_path):
    cid = repo_with_blob(tmp_path / "r", bytes(range(256)) * (64 << 10))  # 16 MiB
    process, url = start_serving(str(tmp_path / "r"))
    streams = []
    try:
        streams = open_streams(url, cid)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT
    finally:
        process.kill()
        process.stderr.close()
        for sock in streams:
            sock.close()


def test_serve_timeouts_are_command_line_options(tmp_path):
    Repo.create(tmp_path / "r", DID).close()
    process, url = start_serving(str(tmp_path / "r"), "--header-timeout", "0.3", "--idle-timeout", "5")
    try:
        with raw_connection(url) as sock:
            started = time.monotonic()
            sock.sendall(REQUEST_HEAD)
            assert read_until_cut(sock) == 0
            assert time.monotonic() - started < 1.3
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        process.stderr.close()


# -- getRecord ------------------------------------------------------------------------------------


def test_get_record_inclusion_proof_verifies(world):
    repo = world["repo"]
    status, headers, body = call(world["url"], SYNC + "getRecord", {"did": DID, "collection": POST, "rkey": "p007"})
    assert status == 200 and headers["Content-Type"] == "application/vnd.ipld.car"
    assert body == repo.prove(POST, "p007")
    assert verify_proof(body, POST, "p007", did=DID, key=repo.did_key) == repo.find_cid(POST, "p007")


def test_get_record_of_an_absent_record_is_an_exclusion_proof(world):
    status, _headers, body = call(world["url"], SYNC + "getRecord", {"did": DID, "collection": POST, "rkey": "nope"})
    assert status == 200
    assert verify_proof(body, POST, "nope", did=DID, key=world["repo"].did_key) is None


@pytest.mark.parametrize(
    ("collection", "rkey"), [(None, "p000"), (POST, None), ("not an nsid", "p000"), (POST, "bad/key"), (POST, "..")]
)
def test_get_record_bad_path_is_invalid_request(world, collection, rkey):
    params = {"did": DID}
    if collection is not None:
        params["collection"] = collection
    if rkey is not None:
        params["rkey"] = rkey
    assert_xrpc_error(world, "getRecord", params, 400, "InvalidRequest")


# -- getBlocks ---------------------------------------------------------------------------------------


def read_car_without_roots(body: bytes) -> tuple[list, list[tuple[bytes, bytes]]]:
    """Parse a CAR by hand (pypds' reader insists on a root; getBlocks has none)."""
    stream = io.BytesIO(body)
    header = decode_dag_cbor(stream.read(read_uvarint(stream)))
    assert header["version"] == 1
    blocks = []
    while stream.tell() < len(body):
        section = stream.read(read_uvarint(stream))
        blocks.append((section[:36], section[36:]))
    return header["roots"], blocks


def test_get_blocks_returns_exactly_the_blocks_asked_for(world):
    repo = world["repo"]
    wanted = [repo.head, repo.commit().data, repo.find_cid(POST, "p001"), repo.find_cid(POST, "p002")]
    params = [("did", DID), *(("cids", cid.encode()) for cid in wanted)]
    status, headers, body = call(world["url"], SYNC + "getBlocks", params)
    assert status == 200 and headers["Content-Type"] == "application/vnd.ipld.car"
    roots, blocks = read_car_without_roots(body)
    assert roots == []
    assert [CID(cid) for cid, _ in blocks] == wanted
    assert all(data == repo.blockstore.get(CID(cid)) for cid, data in blocks)


def test_get_blocks_with_an_unknown_cid_is_block_not_found(world):
    unknown = cid_for_cbor(b"\xa1aa\x01").encode()  # {"a": 1}: in no repository here
    params = [("did", DID), ("cids", world["repo"].head.encode()), ("cids", unknown)]
    assert unknown in assert_xrpc_error(world, "getBlocks", params, 400, "BlockNotFound")


@pytest.mark.parametrize("cids", [[], ["garbage"], ["bafyrei"] * 2])
def test_get_blocks_bad_cids_is_invalid_request(world, cids):
    assert_xrpc_error(world, "getBlocks", [("did", DID), *(("cids", c) for c in cids)], 400, "InvalidRequest")


def test_get_blocks_refuses_too_many_cids(world):
    params = [("did", DID), *(("cids", world["repo"].head.encode()) for _ in range(1001))]
    assert "1000" in assert_xrpc_error(world, "getBlocks", params, 400, "InvalidRequest")


# -- the XRPC surface ------------------------------------------------------------------------------


def test_unknown_method_is_method_not_implemented(world):
    assert_xrpc_error(world, "com.atproto.repo.createRecord", {}, 501, "MethodNotImplemented")
    assert_xrpc_error(world, "com.atproto.sync.requestCrawl", {}, 501, "MethodNotImplemented")


def test_subscribe_repos_without_a_websocket_is_invalid_request(world):
    assert "WebSocket" in assert_xrpc_error(world, "subscribeRepos", {}, 400, "InvalidRequest")


def test_a_post_to_a_query_is_invalid_request(world):
    assert "GET" in assert_xrpc_error(world, "getRepo", {"did": DID}, 400, "InvalidRequest", http_method="POST")


def get_path(url: str, path: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url + path, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize(
    ("path", "status", "name"),
    [
        ("/", 404, "NotFound"),
        ("/favicon.ico", 404, "NotFound"),
        ("/xrpc", 404, "NotFound"),
        ("/XRPC/com.atproto.sync.listRepos", 404, "NotFound"),
        ("/xrpc/", 400, "InvalidRequest"),
        ("/xrpc/not%20an%20nsid", 400, "InvalidRequest"),
        ("/xrpc/com.atproto.sync.listRepos/extra", 400, "InvalidRequest"),
        ("/xrpc/..%2F..%2Fetc", 400, "InvalidRequest"),
        ("/xrpc/com.example.nothing", 501, "MethodNotImplemented"),
    ],
)
def test_every_path_answers_the_xrpc_error_shape(world, path, status, name):
    code, headers, body = get_path(world["url"], path)
    assert code == status and headers["Content-Type"].startswith("application/json")
    error = json.loads(body)
    assert error["error"] == name and error["message"]


def test_a_trailing_slash_after_the_nsid_is_accepted(world):
    code, _headers, body = get_path(world["url"], "/xrpc/com.atproto.sync.listRepos/")
    assert code == 200 and len(json.loads(body)["repos"]) == 3


def test_responses_allow_cross_origin_reads(world):
    assert call(world["url"], SYNC + "getLatestCommit", {"did": DID})[1]["Access-Control-Allow-Origin"] == "*"


def test_the_server_sees_commits_made_elsewhere(world, tmp_path):
    shutil.copytree(world["base"] / "alice", tmp_path / "alice")
    with ServerThread(make_app([tmp_path / "alice"])) as server, Repo.open(tmp_path / "alice") as writer:
        writer.put(POST, "later", post(5))
        assert call_json(server.url, "getLatestCommit", {"did": DID})["cid"] == writer.head.encode()
        assert call(server.url, SYNC + "getRepo", {"did": DID})[2] == writer.export_car()


# -- make_app -------------------------------------------------------------------------------------------


def test_two_repositories_with_one_did_are_refused(world, tmp_path):
    shutil.copytree(world["base"] / "alice", tmp_path / "copy")
    with pytest.raises(InvalidInput, match=f"two repositories for {DID}"):
        make_app([world["base"] / "alice", tmp_path / "copy"])


def test_handles_passed_in_stay_open_after_shutdown(world):
    repo = Repo.open(world["base"] / "alice")
    with ServerThread(make_app(repo)) as server:
        assert call_json(server.url, "getRepoStatus", {"did": DID})["did"] == DID
    assert repo.head == world["repo"].head  # still usable
    repo.close()


def test_a_missing_directory_is_refused(tmp_path):
    from pypds import RepoNotFound

    with pytest.raises(RepoNotFound):
        make_app([tmp_path / "nothing"])


def test_served_car_imports_as_a_verified_copy(world, tmp_path):
    _status, _headers, body = call(world["url"], SYNC + "getRepo", {"did": DID})
    with Repo.from_car(tmp_path / "copy", body, key=world["repo"].did_key) as copy:
        assert copy.export_car() == world["repo"].export_car()
    assert CarReader(body).roots == [world["repo"].head]


def test_import_pypds_does_not_import_aiohttp_until_a_network_name_is_used():
    script = (
        "import sys, pypds\n"
        "assert 'aiohttp' not in sys.modules and 'dns' not in sys.modules\n"
        "import pypds.net.downloader, pypds.net.identity\n"  # the modules do not shadow the functions
        "assert callable(pypds.download) and callable(pypds.resolve) and callable(pypds.make_app)\n"
        "assert 'aiohttp' in sys.modules and 'make_app' in dir(pypds)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
