"""Download an account's repository, and optionally its blobs, by handle or DID.

The documented way to back up an atproto account, as one call
(:func:`download`) or one command (``pypds download``):

1. Resolve the handle or DID (:mod:`pypds.identity`): the PDS URL and the
   signing key come from the DID document.
2. ``com.atproto.sync.getRepo`` streams the CAR to a temporary file beside
   the target (bounded memory, a size cap), then it is verified and
   imported, its commit signature checked against the DID document's key:
   a new copy through :meth:`Repo.from_car`; an existing copy with
   ``since=True`` through :meth:`Repo.apply_car` with the diff after the
   copy's rev (falling back to the full CAR if the diff needs blocks the
   copy lacks); an existing copy without ``since`` by importing the full
   CAR. A copy already at the PDS's latest commit is left alone.
3. With ``blobs=True``: ``listBlobs`` is paged through, and every blob not
   stored locally is fetched with ``getBlob``, checked against its CID, and
   stored. A blob that fails does not stop the others; the report lists
   what was fetched and what failed, and running again fetches only what is
   still missing (that is how an interrupted run resumes).

Tricky bits:

* Nothing is trusted. A changed block, a commit signed by another key or a
  blob whose bytes do not hash to its CID raise an
  :class:`~pypds.errors.IntegrityError` (or are reported as failed, for a
  blob); imports are single transactions, so a local copy stays exactly
  as it was, and a failed first download leaves no directory behind.
* Retries (``retries``, exponential ``backoff``) cover what can succeed
  later: no connection, timeouts, 5xx and 429. A 4xx or a failed check is
  final at once. A CAR cut half way is fetched again from the start.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .car import CarReader
from .cid import CID, RAW_PREFIX, cid_for_raw, parse_cid
from .commit import decode_commit
from .errors import (
    BlockHashMismatch,
    DidMismatch,
    InvalidCid,
    InvalidInput,
    MissingBlock,
    NetworkError,
    PypdsError,
    RemoteError,
    ResponseTooLarge,
    shown,
)
from .files import TEMP_PREFIX
from .identity import Identity, ResolverConfig, resolve_async
from .limits import DEFAULT_LIMITS, Limits
from .repo import Repo
from .syntax import is_valid_tid
from .xrpc import XrpcClient, new_session, read_capped, retrying

__all__ = ["BlobFailure", "DownloadReport", "Progress", "download", "download_async"]

#: Largest repository CAR accepted from a PDS.
MAX_CAR_BYTES = 16 << 30
#: Largest blob accepted from a PDS.
MAX_BLOB_BYTES = 1 << 30
#: CIDs asked for per listBlobs page (the lexicon's maximum).
LIST_BLOBS_PAGE = 1000
_CHUNK = 1 << 16

#: ``progress(stage, done, total)``: stage ``"repo"`` counts CAR bytes (total
#: from Content-Length, or None), stage ``"blobs"`` counts blobs handled.
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class BlobFailure:
    """A blob that could not be fetched, and why."""

    cid: CID
    error: PypdsError

    def to_json(self) -> dict[str, str]:
        return {"cid": self.cid.encode(), "error": type(self.error).__name__, "message": str(self.error)}


@dataclass
class DownloadReport:
    """What :func:`download` did.

    ``action`` is ``"created"`` (a new copy), ``"updated"`` (a diff applied),
    ``"replaced"`` (a full CAR imported into an existing copy) or
    ``"unchanged"`` (the copy was already at the PDS's latest commit).
    """

    identity: Identity
    path: Path
    action: str
    head: CID
    rev: str
    car_bytes: int = 0
    blocks: int = 0
    blobs_listed: int = 0
    blobs_present: int = 0
    blobs_fetched: list[CID] = field(default_factory=list)
    blobs_failed: list[BlobFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no blob failed."""
        return not self.blobs_failed

    def to_json(self) -> dict[str, Any]:
        return {
            **self.identity.to_json(),
            "path": str(self.path),
            "action": self.action,
            "head": self.head.encode(),
            "rev": self.rev,
            "carBytes": self.car_bytes,
            "blocks": self.blocks,
            "blobs": {
                "listed": self.blobs_listed,
                "present": self.blobs_present,
                "fetched": [cid.encode() for cid in self.blobs_fetched],
                "failed": [failure.to_json() for failure in self.blobs_failed],
            },
        }


def download(
    identifier: str,
    path: str | os.PathLike,
    *,
    blobs: bool = False,
    since: bool = False,
    config: ResolverConfig | None = None,
    progress: Progress | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    concurrency: int = 4,
    max_car_bytes: int = MAX_CAR_BYTES,
    max_blob_bytes: int = MAX_BLOB_BYTES,
    limits: Limits = DEFAULT_LIMITS,
) -> DownloadReport:
    """Download the repository of ``identifier`` (handle or DID) into the directory ``path``.

    ``since=True`` updates an existing copy with a diff CAR (a missing copy
    is downloaded whole); ``blobs=True`` also fetches every blob not yet
    stored. ``retries`` bounds the retries of each request (``backoff``
    seconds, doubling); ``concurrency`` blobs are fetched at once.

    Raises :class:`~pypds.errors.ResolveError` (identity),
    :class:`~pypds.errors.RemoteError` (the PDS said no),
    :class:`~pypds.errors.NetworkError` (unreachable after retries),
    :class:`~pypds.errors.IntegrityError` (tampered or corrupt data: bad
    block, bad signature, DID mismatch) or
    :class:`~pypds.errors.LimitExceeded`; the local copy is then unchanged.
    Blob failures do not raise: see :attr:`DownloadReport.blobs_failed`.
    Runs its own event loop: inside one, use :func:`download_async`.
    """
    return asyncio.run(
        download_async(
            identifier,
            path,
            blobs=blobs,
            since=since,
            config=config,
            progress=progress,
            retries=retries,
            backoff=backoff,
            concurrency=concurrency,
            max_car_bytes=max_car_bytes,
            max_blob_bytes=max_blob_bytes,
            limits=limits,
        )
    )


async def download_async(
    identifier: str,
    path: str | os.PathLike,
    *,
    blobs: bool = False,
    since: bool = False,
    config: ResolverConfig | None = None,
    progress: Progress | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    concurrency: int = 4,
    max_car_bytes: int = MAX_CAR_BYTES,
    max_blob_bytes: int = MAX_BLOB_BYTES,
    limits: Limits = DEFAULT_LIMITS,
    session: aiohttp.ClientSession | None = None,
) -> DownloadReport:
    """:func:`download` as a coroutine; reuses ``session`` when given."""
    if concurrency < 1:
        raise InvalidInput(f"concurrency must be at least 1: {concurrency}")
    config = config or ResolverConfig()
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"{target} is a file, not a repository directory")
    async with AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(new_session(config.timeout))
        identity = await resolve_async(identifier, config=config, session=session)
        job = _Download(
            identity,
            target,
            XrpcClient(session, identity.pds, retries=retries, backoff=backoff),
            progress=progress or _no_progress,
            concurrency=concurrency,
            max_car_bytes=max_car_bytes,
            max_blob_bytes=max_blob_bytes,
            limits=limits,
        )
        return await job.run(blobs=blobs, since=since)
    raise AssertionError("unreachable")


def _no_progress(_stage: str, _done: int, _total: int | None) -> None:
    pass


class _Download:
    """One download of one repository into one directory."""

    def __init__(
        self,
        identity: Identity,
        target: Path,
        client: XrpcClient,
        *,
        progress: Progress,
        concurrency: int,
        max_car_bytes: int,
        max_blob_bytes: int,
        limits: Limits,
    ) -> None:
        self.identity = identity
        self.did = identity.did
        self.target = target
        self.client = client
        self.progress = progress
        self.concurrency = concurrency
        self.max_car_bytes = max_car_bytes
        self.max_blob_bytes = max_blob_bytes
        self.limits = limits

    async def run(self, *, blobs: bool, since: bool) -> DownloadReport:
        if (self.target / "pds.db").exists():
            repo = await asyncio.to_thread(Repo.open, self.target, limits=self.limits)
            try:
                report = await self._update(repo, since)
                if blobs:
                    await self._blobs(repo, report)
            finally:
                repo.close()
            return report
        report, repo = await self._create()
        try:
            if blobs:
                await self._blobs(repo, report)
        finally:
            repo.close()
        return report

    # -- the repository ----------------------------------------------------------------

    async def _create(self) -> tuple[DownloadReport, Repo]:
        def create(car: Path) -> Repo:
            _check_car_did(car, self.did)
            return Repo.from_car(self.target, car, key=self.identity.signing_key, limits=self.limits)

        size, repo = await self._fetch_car(None, create)
        try:
            report = self._report(repo, "created", size)
            report.blocks = await asyncio.to_thread(len, repo.blockstore)
        except BaseException:
            repo.close()
            raise
        return report, repo

    async def _update(self, repo: Repo, since: bool) -> DownloadReport:
        if repo.did != self.did:
            raise DidMismatch(f"{self.target} holds the repository of {repo.did}, not {self.did}")
        latest = await self._latest_commit()
        if latest is not None and latest == repo.head:
            return self._report(repo, "unchanged", 0)
        key = self.identity.signing_key
        if since:
            try:
                size, blocks = await self._fetch_car(repo.rev, lambda car: repo.apply_car(car, key=key))
                report = self._report(repo, "updated", size)
                report.blocks = blocks
                return report
            except MissingBlock:
                pass  # the diff needs blocks this copy lacks: take the whole repository
        size, blocks = await self._fetch_car(None, lambda car: repo.import_car(car, key=key))
        report = self._report(repo, "replaced", size)
        report.blocks = blocks
        return report

    def _report(self, repo: Repo, action: str, size: int) -> DownloadReport:
        return DownloadReport(self.identity, self.target, action, repo.head, repo.rev, car_bytes=size)

    async def _latest_commit(self) -> CID | None:
        """The PDS's current commit CID, or None if it does not implement getLatestCommit."""
        try:
            answer = await self.client.query_json("com.atproto.sync.getLatestCommit", {"did": self.did})
        except RemoteError as exc:
            if exc.status == 501:
                return None
            raise
        try:
            cid = parse_cid(answer.get("cid"), allow_raw=False)  # type: ignore[arg-type]
        except PypdsError:
            cid_text = shown(answer.get("cid"))
            raise NetworkError(f"getLatestCommit of {self.did} answered an invalid cid {cid_text}") from None
        if not is_valid_tid(answer.get("rev")):  # type: ignore[arg-type]
            raise NetworkError(f"getLatestCommit of {self.did} answered an invalid rev {shown(answer.get('rev'))}")
        return cid

    async def _fetch_car(self, since: str | None, consume: Callable[[Path], Any]) -> tuple[int, Any]:
        """Stream getRepo (the diff after ``since``, or everything) to a temporary file and
        hand it to ``consume`` (in a worker thread); returns (CAR bytes, what consume returned)."""
        params = {"did": self.did} if since is None else {"did": self.did, "since": since}
        car = _temp_path(self.target)
        try:
            size = await retrying(
                lambda: self._stream_to(car, params),
                what=f"getRepo of {self.did} from {self.client.base_url}",
                retries=self.client.retries,
                backoff=self.client.backoff,
            )
            return size, await asyncio.to_thread(consume, car)
        finally:
            car.unlink(missing_ok=True)

    async def _stream_to(self, car: Path, params: dict[str, str]) -> int:
        async with self.client.open("com.atproto.sync.getRepo", params) as response:
            total = response.content_length
            if total is not None and total > self.max_car_bytes:
                raise ResponseTooLarge("max_car_bytes", total, self.max_car_bytes, str(response.url))
            size = 0
            with open(car, "wb") as out:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > self.max_car_bytes:
                        raise ResponseTooLarge("max_car_bytes", size, self.max_car_bytes, str(response.url))
                    out.write(chunk)
                    self.progress("repo", size, total)
        return size

    # -- blobs -------------------------------------------------------------------------------

    async def _blobs(self, repo: Repo, report: DownloadReport) -> None:
        local = {cid.cid_bytes for cid in await asyncio.to_thread(repo.list_blobs)}
        remote = await self._list_blobs()
        missing = [cid for cid in remote if cid.cid_bytes not in local]
        report.blobs_listed = len(remote)
        report.blobs_present = len(remote) - len(missing)
        todo = iter(missing)
        done = [0]
        self.progress("blobs", 0, len(missing))

        async def worker() -> None:
            for cid in todo:
                failure = await self._fetch_blob_safely(repo, cid)
                if failure is None:
                    report.blobs_fetched.append(cid)
                else:
                    report.blobs_failed.append(failure)
                done[0] += 1
                self.progress("blobs", done[0], len(missing))

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(missing)))))
        report.blobs_fetched.sort(key=CID.encode)
        report.blobs_failed.sort(key=lambda failure: failure.cid.encode())

    async def _list_blobs(self) -> list[CID]:
        """Every blob CID the PDS lists for the DID, in its order, without repeats."""
        found: dict[bytes, CID] = {}
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = {"did": self.did, "limit": str(LIST_BLOBS_PAGE)}
            if cursor is not None:
                params["cursor"] = cursor
            page = await self.client.query_json("com.atproto.sync.listBlobs", params)
            cids = page.get("cids")
            if not isinstance(cids, list):
                raise NetworkError(f"listBlobs of {self.did} answered without a cids list")
            for text in cids:
                cid = _blob_cid(text, self.did)
                found.setdefault(cid.cid_bytes, cid)
            cursor = page.get("cursor")
            if not cids or not isinstance(cursor, str) or not cursor or cursor in seen:
                return list(found.values())
            seen.add(cursor)

    async def _fetch_blob_safely(self, repo: Repo, cid: CID) -> BlobFailure | None:
        try:
            await retrying(
                lambda: self._fetch_blob(repo, cid),
                what=f"getBlob {cid.encode()}",
                retries=self.client.retries,
                backoff=self.client.backoff,
            )
        except PypdsError as exc:
            return BlobFailure(cid, exc)
        return None

    async def _fetch_blob(self, repo: Repo, cid: CID) -> None:
        if cid.cid_bytes[:4] != RAW_PREFIX:
            raise InvalidCid(f"listBlobs named {cid.encode()}, which is not a blob (raw) CID")
        params = {"did": self.did, "cid": cid.encode()}
        async with self.client.open("com.atproto.sync.getBlob", params) as response:
            data = await read_capped(response, self.max_blob_bytes, "max_blob_bytes")
            mime = response.content_type or "application/octet-stream"
        if cid_for_raw(data) != cid:
            raise BlockHashMismatch(
                f"blob {cid.encode()} from {self.client.base_url}: {len(data)} bytes do not hash to its CID"
            )
        stored = await asyncio.to_thread(repo.put_blob, data, mime if "/" in mime else "application/octet-stream")
        if stored.cid != cid:  # put_blob hashes again: cannot differ, but never store under a wrong name
            raise BlockHashMismatch(f"blob {cid.encode()} was stored as {stored.cid.encode()}")


def _blob_cid(text: object, did: str) -> CID:
    if not isinstance(text, str):
        raise NetworkError(f"listBlobs of {did} answered {shown(text)} where a CID was expected")
    try:
        return parse_cid(text)
    except PypdsError as exc:
        raise NetworkError(f"listBlobs of {did} answered an invalid CID: {exc}") from None


def _temp_path(target: Path) -> Path:
    """A temporary CAR path in the nearest existing directory at or above ``target``'s parent."""
    directory = target.absolute().parent
    while not directory.is_dir():
        directory = directory.parent
    return directory / f"{TEMP_PREFIX}pypds-download-{target.name}-{secrets.token_hex(6)}.car"


def _check_car_did(car: Path, did: str) -> None:
    """Raise DidMismatch if the CAR's root commit (normally its first block) is for another DID.

    Only reads up to the commit block; a CAR without it is left for the import to reject.
    """
    with CarReader(car) as reader:
        root = reader.roots[0]
        for cid, data in reader:
            if cid == root:
                commit = decode_commit(data, cid)
                if commit.did != did:
                    raise DidMismatch(f"the PDS of {did} served the repository of {commit.did}")
                return
