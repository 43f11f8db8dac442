"""pypds: an embedded storage engine for AT Protocol (Bluesky) repositories.

>>> from pypds import Repo
>>> with Repo.create("my-repo", "did:plc:example") as repo:   # doctest: +SKIP
...     repo.put("app.bsky.feed.post", "3jui7kd54zh2y", {"$type": "app.bsky.feed.post", "text": "hi"})

See the README for the full API. This module is the one public surface:
everything listed in ``__all__`` is API. Each name is imported from its
module on first use (PEP 562), so ``import pypds`` is cheap and a command
that needs only records does not load the network (aiohttp), the crypto
libraries or the CAR tools.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .car.order import CarOrder, check_car_order
    from .car.reader import CarReader
    from .car.writer import CarWriter
    from .codec.atjson import from_json, to_json
    from .codec.cid import CID, cid_for_cbor, cid_for_raw, parse_cid
    from .commit import Commit, decode_commit, sign_commit
    from .errors import (
        AddressRefused,
        BadSignature,
        BlockHashMismatch,
        CarFormatError,
        CommitGap,
        DeadlineExceeded,
        DidMismatch,
        DiskFull,
        HandleMismatch,
        HeadMoved,
        IntegrityError,
        InvalidCbor,
        InvalidCid,
        InvalidCommit,
        InvalidCommitMessage,
        InvalidDid,
        InvalidFrame,
        InvalidHandle,
        InvalidInput,
        InvalidMst,
        InvalidRecord,
        InvalidRepoPath,
        InvalidSigningKey,
        InvalidTid,
        LimitExceeded,
        ListingTooLong,
        LoadError,
        LoadIncomplete,
        MissingBlock,
        NetworkError,
        NotFound,
        PartialTree,
        PypdsError,
        RecordNotFound,
        RefNotFound,
        RemoteError,
        RepoBusy,
        RepoClosed,
        RepoExists,
        RepoNotFound,
        RepoStateError,
        ResolveError,
        ResponseTooLarge,
        RollbackRefused,
        SchemaVersionError,
        SigningKeyMismatch,
        SigningKeyRequired,
        StorageError,
        StoreDamaged,
        StreamError,
        TransferTooSlow,
    )
    from .keys import (
        K256SigningKey,
        P256SigningKey,
        PublicKey,
        SigningKey,
        generate_signing_key,
        load_signing_key,
        parse_did_key,
    )
    from .limits import Limits
    from .mst import MST
    from .mst.nodestore import NodeStore
    from .net.downloader import BlobFailure, DownloadOptions, DownloadReport, download, download_async
    from .net.identity import Identity, ResolverConfig, resolve, resolve_async
    from .net.identity_server import IdentityOptions
    from .net.mirror import BackfillReport, Mirror, MirrorStats
    from .net.pusher import NewAccount, PushReport, push, push_async
    from .net.server import make_app, serve
    from .net.service_auth import service_auth_token
    from .net.subscribe_repos import EventStreamOptions
    from .operation import RecordChange
    from .repo.gc import GcReport
    from .repo.history import Revert
    from .repo.load import LoadReport
    from .repo.repo import Batch, BlockStore, Repo
    from .storage.blobs import BlobRef, blob_refs
    from .sync.firehose import CommitEvent, VerifiedCommit, verify_commit_message
    from .sync.proof import verify_proof
    from .sync.verify import Check, Outcome, VerifyReport, verify_car

#: Where each public name lives; imported on first use.
_EXPORTS = {
    "CarOrder": "car.order",
    "check_car_order": "car.order",
    "CarReader": "car.reader",
    "CarWriter": "car.writer",
    "from_json": "codec.atjson",
    "to_json": "codec.atjson",
    "CID": "codec.cid",
    "cid_for_cbor": "codec.cid",
    "cid_for_raw": "codec.cid",
    "parse_cid": "codec.cid",
    "Commit": "commit",
    "decode_commit": "commit",
    "sign_commit": "commit",
    "AddressRefused": "errors",
    "BadSignature": "errors",
    "BlockHashMismatch": "errors",
    "CarFormatError": "errors",
    "CommitGap": "errors",
    "DeadlineExceeded": "errors",
    "DidMismatch": "errors",
    "DiskFull": "errors",
    "HandleMismatch": "errors",
    "HeadMoved": "errors",
    "IntegrityError": "errors",
    "InvalidCbor": "errors",
    "InvalidCid": "errors",
    "InvalidCommit": "errors",
    "InvalidCommitMessage": "errors",
    "InvalidDid": "errors",
    "InvalidFrame": "errors",
    "InvalidHandle": "errors",
    "InvalidInput": "errors",
    "InvalidMst": "errors",
    "InvalidRecord": "errors",
    "InvalidRepoPath": "errors",
    "InvalidSigningKey": "errors",
    "InvalidTid": "errors",
    "LimitExceeded": "errors",
    "ListingTooLong": "errors",
    "LoadError": "errors",
    "LoadIncomplete": "errors",
    "MissingBlock": "errors",
    "NetworkError": "errors",
    "NotFound": "errors",
    "PartialTree": "errors",
    "PypdsError": "errors",
    "RecordNotFound": "errors",
    "RefNotFound": "errors",
    "RemoteError": "errors",
    "RepoBusy": "errors",
    "RepoClosed": "errors",
    "RepoExists": "errors",
    "RepoNotFound": "errors",
    "RepoStateError": "errors",
    "ResolveError": "errors",
    "ResponseTooLarge": "errors",
    "RollbackRefused": "errors",
    "SchemaVersionError": "errors",
    "SigningKeyMismatch": "errors",
    "SigningKeyRequired": "errors",
    "StorageError": "errors",
    "StoreDamaged": "errors",
    "StreamError": "errors",
    "TransferTooSlow": "errors",
    "generate_signing_key": "keys",
    "K256SigningKey": "keys",
    "load_signing_key": "keys",
    "P256SigningKey": "keys",
    "parse_did_key": "keys",
    "PublicKey": "keys",
    "SigningKey": "keys",
    "Limits": "limits",
    "MST": "mst",
    "NodeStore": "mst.nodestore",
    "BlobFailure": "net.downloader",
    "download": "net.downloader",
    "download_async": "net.downloader",
    "DownloadOptions": "net.downloader",
    "DownloadReport": "net.downloader",
    "Identity": "net.identity",
    "resolve": "net.identity",
    "resolve_async": "net.identity",
    "ResolverConfig": "net.identity",
    "IdentityOptions": "net.identity_server",
    "BackfillReport": "net.mirror",
    "Mirror": "net.mirror",
    "MirrorStats": "net.mirror",
    "NewAccount": "net.pusher",
    "push": "net.pusher",
    "push_async": "net.pusher",
    "PushReport": "net.pusher",
    "make_app": "net.server",
    "EventStreamOptions": "net.subscribe_repos",
    "serve": "net.server",
    "service_auth_token": "net.service_auth",
    "RecordChange": "operation",
    "Batch": "repo.repo",
    "BlockStore": "repo.repo",
    "GcReport": "repo.gc",
    "LoadReport": "repo.load",
    "Repo": "repo.repo",
    "Revert": "repo.history",
    "blob_refs": "storage.blobs",
    "BlobRef": "storage.blobs",
    "CommitEvent": "sync.firehose",
    "VerifiedCommit": "sync.firehose",
    "verify_commit_message": "sync.firehose",
    "verify_proof": "sync.proof",
    "Check": "sync.verify",
    "Outcome": "sync.verify",
    "verify_car": "sync.verify",
    "VerifyReport": "sync.verify",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pypds' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "__version__",
    "AddressRefused",
    "BackfillReport",
    "BadSignature",
    "Batch",
    "blob_refs",
    "BlobFailure",
    "BlobRef",
    "BlockHashMismatch",
    "BlockStore",
    "CarFormatError",
    "CarOrder",
    "CarReader",
    "CarWriter",
    "Check",
    "check_car_order",
    "CID",
    "cid_for_cbor",
    "cid_for_raw",
    "Commit",
    "CommitEvent",
    "CommitGap",
    "DeadlineExceeded",
    "decode_commit",
    "DidMismatch",
    "DiskFull",
    "download",
    "download_async",
    "DownloadOptions",
    "DownloadReport",
    "EventStreamOptions",
    "from_json",
    "GcReport",
    "generate_signing_key",
    "HandleMismatch",
    "HeadMoved",
    "Identity",
    "IdentityOptions",
    "IntegrityError",
    "InvalidCbor",
    "InvalidCid",
    "InvalidCommit",
    "InvalidCommitMessage",
    "InvalidDid",
    "InvalidFrame",
    "InvalidHandle",
    "InvalidInput",
    "InvalidMst",
    "InvalidRecord",
    "InvalidRepoPath",
    "InvalidSigningKey",
    "InvalidTid",
    "K256SigningKey",
    "LimitExceeded",
    "Limits",
    "ListingTooLong",
    "load_signing_key",
    "LoadError",
    "LoadIncomplete",
    "LoadReport",
    "make_app",
    "Mirror",
    "MirrorStats",
    "MissingBlock",
    "MST",
    "NetworkError",
    "NewAccount",
    "NodeStore",
    "NotFound",
    "Outcome",
    "P256SigningKey",
    "parse_cid",
    "parse_did_key",
    "PartialTree",
    "PublicKey",
    "push",
    "push_async",
    "PushReport",
    "PypdsError",
    "RecordChange",
    "RecordNotFound",
    "RefNotFound",
    "RemoteError",
    "Repo",
    "RepoBusy",
    "RepoClosed",
    "RepoExists",
    "RepoNotFound",
    "RepoStateError",
    "resolve",
    "resolve_async",
    "ResolveError",
    "ResolverConfig",
    "ResponseTooLarge",
    "Revert",
    "RollbackRefused",
    "SchemaVersionError",
    "serve",
    "service_auth_token",
    "sign_commit",
    "SigningKey",
    "SigningKeyMismatch",
    "SigningKeyRequired",
    "StorageError",
    "StoreDamaged",
    "StreamError",
    "to_json",
    "TransferTooSlow",
    "VerifiedCommit",
    "verify_car",
    "verify_commit_message",
    "verify_proof",
    "VerifyReport",
]
