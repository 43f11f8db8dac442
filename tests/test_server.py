"""The sync API server (pypds.server): every method, its parameters and its XRPC errors.

Requests go through the standard library's HTTP client to a real aiohttp
server on 127.0.0.1, so what is tested is what goes over the wire.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pypds import CID, InvalidInput, Repo, cid_for_cbor, cid_for_raw, verify_proof
from pypds.blobs import BlobStore
from pypds.car import CarReader
from pypds.server import make_app

from .conftest import DID, POST, post, read_uvarint
from .netstubs import ServerThread

OTHER_DIDS = ["did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"]
SYNC = "com.atproto.sync."
BIG_BLOB = bytes(range(256)) * 1024  # 256 KiB: several chunks of the server's 4 KiB


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three repositories served with small chunks; the first has 60 posts, blobs, and a rev to diff from."""
    base = tmp_path_factory.mktemp("server")
    with Repo.create(base / "alice", DID) as alice:
        with alice.batch() as batch:
            for i in range(30):
                batch.put(POST, f"p{i:03d}", post(i))
        first_rev = alice.rev
        blobs = [alice.put_blob(data, "image/png") for data in (b"small blob", BIG_BLOB, b"third")]
        with alice.batch() as batch:
            for i in range(30, 60):
                batch.put(POST, f"p{i:03d}", post(i))
            batch.put(POST, "withblob", {**post(99), "embed": {"images": [{"image": blobs[0].to_record()}]}})
    for did in OTHER_DIDS:
        Repo.create(base / did.rsplit(":", 1)[1], did).close()
    paths = [base / "alice", *(base / did.rsplit(":", 1)[1] for did in OTHER_DIDS)]
    with ServerThread(make_app(paths, chunk_size=4096)) as server, Repo.open(base / "alice") as repo:
        yield {"url": server.url, "repo": repo, "first_rev": first_rev, "blobs": blobs, "base": base}


def call(url: str, method: str, params=(), *, http_method: str = "GET") -> tuple[int, dict, bytes]:
    """One request; returns (status, headers, body) for success and error statuses alike."""
    query = urllib.parse.urlencode(list(params.items()) if isinstance(params, dict) else list(params))
    request = urllib.request.Request(f"{url}/xrpc/{method}?{query}", method=http_method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def call_json(url: str, method: str, params=()) -> dict:
    status, headers, body = call(url, SYNC + method, params)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def assert_xrpc_error(world, method: str, params, status: int, name: str, http_method: str = "GET") -> str:
    code, headers, body = call(
        world["url"], method if "." in method else SYNC + method, params, http_method=http_method
    )
    assert code == status, body
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)
    assert error["error"] == name and isinstance(error["message"], str) and error["message"]
    return error["message"]


# -- getRepo -------------------------------------------------------------------------------


def test_get_repo_streams_exactly_export_car(world):
    status, headers, body = call(world["url"], SYNC + "getRepo", {"did": DID})
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.ipld.car"
    assert headers.get("Transfer-Encoding") == "chunked"  # streamed, not built whole
    assert body == world["repo"].export_car()


def test_get_repo_since_is_the_diff_car(world):
    status, _headers, body = call(world["url"], SYNC + "getRepo", {"did": DID, "since": world["first_rev"]})
    assert status == 200
    assert body == world["repo"].export_car(since=world["first_rev"])
    assert len(body) < len(world["repo"].export_car())


@pytest.mark.parametrize("since", ["yesterday", "3jzfcijpj2z2aa", "0000000000000"])
def test_get_repo_bad_since_is_invalid_request(world, since):
    assert "since" in assert_xrpc_error(world, "getRepo", {"did": DID, "since": since}, 400, "InvalidRequest")


@pytest.mark.parametrize("method", ["getRepo", "getLatestCommit", "getRepoStatus", "listBlobs"])
def test_unknown_did_is_repo_not_found(world, method):
    message = assert_xrpc_error(world, method, {"did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}, 400, "RepoNotFound")
    assert "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa" in message


@pytest.mark.parametrize("method", ["getRepo", "getLatestCommit", "getRepoStatus", "listBlobs", "getBlob", "getRecord"])
@pytest.mark.parametrize("did", [None, "", "alice", "did:plc:", "did:PLC:abc"])
def test_missing_or_malformed_did_is_invalid_request(world, method, did):
    params = {"cid": world["blobs"][0].cid.encode(), "collection": POST, "rkey": "p000"}
    if did is not None:
        params["did"] = did
    assert_xrpc_error(world, method, params, 400, "InvalidRequest")


# -- getLatestCommit, getRepoStatus, listRepos ----------------------------------------------------


def test_get_latest_commit_is_head_and_rev(world):
    repo = world["repo"]
    assert call_json(world["url"], "getLatestCommit", {"did": DID}) == {"cid": repo.head.encode(), "rev": repo.rev}


def test_get_repo_status_is_active_with_rev(world):
    assert call_json(world["url"], "getRepoStatus", {"did": DID}) == {
        "did": DID,
        "active": True,
        "rev": world["repo"].rev,
    }


def test_list_repos_pages_in_did_order(world):
    first = call_json(world["url"], "listRepos", {"limit": "2"})
    assert [entry["did"] for entry in first["repos"]] == sorted([DID, *OTHER_DIDS])[:2]
    assert first["cursor"] == first["repos"][-1]["did"]
    second = call_json(world["url"], "listRepos", {"limit": "2", "cursor": first["cursor"]})
    assert [entry["did"] for entry in second["repos"]] == sorted([DID, *OTHER_DIDS])[2:]
    assert "cursor" not in second
    alice = next(entry for entry in first["repos"] + second["repos"] if entry["did"] == DID)
    assert alice == {"did": DID, "head": world["repo"].head.encode(), "rev": world["repo"].rev, "active": True}
    assert len(call_json(world["url"], "listRepos")["repos"]) == 3


@pytest.mark.parametrize(
    "limit", ["0", "1001", "-1", "ten", "1.5", "\u00b2", "\u0661\u0660", "9" * 5000, "0" * 50 + "5"]
)
def test_bad_limit_is_invalid_request(world, limit):
    assert "limit" in assert_xrpc_error(world, "listRepos", {"limit": limit}, 400, "InvalidRequest")
    assert "limit" in assert_xrpc_error(world, "listBlobs", {"did": DID, "limit": limit}, 400, "InvalidRequest")


# -- listBlobs, getBlob ----------------------------------------------------------------------------


def test_list_blobs_pages_through_every_blob(world):
    expected = sorted(ref.cid.encode() for ref in world["blobs"])
    seen, cursor = [], None
    for _ in range(5):
        params = {"did": DID, "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = call_json(world["url"], "listBlobs", params)
        seen += page["cids"]
        cursor = page.get("cursor")
        if cursor is None:
            break
    assert seen == expected
    assert call_json(world["url"], "listBlobs", {"did": DID})["cids"] == expected


def test_list_blobs_since_lists_the_blobs_of_newer_records(world):
    page = call_json(world["url"], "listBlobs", {"did": DID, "since": world["first_rev"]})
    assert page["cids"] == [world["blobs"][0].cid.encode()]


def test_list_blobs_since_pages_through_the_same_answer(tmp_path):
    with Repo.create(tmp_path / "r", DID) as repo:
        repo.put(POST, "first", post(0))
        since = repo.rev
        for i in range(5):
            ref = repo.put_blob(b"blob %d" % i, "image/png")
            repo.put(POST, f"b{i}", {**post(i), "embed": {"images": [{"image": ref.to_record()}]}})
        expected = [cid.encode() for cid in repo.list_blobs(since=since)]
    assert len(expected) == 5
    with ServerThread(make_app([tmp_path / "r"])) as server:
        seen, cursor = [], None
        for _ in range(10):
            params = {"did": DID, "since": since, "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = call_json(server.url, "listBlobs", params)
            seen += page["cids"]
            cursor = page.get("cursor")
            if cursor is None:
                break
    assert seen == expected


def test_list_blobs_bad_cursor_is_invalid_request(world):
    assert_xrpc_error(world, "listBlobs", {"did": DID, "cursor": "not-a-cid"}, 400, "InvalidRequest")


@pytest.mark.parametrize("index", [0, 1])
def test_get_blob_streams_the_bytes(world, index):
    ref = world["blobs"][index]
    status, headers, body = call(world["url"], SYNC + "getBlob", {"did": DID, "cid": ref.cid.encode()})
    assert status == 200 and body == world["repo"].blob(ref.cid)
    assert headers["Content-Length"] == str(len(body))
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_missing_blob_is_blob_not_found(world):
    cid = cid_for_raw(b"never stored").encode()
    assert cid in assert_xrpc_error(world, "getBlob", {"did": DID, "cid": cid}, 400, "BlobNotFound")


def test_a_dag_cbor_cid_is_not_a_blob(world):
    assert_xrpc_error(world, "getBlob", {"did": DID, "cid": world["repo"].head.encode()}, 400, "BlobNotFound")


@pytest.mark.parametrize("cid", [None, "nope", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "BAFYREI"])
def test_bad_blob_cid_is_invalid_request(world, cid):
    params = {"did": DID} if cid is None else {"did": DID, "cid": cid}
    assert_xrpc_error(world, "getBlob", params, 400, "InvalidRequest")


@pytest.mark.parametrize("data", [b"a corrupt small blob", BIG_BLOB[::-1]])
def test_a_corrupt_blob_file_is_never_delivered_whole(tmp_path, data):
    with Repo.create(tmp_path / "r", DID) as repo:
        cid = repo.put_blob(data, "image/png").cid
    path = BlobStore(tmp_path / "r" / "blobs").path_for(cid)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with ServerThread(make_app([tmp_path / "r"], chunk_size=4096)) as server:
        with pytest.raises((http.client.IncompleteRead, ConnectionError, urllib.error.URLError)):
            call(server.url, SYNC + "getBlob", {"did": DID, "cid": cid.encode()})
        # the server survives and answers the next request
        assert call(server.url, SYNC + "getLatestCommit", {"did": DID})[0] == 200


# -- getRecord ------------------------------------------------------------------------------------


def test_get_record_inclusion_proof_verifies(world):
    repo = world["repo"]
    status, headers, body = call(world["url"], SYNC + "getRecord", {"did": DID, "collection": POST, "rkey": "p007"})
    assert status == 200 and headers["Content-Type"] == "application/vnd.ipld.car"
    assert body == repo.prove(POST, "p007")
    assert verify_proof(body, POST, "p007", did=DID, key=repo.did_key) == repo.find_cid(POST, "p007")


def test_get_record_of_an_absent_record_is_an_exclusion_proof(world):
    status, _headers, body = call(world["url"], SYNC + "getRecord", {"did": DID, "collection": POST, "rkey": "nope"})
    assert status == 200
    assert verify_proof(body, POST, "nope", did=DID, key=world["repo"].did_key) is None


@pytest.mark.parametrize(
    ("collection", "rkey"), [(None, "p000"), (POST, None), ("not an nsid", "p000"), (POST, "bad/key"), (POST, "..")]
)
def test_get_record_bad_path_is_invalid_request(world, collection, rkey):
    params = {"did": DID}
    if collection is not None:
        params["collection"] = collection
    if rkey is not None:
        params["rkey"] = rkey
    assert_xrpc_error(world, "getRecord", params, 400, "InvalidRequest")


# -- getBlocks ---------------------------------------------------------------------------------------


def read_car_without_roots(body: bytes) -> tuple[list, list[tuple[bytes, bytes]]]:
    """Parse a CAR by hand (pypds' reader insists on a root; getBlocks has none)."""
    import cbrrr

    stream = io.BytesIO(body)
    header = cbrrr.decode_dag_cbor(stream.read(read_uvarint(stream)))
    assert header["version"] == 1
    blocks = []
    while stream.tell() < len(body):
        section = stream.read(read_uvarint(stream))
        blocks.append((section[:36], section[36:]))
    return header["roots"], blocks


def test_get_blocks_returns_exactly_the_blocks_asked_for(world):
    repo = world["repo"]
    wanted = [repo.head, repo.commit().data, repo.find_cid(POST, "p001"), repo.find_cid(POST, "p002")]
    params = [("did", DID), *(("cids", cid.encode()) for cid in wanted)]
    status, headers, body = call(world["url"], SYNC + "getBlocks", params)
    assert status == 200 and headers["Content-Type"] == "application/vnd.ipld.car"
    roots, blocks = read_car_without_roots(body)
    assert roots == []
    assert [CID(cid) for cid, _ in blocks] == wanted
    assert all(data == repo.blockstore.get(CID(cid)) for cid, data in blocks)


def test_get_blocks_with_an_unknown_cid_is_block_not_found(world):
    unknown = cid_for_cbor(b"\xa1aa\x01").encode()  # {"a": 1}: in no repository here
    params = [("did", DID), ("cids", world["repo"].head.encode()), ("cids", unknown)]
    assert unknown in assert_xrpc_error(world, "getBlocks", params, 400, "BlockNotFound")


@pytest.mark.parametrize("cids", [[], ["garbage"], ["bafyrei"] * 2])
def test_get_blocks_bad_cids_is_invalid_request(world, cids):
    assert_xrpc_error(world, "getBlocks", [("did", DID), *(("cids", c) for c in cids)], 400, "InvalidRequest")


def test_get_blocks_refuses_too_many_cids(world):
    params = [("did", DID), *(("cids", world["repo"].head.encode()) for _ in range(1001))]
    assert "1000" in assert_xrpc_error(world, "getBlocks", params, 400, "InvalidRequest")


# -- the XRPC surface ------------------------------------------------------------------------------


def test_unknown_method_is_method_not_implemented(world):
    assert_xrpc_error(world, "com.atproto.repo.createRecord", {}, 501, "MethodNotImplemented")
    assert_xrpc_error(world, "com.atproto.sync.subscribeRepos", {}, 501, "MethodNotImplemented")


def test_a_post_to_a_query_is_invalid_request(world):
    assert "GET" in assert_xrpc_error(world, "getRepo", {"did": DID}, 400, "InvalidRequest", http_method="POST")


def test_paths_outside_xrpc_are_plain_404(world):
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(world["url"] + "/", timeout=5)
    assert caught.value.code == 404
    caught.value.close()


def test_responses_allow_cross_origin_reads(world):
    assert call(world["url"], SYNC + "getLatestCommit", {"did": DID})[1]["Access-Control-Allow-Origin"] == "*"


def test_the_server_sees_commits_made_elsewhere(world, tmp_path):
    shutil.copytree(world["base"] / "alice", tmp_path / "alice")
    with ServerThread(make_app([tmp_path / "alice"])) as server, Repo.open(tmp_path / "alice") as writer:
        writer.put(POST, "later", post(5))
        assert call_json(server.url, "getLatestCommit", {"did": DID})["cid"] == writer.head.encode()
        assert call(server.url, SYNC + "getRepo", {"did": DID})[2] == writer.export_car()


# -- make_app -------------------------------------------------------------------------------------------


def test_two_repositories_with_one_did_are_refused(world, tmp_path):
    shutil.copytree(world["base"] / "alice", tmp_path / "copy")
    with pytest.raises(InvalidInput, match=f"two repositories for {DID}"):
        make_app([world["base"] / "alice", tmp_path / "copy"])


def test_handles_passed_in_stay_open_after_shutdown(world):
    repo = Repo.open(world["base"] / "alice")
    with ServerThread(make_app(repo)) as server:
        assert call_json(server.url, "getRepoStatus", {"did": DID})["did"] == DID
    assert repo.head == world["repo"].head  # still usable
    repo.close()


def test_a_missing_directory_is_refused(tmp_path):
    from pypds import RepoNotFound

    with pytest.raises(RepoNotFound):
        make_app([tmp_path / "nothing"])


def test_served_car_imports_as_a_verified_copy(world, tmp_path):
    _status, _headers, body = call(world["url"], SYNC + "getRepo", {"did": DID})
    with Repo.from_car(tmp_path / "copy", body, key=world["repo"].did_key) as copy:
        assert copy.export_car() == world["repo"].export_car()
    assert CarReader(body).roots == [world["repo"].head]


def test_import_pypds_does_not_import_aiohttp_until_a_network_name_is_used():
    script = (
        "import sys, pypds\n"
        "assert 'aiohttp' not in sys.modules and 'dns' not in sys.modules\n"
        "import pypds.downloader, pypds.identity\n"  # the modules do not shadow the functions
        "assert callable(pypds.download) and callable(pypds.resolve) and callable(pypds.make_app)\n"
        "assert 'aiohttp' in sys.modules and 'make_app' in dir(pypds)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
