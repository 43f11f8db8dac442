"""Repository format version 2: real exports written by the Go reference implementation (indigo).

Each export is checked against an independent reading done here with the
pure-Python ``dag-cbor`` package (framing, MST walk, record CIDs), and every
read path of pypds must agree with it.
"""

from __future__ import annotations

import hashlib
import io
import json

import dag_cbor
import pytest
from multiformats import CID as MCID

from pypds import (
    CID,
    BadSignature,
    InvalidCommit,
    NotFound,
    Repo,
    decode_commit,
    generate_signing_key,
    verify_car,
    verify_proof,
)
from pypds.cli import main
from pypds.keys import P256_ORDER
from pypds.net.identity import identity_from_document

from .conftest import REALWORLD, encode_dag_cbor, post

V2 = REALWORLD / "indigo-v2-repos"
EXPORTS = ["fakermaker", "paul_staging"]


def _uvarint(stream: io.BytesIO) -> int:
    value = shift = 0
    while True:
        byte = stream.read(1)[0]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value


class Export:
    """One v2 export, read independently of pypds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.car = (V2 / f"{name}.repo.car").read_bytes()
        document = json.loads((V2 / f"{name}.didDoc.json").read_text())
        self.did = document["id"]
        self.key = identity_from_document(self.did, document).signing_key
        stream = io.BytesIO(self.car)
        header = dag_cbor.decode(stream.read(_uvarint(stream)))
        self.blocks: dict[bytes, bytes] = {}
        while stream.tell() < len(self.car):
            section = stream.read(_uvarint(stream))
            self.blocks[section[:36]] = section[36:]
        self.root = CID(bytes(header["roots"][0]))
        self.commit = dag_cbor.decode(self.blocks[self.root.cid_bytes])
        self.data = CID(bytes(self.commit["data"]))
        self.records: list[tuple[str, CID]] = []
        self.nodes = 0
        self._walk(self.commit["data"])

    def _walk(self, link: MCID) -> None:
        self.nodes += 1
        node = dag_cbor.decode(self.blocks[bytes(link)])
        if node["l"] is not None:
            self._walk(node["l"])
        key = b""
        for entry in node["e"]:
            key = key[: entry["p"]] + entry["k"]
            self.records.append((key.decode(), CID(bytes(entry["v"]))))
            if entry["t"] is not None:
                self._walk(entry["t"])

    def value(self, cid: CID) -> dict:
        return dag_cbor.decode(self.blocks[cid.cid_bytes])


@pytest.fixture(scope="module", params=EXPORTS)
def export(request) -> Export:
    return Export(request.param)


@pytest.fixture
def imported(export, tmp_path):
    with Repo.from_car(tmp_path / export.name, export.car, key=export.key) as repo:
        yield repo


def test_the_independent_reading_sees_version_2_commits_with_history_blocks(export):
    assert export.commit["version"] == 2 and "rev" not in export.commit
    assert len(export.blocks) > 1 + export.nodes + len({cid for _k, cid in export.records})


def test_every_record_block_hashes_to_its_cid(export):
    for _key, cid in export.records:
        assert hashlib.sha256(export.blocks[cid.cid_bytes]).digest() == cid.cid_bytes[4:]


def test_decode_commit_reads_version_2_without_a_rev(export):
    commit = decode_commit(export.blocks[export.root.cid_bytes], export.root)
    assert commit.version == 2 and commit.rev is None
    assert commit.data == export.data
    assert commit.prev == CID(bytes(export.commit["prev"]))
    assert commit.encode() == export.blocks[export.root.cid_bytes]  # round-trips byte for byte


def test_each_export_verifies_against_its_did_documents_key(export):
    report = verify_car(export.car, did=export.did, key=export.key)
    assert report.ok, str(report)
    assert report.version == 2 and report.rev is None
    assert "version 2" in report["commit"].detail
    assert report.records == len(export.records)


def test_which_key_signed_which_export():
    fakermaker, paul = Export("fakermaker"), Export("paul_staging")
    assert fakermaker.key.curve == "p256" and paul.key.curve == "k256"
    high_s = int.from_bytes(fakermaker.commit["sig"][32:], "big") > P256_ORDER // 2
    assert high_s
    assert "high-S" in verify_car(fakermaker.car, key=fakermaker.key)["signature"].detail
    assert "high-S" not in verify_car(paul.car, key=paul.key)["signature"].detail
    # the other export's key verifies neither
    assert not verify_car(fakermaker.car, key=paul.key).ok
    assert not verify_car(paul.car, key=fakermaker.key).ok


def test_high_s_is_never_accepted_for_version_3(tmp_path):
    key = generate_signing_key("p256")
    with Repo.create(tmp_path / "r", "did:plc:w4xbfzo7kqfes5zb7r6qv3rw", signing_key=key) as repo:
        commit = repo.commit()
    s = int.from_bytes(commit.sig[32:], "big")
    flipped = commit.sig[:32] + (P256_ORDER - s).to_bytes(32, "big")
    high = decode_commit(encode_dag_cbor({**commit.unsigned(), "sig": flipped}))
    with pytest.raises(BadSignature, match="high-S"):
        high.verify(key.public_key)
    commit.verify(key.public_key)


@pytest.mark.parametrize("version", [1, 4, "2", 2.0, None, -3])
def test_other_versions_name_the_versions_pypds_reads(version):
    block = encode_dag_cbor(
        {
            "did": "did:plc:w4xbfzo7kqfes5zb7r6qv3rw",
            "version": version,
            "data": CID.decode("bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"),
            "prev": None,
            "sig": bytes(64),
        }
    )
    with pytest.raises(InvalidCommit, match="pypds reads versions 2 and 3"):
        decode_commit(block)


def test_a_version_2_commit_with_a_rev_or_a_version_3_commit_without_one_is_refused():
    data = CID.decode("bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454")
    base = {"did": "did:plc:w4xbfzo7kqfes5zb7r6qv3rw", "data": data, "prev": None, "sig": bytes(64)}
    with pytest.raises(InvalidCommit, match="rev"):
        decode_commit(encode_dag_cbor({**base, "version": 2, "rev": "3jui7kd54zh2y"}))
    with pytest.raises(InvalidCommit, match=r"missing field\(s\) \['rev'\]"):
        decode_commit(encode_dag_cbor({**base, "version": 3}))


# -- a stored version 2 repository -----------------------------------------------------------


def test_from_car_stores_exactly_the_tree_and_reads_every_record(export, imported):
    assert imported.head == export.root
    assert imported.commit().version == 2
    assert imported.rev is None
    assert imported.checkout().root == export.data
    assert list(imported.checkout()) == export.records
    for key, cid in export.records:
        collection, rkey = key.split("/")
        assert imported.find_cid(collection, rkey) == cid
        assert imported.find_bytes(collection, rkey) == export.blocks[cid.cid_bytes]
        assert imported.find(collection, rkey).keys() == export.value(cid).keys()
    assert len(imported.blockstore) == 1 + export.nodes + len({cid for _k, cid in export.records})
    assert imported.verify(key=export.key).ok


def test_export_writes_the_same_tree_and_re_imports(export, imported, tmp_path):
    car = imported.export_car()
    report = verify_car(car, did=export.did, key=export.key)
    assert report.ok and report.records == len(export.records)
    with Repo.from_car(tmp_path / "again", car) as again:
        assert again.head == export.root
        assert again.export_car() == car


def test_import_car_into_an_existing_copy(export, imported, tmp_path):
    with Repo.from_car(tmp_path / "copy", imported.export_car()) as copy:
        assert copy.import_car(export.car, key=export.key) >= 1
        assert copy.head == export.root


def test_proofs_of_a_version_2_repository(export, imported):
    key, cid = export.records[len(export.records) // 2]
    collection, rkey = key.split("/")
    proof = imported.prove(collection, rkey)
    assert verify_proof(proof, collection, rkey, did=export.did, key=export.key) == cid
    absent = imported.prove(collection, rkey + "x")
    assert verify_proof(absent, collection, rkey + "x", did=export.did, key=export.key) is None


def test_the_first_write_makes_a_version_3_commit_on_the_same_tree(export, tmp_path):
    key = generate_signing_key()
    # the export's own key is not ours: writing on it is a key rotation, made explicit
    with Repo.from_car(tmp_path / "w", export.car, signing_key=key, rotate_key=True) as repo:
        old_head = repo.head
        cid = repo.put("app.bsky.feed.post", "3zzzzzzzzzzzz", post(1))
        commit = repo.commit()
        assert commit.version == 3 and commit.prev is None
        assert commit.rev is not None and repo.rev == commit.rev
        commit.verify(key.public_key)
        changes = repo.diff(old_head)
        assert [(c.action, c.path, c.new) for c in changes] == [("create", "app.bsky.feed.post/3zzzzzzzzzzzz", cid)]
        assert len(repo.checkout()) == len(export.records) + 1
        # the event of that first v3 commit: since is null (v2 has no rev), prevData is the v2 tree
        event = repo.commit_event()
        assert event["since"] is None and event["prevData"] == export.data
        # moving back to the v2 commit is an explicit act and works
        repo.set_head(old_head)
        assert repo.rev is None and repo.commit().version == 2
        assert len(repo.checkout()) == len(export.records)


def test_rev_based_features_on_a_version_2_head(export, imported):
    # a diff against a rev cannot be expressed from a commit without one: the whole repo is written
    assert imported.export_car(since="3jui7kd54zh2y") == imported.export_car()
    with pytest.raises(NotFound, match="version 2"):
        imported.commit_event()
    assert imported.list_blobs(since="3jui7kd54zh2y") == imported.list_blobs()


# -- the command line on version 2 data ------------------------------------------------------


@pytest.mark.parametrize("name", EXPORTS)
def test_read_commands_work_on_a_version_2_car_and_directory(name, tmp_path, capsys):
    def _run(*args: str) -> str:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    export = Export(name)
    car = str(V2 / f"{name}.repo.car")
    assert "OK" in _run("verify", car, "--did", export.did, "--key", export.key.did_key)
    info = json.loads(_run("inspect", car, "--json", "--key", export.key.did_key))
    assert info["version"] == 2 and info["rev"] is None and info["signature"]["status"] == "valid"
    assert info["records"] == len(export.records)
    assert "version 2" in _run("inspect", car)
    listed = _run("ls", car).split("\n")
    assert len([line for line in listed if line]) == len(export.records)
    key, _cid = export.records[0]
    assert json.loads(_run("get", car, *key.split("/")))  # the record as JSON
    _run("mst", car)
    _run("unpack", car, "-o", str(tmp_path / "unpacked"))
    assert json.loads((tmp_path / "unpacked" / "_commit.json").read_text())["version"] == 2
    assert len(list((tmp_path / "unpacked").glob("*/*.json"))) == len(export.records)
    _run("import", str(tmp_path / "repo"), car)
    assert "OK" in _run("verify", str(tmp_path / "repo"), "--key", export.key.did_key)
    _run("diff", car, str(tmp_path / "repo"))
    _run("export", str(tmp_path / "repo"), "-o", str(tmp_path / "out.car"))
    assert verify_car((tmp_path / "out.car").read_bytes(), key=export.key).ok
