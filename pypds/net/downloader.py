"""Download an account's repository, and optionally its blobs, by handle or DID.

The documented way to back up an atproto account, as one call
(:func:`download`) or one command (``pypds download``):

1. Resolve the handle or DID (:mod:`pypds.net.identity`): the PDS URL and the
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
   stored locally is streamed from ``getBlob`` to a temporary file while
   hashed, and moved into place only if it matches its CID. A blob that
   fails does not stop the others; the report lists what was fetched and
   what failed, and running again fetches only what is still missing (that
   is how an interrupted run resumes).

Tricky bits:

* Nothing is trusted. A changed block, a commit signed by another key or a
  blob whose bytes do not hash to its CID raise an
  :class:`~pypds.errors.IntegrityError` (or are reported as failed, for a
  blob); imports are single transactions, so a local copy stays exactly
  as it was, and a failed first download leaves no directory behind.
* No rollback. An existing copy only ever moves to a commit whose rev is
  newer than its HEAD, on every path (diff, full CAR, the fallback from one
  to the other), checked inside the import transaction so that a
  concurrent update cannot slip in between; anything else raises
  :class:`~pypds.errors.RollbackRefused` (the same commit is "unchanged").
  A missing rev (a version 2 commit) is older than any rev.
* Bounded in every direction: CAR bytes (``max_car_bytes``), blob bytes
  (``max_blob_bytes``, never held in memory), listBlobs pages and CIDs
  (relative to the blobs the records reference), the slowest transfer
  rate and an optional overall deadline (:class:`~pypds.net.xrpc.Pace`), and
  where connections go (:class:`~pypds.net.xrpc.AddressPolicy`: a PDS at a
  non-public address needs ``allow_private_network``).
* Retries (``retries``, exponential ``backoff``) cover what can succeed
  later: no connection, timeouts, too slow transfers, 5xx and 429. A 4xx
  or a failed check is final at once. A CAR cut half way is fetched again
  from the start.
* Temporary CARs are locked (``flock``) while a download uses them; a later
  run removes those no live process holds (left by a killed run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..car.reader import CarReader
from ..codec.cid import CID, RAW_PREFIX, parse_cid
from ..commit import decode_commit, rev_is_newer
from ..errors import (
    DeadlineExceeded,
    DidMismatch,
    InvalidCid,
    InvalidInput,
    ListingTooLong,
    MissingBlock,
    NetworkError,
    PypdsError,
    RemoteError,
    RollbackRefused,
    shown,
)
from ..filesystem import TEMP_PREFIX
from ..limits import DEFAULT_LIMITS, Limits
from ..repo.repo import Repo
from ..storage.blobs import MAX_BLOB_BYTES, BlobStore  # the largest blob stored is the largest accepted
from ..storage.store import DB_NAME, is_unfinished_create
from ..syntax import is_valid_tid
from .identity import Identity, ResolverConfig, resolve_async
from .xrpc import MIN_RATE, RATE_WINDOW, Pace, XrpcClient, iter_body, new_session

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["BlobFailure", "DownloadOptions", "DownloadReport", "Progress", "download", "download_async"]

#: Largest repository CAR accepted from a PDS (it is spooled to a temporary file, not held in memory).
MAX_CAR_BYTES = 16 << 30
#: CIDs asked for per listBlobs page (the lexicon's maximum); a longer page is refused.
LIST_BLOBS_PAGE = 1000
#: listBlobs may name at most this many CIDs per blob the records reference (locally stored or
#: missing), plus LIST_BLOBS_SLACK; pages must hold LIST_BLOBS_MIN_AVERAGE CIDs on average.
LIST_BLOBS_FACTOR = 2
LIST_BLOBS_SLACK = 1000
LIST_BLOBS_MIN_AVERAGE = 100
#: Temporary CARs of other downloads are left alone for this many seconds, then removed
#: unless a live process holds their lock (or, without flock, once STALE_UNLOCKED_CAR_SECONDS old).
STALE_CAR_SECONDS = 60.0
STALE_UNLOCKED_CAR_SECONDS = 24 * 3600.0
_CAR_PATTERN = f"{TEMP_PREFIX}pypds-download-*.car"

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
    ``"replaced"`` (a full CAR of a newer commit imported into an existing
    copy) or ``"unchanged"`` (the copy was already at the commit the PDS
    offers).
    """

    identity: Identity
    path: Path
    action: str
    head: CID
    rev: str | None  # None for a version 2 commit
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


@dataclass(frozen=True)
class DownloadOptions:
    """How :func:`download` talks to the PDS, and its bounds.

    ``retries`` bounds the retries of each request (``backoff`` seconds,
    doubling); ``concurrency`` blobs are fetched at once. Every response
    body must arrive at ``min_rate`` bytes/s or more on average over each
    ``rate_window`` seconds (0: no minimum); ``deadline`` (seconds, None for
    none) bounds the whole download's network time. ``max_car_bytes`` and
    ``max_blob_bytes`` cap what is accepted; ``limits`` bound the import.
    """

    retries: int = 3
    backoff: float = 0.5
    concurrency: int = 4
    max_car_bytes: int = MAX_CAR_BYTES
    max_blob_bytes: int = MAX_BLOB_BYTES
    min_rate: float = MIN_RATE
    rate_window: float = RATE_WINDOW
    deadline: float | None = None
    limits: Limits = DEFAULT_LIMITS


def download(
    identifier: str,
    path: str | os.PathLike,
    *,
    blobs: bool = False,
    since: bool = False,
    config: ResolverConfig | None = None,
    progress: Progress | None = None,
    options: DownloadOptions = DownloadOptions(),
) -> DownloadReport:
    """Download the repository of ``identifier`` (handle or DID) into the directory ``path``.

    ``since=True`` updates an existing copy with a diff CAR (a missing copy
    is downloaded whole); ``blobs=True`` also fetches every blob not yet
    stored. ``options`` (:class:`DownloadOptions`) sets retries, rates,
    the deadline and size caps. A PDS at a non-public address needs
    ``config.allow_private_network``.

    Raises :class:`~pypds.errors.ResolveError` (identity),
    :class:`~pypds.errors.RemoteError` (the PDS said no),
    :class:`~pypds.errors.NetworkError` (unreachable after retries, too
    slow, past the deadline, a refused address),
    :class:`~pypds.errors.IntegrityError` (tampered or corrupt data: bad
    block, bad signature, DID mismatch, or
    :class:`~pypds.errors.RollbackRefused` for a commit not newer than the
    copy's HEAD) or :class:`~pypds.errors.LimitExceeded`; the local copy is
    then unchanged. Blob failures do not raise: see
    :attr:`DownloadReport.blobs_failed`. Runs its own event loop: inside
    one, use :func:`download_async`.
    """
    return asyncio.run(
        download_async(identifier, path, blobs=blobs, since=since, config=config, progress=progress, options=options)
    )


async def download_async(
    identifier: str,
    path: str | os.PathLike,
    *,
    blobs: bool = False,
    since: bool = False,
    config: ResolverConfig | None = None,
    progress: Progress | None = None,
    options: DownloadOptions = DownloadOptions(),
    session: aiohttp.ClientSession | None = None,
    identity: Identity | None = None,
) -> DownloadReport:
    """:func:`download` as a coroutine.

    Reuses ``session`` when given: its connector then decides where host
    names connect (the address policy checks only IP literals); a session
    from :func:`pypds.net.xrpc.new_session` with ``config.address_policy()``
    checks resolved addresses too. A caller that has resolved the account
    already (a mirror) passes its ``identity``: its PDS is asked and its key
    checks the commit, and ``identifier`` must be its DID.
    """
    if options.concurrency < 1:
        raise InvalidInput(f"concurrency must be at least 1: {options.concurrency}")
    pace = Pace.within(options.deadline, min_rate=options.min_rate, window=options.rate_window)
    config = config or ResolverConfig()
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"{target} is a file, not a repository directory")
    async with AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(new_session(config.timeout, policy=config.address_policy()))
        if identity is None:
            identity = await _resolve(identifier, config, session, pace)
        elif identity.did != identifier:
            raise InvalidInput(f"the identity given is for {identity.did}, not {identifier}")
        config.address_policy().check_url(identity.pds, f"the PDS of {identity.did}")
        job = _Download(
            identity,
            target,
            XrpcClient(session, identity.pds, retries=options.retries, backoff=options.backoff, pace=pace),
            progress=progress or _no_progress,
            concurrency=options.concurrency,
            max_car_bytes=options.max_car_bytes,
            max_blob_bytes=options.max_blob_bytes,
            limits=options.limits,
        )
        return await job.run(blobs=blobs, since=since)
    raise AssertionError("unreachable")


async def _resolve(identifier: str, config: ResolverConfig, session: aiohttp.ClientSession, pace: Pace) -> Identity:
    """Resolve within what is left of the deadline (resolution touches nothing local)."""
    try:
        async with asyncio.timeout(pace.remaining()):
            return await resolve_async(identifier, config=config, session=session)
    except TimeoutError:
        raise DeadlineExceeded(f"resolving {identifier}: the download's deadline has passed") from None


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
        if (self.target / DB_NAME).exists() and not is_unfinished_create(self.target):
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
        if latest is not None:
            cid, rev = latest
            if cid == repo.head:
                return self._report(repo, "unchanged", 0)
            if not rev_is_newer(rev, repo.rev):  # refused before downloading the older CAR
                raise RollbackRefused(cid, rev, repo.head, repo.rev, source=f"the PDS {self.client.base_url}")
        try:
            return await self._import(repo, since)
        except RollbackRefused as exc:  # raised inside the import transaction: nothing changed
            if exc.offered == exc.head:
                return self._report(repo, "unchanged", 0)
            source = f"the PDS {self.client.base_url}"
            raise RollbackRefused(exc.offered, exc.offered_rev, exc.head, exc.head_rev, source=source) from None

    async def _import(self, repo: Repo, since: bool) -> DownloadReport:
        """The diff after the copy's rev (with ``since``), else or failing that the full CAR;
        either way only a commit newer than HEAD is taken."""
        key = self.identity.signing_key
        if since:
            try:
                size, blocks = await self._fetch_car(repo.rev, lambda car: repo.apply_car(car, key=key))
                return self._report(repo, "updated", size, blocks)
            except MissingBlock:
                pass  # the diff needs blocks this copy lacks: take the whole repository
        size, blocks = await self._fetch_car(None, lambda car: repo.import_car(car, key=key, require_newer=True))
        return self._report(repo, "replaced", size, blocks)

    def _report(self, repo: Repo, action: str, size: int, blocks: int = 0) -> DownloadReport:
        return DownloadReport(self.identity, self.target, action, repo.head, repo.rev, car_bytes=size, blocks=blocks)

    async def _latest_commit(self) -> tuple[CID, str] | None:
        """The PDS's current commit CID and rev, or None if it does not implement getLatestCommit."""
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
        rev = answer.get("rev")
        if not is_valid_tid(rev):  # type: ignore[arg-type]
            raise NetworkError(f"getLatestCommit of {self.did} answered an invalid rev {shown(rev)}")
        return cid, rev  # type: ignore[return-value]

    async def _fetch_car(self, since: str | None, consume: Callable[[Path], Any]) -> tuple[int, Any]:
        """Stream getRepo (the diff after ``since``, or everything) to a temporary file and
        hand it to ``consume`` (in a worker thread); returns (CAR bytes, what consume returned)."""
        params = {"did": self.did} if since is None else {"did": self.did, "since": since}
        with _temp_car(self.target) as car:
            what = f"getRepo of {self.did} from {self.client.base_url}"
            size = await self.client.retrying(lambda: self._stream_to(car, params), what=what)
            return size, await asyncio.to_thread(consume, car)

    async def _stream_to(self, car: Path, params: dict[str, str]) -> int:
        async with self.client.open("com.atproto.sync.getRepo", params) as response:
            total = response.content_length
            size = 0
            with open(car, "wb") as out:
                async for chunk in iter_body(response, self.max_car_bytes, "max_car_bytes", pace=self.client.pace):
                    size += len(chunk)
                    out.write(chunk)
                    self.progress("repo", size, total)
        return size

    # -- blobs -------------------------------------------------------------------------------

    async def _blobs(self, repo: Repo, report: DownloadReport) -> None:
        local = {cid.cid_bytes for cid in await asyncio.to_thread(repo.list_blobs)}
        referenced = len(local) + len(await asyncio.to_thread(repo.missing_blobs))
        remote = await self._list_blobs(LIST_BLOBS_FACTOR * referenced + LIST_BLOBS_SLACK)
        missing = [cid for cid in remote if cid.cid_bytes not in local]
        report.blobs_listed = len(remote)
        report.blobs_present = len(remote) - len(missing)
        todo = iter(missing)
        done = [0]
        self.progress("blobs", 0, len(missing))
        store = BlobStore(repo.path / "blobs")

        async def worker() -> None:
            for cid in todo:
                failure = await self._fetch_blob_safely(store, cid)
                if failure is None:
                    report.blobs_fetched.append(cid)
                else:
                    report.blobs_failed.append(failure)
                done[0] += 1
                self.progress("blobs", done[0], len(missing))

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(missing)))))
        report.blobs_fetched.sort(key=CID.encode)
        report.blobs_failed.sort(key=lambda failure: failure.cid.encode())

    async def _list_blobs(self, max_cids: int) -> list[CID]:
        """Every blob CID the PDS lists for the DID, in its order, without repeats.

        Bounded: a page may hold at most the CIDs asked for, all pages together
        at most ``max_cids`` (repeats count), and there may be at most one page
        per LIST_BLOBS_MIN_AVERAGE of those (plus two); past a bound,
        :class:`ListingTooLong`. A repeated cursor ends the listing.
        """
        where = f"listBlobs of {self.did} from {self.client.base_url}"
        max_pages = max_cids // LIST_BLOBS_MIN_AVERAGE + 2
        found: dict[bytes, CID] = {}
        cursor: str | None = None
        seen: set[str] = set()
        received = 0
        for pages in range(1, max_pages + 2):
            if pages > max_pages:
                raise ListingTooLong("list_blobs_pages", pages, max_pages, where)
            params = {"did": self.did, "limit": str(LIST_BLOBS_PAGE)}
            if cursor is not None:
                params["cursor"] = cursor
            page = await self.client.query_json("com.atproto.sync.listBlobs", params)
            cids = page.get("cids")
            if not isinstance(cids, list):
                raise NetworkError(f"{where} answered without a cids list")
            if len(cids) > LIST_BLOBS_PAGE:
                raise ListingTooLong("list_blobs_page", len(cids), LIST_BLOBS_PAGE, f"{where} (the limit asked for)")
            received += len(cids)
            if received > max_cids:
                bound = f"{where} ({LIST_BLOBS_FACTOR} per blob the records reference, plus {LIST_BLOBS_SLACK})"
                raise ListingTooLong("max_listed_blobs", received, max_cids, bound)
            for text in cids:
                cid = _blob_cid(text, self.did)
                found.setdefault(cid.cid_bytes, cid)
            cursor = page.get("cursor")
            if not cids or not isinstance(cursor, str) or not cursor or cursor in seen:
                break
            seen.add(cursor)
        return list(found.values())

    async def _fetch_blob_safely(self, store: BlobStore, cid: CID) -> BlobFailure | None:
        try:
            await self.client.retrying(lambda: self._fetch_blob(store, cid), what=f"getBlob {cid.encode()}")
        except PypdsError as exc:
            return BlobFailure(cid, exc)
        return None

    async def _fetch_blob(self, store: BlobStore, cid: CID) -> None:
        """Stream one blob to a temporary file, hashing it; it is moved into place only if it matches."""
        if cid.cid_bytes[:4] != RAW_PREFIX:
            raise InvalidCid(f"listBlobs named {cid.encode()}, which is not a blob (raw) CID")
        params = {"did": self.did, "cid": cid.encode()}
        with store.receive(cid) as incoming:
            async with self.client.open("com.atproto.sync.getBlob", params) as response:
                async for chunk in iter_body(response, self.max_blob_bytes, "max_blob_bytes", pace=self.client.pace):
                    incoming.write(chunk)
            await asyncio.to_thread(incoming.finish)


def _blob_cid(text: object, did: str) -> CID:
    if not isinstance(text, str):
        raise NetworkError(f"listBlobs of {did} answered {shown(text)} where a CID was expected")
    try:
        return parse_cid(text)
    except PypdsError as exc:
        raise NetworkError(f"listBlobs of {did} answered an invalid CID: {exc}") from None


# -- temporary CARs --------------------------------------------------------------------------


@contextmanager
def _temp_car(target: Path) -> Iterator[Path]:
    """A new temporary CAR path beside ``target``, locked for as long as it is in use, removed after.

    Stale ones left by killed runs in the same directory are removed first.
    """
    directory = _temp_dir(target)
    remove_stale_cars(directory)
    path = directory / f"{TEMP_PREFIX}pypds-download-{target.name}-{secrets.token_hex(6)}.car"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        if fcntl is not None:  # without locks on this file system, others cannot lock it either: it stays
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path
    finally:
        os.close(fd)  # releases the lock; a cleaner removing the file first is harmless
        path.unlink(missing_ok=True)


def _temp_dir(target: Path) -> Path:
    """The nearest existing directory at or above ``target``'s parent."""
    directory = target.absolute().parent
    while not directory.is_dir():
        directory = directory.parent
    return directory


def remove_stale_cars(directory: Path, *, grace: float = STALE_CAR_SECONDS) -> int:
    """Remove the temporary CARs of downloads that are no longer running; returns how many.

    A CAR younger than ``grace`` seconds is left alone (its download may be
    starting); an older one goes if no process holds its lock. Where
    ``flock`` does not exist, only CARs older than a day go.
    """
    removed = 0
    cutoff = time.time() - (grace if fcntl is not None else max(grace, STALE_UNLOCKED_CAR_SECONDS))
    for path in directory.glob(_CAR_PATTERN):
        try:
            if path.stat().st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        removed += _remove_if_unlocked(path)
    return removed


def _remove_if_unlocked(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return 0
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a live download holds it
        path.unlink()
    except OSError:
        return 0
    finally:
        os.close(fd)
    return 1


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
