"""Values outside the data model and unbounded input: typed errors, one CLI line, nothing changed.

* integers beyond the signed 64-bit range of the atproto data model;
* lone surrogates (``"\\ud800"``), which have no UTF-8 form: from JSON
  escapes, from Python callers, and from command-line bytes that are not
  UTF-8 (Python hands those over as ``"\\udcff"``-style surrogates);
* input without end (``/dev/zero``, an endless stdin), which must be read
  with a cap, never into memory whole.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

import pypds.cli.common as cli_common
from pypds import InvalidInput, InvalidRecord, InvalidRepoPath, LimitExceeded, PypdsError, Repo
from pypds.cli import main

from .conftest import DID, POST, post

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(capsys, *args) -> str:
    code, out, err = run(capsys, *args)
    assert code == 2, (code, err)
    assert out == "" and err.startswith("pypds: ") and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err
    return err


@pytest.fixture
def alice(tmp_path) -> Path:
    with Repo.create(tmp_path / "alice", DID) as repo:
        repo.put(POST, "a", post(1))
    return tmp_path / "alice"


def snapshot(root: Path) -> tuple:
    with Repo.open(root) as repo:
        return repo.head, repo.export_car(), repo.list_blobs()


# -- integers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1, 1 << 64, -(1 << 64), 10**40])
def test_an_integer_beyond_64_bits_is_an_invalid_record(repo, value):
    head = repo.head
    for record in ({**post(1), "n": value}, {**post(1), "deep": [{"n": value}]}):
        with pytest.raises(InvalidRecord, match="64-bit"):
            repo.put(POST, "big", record)
    assert repo.head == head


def test_the_64_bit_limits_themselves_are_fine(repo):
    repo.put(POST, "edges", {**post(1), "max": INT64_MAX, "min": INT64_MIN})
    assert repo.find(POST, "edges")["max"] == INT64_MAX


@pytest.mark.parametrize("value", ["9223372036854775808", "-9223372036854775809", "1" + "0" * 40])
def test_the_cli_refuses_an_integer_beyond_64_bits_in_one_line(alice, tmp_path, capsys, value):
    before = snapshot(alice)
    record = tmp_path / "big.json"
    record.write_text(f'{{"$type": "app.bsky.feed.post", "n": {value}}}')
    assert "64-bit" in assert_one_line_error(capsys, "put", alice, POST, "big", record)
    assert snapshot(alice) == before


def test_a_huge_limit_means_no_limit(alice, capsys):
    with Repo.open(alice) as repo:
        assert repo.list(POST, limit=1 << 70) == repo.list(POST) != []
    code, out, _err = run(capsys, "ls", alice, POST, "--limit", str(1 << 70))
    assert code == 0 and out.startswith(f"{POST}/a ")


# -- lone surrogates ----------------------------------------------------------------------------

LONE = "\ud800"


@pytest.mark.parametrize(
    ("collection", "rkey", "record", "error"),
    [
        (f"app.bsky{LONE}.post", "a", post(1), InvalidRepoPath),
        (POST, f"a{LONE}", post(1), InvalidRepoPath),
        (POST, "a", {**post(1), LONE: 1}, InvalidRecord),  # a map key: cbrrr raised SystemError
        (POST, "a", {**post(1), f"k{LONE}": 1, "z": 2}, InvalidRecord),
        (POST, "a", {**post(1), "nested": [{"x": 1, f"y{LONE}": 2}]}, InvalidRecord),
        (POST, "a", {**post(1), "text": f"hi {LONE}"}, InvalidRecord),
        (POST, "a", {"$type": LONE}, InvalidRecord),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_typed_error(repo, collection, rkey, record, error):
    head = repo.head
    with pytest.raises(error):
        repo.put(collection, rkey, record)
    with pytest.raises(error), repo.batch() as batch:
        batch.put(collection, rkey, record)
    assert repo.head == head


def test_lone_surrogates_in_reads_and_refs_are_typed_errors(repo):
    for call in (
        lambda: repo.find(POST, f"x{LONE}"),
        lambda: repo.list(f"app{LONE}.bsky.post"),
        lambda: repo.list(POST, cursor=LONE),
        lambda: repo.set_ref(LONE, repo.head),
        lambda: repo.ref(LONE),
    ):
        with pytest.raises(PypdsError):
            call()


@pytest.mark.parametrize(
    "document",
    [
        '{"$type": "app.bsky.feed.post", "\\ud800": 1}',
        '{"$type": "app.bsky.feed.post", "a": 1, "b\\udcff": 2}',
        '{"$type": "app.bsky.feed.post", "text": "\\udfff"}',
        '{"$type": "\\ud800"}',
        '{"$type": "app.bsky.feed.post", "l": {"$link": "\\ud800"}}',
        '{"$type": "app.bsky.feed.post", "b": {"$bytes": "\\ud800"}}',
    ],
)
def test_the_cli_refuses_json_escaped_lone_surrogates_in_one_line(alice, tmp_path, capsys, document):
    before = snapshot(alice)
    record = tmp_path / "r.json"
    record.write_text(document)
    assert_one_line_error(capsys, "put", alice, POST, "s", record)
    assert snapshot(alice) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["put", "ALICE", "app.\udcff.post", "a", "RECORD"],
        ["put", "ALICE", POST, "a\udcff", "RECORD"],
        ["get", "ALICE", POST, "\udced\udca0\udc80"],
        ["rm", "ALICE", POST, "\udcff"],
        ["ref", "set", "ALICE", "\udcff"],
        ["ls", "ALICE", "\udcff"],
    ],
)
def test_command_line_bytes_that_are_not_utf8_give_one_line(alice, tmp_path, capsys, argv):
    """Arguments as Python decodes undecodable argv bytes (surrogateescape)."""
    record = tmp_path / "r.json"
    record.write_text(json.dumps(post(1)))
    before = snapshot(alice)
    assert_one_line_error(capsys, *[alice if a == "ALICE" else record if a == "RECORD" else a for a in argv])
    assert snapshot(alice) == before


def test_a_repository_path_that_is_not_utf8_is_refused_and_nothing_is_created(tmp_path, capsys):
    target = tmp_path / "x\udcff" / "repo"
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        Repo.create(target, DID)
    assert "not valid UTF-8" in assert_one_line_error(capsys, "init", target, "--did", DID)
    assert list(tmp_path.iterdir()) == []


# -- unbounded input ------------------------------------------------------------------------------


class Endless(io.RawIOBase):
    """A stream of zero bytes without end, like /dev/zero on a pipe."""

    def __init__(self) -> None:
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        self.given += len(buffer)
        return len(buffer)


def test_put_from_dev_zero_stops_at_the_cap(alice, capsys):
    before = snapshot(alice)
    err = assert_one_line_error(capsys, "put", alice, POST, "z", "/dev/zero")
    assert "max_json_input_bytes" in err
    assert snapshot(alice) == before


def test_put_from_an_endless_stdin_reads_no_more_than_the_cap(alice, capsys, monkeypatch):
    endless = Endless()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(endless)))
    assert "max_json_input_bytes" in assert_one_line_error(capsys, "put", alice, POST, "z", "-")
    assert endless.given <= cli_common.MAX_JSON_INPUT_BYTES + (1 << 20)


def test_blob_put_from_dev_zero_stops_at_the_cap(alice, capsys, monkeypatch):
    monkeypatch.setattr(cli_common, "MAX_BLOB_INPUT_BYTES", 1 << 20)  # the 256 MiB default, made quick
    monkeypatch.setattr("pypds.cli.blobs.MAX_BLOB_INPUT_BYTES", 1 << 20)
    before = snapshot(alice)
    assert "max_blob_input_bytes" in assert_one_line_error(capsys, "blob", "put", alice, "/dev/zero", "--mime", "a/b")
    assert snapshot(alice) == before


def test_a_signing_key_file_without_end_stops_at_the_cap(alice, capsys):
    err = assert_one_line_error(capsys, "rm", alice, POST, "a", "--signing-key-file", "/dev/zero")
    assert "longer than" in err


def test_the_caps_are_typed_errors():
    assert issubclass(LimitExceeded, PypdsError)
