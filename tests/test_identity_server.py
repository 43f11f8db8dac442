"""``pypds serve --identity``: the server as PLC directory and handle host of the repositories it serves.

What the documents must say is what a resolver checks (``#atproto`` key,
``#atproto_pds`` endpoint, ``at://`` handles): every test resolves or
downloads through :mod:`pypds.net.identity` itself, with DNS pointed at a
loopback stub, so a document pypds serves is one pypds accepts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pypds import (
    IdentityOptions,
    InvalidHandle,
    InvalidInput,
    Repo,
    ResolveError,
    ResolverConfig,
    download,
    generate_signing_key,
    resolve,
)
from pypds.net.identity_server import check_public_url
from pypds.net.server import make_app, start_server

from .conftest import DID, POST, post
from .netstubs import DnsStub, ServerThread

ROOT = Path(__file__).resolve().parent.parent
HANDLE = "alice.test"
WEB_DID = "did:web:alice.web.test"


@pytest.fixture(scope="module")
def silent_dns():
    """A DNS server that never answers: nothing may wait for it."""
    with DnsStub() as stub:
        stub.drop = True
        yield stub


@pytest.fixture
def alice(tmp_path) -> Path:
    path = tmp_path / "alice"
    with Repo.create(path, DID) as repo:
        repo.put(POST, "3jui7kd54zh2y", post(1))
    return path


def lookups(url: str, dns: DnsStub, **overrides) -> ResolverConfig:
    """Every lookup at ``url``, DNS at ``dns``, loopback PDS allowed (as a local trial passes them)."""
    settings = {"plc_url": url, "web_base": url, "nameservers": (dns.address,), "allow_private_network": True}
    return ResolverConfig(**{"timeout": 10.0, **settings, **overrides})


def get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- documents and handles ------------------------------------------------------------------


def test_a_served_handle_resolves_to_the_repository_key_and_this_server(alice, silent_dns):
    app = make_app([alice], identity=IdentityOptions(handles={HANDLE: alice}))
    with ServerThread(app) as server, Repo.open(alice) as repo:
        started = time.monotonic()
        identity = resolve(HANDLE, config=lookups(server.url, silent_dns))
        assert time.monotonic() - started < 3.0, "the silent DNS server delayed the answer"
        assert (identity.did, identity.handle, identity.pds) == (DID, HANDLE, server.url)
        assert identity.did_key == repo.did_key
        assert identity.document["verificationMethod"][0]["type"] == "Multikey"


def test_a_download_by_handle_works_on_one_machine_without_waiting_for_dns(alice, silent_dns, tmp_path):
    app = make_app([alice], identity=IdentityOptions(handles={HANDLE: str(alice)}))
    with ServerThread(app) as server:
        started = time.monotonic()
        report = download(HANDLE, tmp_path / "copy", blobs=True, config=lookups(server.url, silent_dns))
        assert time.monotonic() - started < 5.0
    assert report.action == "created" and report.ok
    with Repo.open(alice) as original, Repo.open(tmp_path / "copy") as copy:
        assert copy.head == original.head
        assert copy.verify(key=original.did_key).ok


def test_resolving_the_did_reports_the_handle_served_for_it(alice, silent_dns):
    app = make_app([alice], identity=IdentityOptions(handles={HANDLE: DID}))
    with ServerThread(app) as server:
        assert resolve(DID, config=lookups(server.url, silent_dns)).handle == HANDLE


def test_a_did_web_repository_is_served_at_its_host(tmp_path, silent_dns):
    with Repo.create(tmp_path / "web", WEB_DID) as repo:
        key = repo.did_key
    app = make_app([tmp_path / "web"], identity=IdentityOptions(handles={"web.test": WEB_DID}))
    with ServerThread(app) as server:
        identity = resolve(WEB_DID, config=lookups(server.url, silent_dns))
        assert (identity.did_key, identity.handle, identity.pds) == (key, "web.test", server.url)
        assert get(server.url + "/.well-known/did.json", host="other.test")[0] == 404


def test_without_handles_the_document_claims_none(alice, silent_dns):
    with ServerThread(make_app([alice], identity=IdentityOptions())) as server:
        identity = resolve(DID, config=lookups(server.url, silent_dns))
        assert identity.handle is None and identity.document["alsoKnownAs"] == []
        with pytest.raises(ResolveError, match="did not resolve"):
            resolve(HANDLE, config=lookups(server.url, silent_dns, timeout=0.5))


@pytest.mark.parametrize("host", ["alice.test", "ALICE.test", "alice.test:2583", "alice.test."])
def test_atproto_did_answers_by_host_header(alice, host):
    with ServerThread(make_app([alice], identity=IdentityOptions(handles={HANDLE: alice}))) as server:
        assert get(server.url + "/.well-known/atproto-did", host=host) == (200, DID.encode())


def test_unknown_hosts_and_dids_are_not_found_in_the_xrpc_error_shape(alice):
    with ServerThread(make_app([alice], identity=IdentityOptions(handles={HANDLE: alice}))) as server:
        for path, host in [
            ("/.well-known/atproto-did", "bob.test"),
            ("/did:plc:ewvi7nxzyoun6zhxrhs64oiz", None),
            ("/.well-known/did.json", None),
        ]:
            status, body = get(server.url + path, host=host)
            assert status == 404 and json.loads(body)["error"] == "NotFound", path


def test_the_sync_api_is_unchanged_beside_the_identity_endpoints(alice):
    with ServerThread(make_app([alice], identity=IdentityOptions())) as server, Repo.open(alice) as repo:
        status, body = get(f"{server.url}/xrpc/com.atproto.sync.getLatestCommit?did={DID}")
        assert status == 200 and json.loads(body)["cid"] == repo.head.encode()


def test_without_identity_nothing_is_published(alice):
    with ServerThread(make_app([alice])) as server:
        assert get(server.url + "/" + DID)[0] == 404
        assert get(server.url + "/.well-known/atproto-did", host=HANDLE)[0] == 404


def test_a_given_public_url_is_the_pds_endpoint(alice, silent_dns):
    app = make_app([alice], identity=IdentityOptions(public_url="https://pds.example.com/"))
    with ServerThread(app) as server:
        document = json.loads(get(f"{server.url}/{DID}")[1])
        assert document["service"][0]["serviceEndpoint"] == "https://pds.example.com"


# -- refusals -------------------------------------------------------------------------------


def test_a_repository_without_its_key_cannot_have_a_document(alice, tmp_path):
    with Repo.open(alice) as repo:
        car = repo.export_car()
    Repo.from_car(tmp_path / "copy", car).close()  # a copy holds no key
    with pytest.raises(InvalidInput, match=r"copy \(did:plc:\S+\) holds no signing key.*without --identity"):
        make_app([tmp_path / "copy"], identity=IdentityOptions())


def test_a_key_that_did_not_sign_head_is_refused(alice):
    with Repo.open(alice, signing_key=generate_signing_key()) as repo:
        with pytest.raises(InvalidInput, match="HEAD commit is not signed by its key"):
            make_app([repo], identity=IdentityOptions())
        assert repo.head is not None, "a handle passed in stays open"


@pytest.mark.parametrize(
    ("handles", "error", "message"),
    [
        ({"alice": "x"}, InvalidHandle, "invalid handle"),
        ({HANDLE: "./nowhere"}, InvalidInput, "not a served repository"),
        ({HANDLE: "did:plc:ewvi7nxzyoun6zhxrhs64oiz"}, InvalidInput, "not a served repository"),
    ],
)
def test_bad_handles_are_refused_naming_them(alice, handles, error, message):
    with pytest.raises(error, match=message):
        make_app([alice], identity=IdentityOptions(handles=handles))


def test_a_handle_given_twice_is_refused(alice):
    with pytest.raises(InvalidInput, match="given twice"):
        make_app([alice], identity=IdentityOptions(handles={HANDLE: alice, "Alice.Test": DID}))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x.test",
        "http://",
        "http://a.test?x=1",
        "http://u@a.test",
        "http://a.test:99999",
        "http://0.0.0.0:2583",
        5,
    ],
)
def test_bad_public_urls_are_refused(url):
    with pytest.raises(InvalidInput):
        check_public_url(url)


def test_without_start_server_and_a_public_url_documents_are_a_clear_server_error(alice):
    """aiohttp's own runner does not say where it listens, so there is no PDS URL to publish."""

    async def ask() -> tuple[int, dict]:
        runner = web.AppRunner(make_app([alice], identity=IdentityOptions()))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/{DID}") as answer:
                return answer.status, await answer.json()
        finally:
            await runner.cleanup()

    status, body = asyncio.run(ask())
    assert status == 500 and "public URL is not known" in body["message"]


def test_a_wildcard_address_without_a_public_url_is_refused_before_listening(alice):
    async def start() -> None:
        await start_server(make_app([alice], identity=IdentityOptions()), "0.0.0.0", 0)

    with pytest.raises(InvalidInput, match="needs a public URL"):
        asyncio.run(start())


# -- the command line -------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pypds.cli", *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)


def test_pypds_serve_identity_and_pypds_download_work_on_one_machine(alice, tmp_path, silent_dns):
    command = [sys.executable, "-m", "pypds.cli", "serve", str(alice), "--identity", "--port", "0"]
    command += ["--handle", f"{HANDLE}={alice}"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = [server.stderr.readline() for _ in range(3)]
        url = re.search(r" at (http://127\.0\.0\.1:\d+) ", lines[0]).group(1)
        hint = f"pypds download alice.test -o COPY --plc-url {url} --web-base {url} --allow-private-network"
        assert lines[2].strip() == hint
        options = ["--plc-url", url, "--web-base", url, "--allow-private-network", "--timeout", "10"]
        started = time.monotonic()
        done = run_cli(
            "download", HANDLE, "-o", str(tmp_path / "copy"), *options, env={"PYPDS_DNS": silent_dns.address}
        )
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 8.0  # the 10 s DNS timeout is not waited out
        assert done.stdout.startswith(f"created {tmp_path / 'copy'}: {DID} (alice.test) from {url}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


def test_pypds_serve_identity_refuses_a_repository_without_a_key(alice, tmp_path):
    with Repo.open(alice) as repo:
        Repo.from_car(tmp_path / "copy", repo.export_car()).close()
    done = run_cli("serve", str(tmp_path / "copy"), "--identity", "--port", "0")
    assert done.returncode == 2
    assert "holds no signing key" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("bad", ["alice.test", "=./alice", "alice.test="])
def test_pypds_serve_handle_must_be_handle_equals_path(alice, bad):
    done = run_cli("serve", str(alice), "--handle", bad, "--port", "0")
    assert done.returncode == 2 and "expected HANDLE=PATH" in done.stderr
