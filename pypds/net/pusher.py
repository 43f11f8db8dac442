"""Push a repository to a PDS: the last step of moving an account there (or restoring it).

One call (:func:`push`) or one command (``pypds push PATH --pds URL``):

1. The repository's CAR (HEAD, every block) is written to a temporary file
   first, so a local problem stops the push before anything is sent.
2. **Authenticate.** An existing account logs in with a password (an app
   password) through ``com.atproto.server.createSession``. A new account for
   the repository's DID is made with ``com.atproto.server.createAccount``
   (``did``, ``handle``, ``email``), authorised by a service-auth JWT
   (:mod:`pypds.net.service_auth`) that the repository's signing key signs for
   the PDS's DID (``describeServer``): the PDS checks it against the key in
   the DID's document, so that document must name this key. Such an account
   starts deactivated, as in any migration.
3. ``com.atproto.repo.importRepo`` sends the CAR.
4. ``com.atproto.repo.listMissingBlobs`` is paged through; each missing blob
   stored locally is sent with ``com.atproto.repo.uploadBlob`` (with the
   MIME type its record gives), and the CID the PDS computed must be ours.
5. ``com.atproto.sync.getLatestCommit`` gives the PDS's head, which must now
   be this repository's HEAD.

Tricky bits:

* Nothing local is ever written: the repository is only read, and the
  temporary CAR lives in the system's temporary directory and is removed.
* The account must be the repository's DID. A session for another DID, or a
  createAccount answer naming another DID, is a :class:`DidMismatch` before
  anything is imported (a PDS's importRepo does not check the DID itself).
* A login refused, an import refused, or a PDS that cannot be reached is one
  error (:class:`RemoteError` / :class:`NetworkError`) naming the step; blob
  failures do not stop the other blobs and are listed in the report (a
  rerun uploads only what is still missing).
* The PDS gives the import its own rev; the commit CID is what must match.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from ..codec.cid import CID, cid_for_raw, parse_cid
from ..errors import (
    BlockHashMismatch,
    DidMismatch,
    InvalidInput,
    NetworkError,
    NotFound,
    PypdsError,
    RemoteError,
    SigningKeyRequired,
    shown,
)
from ..filesystem import TEMP_PREFIX
from ..keys import SigningKey, load_signing_key
from ..repo.repo import Repo
from ..storage.blobs import blob_mime_types
from ..syntax import is_valid_did, split_repo_path
from .downloader import LIST_BLOBS_PAGE, BlobFailure
from .service_auth import service_auth_token
from .xrpc import CAR_MIME, XrpcClient, new_session

__all__ = ["NewAccount", "PushReport", "push", "push_async"]

CREATE_ACCOUNT = "com.atproto.server.createAccount"
_DEFAULT_MIME = "application/octet-stream"

#: ``progress(stage, done, total)``: stage ``"blobs"`` counts blobs handled.
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class NewAccount:
    """What ``com.atproto.server.createAccount`` needs to create an account for the repository's DID.

    The PDS requires ``email``; ``password`` is the account's login password
    (optional: without it, log in later through the PDS's reset flow).
    """

    handle: str
    email: str
    password: str | None = None
    invite_code: str | None = None

    def to_json(self, did: str) -> dict[str, str]:
        body = {"did": did, "handle": self.handle, "email": self.email}
        if self.password is not None:
            body["password"] = self.password
        if self.invite_code is not None:
            body["inviteCode"] = self.invite_code
        return body


@dataclass
class PushReport:
    """What :func:`push` sent.

    ``account`` is ``"created"`` (createAccount with a service-auth JWT) or
    ``"existing"`` (a password login). ``pds_head`` is the PDS's commit after
    the import; :attr:`ok` is true when it is ``head`` and no blob failed.
    """

    path: Path
    did: str
    pds: str
    account: str
    handle: str | None
    head: CID
    rev: str | None  # None for a version 2 commit
    car_bytes: int
    pds_head: CID | None = None
    blobs_missing: int = 0
    blobs_uploaded: list[CID] = field(default_factory=list)
    blob_bytes: int = 0
    blobs_failed: list[BlobFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the PDS's head is this repository's HEAD and every missing blob was sent."""
        return self.pds_head == self.head and not self.blobs_failed

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "did": self.did,
            "pds": self.pds,
            "account": self.account,
            "handle": self.handle,
            "head": self.head.encode(),
            "rev": self.rev,
            "carBytes": self.car_bytes,
            "pdsHead": None if self.pds_head is None else self.pds_head.encode(),
            "blobs": {
                "missing": self.blobs_missing,
                "uploaded": [cid.encode() for cid in self.blobs_uploaded],
                "bytes": self.blob_bytes,
                "failed": [failure.to_json() for failure in self.blobs_failed],
            },
            "ok": self.ok,
        }


def push(
    path: str | os.PathLike,
    pds: str,
    *,
    password: str | None = None,
    identifier: str | None = None,
    new_account: NewAccount | None = None,
    signing_key: SigningKey | bytes | str | None = None,
    pds_did: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> PushReport:
    """Push the repository at ``path`` to the PDS at ``pds`` (an http(s) base URL).

    Give either ``password`` (log in to an existing account; ``identifier``
    is the handle, DID or email to log in as, default the repository's DID)
    or ``new_account`` (create the account for the repository's DID with a
    service-auth JWT signed by ``signing_key``, default the key the
    repository stores; ``pds_did`` overrides the audience the PDS's
    ``describeServer`` names).

    Raises :class:`~pypds.errors.RemoteError` when the PDS refuses the login,
    the account or the import, :class:`~pypds.errors.DidMismatch` when the
    account is another DID, :class:`~pypds.errors.NetworkError` when the PDS
    cannot be reached after ``retries``, :class:`~pypds.errors.SigningKeyRequired`
    without a key for a new account. Blob failures do not raise: see
    :attr:`PushReport.blobs_failed`. The local repository is never changed.
    Runs its own event loop: inside one, use :func:`push_async`.
    """
    return asyncio.run(
        push_async(
            path,
            pds,
            password=password,
            identifier=identifier,
            new_account=new_account,
            signing_key=signing_key,
            pds_did=pds_did,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            concurrency=concurrency,
            progress=progress,
        )
    )


async def push_async(
    path: str | os.PathLike,
    pds: str,
    *,
    password: str | None = None,
    identifier: str | None = None,
    new_account: NewAccount | None = None,
    signing_key: SigningKey | bytes | str | None = None,
    pds_did: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    concurrency: int = 4,
    progress: Progress | None = None,
    session: aiohttp.ClientSession | None = None,
) -> PushReport:
    """:func:`push` as a coroutine; reuses ``session`` when given."""
    if (password is None) == (new_account is None):
        raise InvalidInput("push needs either a password (existing account) or new_account (create one), not both")
    if concurrency < 1:
        raise InvalidInput(f"concurrency must be at least 1: {concurrency}")
    if pds_did is not None and not is_valid_did(pds_did):
        raise InvalidInput(f"pds_did is not a DID: {shown(pds_did)}")
    key = load_signing_key(signing_key) if signing_key is not None else None
    repo = await asyncio.to_thread(Repo.open, path, signing_key=key)
    car = _temp_car_path()
    try:
        if new_account is not None and repo.signing_key is None:
            raise SigningKeyRequired(
                f"creating the account of {repo.did} needs the repository's signing key to sign the service-auth "
                f"token, and {path} stores none: give it (signing_key= / --signing-key)"
            )
        await asyncio.to_thread(repo.export_car, car)
        async with AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(new_session(timeout))
            job = _Push(repo, Path(path), XrpcClient(session, pds, retries=retries, backoff=backoff), car)
            return await job.run(
                password=password,
                identifier=identifier,
                new_account=new_account,
                pds_did=pds_did,
                concurrency=concurrency,
                progress=progress or _no_progress,
            )
        raise AssertionError("unreachable")
    finally:
        car.unlink(missing_ok=True)
        await asyncio.to_thread(repo.close)


def _no_progress(_stage: str, _done: int, _total: int | None) -> None:
    pass


def _temp_car_path() -> Path:
    handle, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}pypds-push-", suffix=".car")
    os.close(handle)
    return Path(name)


class _Push:
    """One push of one repository to one PDS."""

    def __init__(self, repo: Repo, path: Path, client: XrpcClient, car: Path) -> None:
        self.repo = repo
        self.did = repo.did
        self.path = path
        self.client = client
        self.car = car

    async def run(
        self,
        *,
        password: str | None,
        identifier: str | None,
        new_account: NewAccount | None,
        pds_did: str | None,
        concurrency: int,
        progress: Progress,
    ) -> PushReport:
        if new_account is not None:
            handle = await self._create_account(new_account, pds_did)
            account = "created"
        else:
            handle = await self._login(identifier or self.did, password or "")
            account = "existing"
        report = PushReport(
            self.path,
            self.did,
            self.client.base_url,
            account,
            handle,
            self.repo.head,
            self.repo.rev,
            car_bytes=self.car.stat().st_size,
        )
        await self._import()
        await self._blobs(report, concurrency, progress)
        report.pds_head = await self._pds_head()
        return report

    # -- authentication ----------------------------------------------------------------

    async def _login(self, identifier: str, password: str) -> str | None:
        answer = await self._call(
            "com.atproto.server.createSession",
            {"identifier": identifier, "password": password},
            f"logging in to {self.client.base_url} as {identifier}",
        )
        return self._session(answer, f"the account {identifier}")

    async def _create_account(self, account: NewAccount, pds_did: str | None) -> str | None:
        audience = pds_did or await self._service_did()
        token = service_auth_token(self._signing_key(), iss=self.did, aud=audience, lxm=CREATE_ACCOUNT)
        answer = await self._call(
            CREATE_ACCOUNT,
            account.to_json(self.did),
            f"creating the account {account.handle} ({self.did}) on {self.client.base_url}",
            headers={"Authorization": f"Bearer {token}"},
        )
        return self._session(answer, f"the new account {account.handle}")

    def _signing_key(self) -> SigningKey:
        key = self.repo.signing_key
        if key is None:  # checked before anything was sent; kept for the type checker
            raise SigningKeyRequired(f"{self.path} stores no signing key")
        return key

    async def _service_did(self) -> str:
        try:
            answer = await self.client.query_json("com.atproto.server.describeServer", {})
        except RemoteError as exc:
            raise _refused(exc, f"asking {self.client.base_url} for its DID (describeServer)") from None
        did = answer.get("did")
        if not isinstance(did, str) or not is_valid_did(did):
            raise NetworkError(f"describeServer of {self.client.base_url} answered no valid DID: {shown(did)}")
        return did

    def _session(self, answer: dict[str, Any], who: str) -> str | None:
        """Check a createSession/createAccount answer: its DID must be ours; keep its access token."""
        did, token = answer.get("did"), answer.get("accessJwt")
        if did != self.did:
            raise DidMismatch(
                f"{who} on {self.client.base_url} is {shown(did)}, but {self.path} holds the repository of "
                f"{self.did}: nothing was imported"
            )
        if not isinstance(token, str) or not token:
            raise NetworkError(f"{self.client.base_url} answered the login of {who} without an access token")
        self.client.authorize(token)
        handle = answer.get("handle")
        return handle if isinstance(handle, str) else None

    # -- repository and blobs ------------------------------------------------------------

    async def _import(self) -> None:
        def body() -> BinaryIO:
            return open(self.car, "rb")  # closed by XrpcClient.procedure

        await self._call(
            "com.atproto.repo.importRepo",
            body,
            f"importing {self.path} ({self.did}, commit {self.repo.head.encode()}) into {self.client.base_url}",
            content_type=CAR_MIME,
        )

    async def _blobs(self, report: PushReport, concurrency: int, progress: Progress) -> None:
        missing = await self._missing_blobs()
        report.blobs_missing = len(missing)
        todo = iter(missing.items())
        done = [0]
        progress("blobs", 0, len(missing))

        async def worker() -> None:
            for cid, record_uri in todo:
                try:
                    size = await self._upload(cid, record_uri)  # not `+= await`: that would lose concurrent sums
                    report.blob_bytes += size
                    report.blobs_uploaded.append(cid)
                except PypdsError as exc:
                    report.blobs_failed.append(BlobFailure(cid, exc))
                done[0] += 1
                progress("blobs", done[0], len(missing))

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(missing)))))
        report.blobs_uploaded.sort(key=CID.encode)
        report.blobs_failed.sort(key=lambda failure: failure.cid.encode())

    async def _missing_blobs(self) -> dict[CID, str]:
        """Every blob the PDS lists as missing, with the record that references it, without repeats."""
        found: dict[CID, str] = {}
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = (
                {"limit": str(LIST_BLOBS_PAGE)} if cursor is None else {"limit": str(LIST_BLOBS_PAGE), "cursor": cursor}
            )
            try:
                page = await self.client.query_json("com.atproto.repo.listMissingBlobs", params)
            except RemoteError as exc:
                raise _refused(exc, f"listing the blobs {self.client.base_url} lacks (listMissingBlobs)") from None
            blobs = page.get("blobs")
            if not isinstance(blobs, list):
                raise NetworkError(f"listMissingBlobs of {self.client.base_url} answered without a blobs list")
            for entry in blobs:
                cid, record_uri = self._missing_entry(entry)
                found.setdefault(cid, record_uri)
            cursor = page.get("cursor")
            if not blobs or not isinstance(cursor, str) or not cursor or cursor in seen:
                return found
            seen.add(cursor)

    def _missing_entry(self, entry: object) -> tuple[CID, str]:
        where = f"listMissingBlobs of {self.client.base_url}"
        if not isinstance(entry, dict) or not isinstance(entry.get("cid"), str):
            raise NetworkError(f"{where} answered {shown(entry)} where {{cid, recordUri}} was expected")
        try:
            cid = parse_cid(entry["cid"])
        except PypdsError as exc:
            raise NetworkError(f"{where} answered an invalid CID: {exc}") from None
        record_uri = entry.get("recordUri")
        return cid, record_uri if isinstance(record_uri, str) else ""

    async def _upload(self, cid: CID, record_uri: str) -> int:
        data, mime = await asyncio.to_thread(self._local_blob, cid, record_uri)
        answer = await self._call(
            "com.atproto.repo.uploadBlob",
            lambda: data,
            f"uploading blob {cid.encode()} to {self.client.base_url}",
            content_type=mime,
        )
        blob = answer.get("blob")
        ref = blob.get("ref") if isinstance(blob, dict) else None
        link = ref.get("$link") if isinstance(ref, dict) else None
        if link != cid.encode():
            raise BlockHashMismatch(f"{self.client.base_url} stored blob {cid.encode()} as {shown(link)}")
        return len(data)

    def _local_blob(self, cid: CID, record_uri: str) -> tuple[bytes, str]:
        """The blob's bytes (checked against its CID) and the MIME type its record gives."""
        data = self.repo.blob(cid)
        if data is None:
            used = f" (referenced by {record_uri})" if record_uri else ""
            raise NotFound(f"blob {cid.encode()}{used} is not stored in {self.path}: nothing to upload")
        if cid_for_raw(data) != cid:  # Repo.blob checks already; never send bytes under another name
            raise BlockHashMismatch(f"blob {cid.encode()} in {self.path} does not hash to its CID")
        return data, self._mime_type(cid, record_uri)

    def _mime_type(self, cid: CID, record_uri: str) -> str:
        prefix = f"at://{self.did}/"
        if not record_uri.startswith(prefix):
            return _DEFAULT_MIME
        try:
            collection, rkey = split_repo_path(record_uri[len(prefix) :])
            record = self.repo.find(collection, rkey)
        except PypdsError:
            return _DEFAULT_MIME
        return blob_mime_types(record).get(cid.cid_bytes, _DEFAULT_MIME)

    async def _pds_head(self) -> CID:
        try:
            answer = await self.client.query_json("com.atproto.sync.getLatestCommit", {"did": self.did})
        except RemoteError as exc:
            raise _refused(exc, f"reading the head of {self.did} on {self.client.base_url} after the import") from None
        try:
            return parse_cid(answer.get("cid"), allow_raw=False)  # type: ignore[arg-type]
        except PypdsError:
            raise NetworkError(
                f"getLatestCommit of {self.did} on {self.client.base_url} answered an invalid cid "
                f"{shown(answer.get('cid'))}"
            ) from None

    async def _call(
        self,
        method: str,
        body: Callable[[], Any] | dict[str, Any],
        what: str,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            return await self.client.procedure(method, body, content_type=content_type, headers=headers)
        except RemoteError as exc:
            raise _refused(exc, what) from None


def _refused(exc: RemoteError, what: str) -> RemoteError:
    """``exc`` restated as one line naming the step: ``<what> was refused: 401 AuthenticationRequired: ...``."""
    text = f"{what} was refused: {exc.status} {exc.error}"
    message = f"{text}: {exc.detail}" if exc.detail else text
    return RemoteError(message, status=exc.status, error=exc.error, url=exc.url, detail=exc.detail)
