"""The Repo handle: the nox-pds API, signed commits, atomic writes."""

from __future__ import annotations

import io
import os

import apsw
import dag_cbor
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypds import (
    CID,
    BlockHashMismatch,
    DidMismatch,
    InvalidInput,
    InvalidRecord,
    InvalidRepoPath,
    MissingBlock,
    RecordNotFound,
    RefNotFound,
    Repo,
    RepoClosed,
    RepoExists,
    RepoNotFound,
    SchemaVersionError,
    SigningKeyMismatch,
    SigningKeyRequired,
    cid_for_cbor,
    generate_signing_key,
    parse_did_key,
)
from pypds.car.reader import CarReader
from pypds.mst import build_tree
from pypds.tid import decode_tid

from .conftest import DID, POST, post, read_uvarint

EMPTY_ROOT = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
LIKE = "app.bsky.feed.like"


def state(repo):
    return repo.head, repo.rev, len(repo.blockstore), repo.list_refs()


# -- create / open / close -----------------------------------------------------------


def test_create_writes_a_signed_commit_over_the_empty_tree(repo):
    commit = repo.commit()
    assert commit.data.encode() == EMPTY_ROOT
    assert commit.did == DID and commit.version == 3 and commit.prev is None
    commit.verify(parse_did_key(repo.did_key))
    assert len(repo.checkout()) == 0
    assert repo.checkout().root.encode() == EMPTY_ROOT


def test_create_refuses_an_existing_repo(tmp_path, repo):
    with pytest.raises(RepoExists):
        Repo.create(repo.path, DID)
    assert repo.find(POST, "a") is None  # the existing repo is untouched


def test_create_rejects_a_bad_did(tmp_path):
    with pytest.raises(InvalidInput):
        Repo.create(tmp_path / "r", "not-a-did")
    assert not (tmp_path / "r" / "pds.db").exists()


def test_open_missing_repo_raises(tmp_path):
    with pytest.raises(RepoNotFound):
        Repo.open(tmp_path / "nothing")


def test_generated_key_is_kept_and_reopen_can_write(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo:
        did_key = repo.did_key
    with Repo.open(tmp_path / "r") as repo:
        assert repo.did_key == did_key
        repo.put(POST, "a", post(1))
        repo.commit().verify(parse_did_key(did_key))


@pytest.mark.parametrize("form", ["object", "bytes", "hex"])
def test_given_key_in_any_form_signs_and_is_not_stored(tmp_path, form):
    key = generate_signing_key()
    given = {"object": key, "bytes": key.to_bytes(), "hex": key.to_bytes().hex()}[form]
    with Repo.create(tmp_path / "r", DID, signing_key=given) as repo:
        assert repo.did_key == key.did_key
        repo.commit().verify(key.public_key)
    with Repo.open(tmp_path / "r") as repo:
        assert repo.signing_key is None
        with pytest.raises(SigningKeyRequired):
            repo.put(POST, "a", post(1))
    with Repo.open(tmp_path / "r", signing_key=key) as repo:
        repo.put(POST, "a", post(1))
        repo.commit().verify(key.public_key)


def test_p256_key_signs_commits(tmp_path):
    key = generate_signing_key("p256")
    with Repo.create(tmp_path / "r", DID, signing_key=key, store_key=True) as repo:
        repo.put(POST, "a", post(1))
        repo.commit().verify(parse_did_key(key.did_key))
    with Repo.open(tmp_path / "r") as repo:
        assert repo.did_key == key.did_key


def test_closed_repo_refuses_every_call(repo):
    repo.close()
    repo.close()  # twice is fine
    for call in (
        lambda: repo.head,
        lambda: repo.find(POST, "a"),
        lambda: repo.put(POST, "a", post(1)),
        lambda: repo.list(POST),
        lambda: repo.export_car(),
        lambda: repo.blockstore.get(cid_for_cbor(b"x")),
    ):
        with pytest.raises(RepoClosed):
            call()


def test_newer_schema_version_is_refused(tmp_path):
    Repo.create(tmp_path / "r", DID).close()
    conn = apsw.Connection(str(tmp_path / "r" / "pds.db"))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaVersionError):
        Repo.open(tmp_path / "r")


# -- records -----------------------------------------------------------------------------


def test_put_find_delete_round_trip(repo):
    cid = repo.put(POST, "3jui7kd54zh2y", post(1))
    assert cid == cid_for_cbor(dag_cbor.encode(post(1)))
    assert repo.find(POST, "3jui7kd54zh2y") == post(1)
    assert repo.find_bytes(POST, "3jui7kd54zh2y") == dag_cbor.encode(post(1))
    assert repo.find_cid(POST, "3jui7kd54zh2y") == cid
    repo.delete(POST, "3jui7kd54zh2y")
    assert repo.find(POST, "3jui7kd54zh2y") is None


def test_record_with_links_and_bytes_round_trips(repo):
    link = cid_for_cbor(b"\xa0")
    record = {
        "$type": "com.example.thing",
        "ref": link,
        "raw": b"\x00\x01",
        "n": -5,
        "ok": True,
        "none": None,
        "list": [{"a": "b"}],
    }
    repo.put("com.example.thing", "self", record)
    assert repo.find("com.example.thing", "self") == record


def test_every_write_is_its_own_signed_commit_with_increasing_revs(repo):
    revs = [repo.rev]
    heads = [repo.head]
    for i in range(5):
        repo.put(POST, f"k{i}", post(i))
        revs.append(repo.rev)
        heads.append(repo.head)
        repo.commit().verify(parse_did_key(repo.did_key))
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    assert len(set(heads)) == len(heads)


def test_revs_increase_even_when_the_clock_stalls_or_goes_back(repo, monkeypatch):
    import time

    frozen = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: frozen)
    revs = []
    for i in range(3):
        repo.put(POST, f"k{i}", post(i))
        revs.append(repo.rev)
    monkeypatch.setattr(time, "time_ns", lambda: frozen - 10**12)
    repo.put(POST, "late", post(9))
    revs.append(repo.rev)
    assert revs == sorted(revs) and len(set(revs)) == 4
    assert decode_tid(revs[-1])[0] > decode_tid(revs[0])[0]


def test_rev_stays_increasing_after_reopen(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo:
        repo.put(POST, "a", post(1))
        first = repo.rev
    with Repo.open(tmp_path / "r") as repo:
        repo.put(POST, "b", post(2))
        assert repo.rev > first


def test_delete_of_missing_record_raises_and_writes_nothing(repo):
    repo.put(POST, "a", post(1))
    before = state(repo)
    with pytest.raises(RecordNotFound):
        repo.delete(POST, "missing")
    assert state(repo) == before


@pytest.mark.parametrize(
    "record,error",
    [
        ({"$type": POST, "n": 1.5}, InvalidRecord),
        ({"text": "no type"}, InvalidRecord),
        ({"$type": ""}, InvalidRecord),
        (["not", "a", "map"], InvalidRecord),
        ("text", InvalidRecord),
        (dag_cbor.encode({"$type": POST})[:-1], InvalidInput),
        (bytes.fromhex("a2617801612401"), InvalidInput),  # unsorted keys
    ],
    ids=["float", "no-type", "empty-type", "list", "str", "truncated-bytes", "non-canonical-bytes"],
)
def test_invalid_record_is_rejected_and_writes_nothing(repo, record, error):
    before = state(repo)
    with pytest.raises(error):
        repo.put(POST, "a", record)
    assert state(repo) == before


def test_canonical_bytes_are_stored_as_given(repo):
    data = dag_cbor.encode(post(3))
    assert repo.put(POST, "b", data) == cid_for_cbor(data)
    assert repo.find_bytes(POST, "b") == data


@pytest.mark.parametrize(
    "collection,rkey",
    [
        ("not an nsid", "a"),
        ("app.bsky", "a"),
        (POST, ""),
        (POST, "."),
        (POST, ".."),
        (POST, "a/b"),
        (POST, "x" * 513),
        (POST, "sp ace"),
    ],
)
def test_invalid_paths_are_rejected(repo, collection, rkey):
    with pytest.raises(InvalidRepoPath):
        repo.put(collection, rkey, post(1))
    with pytest.raises(InvalidRepoPath):
        repo.find(collection, rkey)


def test_list_orders_pages_and_reverses(repo):
    with repo.batch() as batch:
        for i in range(30):
            batch.put(POST, f"k{i:03d}", post(i))
        batch.put(LIKE, "x", {"$type": LIKE})
        batch.put("app.bsky.feed.postz", "y", {"$type": "z"})  # shares the prefix "app.bsky.feed.post"
    rkeys = [r for r, _ in repo.list(POST)]
    assert rkeys == [f"k{i:03d}" for i in range(30)]
    assert [r for r, _ in repo.list(POST, limit=3, cursor="k010")] == ["k011", "k012", "k013"]
    assert [r for r, _ in repo.list(POST, limit=2, reverse=True)] == ["k029", "k028"]
    assert [r for r, _ in repo.list(POST, limit=2, reverse=True, cursor="k010")] == ["k009", "k008"]
    assert repo.list(POST, limit=0) == []
    assert repo.list("com.example.none") == []
    assert repo.collections() == [POST, LIKE, "app.bsky.feed.postz"] or repo.collections() == sorted(
        [POST, LIKE, "app.bsky.feed.postz"]
    )
    assert dict(repo.list(POST))["k005"] == repo.find_cid(POST, "k005")


# -- batches -----------------------------------------------------------------------------


def test_batch_is_one_commit(repo):
    start = repo.head
    with repo.batch() as batch:
        batch.put(POST, "a", post(1))
        batch.put(POST, "b", post(2))
        batch.delete(POST, "a")
    assert batch.commit == repo.head != start
    assert repo.find(POST, "a") is None and repo.find(POST, "b") == post(2)
    assert [k for k, _ in repo.checkout()] == [f"{POST}/b"]


def test_exception_inside_batch_discards_everything(repo):
    before = state(repo)
    with pytest.raises(ZeroDivisionError), repo.batch() as batch:
        batch.put(POST, "a", post(1))
        1 / 0  # noqa: B018
    assert state(repo) == before
    assert repo.find(POST, "a") is None


def test_batch_deleting_a_missing_record_writes_nothing(repo):
    before = state(repo)
    with pytest.raises(RecordNotFound), repo.batch() as batch:
        batch.put(POST, "a", post(1))
        batch.delete(POST, "never")
    assert state(repo) == before


def test_bulk_batch_and_single_writes_give_the_same_root(tmp_path):
    records = {
        f"3k{i:011d}".replace("0", "2").replace("1", "3").replace("8", "a").replace("9", "b"): post(i)
        for i in range(300)
    }
    with Repo.create(tmp_path / "bulk", DID) as bulk, Repo.create(tmp_path / "one", DID) as one:
        with bulk.batch() as batch:
            for rkey, record in records.items():
                batch.put(POST, rkey, record)
        for rkey, record in list(records.items())[:40]:
            one.put(POST, rkey, record)
        with one.batch() as batch:
            for rkey, record in list(records.items())[40:]:
                batch.put(POST, rkey, record)
        assert bulk.checkout().root == one.checkout().root
        items = sorted((f"{POST}/{k}".encode(), cid_for_cbor(dag_cbor.encode(v))) for k, v in records.items())
        assert build_tree(items)[0].cid == bulk.checkout().root


# -- blobs -------------------------------------------------------------------------------


def test_blob_round_trip_and_ref(repo):
    ref = repo.put_blob(b"\x89PNG fake", "image/png")
    assert ref.cid.encode().startswith("bafkrei") and ref.size == 9
    assert ref.to_json() == {
        "$type": "blob",
        "ref": {"$link": ref.cid.encode()},
        "mimeType": "image/png",
        "size": 9,
    }
    assert repo.blob(ref.cid) == b"\x89PNG fake"
    assert repo.blob(ref.cid.encode()) == b"\x89PNG fake"
    name = ref.cid.encode()
    assert (repo.path / "blobs" / name[:2] / name).is_file()
    assert not [p for p in (repo.path / "blobs").rglob(".tmp-*")]
    repo.put(POST, "with-blob", {"$type": POST, "embed": ref.to_record()})
    assert repo.find(POST, "with-blob")["embed"]["ref"] == ref.cid


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_damaged_blob_file_is_detected_on_read(repo, damage):
    ref = repo.put_blob(b"some blob bytes", "text/plain")
    path = repo.path / "blobs" / ref.cid.encode()[:2] / ref.cid.encode()
    data = path.read_bytes()
    path.write_bytes(data[:-3] if damage == "truncate" else b"X" + data[1:])
    with pytest.raises(BlockHashMismatch, match=ref.cid.encode()):
        repo.blob(ref.cid)


def test_missing_blob_is_none(repo):
    assert repo.blob(cid_for_cbor(b"x")) is None
    with pytest.raises(InvalidInput):
        repo.put_blob(b"x", "nonsense")


# -- state: head, checkout, refs, blockstore ----------------------------------------------


def test_set_head_moves_back_and_forth(repo):
    repo.put(POST, "a", post(1))
    first = repo.head
    repo.put(POST, "b", post(2))
    second = repo.head
    repo.set_head(first)
    assert repo.head == first and repo.find(POST, "b") is None
    assert len(repo.checkout(second)) == 2
    repo.put(POST, "c", post(3))  # writes continue from the moved HEAD
    assert sorted(k for k, _ in repo.checkout()) == [f"{POST}/a", f"{POST}/c"]
    repo.set_head(second)
    assert repo.find(POST, "b") == post(2)


def test_set_head_refuses_non_commits_and_incomplete_trees(repo):
    repo.put(POST, "a", post(1))
    before = state(repo)
    record_cid = repo.find_cid(POST, "a")
    with pytest.raises(Exception) as info:
        repo.set_head(record_cid)
    assert "commit" in str(info.value)
    with pytest.raises(MissingBlock):
        repo.set_head(cid_for_cbor(b"\xa0"))
    # a commit whose record block is missing
    repo.put(POST, "b", post(2))
    target = repo.head
    repo.set_head(before[0])
    repo._state.store.conn.execute("DELETE FROM blocks WHERE cid = ?", (repo.find_cid(POST, "a").cid_bytes,))
    # (deleting a block by hand simulates a damaged store)
    with pytest.raises(MissingBlock):
        repo.set_head(target)
    assert repo.head == before[0]


def test_set_head_refuses_a_commit_of_another_did(tmp_path, repo):
    with Repo.create(tmp_path / "other", "did:plc:other") as other:
        car = other.export_car()
    for cid, data in CarReader(car):
        repo.blockstore.put(data, cid)
    with pytest.raises(DidMismatch):
        repo.set_head(CarReader(car).roots[0])


def test_refs_set_get_list_delete(repo):
    repo.put(POST, "a", post(1))
    repo.set_ref("backup", repo.head)
    repo.set_ref("also", repo.head)
    assert repo.ref("backup") == repo.head
    assert [n for n, _ in repo.list_refs()] == ["also", "backup"]
    repo.delete_ref("also")
    assert repo.ref("also") is None
    with pytest.raises(RefNotFound):
        repo.delete_ref("also")
    with pytest.raises(MissingBlock):
        repo.set_ref("bad", cid_for_cbor(b"\xa0"))
    with pytest.raises(InvalidInput):
        repo.set_ref("", repo.head)


def test_blockstore_get_has_put_iterate(repo):
    data = dag_cbor.encode({"hello": "world"})
    cid = repo.blockstore.put(data)
    assert repo.blockstore.get(cid) == data and repo.blockstore.has(cid) and cid in repo.blockstore
    with pytest.raises(BlockHashMismatch):
        repo.blockstore.put(data, cid_for_cbor(b"other"))
    assert dict(iter(repo.blockstore))[cid] == data
    assert len(repo.blockstore) == len(list(repo.blockstore))


# -- CAR export / import -----------------------------------------------------------------


def _filled(repo, n=60):
    with repo.batch() as batch:
        for i in range(n):
            batch.put(POST if i % 3 else LIKE, f"r{i:04d}", post(i))
    return repo


def _independent_read(car: bytes):
    """Parse a CAR with the pure-Python dag_cbor package, checking every hash."""
    import hashlib

    import multiformats

    stream = io.BytesIO(car)

    def varint() -> int:
        return read_uvarint(stream)

    header = dag_cbor.decode(stream.read(varint()))
    blocks = []
    while stream.tell() < len(car):
        section = stream.read(varint())
        cid = multiformats.CID.decode(section[:36])
        assert hashlib.sha256(section[36:]).digest() == bytes(cid.digest)[2:]
        blocks.append((cid.encode("base32"), dag_cbor.decode(section[36:])))
    return header, blocks


def test_export_is_readable_by_an_independent_decoder(repo):
    _filled(repo)
    header, blocks = _independent_read(repo.export_car())
    assert header["version"] == 1 and header["roots"][0].encode("base32") == repo.head.encode()
    assert blocks[0][0] == repo.head.encode()
    assert blocks[0][1]["data"].encode("base32") == blocks[1][0]  # the root node follows the commit
    record_types = [b["$type"] for _, b in blocks if isinstance(b, dict) and "$type" in b]
    assert len(record_types) == 60


def test_export_to_path_file_and_bytes_are_identical(repo, tmp_path):
    _filled(repo)
    as_bytes = repo.export_car()
    repo.export_car(tmp_path / "a.car")
    with open(tmp_path / "b.car", "wb") as out:
        repo.export_car(out)
    assert (tmp_path / "a.car").read_bytes() == as_bytes == (tmp_path / "b.car").read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_export_of_an_older_commit(repo):
    _filled(repo, 10)
    old = repo.head
    repo.put(POST, "new", post(99))
    _, blocks = _independent_read(repo.export_car(commit=old))
    assert blocks[0][0] == old.encode()


def test_import_round_trip_gives_same_head_root_and_bytes(repo, tmp_path):
    _filled(repo)
    car = repo.export_car()
    with Repo.from_car(tmp_path / "copy", car, key=repo.did_key) as copy:
        assert copy.did == DID and copy.head == repo.head and copy.rev == repo.rev
        assert copy.checkout().root == repo.checkout().root
        assert copy.export_car() == car
        assert copy.signing_key is None
    with Repo.open(tmp_path / "copy") as copy:
        assert copy.find(POST, "r0001") == post(1)


def test_import_into_existing_repo_and_continue_writing(repo, tmp_path):
    _filled(repo)
    car = repo.export_car()
    with Repo.create(tmp_path / "target", DID) as target:
        kept = target.import_car(car)
        assert kept == 1 + sum(1 for _ in CarReader(car)) - 1
        assert target.head == repo.head
        with pytest.raises(SigningKeyMismatch):  # HEAD was signed by the source's key, not target's
            target.put(POST, "after", post(1000))
        assert target.head == repo.head
    with Repo.open(tmp_path / "target", rotate_key=True) as target:
        target.put(POST, "after", post(1000))
        assert target.rev > repo.rev
        assert target.find(POST, "r0001") == post(1)


def test_import_with_wrong_key_is_rejected_without_change(repo, tmp_path):
    _filled(repo, 5)
    car = repo.export_car()
    with Repo.create(tmp_path / "target", DID) as target:
        before = state(target)
        with pytest.raises(Exception, match="signature"):
            target.import_car(car, key=generate_signing_key().did_key)
        assert state(target) == before


def test_import_from_file_object_and_path(repo, tmp_path):
    _filled(repo, 5)
    path = tmp_path / "r.car"
    repo.export_car(path)
    with Repo.from_car(tmp_path / "a", path) as a, Repo.from_car(tmp_path / "b", open(path, "rb")) as b:
        assert a.head == b.head == repo.head


# -- several handles on one repo -----------------------------------------------------------


def test_second_handle_sees_writes_and_builds_on_them(repo):
    with Repo.open(repo.path) as other:
        repo.put(POST, "a", post(1))
        assert other.find(POST, "a") == post(1)
        assert other.head == repo.head
        other.put(POST, "b", post(2))
        # the first handle's next write must not lose the other's commit
        repo.put(POST, "c", post(3))
        assert sorted(r for r, _ in repo.list(POST)) == ["a", "b", "c"]
        assert sorted(r for r, _ in other.list(POST)) == ["a", "b", "c"]


def test_repo_files_layout(repo):
    assert (repo.path / "pds.db").is_file()
    repo.put_blob(b"x", "text/plain")
    assert (repo.path / "blobs").is_dir()
    assert os.listdir(repo.path / "blobs")


def test_checkout_view(repo):
    _filled(repo, 20)
    view = repo.checkout()
    assert len(view) == 20
    assert view.get(f"{POST}/r0001") == repo.find_cid(POST, "r0001")
    assert view.get(f"{POST}/nope") is None
    keys = [k for k, _ in view]
    assert keys == sorted(keys)
    assert isinstance(view.root, CID)


# -- property: any write history gives the root of its final record set ---------------------


_RKEYS = st.sampled_from([f"3k{c}{d}aaaaaaaaa" for c in "234567abc" for d in "defgh"])
_OPS = st.lists(st.tuples(st.sampled_from(["put", "delete", "batch"]), _RKEYS, st.integers(0, 3)), max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_OPS)
def test_any_write_history_gives_the_root_of_the_final_record_set(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("prop") / "r"
    present: dict[str, dict] = {}
    with Repo.create(path, DID, durability="normal") as repo:
        for action, rkey, n in ops:
            if action == "put":
                repo.put(POST, rkey, post(n))
                present[rkey] = post(n)
            elif action == "delete" and rkey in present:
                repo.delete(POST, rkey)
                del present[rkey]
            elif action == "batch":
                with repo.batch() as batch:
                    batch.put(POST, rkey, post(n + 1))
                    present[rkey] = post(n + 1)
                    for other in sorted(present)[:2]:
                        if other != rkey:
                            batch.delete(POST, other)
                            del present[other]
        items = sorted((f"{POST}/{k}".encode(), cid_for_cbor(dag_cbor.encode(v))) for k, v in present.items())
        assert repo.checkout().root == build_tree(items)[0].cid
        assert {k: repo.find(POST, k) for k in present} == present
        repo._state.check_complete(repo.checkout().root)  # every node and record of HEAD is stored


def test_writer_blocked_past_busy_timeout_gets_repo_busy(repo):
    from pypds import RepoBusy

    with Repo.open(repo.path, busy_timeout=0.2) as other:
        repo._state.store.conn.execute("BEGIN IMMEDIATE")  # hold the write lock, as a long commit would
        try:
            before = other.head
            with pytest.raises(RepoBusy, match="another writer"):
                other.put(POST, "a", post(1))
            assert other.head == before  # reads are not blocked by a writer (WAL)
        finally:
            repo._state.store.conn.execute("ROLLBACK")
        other.put(POST, "a", post(1))


def test_stale_blob_temp_files_are_removed_on_open(tmp_path):
    import time

    with Repo.create(tmp_path / "r", DID) as repo:
        ref = repo.put_blob(b"data", "text/plain")
    shard = tmp_path / "r" / "blobs" / ref.cid.encode()[:2]
    old, fresh = shard / ".tmp-old", shard / ".tmp-fresh"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"in progress elsewhere")
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    with Repo.open(tmp_path / "r") as repo:
        assert repo.blob(ref.cid) == b"data"
    assert not old.exists() and fresh.exists()


def test_list_blobs_pages_in_cid_order(repo):
    refs = [repo.put_blob(bytes([i]) * 10, "application/octet-stream") for i in range(5)]
    repo.put(POST, "a", {**post(1), "embed": {"images": [{"image": ref.to_record()} for ref in refs]}})
    cids = sorted(ref.cid.encode() for ref in refs)
    assert [c.encode() for c in repo.list_blobs()] == cids
    assert [c.encode() for c in repo.list_blobs(cursor=cids[1], limit=2)] == cids[2:4]
    assert repo.list_blobs(limit=0) == []


def _index_matches_tree(repo):
    index = list(repo._state.store.index_all())
    tree = [(k.encode(), v) for k, v in repo.checkout()]
    return index == tree


def test_paths_index_follows_every_head_move(repo, tmp_path):
    with repo.batch() as batch:
        for i in range(120):
            batch.put(POST, f"k{i:04d}", post(i))
    assert _index_matches_tree(repo)
    first = repo.head
    repo.put(POST, "k0005", post(999))
    repo.delete(POST, "k0006")
    assert _index_matches_tree(repo)
    repo.set_head(first)
    assert _index_matches_tree(repo) and repo.find(POST, "k0006") == post(6)
    car = repo.export_car()
    with Repo.create(tmp_path / "other", DID) as other:
        other.put(POST, "zzz", post(1))
        other.import_car(car)
        assert _index_matches_tree(other) and other.find(POST, "zzz") is None


def test_paths_index_is_rebuilt_when_it_does_not_match_head(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo:
        for i in range(10):
            repo.put(POST, f"k{i}", post(i))
    conn = apsw.Connection(str(tmp_path / "r" / "pds.db"))
    conn.execute("DELETE FROM paths; DELETE FROM meta WHERE key = 'index_head'")  # as an older pypds left it
    conn.close()
    with Repo.open(tmp_path / "r") as repo:
        assert _index_matches_tree(repo) and repo.find(POST, "k3") == post(3)
        assert repo.verify().ok


def test_iter_car_streams_the_same_bytes_as_export(repo):
    with repo.batch() as batch:
        for i in range(300):
            batch.put("app.bsky.feed.post", f"3kzfcijpj{i:04d}", post(i))
    whole = repo.export_car()
    chunks = list(repo.iter_car(chunk_size=1000))
    assert len(chunks) > 5
    assert b"".join(chunks) == whole
    old_rev = repo.commit().rev
    repo.put("app.bsky.feed.post", "3mzzzzzzzzz22", post(1000))
    assert b"".join(repo.iter_car(since=old_rev)) == repo.export_car(since=old_rev)


def test_iter_car_raises_before_streaming_when_commit_is_absent(repo):
    from pypds.codec.cid import cid_for_cbor
    from pypds.errors import MissingBlock

    absent = cid_for_cbor(b"\xa0")
    with pytest.raises(MissingBlock):
        repo.iter_car(commit=absent)


def _export_by_point_reads(repo) -> bytes:
    """The CAR built from the tree alone (no paths index): node blocks, then each record by its CID."""
    from pypds.car.writer import CarWriter
    from pypds.mst.nodestore import NodeStore
    from pypds.mst.tree import iter_stream_order

    out = io.BytesIO()
    writer = CarWriter(out, [repo.head])
    writer.write_block(repo.head, repo.blockstore.get(repo.head))
    seen = set()
    for cid, node in iter_stream_order(NodeStore(repo.blockstore.get), repo.commit().data):
        if node is None and cid.cid_bytes in seen:
            continue
        seen.add(cid.cid_bytes)
        writer.write_block(cid, node.data if node is not None else repo.blockstore.get(cid))
    return out.getvalue()


def test_export_with_duplicate_records_matches_point_reads(repo):
    with repo.batch() as batch:
        for i in range(500):
            batch.put(POST, f"3kzfcijpj{i:04d}", post(i % 7))  # many paths share a record CID
    assert repo.export_car() == _export_by_point_reads(repo)


def test_export_survives_a_stale_paths_index(repo, tmp_path):
    with repo.batch() as batch:
        for i in range(300):
            batch.put(POST, f"3kzfcijpj{i:04d}", post(i))
    expected = _export_by_point_reads(repo)
    conn = apsw.Connection(str(repo.path / "pds.db"))
    conn.execute(
        "UPDATE paths SET cid = (SELECT cid FROM paths ORDER BY path LIMIT 1) WHERE path = ?",
        (f"{POST}/3kzfcijpj0100".encode(),),
    )
    conn.execute("DELETE FROM paths WHERE path = ?", (f"{POST}/3kzfcijpj0200".encode(),))
    conn.close()
    assert repo.export_car() == expected


def test_version_3_store_gets_rowid_blocks_on_open(tmp_path):
    """Version 3 kept blocks in a WITHOUT ROWID table keyed by CID; opening converts it, keeping every block."""
    from pypds.storage.store import SCHEMA_VERSION

    path = tmp_path / "r"
    with Repo.create(path, DID) as repo:
        with repo.batch() as batch:
            for i in range(200):
                batch.put(POST, f"3kzfcijpj{i:04d}", post(i))
        repo.put_blob(b"blob bytes", "text/plain")
        car, head, count = repo.export_car(), repo.head, repo._state.store.count_blocks()
    conn = apsw.Connection(str(path / "pds.db"))
    conn.execute(
        "ALTER TABLE blocks RENAME TO blocks_v4;"
        "CREATE TABLE blocks (cid BLOB PRIMARY KEY, rev TEXT NOT NULL, data BLOB NOT NULL) WITHOUT ROWID;"
        "INSERT INTO blocks SELECT cid, rev, data FROM blocks_v4; DROP TABLE blocks_v4; DROP TABLE blob_types;"
        "PRAGMA user_version = 3"
    )
    conn.close()
    with Repo.open(path) as repo:
        assert repo.head == head and repo.export_car() == car
        assert repo._state.store.count_blocks() == count
        assert repo.verify().ok
        repo.put(POST, "3mzzzzzzzzz22", post(1))
    conn = apsw.Connection(str(path / "pds.db"))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = [row[1] for row in conn.execute("PRAGMA table_info(blocks)")]
    assert columns == ["id", "cid", "rev", "data"]
    assert (
        conn.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE '%v3%' OR name LIKE '%v4%'").fetchone()[0] == 0
    )
