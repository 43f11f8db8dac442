"""Exports re-hash every block: a damaged store never yields a backup that import would reject.

The attack: one block in ``pds.db`` is altered (a bad disk sector, a stray
UPDATE). ``verify`` already fails; these tests check that ``export_car`` (to
bytes, a path or a stream), ``iter_car``, ``blockstore.get`` and the
server's getRepo and getBlocks stop with ``BlockHashMismatch`` naming the
block, before the bad bytes go out, and that a file export leaves no file.
"""

from __future__ import annotations

import http.client
import io
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import apsw
import pytest

from pypds import BlockHashMismatch, CarReader, Repo
from pypds.car.reader import CarFormatError
from pypds.cli import main
from pypds.filesystem import TEMP_PREFIX
from pypds.net.server import make_app

from .conftest import DID, POST, post
from .netstubs import ServerThread

#: A valid DAG-CBOR record with other bytes than the one it replaces.
FORGED = b"\xa1e$typeeforge"


def build(root: Path) -> dict:
    """A repository with 200 posts (several MST nodes); returns its CIDs by kind, and every block."""
    with Repo.create(root, DID) as repo:
        with repo.batch() as batch:
            for i in range(200):
                batch.put(POST, f"p{i:03d}", post(i))
        blocks = dict(CarReader(repo.export_car()))
        commit = repo.commit()
        head = repo.head
        record = repo.find_cid(POST, "p150")
    nodes = [cid for cid, data in blocks.items() if data.startswith(b"\xa2ae")]  # {"e": [...], "l": ...}
    inner = next(cid for cid in nodes if cid != commit.data)
    return {
        "commit": head,
        "root node": commit.data,
        "inner node": inner,
        "record": record,
        "blocks": blocks,
        # forgeries that decode as what they replace, so only the hash tells them apart
        "forged commit": replace(commit, rev="2222222222222").encode(),
        "forged node": blocks[inner],
    }


def alter(root: Path, cid, data: bytes = FORGED) -> None:
    conn = apsw.Connection(str(root / "pds.db"))
    conn.execute("UPDATE blocks SET data = ? WHERE cid = ?", (data, cid.cid_bytes))
    conn.close()


@pytest.fixture(params=["commit", "root node", "inner node", "record"])
def damaged(request, tmp_path) -> tuple[Path, object]:
    """A repository with one block of the given kind altered; yields (path, altered CID)."""
    root = tmp_path / "repo"
    cids = build(root)
    bad = cids[request.param]
    forged = {"commit": cids["forged commit"], "root node": cids["forged node"]}.get(request.param, FORGED)
    alter(root, bad, forged)
    return root, bad


def assert_no_bad_block(car: bytes, bad) -> None:
    """What was written before the stop holds only whole, valid blocks, and never the altered one."""
    assert FORGED not in car
    try:
        for cid, _data in CarReader(car):  # every block the reader yields is hash-checked
            assert cid != bad
    except CarFormatError:
        pass  # cut short: fine, it is never taken for a whole CAR (and nothing after the cut is bad)


def test_verify_already_fails(damaged):
    root, bad = damaged
    with Repo.open(root) as repo:
        report = repo.verify()
    assert not report.ok and bad.encode() in str(report)


def test_export_to_bytes_raises_naming_the_block(damaged):
    root, bad = damaged
    with Repo.open(root) as repo, pytest.raises(BlockHashMismatch, match=f"stored block {bad.encode()}"):
        repo.export_car()


def test_export_to_a_path_raises_and_leaves_no_file(damaged, tmp_path):
    root, bad = damaged
    out = tmp_path / "backup.car"
    out.write_bytes(b"the previous backup")
    with Repo.open(root) as repo, pytest.raises(BlockHashMismatch, match=bad.encode()):
        repo.export_car(out)
    assert out.read_bytes() == b"the previous backup"  # untouched: the new one never replaced it
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_export_to_a_stream_stops_before_the_bad_block(damaged):
    root, bad = damaged
    stream = io.BytesIO()
    with Repo.open(root) as repo, pytest.raises(BlockHashMismatch, match=bad.encode()):
        repo.export_car(stream)
    assert_no_bad_block(stream.getvalue(), bad)


def test_iter_car_stops_before_the_bad_block(damaged):
    root, bad = damaged
    received = bytearray()
    with Repo.open(root) as repo, pytest.raises(BlockHashMismatch, match=bad.encode()):
        for chunk in repo.iter_car(chunk_size=512):
            received += chunk
    assert_no_bad_block(bytes(received), bad)


def test_an_incremental_export_is_checked_too(tmp_path):
    root = tmp_path / "repo"
    with Repo.create(root, DID) as repo:
        repo.put(POST, "old", post(1))
        since = repo.rev
        new = repo.put(POST, "new", post(2))
    alter(root, new)
    with Repo.open(root) as repo, pytest.raises(BlockHashMismatch, match=new.encode()):
        repo.export_car(since=since)


def test_blockstore_get_rehashes(damaged):
    root, bad = damaged
    with Repo.open(root) as repo:
        with pytest.raises(BlockHashMismatch, match=bad.encode()):
            repo.blockstore.get(bad)
        with pytest.raises(BlockHashMismatch, match=bad.encode()):
            list(repo.blockstore)


def test_cli_export_fails_with_one_line_and_writes_no_file(damaged, tmp_path, capsys):
    root, bad = damaged
    out = tmp_path / "backup.car"
    assert main(["export", str(root), "-o", str(out)]) == 1
    stdout, err = capsys.readouterr()
    assert stdout == "" and err.startswith("pypds: stored block ") and err.count("\n") == 1
    assert bad.encode() in err
    assert not out.exists() and not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_an_intact_store_exports_what_it_did_before(tmp_path):
    """The check changes no byte of a good export (and import accepts it)."""
    root = tmp_path / "repo"
    build(root)
    with Repo.open(root) as repo:
        car = repo.export_car()
        assert b"".join(repo.iter_car(chunk_size=300)) == car
        with Repo.from_car(tmp_path / "copy", car, key=repo.did_key) as copy:
            assert copy.export_car() == car


# -- the server ------------------------------------------------------------------------------------


def fetch(url: str, method: str, params: list[tuple[str, str]]) -> tuple[int, bytes, bool]:
    """(status, bytes received, whether the body arrived whole)."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}/xrpc/com.atproto.sync.{method}?{query}", timeout=10) as response:
            try:
                return response.status, response.read(), True
            except http.client.IncompleteRead as cut:
                return response.status, cut.partial, False
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read(), True


@pytest.mark.parametrize("kind", ["inner node", "record"])
def test_the_server_never_sends_an_altered_block(tmp_path, kind):
    root = tmp_path / "repo"
    cids = build(root)
    bad = cids[kind]
    alter(root, bad)
    good = [cid for cid in cids["blocks"] if cid != bad][:5]
    good_data = [cids["blocks"][cid] for cid in good]
    with ServerThread(make_app([root], chunk_size=256)) as server:
        _status, body, whole = fetch(server.url, "getRepo", [("did", DID)])
        assert not whole
        assert_no_bad_block(body, bad)
        status, body, whole = fetch(
            server.url, "getBlocks", [("did", DID)] + [("cids", c.encode()) for c in [*good, bad]]
        )
        assert not (status == 200 and whole)
        assert FORGED not in body
        status, body, whole = fetch(server.url, "getBlocks", [("did", DID)] + [("cids", c.encode()) for c in good])
        assert status == 200 and whole and all(data in body for data in good_data)
