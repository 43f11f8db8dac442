"""Blob MIME types (schema 5: ``blob_types``, written with the blob) and blob files handed out by ``export_blobs``."""

from __future__ import annotations

import apsw
import pytest

from pypds import BlockHashMismatch, InvalidInput, Repo, SchemaVersionError, cid_for_raw
from pypds.storage.store import SCHEMA_VERSION

from .conftest import DID


def test_put_blob_stores_the_mime_type_it_is_given(repo):
    png = repo.put_blob(b"\x89PNG fake", "image/png")
    assert repo.blob_type(png.cid) == "image/png" and repo.blob_type(png.cid.encode()) == "image/png"
    with Repo.open(repo.path) as again:  # durable, seen by another handle
        assert again.blob_type(png.cid) == "image/png"
    repo.put_blob(b"\x89PNG fake", "application/octet-stream")  # the same bytes, told another type
    assert repo.blob_type(png.cid) == "application/octet-stream"
    assert repo.blob_type(cid_for_raw(b"never stored")) is None


@pytest.mark.parametrize("mime", ["png", "", "image/png\n", None, 5])
def test_invalid_mime_types_are_refused_before_anything_is_stored(repo, mime):
    with pytest.raises(InvalidInput):
        repo.put_blob(b"data", mime)
    assert repo.list_blobs(stored=True) == []


def test_a_blob_stored_without_a_type_has_none(repo):
    cid = cid_for_raw(b"downloaded")
    with repo._state.blobs.receive(cid) as incoming:  # how a download stores a blob
        incoming.write(b"downloaded")
        incoming.finish()
    assert repo.blob(cid) == b"downloaded" and repo.blob_type(cid) is None


def test_a_version_4_store_gets_the_table_on_open(tmp_path):
    path = tmp_path / "r"
    with Repo.create(path, DID) as repo:
        old = repo.put_blob(b"stored by an older pypds", "image/jpeg")
        head = repo.head
    conn = apsw.Connection(str(path / "pds.db"))
    conn.execute("DROP TABLE blob_types; PRAGMA user_version = 4")
    conn.close()
    with Repo.open(path) as repo:
        assert repo.head == head and repo.verify().ok
        assert repo.blob(old.cid) == b"stored by an older pypds" and repo.blob_type(old.cid) is None
        new = repo.put_blob(b"stored now", "image/gif")
        assert repo.blob_type(new.cid) == "image/gif"
    conn = apsw.Connection(str(path / "pds.db"))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


def test_a_store_of_a_newer_schema_is_refused(tmp_path):
    Repo.create(tmp_path / "r", DID).close()
    conn = apsw.Connection(str(tmp_path / "r" / "pds.db"))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        Repo.open(tmp_path / "r")


def test_export_blobs_writes_each_blob_named_by_cid_with_its_extension(repo, tmp_path):
    png = repo.put_blob(b"\x89PNG image", "image/png")
    jpeg = repo.put_blob(b"\xff\xd8 jpeg image", "image/jpeg")
    odd = repo.put_blob(b"odd", "application/x-no-such-type")
    heard = []
    written = repo.export_blobs(tmp_path / "out", progress=lambda done, total: heard.append((done, total)))
    names = {cid: file.name for cid, file in written}
    assert names == {
        png.cid: f"{png.cid.encode()}.png",
        jpeg.cid: f"{jpeg.cid.encode()}.jpg",
        odd.cid: odd.cid.encode(),  # no known extension
    }
    for cid, file in written:
        assert file.parent == tmp_path / "out" and file.read_bytes() == repo.blob(cid)
    assert heard == [(1, 3), (2, 3), (3, 3)]
    assert repo.export_blobs(tmp_path / "out") == written  # again: replaced, the same


def test_export_blobs_stops_at_a_damaged_blob_and_writes_no_bad_byte(repo, tmp_path):
    good = repo.put_blob(b"a", "text/plain")
    bad = repo.put_blob(b"b" * 5000, "text/plain")
    repo._state.blobs.path_for(bad.cid).write_bytes(b"c" * 5000)
    with pytest.raises(BlockHashMismatch):
        repo.export_blobs(tmp_path / "out")
    left = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert f"{bad.cid.encode()}.txt" not in left and not any(name.startswith(".tmp") for name in left)
    if good.cid.encode() < bad.cid.encode():
        assert left == [f"{good.cid.encode()}.txt"]


def test_export_blobs_refuses_a_file_as_the_directory(repo, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="not a directory"):
        repo.export_blobs(tmp_path / "file")
