"""``pypds push`` / ``pypds.push`` against a loopback stub PDS, and the service-auth JWT it signs.

The stub (:class:`StubPds`) implements the account and repo methods a push
uses, the way the reference PDS answers them: createSession checks a
password table, createAccount verifies the service-auth JWT with its own
decoder (written from the spec, not pypds'), importRepo loads the CAR and
lists the blobs its records reference as missing, uploadBlob hashes what it
receives. Each failure test checks that the local repository's files are
byte for byte what they were and that no temporary CAR is left.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from pypds import (
    BlockHashMismatch,
    DidMismatch,
    InvalidInput,
    NetworkError,
    NewAccount,
    NotFound,
    RemoteError,
    Repo,
    SigningKeyRequired,
    generate_signing_key,
    push,
    service_auth_token,
)
from pypds.cli import main
from pypds.codec.cid import cid_for_raw
from pypds.keys import K256_ORDER, P256_ORDER
from pypds.storage.blobs import blob_refs

from .conftest import DID, POST, post
from .netstubs import ServerThread, free_port

OTHER_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
PDS_DID = "did:web:pds.stub.test"
PASSWORD = "abcd-efgh-ijkl-mnop"
FAST = {"retries": 0, "backoff": 0.0, "timeout": 5.0}


def b64url_decode(text: str) -> bytes:
    assert "=" not in text, "JWT parts are base64url without padding"
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_service_jwt(token: str, key) -> tuple[dict, dict]:
    """Header and payload of a compact JWS whose raw r||s signature ``key`` (a pypds PublicKey) verifies."""
    header_b64, payload_b64, sig_b64 = token.split(".")
    header, payload, sig = (
        json.loads(b64url_decode(header_b64)),
        json.loads(b64url_decode(payload_b64)),
        b64url_decode(sig_b64),
    )
    assert len(sig) == 64
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    curve, order = (ec.SECP256K1(), K256_ORDER) if header["alg"] == "ES256K" else (ec.SECP256R1(), P256_ORDER)
    assert s <= order // 2, "atproto signatures are low-S"
    public = ec.EllipticCurvePublicKey.from_encoded_point(curve, key.compressed)
    digest = hashlib.sha256(f"{header_b64}.{payload_b64}".encode()).digest()
    public.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    return header, payload


def xrpc_error(status: int, name: str, message: str) -> web.Response:
    return web.json_response({"error": name, "message": message}, status=status)


class StubPds:
    """A PDS that holds accounts and one imported repository per DID, on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.keys: dict[str, object] = {}  # DID -> PublicKey its "DID document" names
        self.passwords: dict[str, tuple[str, str]] = {}  # identifier -> (password, DID)
        self.session_did: str | None = None  # answer createSession/createAccount with this DID instead
        self.refuse_import: str | None = None
        self.page_size = 1000
        self.wrong_upload_cid = False
        self.heads: dict[str, str] = {}
        self.missing: dict[str, dict[str, str]] = {}  # DID -> blob CID -> record URI
        self.blobs: dict[str, tuple[bytes, str]] = {}  # CID -> (bytes, Content-Type)
        self.jwts: list[tuple[dict, dict]] = []
        self.calls: list[str] = []
        self.tokens: dict[str, str] = {}
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/xrpc/{nsid}", self._handle)
        self._server = ServerThread(app)

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> StubPds:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["nsid"].rsplit(".", 1)[-1]
        self.calls.append(name)
        handler = getattr(self, f"_{name}", None)
        if handler is None:
            return xrpc_error(501, "MethodNotImplemented", name)
        return await handler(request)

    def _login(self, did: str, handle: str) -> web.Response:
        token = f"access-{len(self.tokens)}"
        self.tokens[token] = did
        answer_did = self.session_did or did
        return web.json_response({"did": answer_did, "handle": handle, "accessJwt": token, "refreshJwt": "r"})

    def _account(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return self.tokens.get(auth.removeprefix("Bearer "))

    async def _describeServer(self, request: web.Request) -> web.Response:
        return web.json_response({"did": PDS_DID, "availableUserDomains": [".test"]})

    async def _createSession(self, request: web.Request) -> web.Response:
        body = await request.json()
        known = self.passwords.get(body.get("identifier"))
        if known is None or known[0] != body.get("password"):
            return xrpc_error(401, "AuthenticationRequired", "Invalid identifier or password")
        return self._login(known[1], "alice.test")

    async def _createAccount(self, request: web.Request) -> web.Response:
        body = await request.json()
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        did = body["did"]
        try:
            header, payload = decode_service_jwt(token, self.keys[did])
        except Exception as exc:
            return xrpc_error(401, "BadJwtSignature", f"jwt signature does not match jwt issuer ({exc!r})")
        self.jwts.append((header, payload))
        if payload["iss"] != did or payload["aud"] != PDS_DID or payload["lxm"] != "com.atproto.server.createAccount":
            return xrpc_error(401, "BadJwt", "bad iss, aud or lxm")
        if payload["exp"] < time.time():
            return xrpc_error(401, "JwtExpired", "jwt expired")
        if not body.get("email"):
            return xrpc_error(400, "InvalidRequest", "Email is required")
        return self._login(did, body["handle"])

    async def _importRepo(self, request: web.Request) -> web.Response:
        did = self._account(request)
        if did is None:
            return xrpc_error(401, "AuthenticationRequired", "no session")
        car = await request.read()
        if self.refuse_import is not None:
            return xrpc_error(400, "InvalidRequest", self.refuse_import)
        target = self.workdir / f"import-{len(self.heads)}-{len(self.calls)}"
        with Repo.from_car(target, car) as imported:
            self.heads[did] = imported.head.encode()
            missing = {}
            for collection in imported.collections():
                for rkey, _cid in imported.list(collection):
                    for blob in blob_refs(imported.find(collection, rkey)):
                        if blob.encode() not in self.blobs:
                            missing.setdefault(blob.encode(), f"at://{did}/{collection}/{rkey}")
            self.missing[did] = missing
        return web.Response(status=200)

    async def _listMissingBlobs(self, request: web.Request) -> web.Response:
        did = self._account(request)
        if did is None:
            return xrpc_error(401, "AuthenticationRequired", "no session")
        cursor = request.query.get("cursor", "")
        names = sorted(cid for cid in self.missing.get(did, {}) if cid > cursor)[: self.page_size]
        blobs = [{"cid": cid, "recordUri": self.missing[did][cid]} for cid in names]
        return web.json_response({"blobs": blobs, "cursor": names[-1] if names else None})

    async def _uploadBlob(self, request: web.Request) -> web.Response:
        did = self._account(request)
        if did is None:
            return xrpc_error(401, "AuthenticationRequired", "no session")
        data = await request.read()
        cid = cid_for_raw(data).encode()
        self.blobs[cid] = (data, request.headers.get("Content-Type", ""))
        self.missing.get(did, {}).pop(cid, None)
        shown = cid_for_raw(data + b"x").encode() if self.wrong_upload_cid else cid
        ref = {"$type": "blob", "ref": {"$link": shown}, "mimeType": request.content_type, "size": len(data)}
        return web.json_response({"blob": ref})

    async def _getLatestCommit(self, request: web.Request) -> web.Response:
        did = request.query["did"]
        if did not in self.heads:
            return xrpc_error(400, "RepoNotFound", f"Could not find root for DID: {did}")
        return web.json_response({"cid": self.heads[did], "rev": "3n3p2jduiqmv3"})


def image(i: int) -> bytes:
    return f"image {i} ".encode() * (400 + 50 * i)


def make_repo(path: Path, *, images: int = 3, curve: str = "k256") -> SimpleNamespace:
    """A repository with posts and ``images`` posts embedding one blob each (alternating MIME types)."""
    key = generate_signing_key(curve)
    with Repo.create(path, DID, signing_key=key, store_key=True) as repo:
        refs = [repo.put_blob(image(i), "image/png" if i % 2 else "image/jpeg") for i in range(images)]
        with repo.batch() as batch:
            for i in range(10):
                batch.put(POST, f"p{i:03d}", post(i))
            for i, ref in enumerate(refs):
                batch.put(POST, f"img{i}", {**post(i), "embed": {"images": [{"image": ref.to_record()}]}})
        return SimpleNamespace(path=path, key=key, head=repo.head, refs=refs)


def files_of(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its sha256: to show that a push wrote nothing."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).digest() for f in path.rglob("*") if f.is_file()}


@pytest.fixture
def stub(tmp_path):
    with StubPds(tmp_path / "stub") as running:
        yield running


@pytest.fixture
def local(tmp_path, stub, monkeypatch):
    """The repository to push (its DID's key registered with the stub), with the temporary directory watched."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    made = make_repo(tmp_path / "alice")
    stub.keys[DID] = made.key.public_key
    stub.passwords["alice.test"] = (PASSWORD, DID)
    stub.passwords[DID] = (PASSWORD, DID)
    made.temp = temp
    made.before = files_of(made.path)
    return made


def assert_untouched(local) -> None:
    assert files_of(local.path) == local.before
    assert list(local.temp.iterdir()) == []


# -- the happy paths -----------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_new_account_is_created_with_a_service_jwt_then_repo_and_blobs_are_sent(tmp_path, stub, curve):
    made = make_repo(tmp_path / f"alice-{curve}", curve=curve)
    stub.keys[DID] = made.key.public_key
    account = NewAccount("alice.test", "alice@example.com", password="hunter22")
    report = push(made.path, stub.url, new_account=account, **FAST)
    assert report.ok and report.account == "created" and report.handle == "alice.test"
    header, payload = stub.jwts[0]
    assert header == {"typ": "JWT", "alg": "ES256K" if curve == "k256" else "ES256"}
    assert payload["iss"] == DID and payload["aud"] == PDS_DID and payload["lxm"] == "com.atproto.server.createAccount"
    assert 0 < payload["exp"] - payload["iat"] <= 60 and len(payload["jti"]) >= 16
    assert stub.heads[DID] == made.head.encode() == report.pds_head.encode()
    assert report.car_bytes == len(Repo.open(made.path).export_car())
    assert sorted(report.blobs_uploaded, key=str) == sorted((ref.cid for ref in made.refs), key=str)
    assert report.blobs_missing == 3 and report.blob_bytes == sum(ref.size for ref in made.refs)
    for ref in made.refs:  # sent with the MIME type its record gives
        assert stub.blobs[ref.cid.encode()] == (image(made.refs.index(ref)), ref.mime_type)
    listing = ["listMissingBlobs"] * 2  # a page, then the empty page after its cursor
    assert stub.calls == [
        "describeServer",
        "createAccount",
        "importRepo",
        *listing,
        *["uploadBlob"] * 3,
        "getLatestCommit",
    ]


def test_existing_account_logs_in_and_only_missing_blobs_are_uploaded_across_pages(tmp_path, stub):
    made = make_repo(tmp_path / "alice", images=7)
    stub.passwords["alice.test"] = (PASSWORD, DID)
    already = made.refs[0]
    stub.blobs[already.cid.encode()] = (image(0), already.mime_type)
    stub.page_size = 2
    report = push(made.path, stub.url, password=PASSWORD, identifier="alice.test", **FAST)
    assert report.ok and report.account == "existing"
    assert report.blobs_missing == 6 and len(report.blobs_uploaded) == 6
    assert already.cid not in report.blobs_uploaded
    assert stub.calls.count("listMissingBlobs") == 4  # pages of 2, 2, 2, then an empty one
    assert stub.heads[DID] == made.head.encode()


def test_a_second_push_sends_the_new_head_and_no_blob_again(local, stub):
    push(local.path, stub.url, password=PASSWORD, **FAST)
    with Repo.open(local.path) as repo:
        repo.put(POST, "later", post(99))
        head = repo.head
    report = push(local.path, stub.url, password=PASSWORD, **FAST)
    assert report.ok and report.pds_head == head and report.blobs_missing == 0 and report.blobs_uploaded == []


def test_the_login_identifier_defaults_to_the_repository_did(local, stub):
    del stub.passwords["alice.test"]
    assert push(local.path, stub.url, password=PASSWORD, **FAST).ok
    assert_untouched(local)


# -- failures change nothing locally ---------------------------------------------------------------


def test_bad_credentials_are_one_clear_error_and_nothing_is_sent(local, stub):
    with pytest.raises(RemoteError) as caught:
        push(local.path, stub.url, password="wrong", identifier="alice.test", **FAST)
    assert caught.value.status == 401
    message = str(caught.value)
    assert "\n" not in message
    assert "logging in to" in message and "alice.test" in message and "refused" in message
    assert "401 AuthenticationRequired: Invalid identifier or password" in message
    assert "importRepo" not in stub.calls and DID not in stub.heads
    assert_untouched(local)


def test_a_session_for_another_did_is_a_did_mismatch_before_any_import(local, stub):
    stub.session_did = OTHER_DID
    with pytest.raises(DidMismatch, match=f"is '{OTHER_DID}', but .* holds the repository of {DID}"):
        push(local.path, stub.url, password=PASSWORD, **FAST)
    assert "importRepo" not in stub.calls
    assert_untouched(local)


def test_a_created_account_of_another_did_is_a_did_mismatch(local, stub):
    stub.session_did = OTHER_DID
    with pytest.raises(DidMismatch):
        push(local.path, stub.url, new_account=NewAccount("alice.test", "a@example.com"), **FAST)
    assert "importRepo" not in stub.calls
    assert_untouched(local)


def test_a_jwt_signed_by_a_key_the_did_document_does_not_name_is_refused(local, stub):
    stub.keys[DID] = generate_signing_key().public_key
    with pytest.raises(RemoteError, match=r"creating the account alice\.test .* was refused: 401 BadJwtSignature"):
        push(local.path, stub.url, new_account=NewAccount("alice.test", "a@example.com"), **FAST)
    assert_untouched(local)


def test_a_refused_import_is_one_clear_error(local, stub):
    stub.refuse_import = "Could not parse record at 'app.bsky.feed.post/p001'"
    with pytest.raises(RemoteError) as caught:
        push(local.path, stub.url, password=PASSWORD, **FAST)
    message = str(caught.value)
    assert caught.value.status == 400 and "\n" not in message
    assert message.startswith(f"importing {local.path} ({DID}, commit {local.head.encode()}) into {stub.url}")
    assert message.endswith("was refused: 400 InvalidRequest: Could not parse record at 'app.bsky.feed.post/p001'")
    assert "uploadBlob" not in stub.calls
    assert_untouched(local)


def test_a_pds_that_cannot_be_reached_changes_nothing(local):
    with pytest.raises(NetworkError, match="failed after 1 attempt"):
        push(local.path, f"http://127.0.0.1:{free_port()}", password=PASSWORD, **FAST)
    assert_untouched(local)


def test_a_new_account_needs_the_signing_key_before_anything_is_sent(tmp_path, stub):
    made = make_repo(tmp_path / "source")
    copy = tmp_path / "keyless"
    Repo.from_car(copy, Repo.open(made.path).export_car()).close()
    with pytest.raises(SigningKeyRequired, match="signing key"):
        push(copy, stub.url, new_account=NewAccount("alice.test", "a@example.com"), **FAST)
    assert stub.calls == []
    stub.keys[DID] = made.key.public_key  # the key given by hand works
    report = push(copy, stub.url, new_account=NewAccount("alice.test", "a@example.com"), signing_key=made.key, **FAST)
    assert report.pds_head == made.head and report.account == "created"
    assert len(report.blobs_failed) == 3  # a copy from a CAR has no blobs to send


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"password": "x", "new_account": NewAccount("a.test", "a@example.com")}, {"password": "x", "pds_did": "nope"}],
)
def test_push_needs_exactly_one_way_to_authenticate(local, stub, kwargs):
    with pytest.raises(InvalidInput):
        push(local.path, stub.url, **kwargs, **FAST)
    assert stub.calls == []


# -- blobs ------------------------------------------------------------------------------------------


def test_a_blob_the_pds_misses_but_the_repository_lacks_is_reported_and_the_others_are_sent(local, stub, tmp_path):
    absent = cid_for_raw(b"never stored here")
    with Repo.open(local.path) as repo:
        repo.put(
            POST,
            "ghost",
            {
                **post(1),
                "embed": {"images": [{"image": {"$type": "blob", "ref": absent, "mimeType": "image/png", "size": 17}}]},
            },
        )
    report = push(local.path, stub.url, password=PASSWORD, **FAST)
    assert not report.ok and report.pds_head == report.head
    assert len(report.blobs_uploaded) == 3
    [failure] = report.blobs_failed
    assert failure.cid == absent and isinstance(failure.error, NotFound)
    assert f"at://{DID}/{POST}/ghost" in str(failure.error) and "not stored" in str(failure.error)


def test_a_pds_that_names_another_cid_for_an_upload_is_a_failure(local, stub):
    stub.wrong_upload_cid = True
    report = push(local.path, stub.url, password=PASSWORD, **FAST)
    assert not report.ok and report.blobs_uploaded == []
    assert all(isinstance(failure.error, BlockHashMismatch) for failure in report.blobs_failed)
    assert len(report.blobs_failed) == 3


# -- the command line -------------------------------------------------------------------------------


def test_cli_push_prints_what_was_sent(local, stub, capsys):
    assert main(["push", str(local.path), "--pds", stub.url, "--password", PASSWORD, "--retries", "0"]) == 0
    out = capsys.readouterr().out
    assert f"pushed {local.path} to {stub.url}: {DID} (alice.test), account existing" in out
    assert f"commit {local.head.encode()}" in out
    assert "blobs: 3 of 3 missing uploaded" in out and "0 failed" in out
    assert f"pds head {local.head.encode()} (the same)" in out


def test_cli_push_creates_an_account_and_prints_json(local, stub, capsys):
    args = ["push", str(local.path), "--pds", stub.url, "--create-account", "--handle", "alice.test"]
    assert main([*args, "--email", "alice@example.com", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["account"] == "created" and answer["ok"] is True
    assert answer["pdsHead"] == answer["head"] == local.head.encode()
    assert len(answer["blobs"]["uploaded"]) == 3


def test_cli_push_failures_are_one_line_with_the_exit_status(local, stub, capsys, monkeypatch):
    monkeypatch.setenv("PYPDS_PASSWORD", "wrong")
    assert main(["push", str(local.path), "--pds", stub.url, "--retries", "0"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pypds: logging in to") and "Invalid identifier or password" in err
    stub.session_did = OTHER_DID
    monkeypatch.setenv("PYPDS_PASSWORD", PASSWORD)
    assert main(["push", str(local.path), "--pds", stub.url, "--retries", "0"]) == 1
    assert "holds the repository of" in capsys.readouterr().err
    assert_untouched(local)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--password", "x", "--create-account", "--handle", "a.test", "--email", "a@example.com"],
        ["--create-account", "--handle", "a.test"],
        ["--password", "x", "--handle", "a.test"],
        ["--password", "x", "--pds", "ftp://example.com"],
    ],
)
def test_cli_push_usage_errors(local, stub, capsys, extra):
    assert main(["push", str(local.path), "--pds", stub.url, *extra]) == 2
    assert capsys.readouterr().err.startswith("pypds: ")
    assert stub.calls == []


def test_cli_push_needs_a_repository(tmp_path, stub, capsys):
    assert main(["push", str(tmp_path / "nothing"), "--pds", stub.url, "--password", "x"]) == 2
    assert "no repository at" in capsys.readouterr().err


# -- the service-auth JWT ----------------------------------------------------------------------------


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_service_auth_token_is_a_compact_jws_signed_low_s_over_header_and_payload(curve):
    key = generate_signing_key(curve)
    token = service_auth_token(key, iss=DID, aud=PDS_DID, lxm="com.atproto.repo.importRepo", lifetime=30, now=1000)
    header, payload = decode_service_jwt(token, key.public_key)
    assert header == {"typ": "JWT", "alg": {"k256": "ES256K", "p256": "ES256"}[curve]}
    assert {k: payload[k] for k in ("iat", "iss", "aud", "exp", "lxm")} == {
        "iat": 1000,
        "iss": DID,
        "aud": PDS_DID,
        "exp": 1030,
        "lxm": "com.atproto.repo.importRepo",
    }
    header_b64 = token.split(".")[0]
    assert b64url_decode(header_b64) == b'{"typ":"JWT","alg":"' + header["alg"].encode() + b'"}'  # compact JSON
    other = service_auth_token(key, iss=DID, aud=PDS_DID, lxm="com.atproto.repo.importRepo", lifetime=30, now=1000)
    assert json.loads(b64url_decode(other.split(".")[1]))["jti"] != payload["jti"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"iss": "alice", "aud": PDS_DID, "lxm": "com.atproto.server.createAccount"},
        {"iss": DID, "aud": "", "lxm": "com.atproto.server.createAccount"},
        {"iss": DID, "aud": PDS_DID, "lxm": "not a method"},
        {"iss": DID, "aud": PDS_DID, "lxm": "com.atproto.server.createAccount", "lifetime": 0},
    ],
)
def test_service_auth_token_refuses_bad_claims(kwargs):
    with pytest.raises(InvalidInput):
        service_auth_token(generate_signing_key(), **kwargs)
