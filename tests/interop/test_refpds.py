"""pypds against the reference implementation (@atproto/pds, @atproto/repo), both ways.

Opt-in: ``tests/interop/setup.sh`` once, then ``python -m pytest -m refpds
tests/interop``. One reference PLC + PDS runs for the session (see
conftest.py); accounts, records and blobs are made through its XRPC API.

* pypds reads the reference: ``pypds download`` by handle and by DID (with
  ``--blobs``, then ``--since`` after creates, updates and deletes) equals
  what listRecords / getRecord / listBlobs / getBlob say; ``verify_car`` on
  getRepo, ``verify_proof`` on sync.getRecord proofs (inclusion and
  exclusion), ``verify_commit_message`` on every subscribeRepos #commit.
* The reference reads pypds: @atproto/repo verifies a CAR pypds built and
  what ``pypds serve`` answers (repo and proofs), and rebuilds the same MST
  root from the records.
* Migration: a repository pypds built with its own key goes into the
  reference PDS with ``pypds push`` (createAccount with a service-auth JWT,
  importRepo, uploadBlob), after which the PDS's head is pypds' HEAD; a
  second push logs in with the account's password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import aiohttp
import cbrrr
import pytest

from pypds import (
    CID,
    Mirror,
    Outcome,
    Repo,
    ResolverConfig,
    from_json,
    generate_signing_key,
    to_json,
    verify_car,
    verify_proof,
)
from pypds.cli import main
from pypds.codec import cbor as pcbor
from pypds.codec.cid import cid_for_raw, link_from_bytes
from pypds.net.archive import shard_of
from pypds.net.identity import resolve
from pypds.net.server import make_app
from pypds.sync.firehose import verify_commit_message
from pypds.tid import encode_tid

from ..netstubs import ServerThread
from .conftest import run_node

pytestmark = pytest.mark.refpds

POST = "app.bsky.feed.post"
BASE_MICROS = 1_700_000_000_000_000
PROFILE = "app.bsky.actor.profile"
LIKE = "app.bsky.feed.like"


# -- a small XRPC client (urllib; every URL here is http://localhost:<port>) ---------------------------


def xrpc(base: str, method: str, *, params=None, body=None, token=None, content_type="application/json", raw=False):
    url = f"{base}/xrpc/{method}"
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    assert url.startswith(("http://localhost:", "http://127.0.0.1:")), url
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} failed: {exc.code} {exc.read()[:500]!r}") from None
    if raw:
        return answer
    return json.loads(answer) if answer else {}


def tid(i: int, kind: int = 0) -> str:
    """A fixed TID record key: ``kind`` 0 posts, 1 likes, 2 later posts."""
    return encode_tid(BASE_MICROS + kind * 10_000_000 + i * 1000)


def png(seed: int, size: int = 8) -> bytes:
    """A valid RGB PNG of ``size`` x ``size`` pixels whose colours depend on ``seed``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes((seed * 37 + x * 11 + y * 5) % 256 for x in range(size * 3)) for y in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def upload(refpds, account, data: bytes, mime: str = "image/png") -> dict:
    return xrpc(refpds.pds, "com.atproto.repo.uploadBlob", body=data, token=account["accessJwt"], content_type=mime)[
        "blob"
    ]


def new_post(i: int, image: dict | None = None) -> dict:
    record = {
        "$type": POST,
        "text": f"interop post {i}",
        "createdAt": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
    }
    if image is not None:
        record["embed"] = {"$type": "app.bsky.embed.images", "images": [{"image": image, "alt": f"image {i}"}]}
    return record


def apply_writes(refpds, account, writes: list[dict]) -> None:
    body = {"repo": account["did"], "writes": writes}
    xrpc(refpds.pds, "com.atproto.repo.applyWrites", body=body, token=account["accessJwt"])


def create(collection: str, rkey: str, value: dict) -> dict:
    return {"$type": "com.atproto.repo.applyWrites#create", "collection": collection, "rkey": rkey, "value": value}


def update(collection: str, rkey: str, value: dict) -> dict:
    return {"$type": "com.atproto.repo.applyWrites#update", "collection": collection, "rkey": rkey, "value": value}


def delete(collection: str, rkey: str) -> dict:
    return {"$type": "com.atproto.repo.applyWrites#delete", "collection": collection, "rkey": rkey}


@pytest.fixture(scope="module")
def alice(refpds):
    """An account on the reference PDS with 30 posts (4 with images), a profile with an avatar and 5 likes."""
    handle = f"alice{refpds.handle_domain}"
    body = {"handle": handle, "email": "alice@example.com", "password": "alice-password"}
    account = xrpc(refpds.pds, "com.atproto.server.createAccount", body=body)
    images = [upload(refpds, account, png(i)) for i in range(5)]
    writes = [create(POST, tid(i), new_post(i, images[i] if i < 4 else None)) for i in range(30)]
    writes.append(create(PROFILE, "self", {"$type": PROFILE, "displayName": "Alice", "avatar": images[4]}))
    for i in range(5):
        subject = {"uri": f"at://{account['did']}/{POST}/{tid(i)}", "cid": cid_for_raw(b"subject").encode()}
        writes.append(
            create(LIKE, tid(i, 1), {"$type": LIKE, "subject": subject, "createdAt": new_post(i)["createdAt"]})
        )
    apply_writes(refpds, account, writes[:20])
    apply_writes(refpds, account, writes[20:])
    return {**account, "handle": handle}


def resolver_config(refpds) -> ResolverConfig:
    """Resolve through the reference PLC, and handles through the PDS's /.well-known/atproto-did (no DNS)."""
    return ResolverConfig(plc_url=refpds.plc, web_base=refpds.pds, dns=False, timeout=10.0, **private_network_opt_in())


def private_network_opt_in() -> dict:
    """The reference PDS lives on localhost: network-learned loopback addresses need the opt-in."""
    return {"allow_private_network": True}


def cli_network_options(refpds) -> list[str]:
    return ["--plc-url", refpds.plc, "--web-base", refpds.pds, "--timeout", "10", "--quiet", "--json"] + [
        "--allow-private-network"
    ]


def signing_key_of(refpds, did: str):
    return resolve(did, config=resolver_config(refpds)).signing_key


# -- what the PDS says, and the comparison ---------------------------------------------------------------------


def pds_records(refpds, did: str) -> dict[str, tuple[str, dict]]:
    """Every record by repo path: (CID, atproto JSON value), from describeRepo + listRecords."""
    collections = xrpc(refpds.pds, "com.atproto.repo.describeRepo", params={"repo": did})["collections"]
    found = {}
    for collection in collections:
        cursor = None
        while True:
            params = {"repo": did, "collection": collection, "limit": 100, **({"cursor": cursor} if cursor else {})}
            page = xrpc(refpds.pds, "com.atproto.repo.listRecords", params=params)
            for record in page["records"]:
                rkey = record["uri"].rsplit("/", 1)[-1]
                found[f"{collection}/{rkey}"] = (record["cid"], record["value"])
            cursor = page.get("cursor")
            if not page["records"] or not cursor:
                break
    return found


def pds_blobs(refpds, did: str) -> dict[str, bytes]:
    cids = xrpc(refpds.pds, "com.atproto.sync.listBlobs", params={"did": did, "limit": 1000})["cids"]
    return {
        cid: xrpc(refpds.pds, "com.atproto.sync.getBlob", params={"did": did, "cid": cid}, raw=True) for cid in cids
    }


def assert_copy_equals_pds(refpds, did: str, path: Path) -> int:
    """The local copy's records (CIDs and values) and blobs equal the PDS's; returns the record count.

    Blobs: the copy lists exactly what the PDS lists (a blob whose last record was deleted leaves
    both listings, though the copy keeps the file until gc)."""
    records = pds_records(refpds, did)
    with Repo.open(path) as repo:
        local = {f"{c}/{rkey}": cid.encode() for c in repo.collections() for rkey, cid in repo.list(c)}
        assert local == {path_: cid for path_, (cid, _value) in records.items()}
        for path_, (_cid, value) in records.items():
            collection, rkey = path_.split("/")
            assert to_json(repo.find(collection, rkey)) == value
            one = xrpc(
                refpds.pds, "com.atproto.repo.getRecord", params={"repo": did, "collection": collection, "rkey": rkey}
            )
            assert one["cid"] == local[path_] and one["value"] == value
        latest = xrpc(refpds.pds, "com.atproto.sync.getLatestCommit", params={"did": did})
        assert repo.head.encode() == latest["cid"] and repo.rev == latest["rev"]
        blobs = pds_blobs(refpds, did)
        for cid, data in blobs.items():
            assert repo.blob(cid) == data
        assert {cid.encode() for cid in repo.list_blobs()} == set(blobs)
    return len(records)


def download_cli(refpds, identifier: str, path: Path, capsys, *extra: str) -> dict:
    code = main(["download", identifier, "-o", str(path), "--blobs", *extra, *cli_network_options(refpds)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


# -- pypds reads the reference -------------------------------------------------------------------------


def test_the_node_process_refuses_every_non_loopback_connection(refpds):
    result = run_node("check-loopback.cjs", tmp=refpds.tmp, preload=False)  # it loads the preload itself
    assert sorted(result["refused"]) == sorted(
        [
            "net.connect ip",
            "net.connect name",
            "tls.connect",
            "net.connect ipv6",
            "fetch",
            "dns.lookup",
            "dns.lookup callback",
            "dns.resolveTxt",
            "dns.promises.resolveTxt",
            "Resolver.resolveTxt",
            "udp send",
        ]
    )
    assert result["passed"] == ['connect {"port":9,"host":"127.0.0.1"}', 'connect {"host":"localhost","port":9}']


def test_download_by_handle_and_by_did_equals_the_pds(refpds, alice, tmp_path, capsys):
    by_handle = download_cli(refpds, alice["handle"], tmp_path / "by-handle", capsys)
    assert by_handle["action"] == "created" and by_handle["did"] == alice["did"]
    assert by_handle["handle"] == alice["handle"]
    assert len(by_handle["blobs"]["fetched"]) == 5 and by_handle["blobs"]["failed"] == []
    assert assert_copy_equals_pds(refpds, alice["did"], tmp_path / "by-handle") == 36
    by_did = download_cli(refpds, alice["did"], tmp_path / "by-did", capsys)
    assert by_did["action"] == "created" and by_did["head"] == by_handle["head"]
    assert assert_copy_equals_pds(refpds, alice["did"], tmp_path / "by-did") == 36


def test_download_since_after_creates_updates_and_deletes(refpds, alice, tmp_path, capsys):
    path = tmp_path / "copy"
    download_cli(refpds, alice["did"], path, capsys)
    new_image = upload(refpds, alice, png(100))
    apply_writes(
        refpds,
        alice,
        [
            *(create(POST, tid(i, 2), new_post(200 + i)) for i in range(5)),
            update(POST, tid(5), new_post(5) | {"text": "edited"}),
            update(POST, tid(6), new_post(6, new_image)),
            delete(POST, tid(7)),
            delete(LIKE, tid(0, 1)),
            delete(POST, tid(0)),  # had an image
        ],
    )
    report = download_cli(refpds, alice["did"], path, capsys, "--since")
    assert report["action"] == "updated", report
    assert report["blobs"]["fetched"] == [new_image["ref"]["$link"]]
    assert assert_copy_equals_pds(refpds, alice["did"], path) == 36 + 5 - 3


def test_verify_car_accepts_get_repo(refpds, alice):
    key = signing_key_of(refpds, alice["did"])
    car = xrpc(refpds.pds, "com.atproto.sync.getRepo", params={"did": alice["did"]}, raw=True)
    report = verify_car(car, did=alice["did"], key=key)
    assert report.ok, str(report)
    assert report["signature"].outcome == Outcome.PASSED and report.records == len(pds_records(refpds, alice["did"]))
    other = verify_car(car, did=alice["did"], key=generate_signing_key())
    assert not other.ok and other["signature"].outcome == Outcome.FAILED


def test_verify_proof_on_get_record_inclusion_and_exclusion(refpds, alice):
    key = signing_key_of(refpds, alice["did"])
    for collection, rkey in [(POST, tid(1)), (PROFILE, "self"), (LIKE, tid(3, 1))]:
        proof = xrpc(
            refpds.pds,
            "com.atproto.sync.getRecord",
            params={"did": alice["did"], "collection": collection, "rkey": rkey},
            raw=True,
        )
        expected = xrpc(
            refpds.pds,
            "com.atproto.repo.getRecord",
            params={"repo": alice["did"], "collection": collection, "rkey": rkey},
        )["cid"]
        assert verify_proof(proof, collection, rkey, did=alice["did"], key=key).encode() == expected
    for collection, rkey in [
        (POST, tid(0) + "z"),
        (POST, "3kaaaaaaaaaaa"),
        ("app.bsky.graph.follow", "3kzzzzzzzzzzz"),
    ]:
        params = {"did": alice["did"], "collection": collection, "rkey": rkey}
        proof = xrpc(refpds.pds, "com.atproto.sync.getRecord", params=params, raw=True)
        assert verify_proof(proof, collection, rkey, did=alice["did"], key=key) is None


def firehose_frames(refpds, limit_seconds: float = 3.0) -> list[tuple[dict, dict]]:
    """Every (header, body) frame subscribeRepos replays from cursor 0, until it is quiet for a second."""
    url = refpds.pds.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos?cursor=0"

    async def read() -> list[tuple[dict, dict]]:
        frames = []
        async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=8 << 20) as ws:
            while True:
                try:
                    message = await ws.receive(timeout=limit_seconds)
                except TimeoutError:
                    return frames
                if message.type != aiohttp.WSMsgType.BINARY:
                    return frames
                header, body = cbrrr.decode_multi_dag_cbor_in_violation_of_the_spec(
                    message.data, cid_ctor=link_from_bytes
                )
                frames.append((header, body))

    return asyncio.run(read())


def single_op_commits(refpds) -> str:
    """A new account with 60 one-op commits (40 creates, 10 updates, 10 deletes): a tree of several layers
    whose every split and merge is a firehose message. Returns its DID."""
    body = {"handle": f"bob{refpds.handle_domain}", "email": "bob@example.com", "password": "bob-password"}
    bob = xrpc(refpds.pds, "com.atproto.server.createAccount", body=body)
    ops = [[create(POST, tid(i, 4), new_post(i))] for i in range(40)]
    ops += [[update(POST, tid(i, 4), new_post(i) | {"text": "edited"})] for i in range(0, 40, 4)]
    ops += [[delete(POST, tid(i, 4))] for i in range(1, 40, 4)]
    for writes in ops:
        apply_writes(refpds, bob, writes)
    return bob["did"]


def test_verify_commit_message_on_every_subscribe_repos_commit(refpds, alice):
    bob = single_op_commits(refpds)
    frames = firehose_frames(refpds)
    commits = [body for header, body in frames if header.get("t") == "#commit"]
    assert len([body for body in commits if body["repo"] == alice["did"]]) >= 3  # creation, two applyWrites
    assert len([body for body in commits if body["repo"] == bob]) == 61
    keys: dict[str, object] = {}
    checked_prev_data = 0
    for body in commits:
        if body["repo"] not in keys:
            keys[body["repo"]] = signing_key_of(refpds, body["repo"])
        verified = verify_commit_message(body, key=keys[body["repo"]])
        checked_prev_data += verified.prev_data_checked
    first_commits = len(keys)  # an account's first commit has no prevData to compare with
    assert checked_prev_data >= len(commits) - first_commits


# -- the reference reads pypds ----------------------------------------------------------------------------


def pypds_repo(path: Path, did: str, key, n: int = 120) -> Repo:
    repo = Repo.create(path, did, signing_key=key, store_key=True)
    refs = [repo.put_blob(png(i), "image/png") for i in range(3)]
    with repo.batch() as batch:
        for i in range(n):
            image = refs[i].to_record() if i < len(refs) else None
            batch.put(
                POST,
                f"3kpy{i:09d}",
                from_json(new_post(i))
                | (
                    {"embed": {"$type": "app.bsky.embed.images", "images": [{"image": image, "alt": "x"}]}}
                    if image
                    else {}
                ),
            )
        batch.put(PROFILE, "self", {"$type": PROFILE, "displayName": "pypds"})
    if n > 7:
        repo.delete(POST, "3kpy000000007")
    return repo


def reference_verify_repo(refpds, car: bytes, did: str, did_key: str, tmp_path: Path) -> dict:
    path = tmp_path / f"verify-{hashlib.sha256(car).hexdigest()[:8]}.car"
    path.write_bytes(car)
    return run_node("verify.mjs", "repo", str(path), did, did_key, tmp=refpds.tmp)


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_the_reference_verifier_accepts_a_car_pypds_built(refpds, tmp_path, curve):
    did = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
    with pypds_repo(tmp_path / "repo", did, generate_signing_key(curve)) as repo:
        result = reference_verify_repo(refpds, repo.export_car(), did, repo.did_key, tmp_path)
        assert result["ok"], result
        assert result["commit"] == repo.head.encode() and result["rev"] == repo.rev
        assert result["data"] == result["rebuiltData"] == repo.commit().data.encode()
        local = sorted([f"{c}/{rkey}", cid.encode()] for c in repo.collections() for rkey, cid in repo.list(c))
        assert sorted(result["records"]) == local and len(local) == 120


def test_the_reference_verifier_accepts_what_pypds_serve_answers(refpds, tmp_path):
    did = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
    with pypds_repo(tmp_path / "repo", did, generate_signing_key()) as repo:
        did_key, head = repo.did_key, repo.head.encode()
        present = repo.find_cid(POST, "3kpy000000042").encode()
    with ServerThread(make_app([tmp_path / "repo"])) as server:
        car = xrpc(server.url, "com.atproto.sync.getRepo", params={"did": did}, raw=True)
        result = reference_verify_repo(refpds, car, did, did_key, tmp_path)
        assert result["ok"] and result["commit"] == head and result["data"] == result["rebuiltData"], result
        claims = [
            {"collection": POST, "rkey": "3kpy000000042", "cid": present},
            {"collection": POST, "rkey": "3kpy000000007", "cid": None},  # deleted
            {"collection": LIKE, "rkey": "3kabsent00000", "cid": None},
        ]
        for claim in claims:
            params = {"did": did, "collection": claim["collection"], "rkey": claim["rkey"]}
            proof = tmp_path / f"proof-{claim['rkey']}.car"
            proof.write_bytes(xrpc(server.url, "com.atproto.sync.getRecord", params=params, raw=True))
            answer = run_node("verify.mjs", "proof", str(proof), did, did_key, json.dumps([claim]), tmp=refpds.tmp)
            assert answer["ok"] and answer["verified"] == [claim] and answer["unverified"] == [], answer


# -- migration: pypds -> the reference PDS ----------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def register_did_plc(refpds, key, handle: str) -> str:
    """A did:plc genesis operation naming ``key`` (rotation and #atproto), the PDS and ``handle``, sent to the PLC."""
    op = {
        "type": "plc_operation",
        "rotationKeys": [key.did_key],
        "verificationMethods": {"atproto": key.did_key},
        "alsoKnownAs": [f"at://{handle}"],
        "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": refpds.pds}},
        "prev": None,
    }
    signed = {**op, "sig": b64url(key.sign(pcbor.encode(op)))}
    did = "did:plc:" + base64.b32encode(hashlib.sha256(pcbor.encode(signed)).digest()).decode().lower()[:24]
    request = urllib.request.Request(
        f"{refpds.plc}/{did}", data=json.dumps(signed).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    return did


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_migration_a_pypds_repo_pushed_into_the_reference_pds_has_the_same_head(refpds, tmp_path, capsys, curve):
    key = generate_signing_key(curve)
    handle = f"mig{curve}{refpds.handle_domain}"
    did = register_did_plc(refpds, key, handle)
    path = tmp_path / "mig"
    pypds_repo(path, did, key).close()
    args = ["push", str(path), "--pds", refpds.pds, "--json", "--quiet"]
    new_account = [
        "--create-account",
        "--handle",
        handle,
        "--email",
        f"{handle}@example.com",
        "--account-password",
        "pw-123",
    ]
    assert main([*args, *new_account]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    with Repo.open(path) as repo:
        assert report["ok"] and report["account"] == "created" and report["did"] == did
        assert report["pdsHead"] == report["head"] == repo.head.encode()
        assert len(report["blobs"]["uploaded"]) == report["blobs"]["missing"] == 3
    session = xrpc(refpds.pds, "com.atproto.server.createSession", body={"identifier": did, "password": "pw-123"})
    status = xrpc(refpds.pds, "com.atproto.server.checkAccountStatus", token=session["accessJwt"])
    assert status["repoCommit"] == report["head"]
    assert status["expectedBlobs"] == status["importedBlobs"] == 3 and status["indexedRecords"] == 120
    assert status["activated"] is False  # a migrated account waits for activateAccount

    with Repo.open(path) as repo:  # later commits go over with a password login
        repo.put(POST, "3kpylater0000", from_json(new_post(999)))
        repo.delete(POST, "3kpy000000010")
        head = repo.head.encode()
    assert main([*args, "--password", "pw-123"]) == 0, capsys.readouterr().err
    second = json.loads(capsys.readouterr().out)
    assert second["account"] == "existing" and second["pdsHead"] == head and second["blobs"]["missing"] == 0
    status = xrpc(refpds.pds, "com.atproto.server.checkAccountStatus", token=session["accessJwt"])
    assert status["repoCommit"] == head and status["indexedRecords"] == 120


def test_push_with_a_wrong_password_or_to_another_did_changes_nothing(refpds, alice, tmp_path, capsys):
    key = generate_signing_key()
    did = register_did_plc(refpds, key, f"other{refpds.handle_domain}")
    path = tmp_path / "other"
    pypds_repo(path, did, key, n=5).close()
    before = {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()}
    assert main(["push", str(path), "--pds", refpds.pds, "--password", "wrong", "--retries", "0"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was refused: 401 AuthenticationRequired" in err
    login_as_alice = ["--identifier", alice["handle"], "--password", "alice-password"]
    assert main(["push", str(path), "--pds", refpds.pds, *login_as_alice]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is '{alice['did']}'" in err and f"holds the repository of {did}" in err
    wrong_audience = ["--create-account", "--handle", f"other{refpds.handle_domain}", "--email", "o@example.com"]
    assert main(["push", str(path), "--pds", refpds.pds, *wrong_audience, "--pds-did", "did:web:elsewhere.test"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was refused: 401 BadJwtAudience" in err
    assert {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()} == before
    assert CID.decode(xrpc(refpds.pds, "com.atproto.sync.getLatestCommit", params={"did": alice["did"]})["cid"])


# -- a pypds mirror of the reference PDS ---------------------------------------------------------------------


def test_a_mirror_backfills_the_reference_pds_then_follows_its_stream(refpds, alice, tmp_path):
    """Mirror.backfill lists and downloads every account of the PDS, then follows its subscribeRepos:
    creates, updates and deletes made after the backfill reach the copies, which then equal the PDS."""
    body = {"handle": f"dave{refpds.handle_domain}", "email": "dave@example.com", "password": "dave-password"}
    dave = xrpc(refpds.pds, "com.atproto.server.createAccount", body=body)
    apply_writes(refpds, dave, [create(POST, tid(i, 6), new_post(i)) for i in range(12)])
    archive = tmp_path / "archive"
    wrote: list[int] = []

    def write_once_downloaded(done: int, total: int, _bytes: int) -> None:
        if done == total and not wrote:  # while the backfill still runs: following must pick these up
            wrote.append(done)
            apply_writes(refpds, dave, [update(POST, tid(0, 6), new_post(0) | {"text": "edited"})])
            apply_writes(refpds, dave, [delete(POST, tid(1, 6)), create(POST, tid(20, 6), new_post(20))])
            apply_writes(refpds, alice, [create(POST, tid(40), new_post(40))])

    with Mirror(archive, config=resolver_config(refpds), blobs=True) as mirror:
        report = mirror.backfill(refpds.pds, idle_timeout=3.0, progress=write_once_downloaded)
        assert wrote and report.failed == 0 and report.listed >= 2, report
        assert mirror.stats.rejected == 0 and mirror.stats.applied >= 3, mirror.stats
        apply_writes(refpds, alice, [delete(POST, tid(40))])
        stats = mirror.run(refpds.pds, idle_timeout=3.0)  # from the saved cursor
        assert stats.rejected == 0 and stats.applied == 4, stats  # the counts add up over the runs
    for did in (alice["did"], dave["did"]):
        assert_copy_equals_pds(refpds, did, archive / shard_of(did) / did)
