"""The scripts in ``examples/`` run as their docstrings say, each as a user would run it (a subprocess).

``backup.py`` downloads from ``pypds serve --identity`` on loopback (DNS
pointed at a stub that never answers); ``embed.py`` is driven over HTTP;
``migrate.py`` and ``quickstart.py`` work on local directories.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pypds import CID, Repo, verify_car

from .conftest import DID, POST, post
from .netstubs import DnsStub

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NEW_DID = "did:plc:vwzwgnygau7ed7b7wt5ux7y2"
LIKE = "app.bsky.feed.like"


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(EXAMPLES / name), *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)


def test_quickstart_runs_and_its_copy_agrees():
    done = run_example("quickstart.py")
    assert done.returncode == 0, done.stderr
    assert "heads agree: True; MST roots agree: True" in done.stdout


# -- backup.py --------------------------------------------------------------------------------


def image_post(repo: Repo, rkey: str, data: bytes) -> CID:
    ref = repo.put_blob(data, "image/png")
    image = {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": ref.to_record()}]}
    repo.put(POST, rkey, {**post(0), "embed": image})
    return ref.cid


@pytest.fixture
def served(tmp_path):
    """alice.test: a repository with a blob, served by `pypds serve --identity`; lookups point at it."""
    source = tmp_path / "alice"
    with Repo.create(source, DID) as repo:
        for i in range(5):
            repo.put(POST, f"3jui7kd54zh{i}a", post(i))
        image_post(repo, "3jui7kd54zz2a", b"first image " * 100)
    command = [sys.executable, "-m", "pypds.cli", "serve", str(source), "--identity", "--port", "0"]
    server = subprocess.Popen(
        [*command, "--handle", f"alice.test={source}"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        url = re.search(r" at (http://127\.0\.0\.1:\d+) ", server.stderr.readline()).group(1)
        with DnsStub() as dns:
            dns.drop = True  # backup must not wait for a DNS answer that never comes
            options = ["--plc-url", url, "--web-base", url, "--allow-private-network"]
            yield source, options, {"PYPDS_DNS": dns.address}, dns
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


def test_backup_downloads_keeps_current_and_verifies(served, tmp_path):
    source, options, env, _dns = served
    backup = str(tmp_path / "backup")
    first = run_example("backup.py", "alice.test", backup, *options, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.match(r"created: alice\.test at rev \w+, 1 new blobs\nverify: OK; 0 referenced", first.stdout)

    with Repo.open(source) as repo:
        repo.put(POST, "3jui7kd54zz3a", post(9))
        new_blob = image_post(repo, "3jui7kd54zz4a", b"second image " * 100)
        head = repo.head
    second = run_example("backup.py", "alice.test", backup, *options, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.startswith("updated: alice.test") and ", 1 new blobs" in second.stdout
    with Repo.open(backup) as copy:
        assert copy.head == head and copy.blob(new_blob) == b"second image " * 100

    third = run_example("backup.py", "alice.test", backup, *options, env=env)
    assert third.returncode == 0 and third.stdout.startswith("unchanged: alice.test")


def test_backup_of_an_unknown_account_fails_and_leaves_nothing(served, tmp_path):
    _source, options, env, dns = served
    dns.drop = False  # NXDOMAIN at once, like a real resolver for a name nobody published
    done = run_example("backup.py", "bob.test", str(tmp_path / "bob"), *options, env=env)
    assert done.returncode == 1
    assert done.stdout.startswith("backup failed, the copy is as it was: ResolveError: handle bob.test")
    assert not (tmp_path / "bob").exists()


# -- migrate.py -------------------------------------------------------------------------------


@pytest.fixture
def old_account(tmp_path) -> tuple[Path, CID]:
    path = tmp_path / "old"
    with Repo.create(path, DID) as repo:
        for i in range(4):
            repo.put(POST, f"3jui7kd54zh{i}a", post(i))
        blob = image_post(repo, "3jui7kd54zz2a", b"picture " * 200)
        subject = {"uri": f"at://{DID}/{POST}/3jui7kd54zh0a", "cid": repo.find_cid(POST, "3jui7kd54zh0a")}
        repo.put(LIKE, "3jui7kd54zz5a", {"$type": LIKE, "subject": subject, "createdAt": "2024-01-01T00:00:00Z"})
        repo.put("app.bsky.feed.repost", "3jui7kd54zz6a", {"$type": "app.bsky.feed.repost", "subject": subject})
    return path, blob


def test_migrate_copies_transforms_in_batches_and_compares(old_account, tmp_path):
    source, blob = old_account
    target = tmp_path / "new"
    args = [str(source), str(target), "--did", NEW_DID, "--batch", "2", "--skip", "app.bsky.feed.repost"]
    done = run_example("migrate.py", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote 6 records in 3 commit(s) to {target} ({NEW_DID})" in done.stdout
    assert done.stdout.endswith("compare: the target matches the transformed source\n")
    with Repo.open(target) as new, Repo.open(source) as old:
        assert new.did == NEW_DID and new.verify().ok
        assert new.collections() == [LIKE, POST]
        like = new.find(LIKE, "3jui7kd54zz5a")
        assert like["subject"]["uri"] == f"at://{NEW_DID}/{POST}/3jui7kd54zh0a"
        assert like["subject"]["cid"] == old.find_cid(POST, "3jui7kd54zh0a")
        assert new.find(POST, "3jui7kd54zh1a") == old.find(POST, "3jui7kd54zh1a")
        assert new.blob(blob) == b"picture " * 200 and new.missing_blobs() == []

    again = run_example("migrate.py", *args)  # a rerun writes nothing and still compares
    assert again.returncode == 0 and "wrote 0 records in 0 commit(s)" in again.stdout


def test_migrate_reports_a_target_that_differs(old_account, tmp_path):
    source, _blob = old_account
    target = tmp_path / "new"
    assert run_example("migrate.py", str(source), str(target), "--did", NEW_DID).returncode == 0
    with Repo.open(target) as new:
        new.put(POST, "3jui7kd54zh1a", post(1, "edited in the target"))
    with Repo.open(source) as old:  # a change the next run copies
        old.put(POST, "3jui7kd54zh3a", post(3, "edited in the source"))
    done = run_example("migrate.py", str(source), str(target), "--did", NEW_DID)
    assert done.returncode == 0, done.stdout
    assert "wrote 2 records in 1 commit(s)" in done.stdout  # the target's edit is overwritten, the source's copied

    with Repo.open(target) as new:
        new.put("com.example.extra", "3jui7kd54zh9a", {"$type": "com.example.extra"})
    done = run_example("migrate.py", str(source), str(target), "--did", NEW_DID)
    assert done.returncode == 1
    assert "the target holds 8 records, expected 7" in done.stdout and "DIFFERENCES" in done.stdout


# -- embed.py ---------------------------------------------------------------------------------


def call(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_embed(path: Path) -> tuple[subprocess.Popen, str, str, str]:
    command = [sys.executable, str(EXAMPLES / "embed.py"), str(path), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    line = process.stderr.readline()
    found = re.search(r" at (http://127\.0\.0\.1:\d+) \((did:\S+), (did:key:\w+)\)", line)
    if found is None:
        process.kill()
        raise AssertionError(f"embed.py did not start: {line}{process.stderr.read()}")
    return process, *found.groups()


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(10)


def test_embed_keeps_bookmarks_as_signed_records_and_serves_them(tmp_path):
    process, url, did, did_key = start_embed(tmp_path / "bookmarks")
    try:
        added = []
        for title in ("AT Protocol", "pypds"):
            body = json.dumps({"url": "https://atproto.com", "title": title}).encode()
            status, answer = call("POST", url + "/bookmarks", body)
            assert status == 201
            added.append(json.loads(answer)["uri"])
        assert all(uri.startswith(f"at://{did}/com.example.bookmark/") for uri in added)
        for bad in (b"[]", b"{", b'{"url": "javascript:alert(1)"}', b'{"url": "https://a.test", "title": 5}'):
            assert call("POST", url + "/bookmarks", bad)[0] == 400, bad

        status, answer = call("GET", url + "/bookmarks")
        listed = json.loads(answer)
        assert status == 200 and [b["title"] for b in listed] == ["pypds", "AT Protocol"]  # newest first
        assert call("DELETE", url + "/bookmarks/" + listed[0]["rkey"])[0] == 204
        assert call("DELETE", url + "/bookmarks/" + listed[0]["rkey"])[0] == 404
        assert call("DELETE", url + "/bookmarks/..")[0] in (400, 404)

        status, car = call("GET", f"{url}/xrpc/com.atproto.sync.getRepo?did={did}")
        assert status == 200
        report = verify_car(car, did=did, key=did_key)  # the sync API serves the same data, signed
        assert report.ok, str(report)
    finally:
        assert stop(process) == 0

    process, url, _did, _key = start_embed(tmp_path / "bookmarks")  # the data outlives the process
    try:
        assert [b["title"] for b in json.loads(call("GET", url + "/bookmarks")[1])] == ["AT Protocol"]
    finally:
        stop(process)
