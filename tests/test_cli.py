"""The console script: every command and subcommand run through ``main()``, good input and bad.

Each test checks the exit status (0 ok, 1 check failed, 2 usage or input
error), that ``--json`` output parses, and that errors are one line
``pypds: ...`` on stderr with nothing on stdout.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import click
import pytest

from pypds import CarReader, CarWriter, Repo, cid_for_cbor, load_signing_key, to_json
from pypds.cli import cli, main
from pypds.cli import common as _common

from .conftest import DID, POST, post

LIKE = "app.bsky.feed.like"
OTHER_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
KEY_HEX = "11" * 32
DID_KEY = load_signing_key(KEY_HEX).did_key
WRONG_KEY = load_signing_key("22" * 32).did_key


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args: str):
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_error(capsys, code: int, *args: str) -> str:
    """Run a failing command: the status, one line on stderr, nothing on stdout."""
    got, out, err = run(capsys, *args)
    assert got == code, (got, out, err)
    assert out == ""
    assert err.startswith("pypds: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def run_binary(*args: str) -> tuple[int, bytes]:
    """Run a command whose stdout is binary (a CAR, a blob); returns the status and the bytes."""
    buffer = io.BytesIO()
    saved, sys.stdout = sys.stdout, io.TextIOWrapper(buffer, write_through=True)
    try:
        code = main([str(a) for a in args])
    finally:
        sys.stdout.detach()
        sys.stdout = saved
    return code, buffer.getvalue()


def feed_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A repository (made with ``pypds init``) with 40 posts and 2 likes, a ref, and its CAR."""
    base = tmp_path_factory.mktemp("cli")
    assert main(["init", str(base / "alice"), "--did", DID, "--key", KEY_HEX]) == 0
    with Repo.open(base / "alice") as repo:
        repo.set_ref("start", repo.head)
        with repo.batch() as batch:
            for i in range(40):
                batch.put(POST, f"p{i:03d}", post(i))
            batch.put(LIKE, "l1", {"$type": LIKE, "subject": {"cid": repo.head, "uri": "at://x"}})
            batch.put(LIKE, "l2", {"$type": LIKE, "blob": b"\x00\x01"})
        repo.export_car(base / "alice.car")
    return base


@pytest.fixture
def alice(world, tmp_path) -> Path:
    """A private copy of the world's repository, free to change."""
    target = tmp_path / "alice"
    shutil.copytree(world / "alice", target)
    return target


@pytest.fixture
def car(world) -> Path:
    return world / "alice.car"


# -- help, version, usage -------------------------------------------------------------


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()):
    for name in group.list_commands(click.Context(group)):
        command = group.get_command(click.Context(group), name)
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))


def test_every_command_has_help_with_an_example(capsys):
    paths = list(_command_paths(cli))
    # 28 commands (serve, resolve, download, push, follow, mirror, archive-status included),
    # ref ls|set|rm, blob put|get|ls|missing|export
    assert len(paths) == 36
    for path in paths:
        code, out, err = run(capsys, *path, "--help")
        assert code == 0 and err == ""
        assert "Example" in out, path
        assert f"pypds {' '.join(path[:1])}" in out


def test_no_arguments_prints_help_and_version_works(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "Commands:" in out and "Exit status" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("pypds ")


@pytest.mark.parametrize(
    "args",
    [
        ["nosuch"],
        ["ls"],
        ["get", "x"],
        ["ls", "--bogus", "x"],
        ["init", "x"],
        ["ref", "set"],
        ["ls", "x", "--limit", "-1"],
    ],
)
def test_usage_errors_exit_2_in_one_line(capsys, args):
    err = assert_error(capsys, 2, *args)
    assert "--help" in err


# -- init -----------------------------------------------------------------------------------


def test_init_generates_or_stores_keys(capsys, tmp_path):
    info = run_json(capsys, "init", tmp_path / "a", "--did", DID)
    assert info["did"] == DID and info["didKey"].startswith("did:key:zQ3s")  # k256
    assert info["head"].startswith("bafyrei") and len(info["rev"]) == 13

    info = run_json(capsys, "init", tmp_path / "b", "--did", DID, "--key", "p256")
    assert info["didKey"].startswith("did:key:zDn")  # P-256

    info = run_json(capsys, "init", tmp_path / "c", "--did", DID, "--key", KEY_HEX)
    assert info["didKey"] == DID_KEY
    with Repo.open(tmp_path / "c") as repo:  # stored: writes need no key
        assert repo.did_key == DID_KEY

    code, out, _ = run(capsys, "init", tmp_path / "d", "--did", DID, "--key", "33" * 32, "--curve", "p256")
    assert code == 0 and "did:key:zDn" in out and out.splitlines()[0].startswith("path    ")


def test_init_refuses_bad_input(capsys, tmp_path, alice):
    assert "already exists" in assert_error(capsys, 2, "init", alice, "--did", DID)
    assert "--did" in assert_error(capsys, 2, "init", tmp_path / "x", "--did", "not-a-did")
    assert "hex" in assert_error(capsys, 2, "init", tmp_path / "x", "--did", DID, "--key", "zz")
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("")
    assert_error(capsys, 2, "init", tmp_path / "file", "--did", DID)


# -- records: put, get, ls, collections, rm ----------------------------------------------


def test_put_from_file_and_stdin_then_get(capsys, monkeypatch, alice, tmp_path):
    record = {"$type": POST, "text": "héllo", "createdAt": "2024-01-01T00:00:00Z", "n": 3}
    source = tmp_path / "post.json"
    source.write_text(json.dumps(record))
    info = run_json(capsys, "put", alice, POST, "new1", source)
    assert info["path"] == f"{POST}/new1" and info["cid"].startswith("bafyrei")
    with Repo.open(alice) as repo:
        assert repo.find(POST, "new1") == record and repo.head.encode() == info["commit"]

    linked = {"$type": POST, "embed": {"$link": info["cid"]}, "raw": {"$bytes": "AAE"}}
    feed_stdin(monkeypatch, json.dumps(linked).encode())
    code, out, _ = run(capsys, "put", alice, POST, "new2", "-")
    assert code == 0 and out.startswith("path    app.bsky.feed.post/new2\ncid     bafyrei")

    code, out, _ = run(capsys, "get", alice, POST, "new2")
    assert code == 0 and json.loads(out) == linked and "héllo" not in out
    code, out, _ = run(capsys, "get", alice, POST, "new1")
    assert "héllo" in out  # ensure_ascii=False
    wrapped = run_json(capsys, "get", alice, POST, "new1")
    assert wrapped == {"path": f"{POST}/new1", "cid": info["cid"], "value": record}


def test_get_matches_the_library(capsys, car):
    with Repo.from_car(car.parent / "tmp-get", car) as repo:
        expected = to_json(repo.find(LIKE, "l1"))
    shutil.rmtree(car.parent / "tmp-get")
    code, out, _ = run(capsys, "get", car, LIKE, "l1")
    assert code == 0 and json.loads(out) == expected
    assert json.loads(run(capsys, "get", car, LIKE, "l2")[1])["blob"] == {"$bytes": "AAE"}


def test_ls_lists_paths_and_cids_aligned(capsys, alice):
    code, out, _ = run(capsys, "ls", alice)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 42
    assert lines[0].startswith(f"{LIKE}/l1  ") and lines[-1].startswith(f"{POST}/p039  ")
    assert len({line.index("bafyrei") for line in lines}) == 1  # one CID column
    rows = run_json(capsys, "ls", alice, POST)
    assert len(rows) == 40 and rows[0] == {**rows[0], "collection": POST, "rkey": "p000", "path": f"{POST}/p000"}
    with Repo.open(alice) as repo:
        assert [(r["rkey"], r["cid"]) for r in rows] == [(k, c.encode()) for k, c in repo.list(POST)]
    page = run_json(capsys, "ls", alice, POST, "--limit", "2", "--cursor", "p010")
    assert [r["rkey"] for r in page] == ["p011", "p012"]
    assert [r["rkey"] for r in run_json(capsys, "ls", alice, POST, "--reverse", "--limit", "1")] == ["p039"]
    assert len(run_json(capsys, "ls", alice, "--limit", "3")) == 3


def test_ls_errors(capsys, alice):
    err = assert_error(capsys, 2, "ls", alice, "app.bsky.graph.follow")
    assert "no collection app.bsky.graph.follow" in err and POST in err
    assert "NSID" in assert_error(capsys, 2, "ls", alice, "not..an.nsid")
    assert "--cursor needs a COLLECTION" in assert_error(capsys, 2, "ls", alice, "--cursor", "x")


def test_collections(capsys, car):
    assert run_json(capsys, "collections", car) == [
        {"collection": LIKE, "records": 2},
        {"collection": POST, "records": 40},
    ]
    assert run(capsys, "collections", car)[1] == f"{LIKE}  2\n{POST}  40\n"


def test_rm_and_record_errors(capsys, monkeypatch, alice, tmp_path):
    info = run_json(capsys, "rm", alice, POST, "p000")
    assert info["paths"] == [f"{POST}/p000"]
    assert "no record at app.bsky.feed.post/p000" in assert_error(capsys, 2, "get", alice, POST, "p000")
    assert assert_error(capsys, 2, "rm", alice, POST, "p000")
    assert "record key" in assert_error(capsys, 2, "get", alice, POST, "..")

    bad = tmp_path / "bad.json"
    cases = {
        '{"$type": "x", "a": ': "invalid JSON",
        '{"$type": "x", "a": 1.5}': "float",
        '{"$type": "x", "a": 1, "a": 2}': "duplicate key 'a'",
        '["not", "an", "object"]': "object",
        '{"text": "no type"}': "$type",
        '{"$type": "x", "l": {"$link": "nope"}}': "$link",
        '{"$type": "x", "a": ' + "[" * 100_000: "nested too deeply",
    }
    for text, message in cases.items():
        bad.write_text(text)
        assert message in assert_error(capsys, 2, "put", alice, POST, "x", bad), text
    bad.write_bytes(b"\xff\xfe")
    assert "UTF-8" in assert_error(capsys, 2, "put", alice, POST, "x", bad)
    assert "no such file" in assert_error(capsys, 2, "put", alice, POST, "x", tmp_path / "missing.json")
    feed_stdin(monkeypatch, b"{oops")
    assert "stdin: invalid JSON" in assert_error(capsys, 2, "put", alice, POST, "x", "-")


def test_writes_to_a_keyless_repo_need_a_signing_key(capsys, car, tmp_path, monkeypatch):
    target = tmp_path / "copy"
    assert run(capsys, "import", target, car)[0] == 0
    record = tmp_path / "r.json"
    record.write_text(json.dumps(post(1)))
    assert "--signing-key" in assert_error(capsys, 2, "put", target, POST, "x", record)
    assert run(capsys, "put", target, POST, "x", record, "--signing-key", KEY_HEX)[0] == 0
    monkeypatch.setenv("PYPDS_SIGNING_KEY", KEY_HEX)
    assert run(capsys, "rm", target, POST, "x")[0] == 0
    assert "--signing-key" in assert_error(capsys, 2, "rm", target, POST, "p001", "--signing-key", "abc")


# -- import / export ----------------------------------------------------------------------


def test_export_to_file_and_stdout(capsys, alice, tmp_path):
    out = tmp_path / "out.car"
    code, text, _ = run(capsys, "export", alice, "-o", out)
    assert code == 0 and text.startswith("exported bafyrei") and str(out) in text
    with Repo.open(alice) as repo:
        assert out.read_bytes() == repo.export_car()
        start = repo.ref("start")
    assert run_binary("export", alice) == (0, out.read_bytes())
    info = run_json(capsys, "export", alice, "-o", tmp_path / "old.car", "--commit", "start")
    assert info["commit"] == start.encode() and info["bytes"] == (tmp_path / "old.car").stat().st_size
    assert "--json needs -o" in assert_error(capsys, 2, "export", alice, "--json")
    assert "does not exist" in assert_error(capsys, 2, "export", alice, "-o", tmp_path / "no" / "x.car")
    assert "neither HEAD" in assert_error(capsys, 2, "export", alice, "-o", out, "--commit", "nope")


def test_import_creates_or_updates(capsys, monkeypatch, car, alice, tmp_path):
    info = run_json(capsys, "import", tmp_path / "new", car, "--key", DID_KEY)
    assert info["created"] and info["did"] == DID and info["signature"] == "valid"
    assert info["bytes"] == car.stat().st_size
    with Repo.open(tmp_path / "new") as repo:
        assert repo.export_car() == car.read_bytes()

    assert run(capsys, "rm", alice, POST, "p005")[0] == 0
    feed_stdin(monkeypatch, car.read_bytes())
    code, out, _ = run(capsys, "import", alice, "-")
    assert code == 0 and out.startswith(f"updated {alice}: imported ")
    with Repo.open(alice) as repo:
        assert repo.find(POST, "p005") == post(5)


def test_import_failures(capsys, car, tmp_path):
    err = assert_error(capsys, 1, "import", tmp_path / "x", car, "--key", WRONG_KEY)
    assert "signature does not verify" in err and not (tmp_path / "x").exists()
    assert "did:key" in assert_error(capsys, 2, "import", tmp_path / "x", car, "--key", "did:key:nope")
    assert "no such file" in assert_error(capsys, 2, "import", tmp_path / "x", tmp_path / "missing.car")
    other = tmp_path / "other"
    assert run(capsys, "init", other, "--did", OTHER_DID)[0] == 0
    assert "not did:plc:ewvi7nxzyoun6zhxrhs64oiz" in assert_error(capsys, 1, "import", other, car)
    bad = tmp_path / "bad.car"
    bad.write_bytes(b"\x05garbage")
    assert_error(capsys, 1, "import", tmp_path / "y", bad)
    assert not (tmp_path / "y").exists()


# -- read-only commands on a CAR or stdin ---------------------------------------------------


def test_read_commands_give_the_same_answer_for_dir_car_and_stdin(capsys, monkeypatch, world, car):
    for command, *rest in (["ls"], ["collections"], ["get", POST, "p007"], ["mst"]):
        by_dir = run(capsys, command, world / "alice", *rest)
        by_car = run(capsys, command, car, *rest)
        feed_stdin(monkeypatch, car.read_bytes())
        by_stdin = run(capsys, command, "-", *rest)
        assert by_dir[0] == by_car[0] == by_stdin[0] == 0
        assert by_dir[1] == by_car[1] == by_stdin[1] != ""


def test_a_tampered_car_fails_read_commands_with_status_1(capsys, car, tmp_path):
    data = car.read_bytes()
    spot = data.index(b"post number 7")
    tampered = tmp_path / "tampered.car"
    tampered.write_bytes(data[:spot] + b"P" + data[spot + 1 :])
    for command in (["ls"], ["inspect"], ["mst"], ["get", POST, "p001"], ["collections"]):
        err = assert_error(capsys, 1, command[0], tampered, *command[1:])
        assert "do not hash to its CID" in err
    truncated = tmp_path / "truncated.car"
    truncated.write_bytes(data[:-10])
    assert "truncated" in assert_error(capsys, 1, "ls", truncated)


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_car_and_repo(capsys, car, alice):
    info = run_json(capsys, "inspect", car)
    assert info["did"] == DID and info["kind"] == "car" and info["carBytes"] == car.stat().st_size
    assert info["records"] == 42 and info["collections"] == {LIKE: 2, POST: 40}
    assert info["signature"] == {"status": "not checked", "key": None}
    blocks = info["blocks"]
    assert blocks["commit"]["count"] == 1 and blocks["records"]["count"] == 42
    assert blocks["total"]["count"] == 1 + blocks["mstNodes"]["count"] + 42
    with Repo.open(alice) as repo:
        commit = repo.commit()
        assert info["commit"] == repo.head.encode() and info["rev"] == commit.rev
        assert info["mstRoot"] == commit.data.encode()
        stored = len(repo.blockstore)

    code, out, _ = run(capsys, "inspect", alice)
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith(" "))
    assert lines["did"] == DID and lines["signature"] == "not checked (no --key)"
    assert lines["signing"].startswith("key") and DID_KEY in lines["signing"]
    assert f"  {POST}" in out and "  mst nodes" in out
    repo_info = run_json(capsys, "inspect", alice, "--key", DID_KEY)
    assert repo_info["storedBlocks"] == stored and repo_info["refs"] == 1
    assert repo_info["signature"] == {"status": "valid", "key": DID_KEY, "highS": False}


def test_inspect_reports_an_invalid_signature_with_status_1(capsys, car):
    code, out, err = run(capsys, "inspect", car, "--key", WRONG_KEY)
    assert code == 1 and err == ""
    assert "INVALID" in out and WRONG_KEY in out
    code, out, _ = run(capsys, "inspect", car, "--key", DID_KEY)
    assert code == 0 and f"valid ({DID_KEY})" in out


# -- mst --------------------------------------------------------------------------------------


def test_mst_draws_every_node_and_key(capsys, car):
    data = run_json(capsys, "mst", car)
    nodes = data["nodes"]
    assert data["root"] == nodes[0]["cid"] and nodes[0]["depth"] == 0 and nodes[0]["parent"] is None
    keys = [entry["key"] for node in nodes for entry in node["entries"]]
    assert sorted(keys) == [f"{LIKE}/l1", f"{LIKE}/l2"] + [f"{POST}/p{i:03d}" for i in range(40)]
    assert all(child["layer"] == by["layer"] - 1 for by in nodes for child in nodes if child["parent"] == by["cid"])

    code, out, _ = run(capsys, "mst", car)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(data["root"][:8] + "…" + data["root"][-4:])
    assert f"layer {data['layer']}" in lines[0]
    assert data["root"] not in out  # shortened
    assert sum(1 for line in lines if "/p0" in line or "/l" in line) == 42
    assert any(line.startswith("├── ") or line.startswith("└── ") for line in lines)
    assert "layer 0" in out.split("\n\n")[-1]
    code, out, _ = run(capsys, "mst", car, "--full-cids")
    assert data["root"] in out and all(n["cid"] in out for n in nodes)


# -- unpack -----------------------------------------------------------------------------------


def test_unpack_writes_one_file_per_record(capsys, car, alice, tmp_path):
    target = tmp_path / "out"
    info = run_json(capsys, "unpack", car, "-o", target)
    assert info["records"] == 42 and info["collections"] == {LIKE: 2, POST: 40}
    assert len(list((target / POST).iterdir())) == 40
    code, out, _ = run(capsys, "get", alice, LIKE, "l1")
    assert json.loads((target / LIKE / "l1.json").read_text()) == json.loads(out)
    commit = json.loads((target / "_commit.json").read_text())
    assert commit["did"] == DID and commit["version"] == 3 and commit["data"]["$link"].startswith("bafyrei")

    assert "not empty" in assert_error(capsys, 2, "unpack", car, "-o", target)
    code, out, _ = run(capsys, "unpack", alice, "-o", target, "--force")
    assert code == 0 and out.startswith("unpacked 42 records in 2 collections")
    (tmp_path / "file").write_text("")
    assert "not a directory" in assert_error(capsys, 2, "unpack", car, "-o", tmp_path / "file")
    assert_error(capsys, 2, "unpack", car)


# -- diff -------------------------------------------------------------------------------------


def _changed_copy(capsys, alice: Path, tmp_path: Path) -> Path:
    """alice with p000 deleted, p001 changed and n001 created."""
    record = tmp_path / "r.json"
    record.write_text(json.dumps(post(1, "edited")))
    assert run(capsys, "rm", alice, POST, "p000")[0] == 0
    assert run(capsys, "put", alice, POST, "p001", record)[0] == 0
    assert run(capsys, "put", alice, POST, "n001", record)[0] == 0
    return alice


def test_diff_between_sources(capsys, car, alice, tmp_path):
    changed = _changed_copy(capsys, alice, tmp_path)
    changes = run_json(capsys, "diff", car, changed)
    assert [(c["action"], c["path"]) for c in changes] == [
        ("create", f"{POST}/n001"),
        ("delete", f"{POST}/p000"),
        ("update", f"{POST}/p001"),
    ]
    assert changes[0]["old"] is None and changes[1]["new"] is None and changes[2]["old"] != changes[2]["new"]

    code, out, _ = run(capsys, "diff", car, changed)
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "1 created, 1 updated, 1 deleted"
    assert lines[0].startswith(f"+  {POST}/n001") and lines[1].startswith("-  ") and " -> " in lines[2]
    assert changes[0]["new"] not in out and changes[0]["new"] in run(capsys, "diff", car, changed, "--full-cids")[1]

    assert run(capsys, "diff", car, car, "--exit-code")[:2] == (0, "0 created, 0 updated, 0 deleted\n")
    assert run(capsys, "diff", car, changed, "--exit-code")[0] == 1

    export = tmp_path / "changed.car"
    assert run(capsys, "export", changed, "-o", export)[0] == 0
    assert run_json(capsys, "diff", export, car) == [
        {"path": c["path"], "action": a, "old": c["new"], "new": c["old"]}
        for c, a in zip(changes, ["delete", "create", "update"], strict=True)
    ]


def test_diff_between_different_dids(capsys, car, tmp_path):
    other = tmp_path / "other"
    assert run(capsys, "init", other, "--did", OTHER_DID)[0] == 0
    changes = run_json(capsys, "diff", other, car)
    assert len(changes) == 42 and {c["action"] for c in changes} == {"create"}


def test_diff_inside_one_repo(capsys, alice, tmp_path):
    changed = _changed_copy(capsys, alice, tmp_path)
    changes = run_json(capsys, "diff", "--repo", changed, "start")
    assert len(changes) == 42  # everything since the empty start
    with Repo.open(changed) as repo:
        head = repo.head.encode()
    assert run_json(capsys, "diff", "--repo", changed, head, "HEAD") == []
    assert run(capsys, "ref", "set", changed, "now")[0] == 0
    assert run_json(capsys, "diff", "--repo", changed, "now") == []
    assert "neither HEAD" in assert_error(capsys, 2, "diff", "--repo", changed, "nope")
    assert "no commit" in assert_error(capsys, 2, "diff", "--repo", changed, cid_for_cbor(b"\xa0").encode())
    empty_tree = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"  # a stored block, not a commit
    assert "not a commit" in assert_error(capsys, 2, "diff", "--repo", changed, "HEAD", empty_tree)
    assert "--repo" in assert_error(capsys, 2, "diff", "start", "HEAD")
    assert "two sources" in assert_error(capsys, 2, "diff", changed)
    assert "only one" in assert_error(capsys, 2, "diff", "-", "-")


# -- verify -----------------------------------------------------------------------------------


def test_verify_a_good_car_and_repo(capsys, monkeypatch, car, alice):
    report = run_json(capsys, "verify", car, "--did", DID, "--key", DID_KEY)
    assert report["ok"] and report["did"] == DID and report["records"] == 42
    assert {c["name"]: c["outcome"] for c in report["checks"]}["signature"] == "passed"
    assert all(c["outcome"] == "passed" for c in report["checks"])

    code, out, err = run(capsys, "verify", car)
    assert code == 0 and err == ""
    assert out.splitlines()[-1].split() == ["result", "OK"]
    assert any(line.split()[:2] == ["signature", "skipped"] for line in out.splitlines())

    feed_stdin(monkeypatch, car.read_bytes())
    assert run(capsys, "verify", "-", "--did", DID)[0] == 0

    report = run_json(capsys, "verify", alice, "--key", DID_KEY, "--did", DID)
    assert report["ok"] and [c["name"] for c in report["checks"]][-1] == "blob-files"


def test_verify_failures_exit_1(capsys, car, alice, tmp_path):
    code, out, _ = run(capsys, "verify", car, "--did", OTHER_DID)
    assert code == 1 and out.splitlines()[-1].split() == ["result", "FAILED"]
    code, out, _ = run(capsys, "verify", car, "--key", WRONG_KEY, "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    assert [c["name"] for c in report["checks"] if c["outcome"] == "failed"] == ["signature"]
    assert run(capsys, "verify", alice, "--did", OTHER_DID)[0] == 1

    data = car.read_bytes()
    spot = data.index(b"post number 7")
    tampered = tmp_path / "tampered.car"
    tampered.write_bytes(data[:spot] + b"P" + data[spot + 1 :])
    code, out, _ = run(capsys, "verify", tampered, "--json")
    report = json.loads(out)
    assert code == 1 and report["checks"][1]["name"] == "block-hashes"
    assert report["checks"][1]["outcome"] == "failed" and "do not hash" in report["checks"][1]["detail"]

    blob = run_json(capsys, "blob", "put", alice, tampered, "--mime", "application/octet-stream")
    name = blob["ref"]["$link"]
    (alice / "blobs" / name[:2] / name).write_bytes(b"corrupt")
    code, out, _ = run(capsys, "verify", alice)
    assert code == 1 and "blob-files    failed" in out

    assert "no such file" in assert_error(capsys, 2, "verify", tmp_path / "missing.car")
    assert "--key" in assert_error(capsys, 2, "verify", car, "--key", "did:key:zzz")
    assert "--did" in assert_error(capsys, 2, "verify", car, "--did", "nope")


# -- compact ----------------------------------------------------------------------------------


def test_compact_drops_unreachable_blocks_and_restores_stream_order(capsys, car, tmp_path):
    with CarReader(car) as reader:
        roots, blocks = reader.roots, list(reader)
    extra = b"\xa1axa1"  # {"x": "1"}: a valid block nothing links to
    messy = tmp_path / "messy.car"
    with open(messy, "wb") as stream:
        writer = CarWriter(stream, roots)
        for cid, data in [(cid_for_cbor(extra), extra), *reversed(blocks)]:
            writer.write_block(cid, data)

    out = tmp_path / "clean.car"
    info = run_json(capsys, "compact", messy, out)
    assert out.read_bytes() == car.read_bytes()  # export order, no extra block
    assert info["blocks"] == len(blocks) and info["inputBytes"] == messy.stat().st_size
    assert info["outputBytes"] == car.stat().st_size

    code, text, _ = run(capsys, "compact", messy, out)
    assert code == 0 and text.startswith(f"wrote {out}: {len(blocks)} blocks")
    assert run_binary("compact", messy, "-") == (0, car.read_bytes())

    bad = tmp_path / "bad.car"
    bad.write_bytes(car.read_bytes()[:-5])
    assert_error(capsys, 1, "compact", bad, tmp_path / "never.car")
    assert not (tmp_path / "never.car").exists()


# -- refs and HEAD ----------------------------------------------------------------------------


def test_refs_and_head(capsys, alice):
    refs = run_json(capsys, "ref", "ls", alice)
    assert [r["name"] for r in refs] == ["start"]
    head = run_json(capsys, "head", alice)
    assert head["head"].startswith("bafyrei")

    info = run_json(capsys, "ref", "set", alice, "saved")
    assert info == {"name": "saved", "commit": head["head"], "rev": head["rev"]}
    assert run(capsys, "ref", "set", alice, "copy", "start")[0] == 0
    code, out, _ = run(capsys, "ref", "ls", alice)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["copy", "saved", "start"]
    assert len({line.index("bafyrei") for line in out.splitlines()}) == 1

    moved = run_json(capsys, "head", alice, "--set", "start")
    assert moved["head"] == refs[0]["commit"] and moved["head"] != head["head"]
    assert run_json(capsys, "ls", alice) == []
    assert run_json(capsys, "head", alice, "--set", head["head"])["head"] == head["head"]

    assert run(capsys, "ref", "rm", alice, "copy")[:2] == (0, "")
    assert "no ref named 'copy'" in assert_error(capsys, 2, "ref", "rm", alice, "copy")
    assert "neither HEAD" in assert_error(capsys, 2, "head", alice, "--set", "bafy-nope")
    record_cid = run_json(capsys, "ls", alice)[0]["cid"]
    assert "not a commit" in assert_error(capsys, 2, "head", alice, "--set", record_cid)
    assert "no commit" in assert_error(capsys, 2, "ref", "set", alice, "x", cid_for_cbor(b"\xa0").encode())


# -- blobs ------------------------------------------------------------------------------------


def test_blobs(capsys, monkeypatch, alice, tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG not really")
    ref = run_json(capsys, "blob", "put", alice, image)
    assert ref["$type"] == "blob" and ref["mimeType"] == "image/png" and ref["size"] == 15
    cid = ref["ref"]["$link"]
    feed_stdin(monkeypatch, b"plain text")
    code, out, _ = run(capsys, "blob", "put", alice, "-", "--mime", "text/plain")
    assert code == 0 and out.splitlines()[0].startswith("cid       bafkrei")

    listed = run_json(capsys, "blob", "ls", alice)
    assert {"cid": cid, "size": 15, "mimeType": "image/png"} in listed and len(listed) == 2
    code, out, _ = run(capsys, "blob", "ls", alice)
    assert f"{cid}  15  image/png" in out

    copy = tmp_path / "copy.png"
    assert run(capsys, "blob", "get", alice, cid, "-o", copy)[0] == 0
    assert copy.read_bytes() == image.read_bytes()
    assert run_binary("blob", "get", alice, cid) == (0, image.read_bytes())

    missing = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
    assert "no blob" in assert_error(capsys, 2, "blob", "get", alice, missing)
    assert "Invalid value for 'CID'" in assert_error(capsys, 2, "blob", "get", alice, "not-a-cid")
    feed_stdin(monkeypatch, b"x")
    assert "--mime" in assert_error(capsys, 2, "blob", "put", alice, "-")
    assert "MIME" in assert_error(capsys, 2, "blob", "put", alice, image, "--mime", "png")
    (alice / "blobs" / cid[:2] / cid).write_bytes(b"tampered")
    assert "corrupt" in assert_error(capsys, 1, "blob", "get", alice, cid)


# -- errors, progress -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ls", "inspect", "mst", "collections", "verify", "head", "ref ls", "blob ls"])
def test_missing_repository_is_an_input_error(capsys, tmp_path, command):
    err = assert_error(capsys, 2, *command.split(), tmp_path / "missing")
    assert "missing" in err


def test_a_directory_that_is_not_a_repository(capsys, tmp_path):
    assert "pds.db not found" in assert_error(capsys, 2, "ls", tmp_path)
    assert "not a repository directory" in assert_error(capsys, 2, "head", __file__)


def test_unexpected_errors_are_one_line_without_traceback(capsys, monkeypatch, car):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr("pypds.cli.records.Counter", boom)
    err = assert_error(capsys, 2, "collections", car)
    assert "internal error: RuntimeError: kaboom" in err
    monkeypatch.setenv("PYPDS_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["collections", str(car)])


def test_progress_goes_to_stderr_only(capsys, monkeypatch, car, alice, tmp_path):
    # Tests have no terminal, so bars are off: nothing at all on stderr.
    assert run(capsys, "verify", car)[2] == ""
    # Force the bars on: stdout still carries only the command's output.
    monkeypatch.setattr(_common.Progress, "create", classmethod(lambda cls, quiet: cls(not quiet)))
    for args in (
        ["verify", car],
        ["verify", alice],
        ["inspect", car],
        ["unpack", car, "-o", tmp_path / "u"],
        ["export", alice, "-o", tmp_path / "e.car"],
        ["compact", car, tmp_path / "c.car"],
        ["import", tmp_path / "i", car],
    ):
        code, out, _ = run(capsys, *args, "--json")
        assert code == 0 and json.loads(out)
    assert (tmp_path / "c.car").read_bytes() == car.read_bytes()
    assert _common.Progress.create(quiet=True).enabled is False


# -- partial and misplaced input ------------------------------------------------------------


@pytest.fixture
def partial_cars(tmp_path):
    """A proof CAR and a diff CAR of a repository big enough for a multi-level tree."""
    with Repo.create(tmp_path / "big", DID) as repo:
        with repo.batch() as batch:
            for i in range(300):
                batch.put(POST, f"k{i:04d}", post(i))
        proof = tmp_path / "proof.car"
        proof.write_bytes(repo.prove(POST, "k0003"))
        since = repo.rev
        repo.put(POST, "k9999", post(1))
        diff = tmp_path / "diff.car"
        diff.write_bytes(repo.export_car(since=since))
    return proof, diff


@pytest.mark.parametrize("command", ["ls", "inspect", "mst"])
def test_a_proof_or_diff_car_is_named_as_a_partial_tree(capsys, partial_cars, command):
    for car in partial_cars:
        err = assert_error(capsys, 1, command, car)
        assert "partial tree" in err and "proof CAR" in err and "diff CAR" in err
        assert "missing MST node bafy" in err or "record bafy" in err  # which block is absent


def test_verify_reports_a_partial_tree_as_the_completeness_failure(capsys, partial_cars):
    for car in partial_cars:
        code, out, _ = run(capsys, "verify", car)
        assert code == 1
        line = next(line for line in out.splitlines() if line.startswith("completeness"))
        assert "failed" in line and "partial tree" in line
        assert all("not run" in line for line in out.splitlines() if line.startswith(("repo-paths", "records")))


@pytest.mark.parametrize("command", ["ls", "inspect", "verify", "get"])
def test_the_database_file_instead_of_the_repository_directory_says_what_to_pass(capsys, tmp_path, command):
    with Repo.create(tmp_path / "alice", DID):
        pass
    args = [POST, "k"] if command == "get" else []
    err = assert_error(capsys, 2, command, tmp_path / "alice" / "pds.db", *args)
    assert "pass the repository directory" in err and str(tmp_path / "alice") in err


def test_the_lazy_command_table_names_exactly_the_commands_each_module_defines():
    import importlib

    from pypds.cli.app import COMMAND_MODULES

    for module in set(COMMAND_MODULES.values()):
        defined = {command.name for command in importlib.import_module(f"pypds.cli.{module}").COMMANDS}
        assert defined == {name for name, where in COMMAND_MODULES.items() if where == module}, module
