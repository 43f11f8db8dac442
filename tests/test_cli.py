"""The console script runs each command through the same library calls."""

from __future__ import annotations

import json

from pypds import Repo
from pypds.cli import main

from .conftest import DID, POST, post


def test_init_put_ls_get_export_import_info(tmp_path, capsys):
    path = tmp_path / "r"
    assert main(["init", str(path), "--did", DID]) == 0
    with Repo.open(path) as repo:
        repo.put(POST, "a", post(1))
        head = repo.head
    assert main(["ls", str(path)]) == 0
    assert f"{POST}/a\tbafyrei" in capsys.readouterr().out
    assert main(["get", str(path), POST, "a"]) == 0
    assert json.loads(capsys.readouterr().out) == post(1)
    car = tmp_path / "r.car"
    assert main(["export", str(path), "-o", str(car)]) == 0
    assert main(["import", str(tmp_path / "copy"), str(car)]) == 0
    assert head.encode() in capsys.readouterr().out
    assert main(["info", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "records" in out and head.encode() in out


def test_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pypds: ") and err.count("\n") == 1
    bad = tmp_path / "bad.car"
    bad.write_bytes(b"\x05garbage")
    assert main(["import", str(tmp_path / "x"), str(bad)]) == 1
    assert not (tmp_path / "x").exists()
