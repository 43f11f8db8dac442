"""Signing keys: where they come from, that they are never printed, and signing over another key's HEAD.

A write signed by a key that did not sign HEAD's commit would leave a
history that verifies against two keys. The library refuses it with
``SigningKeyMismatch`` unless the handle was opened with ``rotate_key=True``;
the command line refuses it unless ``--rotate-key`` is given, and then warns.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import pypds.keys
from pypds import (
    BadSignature,
    Repo,
    SigningKeyMismatch,
    generate_signing_key,
    load_signing_key,
)
from pypds.cli import main

from .conftest import DID, POST, post

KEY_A = "a1" * 32
KEY_B = "b2" * 32
DID_KEY_A = load_signing_key(KEY_A).did_key
DID_KEY_B = load_signing_key(KEY_B).did_key
KEY_ENV = "PYPDS_SIGNING_KEY"


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_never_printed(*texts: str) -> None:
    """No private key, in any spelling, appears in what a command printed."""
    for text in texts:
        lowered = text.lower()
        for key in (KEY_A, KEY_B):
            assert key not in lowered and key[:16] not in lowered, text


def key_file(tmp_path: Path, hex_key: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"{hex_key[:4]}.key"
    path.write_text(hex_key + "\n")
    path.chmod(mode)
    return path


def state(root: Path) -> tuple:
    with Repo.open(root) as repo:
        return repo.head, repo.rev, repo.export_car()


# -- the library ---------------------------------------------------------------------------------


def test_a_write_with_a_key_that_did_not_sign_head_is_refused_and_changes_nothing(tmp_path):
    Repo.create(tmp_path / "r", DID, signing_key=KEY_A, store_key=True).close()
    before = state(tmp_path / "r")
    with Repo.open(tmp_path / "r", signing_key=KEY_B) as repo:
        assert repo.signing_key_matches_head() is False
        with pytest.raises(SigningKeyMismatch, match=f"not signed by {DID_KEY_B}.*two keys.*rotate_key=True"):
            repo.put(POST, "a", post(1))
        with pytest.raises(SigningKeyMismatch), repo.batch() as batch:
            batch.put(POST, "b", post(2))
        with pytest.raises(SigningKeyMismatch):
            repo.delete(POST, "nothing")  # refused before the tree is even looked at
    assert state(tmp_path / "r") == before


def test_rotating_the_key_is_explicit_and_the_history_then_verifies_against_two_keys(tmp_path):
    with Repo.create(tmp_path / "r", DID, signing_key=KEY_A, store_key=True) as repo:
        repo.put(POST, "a", post(1))
        old_head = repo.head
    with Repo.open(tmp_path / "r", signing_key=KEY_B, rotate_key=True) as repo:
        assert repo.signing_key_matches_head() is False
        repo.put(POST, "b", post(2))
        assert repo.signing_key_matches_head() is True
        repo.commit().verify(load_signing_key(KEY_B).public_key)
        repo.commit(old_head).verify(load_signing_key(KEY_A).public_key)
        with pytest.raises(BadSignature):
            repo.commit(old_head).verify(load_signing_key(KEY_B).public_key)
    with Repo.open(tmp_path / "r", signing_key=KEY_B) as repo:  # HEAD is B's now: no opt-in needed
        repo.put(POST, "c", post(3))
    with Repo.open(tmp_path / "r") as repo:  # the stored key is still A, which did not sign HEAD
        assert repo.did_key == DID_KEY_A
        with pytest.raises(SigningKeyMismatch):
            repo.put(POST, "d", post(4))


def test_an_imported_repository_takes_writes_from_the_key_that_signed_it_only(tmp_path):
    with Repo.create(tmp_path / "src", DID, signing_key=KEY_A) as src:
        src.put(POST, "a", post(1))
        car = src.export_car()
    with Repo.from_car(tmp_path / "same", car, signing_key=KEY_A) as copy:
        copy.put(POST, "b", post(2))
    with Repo.from_car(tmp_path / "other", car, signing_key=KEY_B) as copy, pytest.raises(SigningKeyMismatch):
        copy.put(POST, "b", post(2))
    with Repo.from_car(tmp_path / "rotated", car, signing_key=KEY_B, rotate_key=True) as copy:
        copy.put(POST, "b", post(2))


def test_the_check_follows_head_when_another_handle_moves_it(tmp_path):
    with Repo.create(tmp_path / "foreign", DID, signing_key=KEY_B) as foreign:
        foreign.put(POST, "x", post(9))
        foreign_car = foreign.export_car()
    with Repo.create(tmp_path / "r", DID, signing_key=KEY_A, store_key=True) as writer:
        writer.put(POST, "a", post(1))
        with Repo.open(tmp_path / "r") as other:
            other.import_car(foreign_car)  # HEAD is now signed by B
        with pytest.raises(SigningKeyMismatch):
            writer.put(POST, "b", post(2))
        assert writer.find(POST, "b") is None


def test_the_signature_is_checked_once_per_head_not_per_write(tmp_path, monkeypatch):
    calls = []
    original = pypds.keys.PublicKey.verify

    def counting(self, data, signature):
        calls.append(1)
        return original(self, data, signature)

    monkeypatch.setattr(pypds.keys.PublicKey, "verify", counting)
    Repo.create(tmp_path / "r", DID).close()
    with Repo.open(tmp_path / "r") as repo:
        for i in range(20):
            repo.put(POST, f"p{i}", post(i))
    assert len(calls) == 1


def test_a_handle_without_a_key_has_no_opinion(tmp_path):
    with Repo.create(tmp_path / "r", DID, signing_key=KEY_A) as repo:
        assert repo.signing_key_matches_head() is True
    with Repo.open(tmp_path / "r") as repo:
        assert repo.signing_key_matches_head() is None


# -- the command line: where the key comes from ---------------------------------------------------


def did_key_of(root: Path) -> str:
    with Repo.open(root) as repo:
        return repo.did_key


@pytest.mark.parametrize("source", ["file", "pipe", "env", "hex"])
def test_init_takes_the_key_from_a_file_the_environment_or_argv_and_never_prints_it(
    tmp_path, monkeypatch, capsys, source
):
    args = ["init", tmp_path / "r", "--did", DID, "--json"]
    if source == "file":
        args += ["--signing-key-file", key_file(tmp_path, KEY_A)]
    elif source == "pipe":
        read, write = os.pipe()
        os.write(write, KEY_A.encode())
        os.close(write)
        args += ["--signing-key-file", f"/dev/fd/{read}"]
    elif source == "env":
        monkeypatch.setenv(KEY_ENV, KEY_A)
    else:
        args += ["--key", KEY_A]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert json.loads(out)["didKey"] == DID_KEY_A == did_key_of(tmp_path / "r")
    assert_never_printed(out, err)


def test_init_with_a_p256_key_file(tmp_path, capsys):
    secret = generate_signing_key("p256")
    path = tmp_path / "p256.key"
    path.write_text(secret.to_bytes().hex())
    path.chmod(0o600)
    code, _out, err = run(capsys, "init", tmp_path / "r", "--did", DID, "--signing-key-file", path, "--curve", "p256")
    assert code == 0, err
    assert did_key_of(tmp_path / "r") == secret.did_key


def test_init_generates_a_key_unless_one_is_given(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert run(capsys, "init", tmp_path / "r", "--did", DID)[0] == 0
    assert did_key_of(tmp_path / "r") not in (DID_KEY_A, DID_KEY_B)


def test_a_key_file_option_wins_over_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY_B)
    assert run(capsys, "init", tmp_path / "r", "--did", DID, "--signing-key-file", key_file(tmp_path, KEY_A))[0] == 0
    assert did_key_of(tmp_path / "r") == DID_KEY_A


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--key", KEY_B, "--signing-key-file", "KEYFILE"], "give the key once"),
        (["--key", "k256", "--signing-key-file", "KEYFILE"], "generates a key"),
        (["--signing-key-file", "/dev/zero"], "longer than 4096 bytes"),
        (["--signing-key-file", "missing.key"], "No such file"),
        (["--signing-key-file", "BADFILE"], "not hex"),
        (["--key", "zz" * 32], "not hex"),
    ],
)
def test_bad_key_options_are_one_line_errors_that_never_echo_the_key(tmp_path, capsys, extra, message):
    good = key_file(tmp_path, KEY_A)
    bad = tmp_path / "bad.key"
    bad.write_text("g" + KEY_A[1:])
    bad.chmod(0o600)
    argv = [str(good) if a == "KEYFILE" else str(bad) if a == "BADFILE" else a for a in extra]
    code, out, err = run(capsys, "init", tmp_path / "r", "--did", DID, *argv)
    assert code == 2 and out == "" and err.startswith("pypds: ") and err.count("\n") == 1, err
    assert message in err
    assert_never_printed(err)
    assert not (tmp_path / "r").exists()


def test_a_key_file_others_can_read_is_used_with_a_warning(tmp_path, capsys):
    code, _out, err = run(
        capsys, "init", tmp_path / "r", "--did", DID, "--signing-key-file", key_file(tmp_path, KEY_A, 0o644)
    )
    assert code == 0
    assert re.fullmatch(r"pypds: warning: key file .* is readable by other users \(mode 644\): chmod 600 .*\n", err)


# -- the command line: writing over another key's HEAD ----------------------------------------------


@pytest.fixture
def alice(tmp_path, capsys) -> Path:
    """A repository made by ``pypds init`` with key A stored, and one record."""
    root = tmp_path / "alice"
    assert run(capsys, "init", root, "--did", DID, "--signing-key-file", key_file(tmp_path, KEY_A))[0] == 0
    record = tmp_path / "post.json"
    record.write_text(json.dumps(post(1)))
    assert run(capsys, "put", root, POST, "a", record)[0] == 0
    return root


@pytest.mark.parametrize("how", ["file", "env", "argv"])
def test_writing_with_another_key_needs_rotate_key_and_warns(alice, tmp_path, capsys, monkeypatch, how):
    record = tmp_path / "post.json"
    key = {"file": ["--signing-key-file", key_file(tmp_path, KEY_B)], "env": [], "argv": ["--signing-key", KEY_B]}[how]
    if how == "env":
        monkeypatch.setenv(KEY_ENV, KEY_B)
    before = state(alice)
    for argv in (["put", alice, POST, "b", record, *key], ["rm", alice, POST, "a", *key]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert f"HEAD of {alice} was not signed by {DID_KEY_B}" in err and "--rotate-key" in err
        assert_never_printed(out, err)
    assert state(alice) == before
    code, out, err = run(capsys, "put", alice, POST, "b", record, *key, "--rotate-key", "--json")
    assert code == 0
    assert err.startswith("pypds: warning: HEAD of") and "two keys" in err and err.count("\n") == 1
    assert_never_printed(out, err)
    with Repo.open(alice) as repo:
        repo.commit().verify(load_signing_key(KEY_B).public_key)


def test_no_command_prints_a_private_key(alice, tmp_path, capsys, monkeypatch):
    """Every command that reads a repository holding key A, with key B around in the environment."""
    monkeypatch.setenv(KEY_ENV, KEY_B)
    car = tmp_path / "alice.car"
    commands = [
        ["inspect", alice],
        ["inspect", alice, "--json"],
        ["head", alice, "--json"],
        ["ls", alice, "--json"],
        ["get", alice, POST, "a", "--json"],
        ["verify", alice, "--json"],
        ["export", alice, "-o", car, "--json"],
        ["inspect", car, "--json"],
        ["put", alice, POST, "c", tmp_path / "post.json", "--rotate-key", "--json"],
        ["rm", alice, POST, "c", "--json"],
        ["ref", "ls", alice, "--json"],
        ["init", "--help"],
        ["put", "--help"],
    ]
    for argv in commands:
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, err)
        assert_never_printed(out, err)
    with Repo.open(alice) as repo:
        assert repo.signing_key.to_bytes().hex() == KEY_A  # it is there, and it was not printed


def test_the_command_line_code_never_reads_the_private_scalar():
    """The CLI handles key objects and did:keys only: nothing in it can format a private key."""
    cli_dir = Path(pypds.__file__).parent / "cli"
    for source in cli_dir.glob("*.py"):
        text = source.read_text()
        assert "to_bytes(" not in text and "get_meta(" not in text, source


def test_a_key_kept_outside_the_repository_is_never_written_into_it(tmp_path, capsys):
    root = tmp_path / "r"
    keyfile = key_file(tmp_path, KEY_A)
    code, _out, err = run(capsys, "init", root, "--did", DID, "--signing-key-file", keyfile, "--no-store-key")
    assert code == 0, err
    stored = b"".join(path.read_bytes() for path in root.rglob("*") if path.is_file())
    assert KEY_A.encode() not in stored and bytes.fromhex(KEY_A) not in stored
    with Repo.open(root) as repo:
        assert repo.signing_key is None
        repo.commit().verify(load_signing_key(KEY_A).public_key)
    record = tmp_path / "post.json"
    record.write_text(json.dumps(post(1)))
    code, _out, err = run(capsys, "put", root, POST, "a", record)
    assert code == 2 and "--signing-key-file" in err
    assert run(capsys, "put", root, POST, "a", record, "--signing-key-file", keyfile)[0] == 0


@pytest.mark.parametrize("extra", [[], ["--key", "p256"]])
def test_no_store_key_needs_a_key_the_user_keeps(tmp_path, capsys, monkeypatch, extra):
    monkeypatch.delenv(KEY_ENV, raising=False)
    code, out, err = run(capsys, "init", tmp_path / "r", "--did", DID, "--no-store-key", *extra)
    assert code == 2 and out == "" and "needs a key you keep" in err
    assert not (tmp_path / "r").exists()


def test_importing_a_car_signed_by_another_key_warns_that_writes_will_need_rotate_key(alice, tmp_path, capsys):
    with Repo.create(tmp_path / "src", DID, signing_key=KEY_B) as src:
        src.put(POST, "z", post(7))
        src.export_car(tmp_path / "other.car")
    code, _out, err = run(capsys, "import", alice, tmp_path / "other.car")
    assert code == 0
    assert err.startswith("pypds: warning: HEAD of") and "--rotate-key" in err and err.count("\n") == 1
    code, _out, err = run(capsys, "import", alice, tmp_path / "other.car")  # the same again: still B's
    assert code == 0 and "--rotate-key" in err
