"""pypds: an embedded storage engine for AT Protocol (Bluesky) repositories.

>>> from pypds import Repo
>>> with Repo.create("my-repo", "did:plc:example") as repo:   # doctest: +SKIP
...     repo.put("app.bsky.feed.post", "3jui7kd54zh2y", {"$type": "app.bsky.feed.post", "text": "hi"})

See the README for the full API. This module is the one public surface:
everything listed in ``__all__`` is API; the network entry points (and
aiohttp) are imported on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

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
from .net.service_auth import service_auth_token
from .operation import RecordChange
from .repo.repo import Batch, BlockStore, GcReport, LoadReport, Repo, Revert
from .storage.blobs import BlobRef, blob_refs
from .sync.firehose import CommitEvent, VerifiedCommit, verify_commit_message
from .sync.proof import verify_proof
from .sync.verify import Check, Outcome, VerifyReport, verify_car
from .version import __version__

if TYPE_CHECKING:
    from .net.downloader import BlobFailure, DownloadOptions, DownloadReport, download, download_async
    from .net.identity import Identity, ResolverConfig, resolve, resolve_async
    from .net.identity_server import IdentityOptions
    from .net.pusher import NewAccount, PushReport, push, push_async
    from .net.server import make_app, serve

#: Network entry points, imported on first use so that ``import pypds`` never imports aiohttp.
_LAZY = {
    "download": "net.downloader",
    "download_async": "net.downloader",
    "DownloadReport": "net.downloader",
    "DownloadOptions": "net.downloader",
    "BlobFailure": "net.downloader",
    "resolve": "net.identity",
    "resolve_async": "net.identity",
    "Identity": "net.identity",
    "ResolverConfig": "net.identity",
    "IdentityOptions": "net.identity_server",
    "push": "net.pusher",
    "push_async": "net.pusher",
    "PushReport": "net.pusher",
    "NewAccount": "net.pusher",
    "make_app": "net.server",
    "serve": "net.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pypds' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "AddressRefused",
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
    "DeadlineExceeded",
    "decode_commit",
    "DidMismatch",
    "DiskFull",
    "download",
    "download_async",
    "DownloadOptions",
    "DownloadReport",
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
    "LoadError",
    "LoadIncomplete",
    "LoadReport",
    "load_signing_key",
    "make_app",
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
    "Revert",
    "resolve",
    "resolve_async",
    "ResolveError",
    "ResolverConfig",
    "ResponseTooLarge",
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
    "to_json",
    "TransferTooSlow",
    "VerifiedCommit",
    "verify_car",
    "verify_commit_message",
    "verify_proof",
    "VerifyReport",
]
