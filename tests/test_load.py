"""Bulk loads (``Repo.load``): JSON Lines and unpacked directories, checked whole before anything is written."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest

from pypds import (
    DiskFull,
    InvalidInput,
    LoadError,
    LoadIncomplete,
    Repo,
    SigningKeyMismatch,
    SigningKeyRequired,
    generate_signing_key,
    to_json,
)
from pypds.repo import load as load_module
from pypds.repo import writer

from .conftest import DID, POST, post

LIKE = "app.bsky.feed.like"


def lines(*objects: object) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(o).encode() + b"\n" for o in objects))


def put_line(i: int, **extra: object) -> dict:
    return {"path": f"{POST}/p{i:05d}", "value": to_json(post(i)), **extra}


def snapshot(repo: Repo) -> tuple:
    return repo.head, repo.rev, len(repo.blockstore), list(repo.records())


@pytest.fixture
def source(tmp_path):
    """A repository with posts and likes, to dump and unpack."""
    with Repo.create(tmp_path / "source", "did:plc:ewvi7nxzyoun6zhxrhs64oiz") as repo:
        with repo.batch() as batch:
            for i in range(300):
                batch.put(POST, f"3k{i:011d}", post(i))
            for i in range(50):
                batch.put(LIKE, f"3l{i:011d}", {"$type": LIKE, "subject": {"uri": "at://x", "cid": repo.head}})
        yield repo


def dump_lines(repo: Repo) -> io.BytesIO:
    """What ``pypds dump`` prints."""
    return lines(*({"path": p, "cid": c.encode(), "value": to_json(v)} for p, c, v in repo.records()))


def test_dumped_records_load_into_one_commit_with_the_same_tree(source, repo):
    before = repo.head
    report = repo.load(dump_lines(source))
    assert report.records == 350 and report.deleted == 0
    assert report.commits == [repo.head] and repo.head != before and report.rev == repo.rev
    assert repo.commit().data == source.commit().data
    assert list(repo.records()) == list(source.records())
    assert repo.verify().ok


def test_both_put_shapes_blank_lines_and_deletes(repo):
    repo.put(POST, "old", post(0))
    data = (
        b'{"collection": "app.bsky.feed.post", "rkey": "a", "value": {"$type": "app.bsky.feed.post", "text": "a"}}\n'
        b"\n   \n" + json.dumps(put_line(1)).encode() + b'\n{"delete": "app.bsky.feed.post/old"}\n'
        b'{"delete": "app.bsky.feed.post/a"}\n'
        + json.dumps({"path": f"{POST}/a", "value": {"$type": POST, "text": "again"}}).encode()  # no final newline
    )
    report = repo.load(io.BytesIO(data))
    assert (report.records, report.deleted, len(report.commits)) == (3, 2, 1)
    assert [path for path, _cid, _value in repo.records()] == [f"{POST}/a", f"{POST}/p00001"]
    assert repo.find(POST, "a") == {"$type": POST, "text": "again"}


def test_unpacked_directory_loads_back_to_the_same_tree(source, repo, tmp_path):
    folder = tmp_path / "unpacked"
    for path, _cid, value in source.records():
        collection, rkey = path.split("/")
        (folder / collection).mkdir(parents=True, exist_ok=True)
        (folder / collection / f"{rkey}.json").write_text(json.dumps(to_json(value), indent=2))
    (folder / "_commit.json").write_text("{}")  # written by unpack, skipped by load
    (folder / ".DS_Store").write_text("x")
    (folder / POST / ".note.json.swp").write_text("x")
    report = repo.load(folder)
    assert report.records == 350 and len(report.commits) == 1
    assert repo.commit().data == source.commit().data


def test_batch_size_writes_one_signed_commit_per_batch(source, tmp_path):
    with Repo.create(tmp_path / "batched", DID) as repo:
        start = repo.rev
        report = repo.load(dump_lines(source), batch_size=100)
        assert len(report.commits) == 4 and report.commits[-1] == repo.head
        revs = [repo.commit(cid).rev for cid in report.commits]
        assert revs == sorted(revs) and revs[0] > start and len(set(revs)) == 4
        for cid in report.commits:
            repo.commit(cid).verify(repo.signing_key.public_key)
        assert len(list(repo.records(commit=report.commits[0]))) == 100
        assert repo.commit().data == source.commit().data


@pytest.mark.parametrize("batch_size", [None, 2])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"path": "app.bsky.feed.post/x", "value": {"$type": "app.bsky.feed.post"}, "extra": 1}', "fields"),
        (b'{"path": "app.bsky.feed.post/x", "path": "app.bsky.feed.post/y", "value": {}}', "duplicate key"),
        (b'{"path": "nocollection", "value": {"$type": "a.b.c"}}', "collection/rkey"),
        (b'{"collection": "app.bsky.feed.post", "rkey": "..", "value": {"$type": "a.b.c"}}', "record key"),
        (b'{"path": "app.bsky.feed.post/x", "value": {"$type": "a.b.c", "f": 1.5}}', "float"),
        (b'{"path": "app.bsky.feed.post/x", "value": [1]}', "object"),
        (b'{"path": "app.bsky.feed.post/x", "value": {"$type": "a.b.c"}, "cid": "bafyreiother"}', "not the CID"),
        (b'{"delete": 7}', "delete"),
        (b'{"delete": "app.bsky.feed.post/absent"}', "no record at app.bsky.feed.post/absent"),
        (b'{"delete": "app.bsky.feed.post/p00001"}', "no record at app.bsky.feed.post/p00001"),  # deleted twice
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_one_bad_line_names_its_number_and_writes_nothing(repo, bad, message, batch_size):
    repo.put(POST, "keep", post(0))
    before = snapshot(repo)
    good = b"".join(json.dumps(put_line(i)).encode() + b"\n" for i in range(7))
    data = good + b'{"delete": "app.bsky.feed.post/p00001"}\n' + bad + b"\n" + json.dumps(put_line(9)).encode()
    with pytest.raises(LoadError, match=message) as caught:
        repo.load(io.BytesIO(data), batch_size=batch_size, name="in.jsonl")
    assert caught.value.line == 9 and str(caught.value).startswith("in.jsonl line 9: ")
    assert snapshot(repo) == before


def test_a_line_longer_than_the_cap_is_refused_without_reading_it_whole(repo, monkeypatch):
    monkeypatch.setattr(load_module, "MAX_LINE_BYTES", 1000)
    endless = io.BytesIO(json.dumps(put_line(1)).encode() + b"\n" + b" " * 100_000)
    with pytest.raises(LoadError, match="line 2: longer than 1000 bytes"):
        repo.load(endless)


def test_a_bad_file_of_a_directory_is_named_and_nothing_is_written(repo, tmp_path):
    folder = tmp_path / "records"
    (folder / POST).mkdir(parents=True)
    (folder / POST / "a.json").write_text(json.dumps(to_json(post(1))))
    before = snapshot(repo)
    (folder / POST / "b.json").write_text('{"$type": "app.bsky.feed.post", "n": 1.5}')
    with pytest.raises(LoadError, match=r"b\.json: floats"):
        repo.load(folder)
    (folder / POST / "b.json").unlink()
    (folder / POST / "notes.txt").write_text("x")
    with pytest.raises(LoadError, match=r"notes\.txt: not a record file"):
        repo.load(folder)
    (folder / POST / "notes.txt").unlink()
    (folder / "stray.json").write_text("{}")
    with pytest.raises(LoadError, match=r"stray\.json: not a collection directory"):
        repo.load(folder)
    (folder / "stray.json").unlink()
    (folder / "not..nsid").mkdir()
    (folder / "not..nsid" / "a.json").write_text("{}")
    with pytest.raises(LoadError, match="not an NSID"):
        repo.load(folder)
    assert snapshot(repo) == before


def test_sources_and_their_errors(repo, tmp_path):
    file = tmp_path / "in.jsonl"
    file.write_bytes(lines(put_line(1)).getvalue())
    assert repo.load(file).records == 1
    assert repo.load(str(file)).records == 1
    with file.open("rb") as stream:
        assert repo.load(stream).records == 1
    with pytest.raises(InvalidInput, match="binary mode"), file.open() as text:
        repo.load(text)
    with pytest.raises(InvalidInput, match="cannot read"):
        repo.load(tmp_path / "absent.jsonl")
    with pytest.raises(InvalidInput, match="batch_size"):
        repo.load(file, batch_size=0)
    empty = repo.load(io.BytesIO(b""))
    assert empty.commits == [] and empty.head == repo.head


def test_a_load_that_cannot_sign_fails_before_reading(tmp_path, repo):
    class Unread(io.RawIOBase):
        def read(self, size=-1):
            raise AssertionError("the input was read")

    with Repo.from_car(tmp_path / "copy", repo.export_car()) as copy, pytest.raises(SigningKeyRequired):
        copy.load(Unread())
    with Repo.open(repo.path, signing_key=generate_signing_key()) as other, pytest.raises(SigningKeyMismatch):
        other.load(Unread())


def test_a_failure_after_some_batches_says_how_far_it_got(repo, monkeypatch):
    real = writer.commit_ops
    calls = []

    def fail_third(state, ops, **kwargs):
        calls.append(len(ops))
        if len(calls) == 3:
            raise DiskFull("no space left")
        return real(state, ops, **kwargs)

    monkeypatch.setattr(load_module, "commit_ops", fail_third)
    with pytest.raises(LoadIncomplete) as caught:
        repo.load(lines(*(put_line(i) for i in range(10))), batch_size=4, name="in.jsonl")
    error = caught.value
    assert len(error.commits) == 2 and error.records == 8 and error.line == 9
    assert "stopped at line 9 after 2 commits (8 writes)" in str(error) and "no space left" in str(error)
    assert repo.head == error.commits[-1] and len(list(repo.records())) == 8 and repo.verify().ok
    assert isinstance(error.__cause__, DiskFull)


def test_a_failure_of_the_first_batch_writes_nothing_and_keeps_its_type(repo, monkeypatch):
    monkeypatch.setattr(load_module, "commit_ops", lambda *a, **k: (_ for _ in ()).throw(DiskFull("full")))
    before = snapshot(repo)
    with pytest.raises(DiskFull):
        repo.load(lines(put_line(1), put_line(2)), batch_size=1)
    assert snapshot(repo) == before


def test_progress_hears_checking_and_writing(repo):
    heard = []
    repo.load(lines(*(put_line(i) for i in range(2500))), batch_size=1000, progress=lambda *a: heard.append(a))
    assert ("checking", 1000, None) in heard and ("checking", 2500, None) in heard
    assert [event for event in heard if event[0] == "writing"] == [
        ("writing", 1000, 2500),
        ("writing", 2000, 2500),
        ("writing", 2500, 2500),
    ]


def test_a_batched_load_holds_one_batch_not_the_input(tmp_path):
    count, size = 4000, 2000
    data = b"".join(
        json.dumps({"path": f"{POST}/r{i:06d}", "value": to_json(post(i, "x" * size))}).encode() + b"\n"
        for i in range(count)
    )
    peaks = {}
    for batch_size in (None, 200):
        with Repo.create(tmp_path / f"r{batch_size}", DID) as repo:
            tracemalloc.start()
            try:
                repo.load(io.BytesIO(data), batch_size=batch_size)
                peaks[batch_size] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert peaks[None] > count * size  # one commit holds every record
    assert peaks[200] < peaks[None] / 3, peaks


@pytest.mark.parametrize(
    "bad",
    [
        rb'{"path": "app.bsky.feed.post/a", "value": {"$type": "a.b.c", "t": "\udcff"}}',
        rb'{"path": "app.bsky.feed.post/a", "value": {"$type": "a.b.c", "\udcff": 1}}',
        rb'{"delete": "app.bsky.feed.post/\udcff"}',
        rb'{"path": "app.bsky.feed.post/a", "value": {"$type": "a.b.c", "n": 99999999999999999999999}}',
        rb'{"path": "app.bsky.feed.post/a", "value": {"$type": "a.b.c", "n": 1' + b"0" * 5000 + b"}}",
        rb'{"path": "app.bsky.feed.post/a", "value": {"$type": "a.b.c", "x": NaN}}',
        b'{"path": "app.bsky.feed.post/a", "value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"path": "app.bsky.feed.post/a", "value": {"$type": "a.b.c", "a": ' + b'{"a":' * 200 + b"1" + b"}" * 201,
        rb'{"path": "app.bsky.feed.post/a", "value": {"$type": "a.b.c", "x": "' + b"y" * (2 << 20) + b'"}}',
    ],
    ids=["surrogate", "surrogate-key", "surrogate-path", "int64", "digits", "nan", "deep-json", "deep", "big"],
)
def test_hostile_values_are_bad_lines(repo, bad):
    before = snapshot(repo)
    with pytest.raises(LoadError) as caught:
        repo.load(io.BytesIO(bad))
    assert caught.value.line == 1
    assert snapshot(repo) == before
