"""The everyday commands: load, dump, rm of several keys, revert, --commit/--ref on reads, gc,
resolve, blob missing/export and blob types. Conventions as in ``test_cli.py``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from pypds import Repo, cid_for_raw, to_json
from pypds.cli import common as _common

from . import test_cli
from .conftest import DID, POST, post
from .netstubs import DnsStub, WebStub, did_document
from .test_cli import LIKE, assert_error, feed_stdin, run, run_binary, run_json

world, alice, car = test_cli.world, test_cli.alice, test_cli.car  # the same fixtures


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def jsonl(*objects: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


@pytest.fixture
def empty(tmp_path) -> Path:
    Repo.create(tmp_path / "empty", "did:plc:ewvi7nxzyoun6zhxrhs64oiz").close()
    return tmp_path / "empty"


# -- dump and load ----------------------------------------------------------------------------


def test_dump_prints_every_record_as_json_lines(capsys, car, alice):
    code, out, err = run(capsys, "dump", car)
    assert code == 0 and err == ""
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 42 and [row["path"] for row in rows] == sorted(row["path"] for row in rows)
    with Repo.open(alice) as repo:
        for row in rows:
            collection, rkey = row["path"].split("/")
            assert row["cid"] == repo.find_cid(collection, rkey).encode()
            assert row["value"] == to_json(repo.find(collection, rkey))
    code, out, _ = run(capsys, "dump", alice, LIKE)
    assert [json.loads(line)["path"] for line in out.splitlines()] == [f"{LIKE}/l1", f"{LIKE}/l2"]
    assert "no collection com.example.none" in assert_error(capsys, 2, "dump", alice, "com.example.none")


def test_dump_then_load_round_trips(capsys, monkeypatch, car, alice, empty):
    _code, out, _ = run(capsys, "dump", car)
    feed_stdin(monkeypatch, out.encode())
    info = run_json(capsys, "load", empty, "-")
    assert (info["records"], info["deleted"], len(info["commits"])) == (42, 0, 1)
    with Repo.open(empty) as copy, Repo.open(alice) as source:
        assert copy.commit().data == source.commit().data
        assert info["head"] == copy.head.encode() and info["rev"] == copy.rev


def test_unpack_then_load_round_trips_in_batches(capsys, car, alice, empty, tmp_path):
    assert run(capsys, "unpack", car, "-o", tmp_path / "records")[0] == 0
    code, out, err = run(capsys, "load", empty, tmp_path / "records", "--batch-size", "10")
    assert code == 0 and err == ""
    assert out.startswith(f"loaded 42 records, deleted 0, in 5 commits into {empty}\nhead ")
    with Repo.open(empty) as copy, Repo.open(alice) as source:
        assert copy.commit().data == source.commit().data


def test_load_from_a_file_with_deletes(capsys, alice, tmp_path):
    source = tmp_path / "changes.jsonl"
    source.write_text(
        jsonl(
            {"collection": POST, "rkey": "new", "value": to_json(post(1))},
            {"delete": f"{POST}/p000"},
            {"delete": f"{LIKE}/l1"},
        )
    )
    info = run_json(capsys, "load", alice, source)
    assert (info["records"], info["deleted"]) == (1, 2)
    with Repo.open(alice) as repo:
        assert repo.find(POST, "new") == post(1) and repo.find(POST, "p000") is None


def test_a_bad_line_stops_the_load_with_its_number_and_writes_nothing(capsys, monkeypatch, alice, tmp_path):
    with Repo.open(alice) as repo:
        head = repo.head
    source = tmp_path / "in.jsonl"
    source.write_text(jsonl({"path": f"{POST}/ok", "value": to_json(post(1))}, {"delete": f"{POST}/absent"}))
    err = assert_error(capsys, 2, "load", alice, source, "--batch-size", "1")
    assert err == f"pypds: {source} line 2: no record at {POST}/absent to delete\n"
    feed_stdin(monkeypatch, b'{"path": "app.bsky.feed.post/x", "value": {"n": 1.5}}\n')
    assert "stdin line 1: floats" in assert_error(capsys, 2, "load", alice, "-")
    with Repo.open(alice) as repo:
        assert repo.head == head
    assert "no such file" in assert_error(capsys, 2, "load", alice, tmp_path / "absent.jsonl")
    assert "not a repository directory" in assert_error(capsys, 2, "load", source, source)


def test_load_shows_progress_on_a_terminal(capsys, monkeypatch, empty, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(jsonl(*({"path": f"{POST}/r{i}", "value": to_json(post(i))} for i in range(30))))
    shown = []
    real = _common.Progress.stages

    def spy(self, verb):
        shown.append(self.enabled)
        return real(self, verb)

    monkeypatch.setattr(_common.Progress, "stages", spy)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert run(capsys, "load", empty, source, "--batch-size", "7")[0] == 0
    assert run(capsys, "load", empty, source, "-q")[0] == 0
    assert shown == [True, False]


# -- rm, revert and refs ------------------------------------------------------------------------


def test_rm_deletes_several_records_in_one_commit(capsys, alice):
    with Repo.open(alice) as repo:
        head = repo.head
    info = run_json(capsys, "rm", alice, POST, "p001", "p002", "p001")
    assert info["paths"] == [f"{POST}/p001", f"{POST}/p002"]
    with Repo.open(alice) as repo:
        assert repo.find(POST, "p001") is None and repo.find(POST, "p002") is None
        assert {c.path for c in repo.diff(head)} == {f"{POST}/p001", f"{POST}/p002"}  # one commit after head
        assert info["commit"] == repo.head.encode()
        head = repo.head
    assert "no record at app.bsky.feed.post/p001" in assert_error(capsys, 2, "rm", alice, POST, "p003", "p001")
    with Repo.open(alice) as repo:
        assert repo.head == head and repo.find(POST, "p003") is not None


def test_revert_writes_a_new_commit_with_the_old_records(capsys, alice):
    with Repo.open(alice) as repo:
        start, head = repo.ref("start"), repo.head
    code, out, _ = run(capsys, "revert", alice, "start")
    assert code == 0 and out.startswith(f"reverted {alice} to the records of {start.encode()}: 0 created, 0 updated")
    assert "42 deleted" in out
    with Repo.open(alice) as repo:
        assert repo.checkout().root == repo.checkout(start).root and repo.head not in (start, head)
        assert out.splitlines()[1] == f"new commit {repo.head.encode()}  rev {repo.rev}"
    info = run_json(capsys, "revert", alice, head.encode())
    assert (info["created"], info["commit"] is not None) == (42, True)
    info = run_json(capsys, "revert", alice, "HEAD")
    assert info["commit"] is None
    assert "already has the records" in run(capsys, "revert", alice, head.encode())[1]
    assert "neither HEAD, a ref" in assert_error(capsys, 2, "revert", alice, "nope")


def test_a_ref_named_head_is_refused(capsys, alice):
    assert "cannot be named HEAD" in assert_error(capsys, 2, "ref", "set", alice, "HEAD")


def test_read_commands_take_commit_or_ref(capsys, alice, tmp_path):
    with Repo.open(alice) as repo:
        start = repo.ref("start")
        repo.set_ref("later", repo.head)
        repo.put(POST, "zzz", post(7))
        repo.export_car(tmp_path / "start.car", commit=start)
        repo.export_car(tmp_path / "later.car", commit="later")
    for old, options in ((tmp_path / "start.car", ["--ref", "start"]), (tmp_path / "later.car", ["--commit", "later"])):
        for command in (["ls"], ["collections"], ["dump"], ["mst", "--full-cids"], ["inspect"]):
            expected = run(capsys, *command[:1], old, *command[1:])
            got = run(capsys, *command[:1], alice, *command[1:], *options)
            if command[0] == "inspect":  # the summary of the commit: all but the source and repository rows
                keep = ("commit", "rev", "mst root", "records", "blocks", "  ")
                expected = [" ".join(line.split()) for line in expected[1].splitlines() if line.startswith(keep)]
                got = [" ".join(line.split()) for line in got[1].splitlines() if line.startswith(keep)]
            assert got == expected, command
        assert run(capsys, "unpack", alice, "-o", tmp_path / f"u-{old.stem}", *options)[0] == 0
        assert run(capsys, "unpack", old, "-o", tmp_path / f"v-{old.stem}")[0] == 0
        for file in (tmp_path / f"v-{old.stem}").rglob("*.json"):
            assert (tmp_path / f"u-{old.stem}" / file.relative_to(tmp_path / f"v-{old.stem}")).read_text() == (
                file.read_text()
            )
        assert run_binary("export", alice, *options) == (0, old.read_bytes())
    assert "no record at app.bsky.feed.post/zzz" in assert_error(capsys, 2, "get", alice, POST, "zzz", "--ref", "later")
    assert run(capsys, "get", alice, POST, "p001", "--commit", start.encode())[0] == 2  # no posts at start
    assert run(capsys, "get", alice, POST, "zzz", "--commit", "HEAD")[0] == 0
    assert "no ref named 'nope'" in assert_error(capsys, 2, "ls", alice, "--ref", "nope")
    assert "not both" in assert_error(capsys, 2, "ls", alice, "--ref", "start", "--commit", "HEAD")
    assert "no commit" in assert_error(capsys, 2, "dump", tmp_path / "later.car", "--commit", start.encode())


# -- gc, inspect ---------------------------------------------------------------------------------


def test_gc_reports_and_gives_space_back(capsys, alice):
    with Repo.open(alice) as repo:
        repo.delete_ref("start")
        for version in range(3):
            with repo.batch() as batch:
                for i in range(40):
                    batch.put(POST, f"p{i:03d}", post(i, f"version {version} {i} " + "y" * 3000))
    dry = run_json(capsys, "gc", alice, "--dry-run")
    assert dry["dryRun"] and dry["blocks"] > 80 and dry["dbBytesBefore"] == dry["dbBytesAfter"]
    code, out, _ = run(capsys, "gc", alice)
    assert code == 0 and out.startswith(f"blocks  {dry['blocks']} removed (")
    assert "(vacuumed)" in out.splitlines()[2]
    again = run_json(capsys, "gc", alice, "--no-vacuum")
    assert again["blocks"] == 0 and not again["vacuumed"]
    _code, out, _ = run(capsys, "inspect", alice)
    assert "every commit kept" not in out
    assert "\nstored blocks " in out and "(this commit's)\n" in out


# -- blobs ---------------------------------------------------------------------------------------


def test_blob_ls_missing_and_export(capsys, alice, tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG cat")
    cid = run_json(capsys, "blob", "put", alice, image)["ref"]["$link"]
    absent = cid_for_raw(b"not stored")
    with Repo.open(alice) as repo:
        reference = {"$type": "blob", "ref": absent, "mimeType": "image/gif", "size": 9}
        repo.put(POST, "img", {"$type": POST, "b": reference})
        untyped = cid_for_raw(b"downloaded")
        with repo._state.blobs.receive(untyped) as incoming:
            incoming.write(b"downloaded")
            incoming.finish()
    listed = {row["cid"]: row for row in run_json(capsys, "blob", "ls", alice)}
    assert listed[cid]["mimeType"] == "image/png" and listed[untyped.encode()]["mimeType"] is None
    assert f"{untyped.encode()}  10  unknown" in run(capsys, "blob", "ls", alice)[1]
    assert run_json(capsys, "blob", "missing", alice) == [absent.encode()]
    assert run(capsys, "blob", "missing", alice)[1] == absent.encode() + "\n"
    exported = run_json(capsys, "blob", "export", alice, tmp_path / "out")
    out = tmp_path / "out"
    assert {row["file"] for row in exported} == {str(out / f"{cid}.png"), str(out / untyped.encode())}
    assert (tmp_path / "out" / f"{cid}.png").read_bytes() == image.read_bytes()
    assert run(capsys, "blob", "export", alice, tmp_path / "out")[1] == f"exported 2 blobs to {tmp_path / 'out'}\n"


# -- resolve -------------------------------------------------------------------------------------


@pytest.fixture
def identity_stubs():
    with WebStub() as web, DnsStub() as dns:
        key = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
        web.plc[DID] = did_document(DID, key=key, pds="https://pds.example.com", handle="alice.test")
        yield web, dns, key


def _resolver_args(web: WebStub, dns: DnsStub) -> list[str]:
    return ["--plc-url", web.url, "--web-base", web.url, "--dns", dns.address, "--timeout", "2"]


def test_resolve_a_handle_and_a_did(capsys, identity_stubs):
    web, dns, key = identity_stubs
    web.handles["alice.test"] = DID
    code, out, err = run(capsys, "resolve", "alice.test", *_resolver_args(web, dns))
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"did          {DID}",
        "handle       alice.test (verified: it resolves to this DID and the document claims it)",
        "pds          https://pds.example.com",
        f"signing key  {key}",
    ]
    info = run_json(capsys, "resolve", DID, *_resolver_args(web, dns))
    assert (info["did"], info["handle"], info["handleVerified"], info["signingKey"]) == (DID, "alice.test", True, key)
    assert info["document"] == web.plc[DID] and info["claimedHandles"] == ["alice.test"]


def test_resolve_says_when_a_claimed_handle_does_not_point_back(capsys, identity_stubs):
    web, dns, _key = identity_stubs
    web.handles["alice.test"] = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    _code, out, _ = run(capsys, "resolve", DID, *_resolver_args(web, dns))
    assert "alice.test claimed, NOT verified" in out
    info = run_json(capsys, "resolve", DID, *_resolver_args(web, dns))
    assert info["handle"] is None and not info["handleVerified"] and info["claimedHandles"] == ["alice.test"]
    err = assert_error(capsys, 3, "resolve", "nobody.test", *_resolver_args(web, dns))
    assert "did not resolve" in err
    assert "invalid handle" in assert_error(capsys, 2, "resolve", "not a handle", *_resolver_args(web, dns))
