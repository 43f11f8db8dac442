"""pypds: an embedded storage engine for AT Protocol (Bluesky) repositories.

>>> from pypds import Repo
>>> with Repo.create("my-repo", "did:plc:example") as repo:   # doctest: +SKIP
...     repo.put("app.bsky.feed.post", "3jui7kd54zh2y", {"$type": "app.bsky.feed.post", "text": "hi"})

See the README for the full API.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .atjson import from_json, to_json
from .blobs import BlobRef
from .car import CarReader, CarWriter
from .car_order import CarOrder, check_car_order
from .cid import CID, cid_for_cbor, cid_for_raw, parse_cid
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
from .firehose import VerifiedCommit, verify_commit_message
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
from .proof import verify_proof
from .repo import Batch, BlockStore, GcReport, Repo
from .service_auth import service_auth_token
from .verify import Check, Outcome, VerifyReport, verify_car

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .downloader import BlobFailure, DownloadReport, download, download_async
    from .identity import Identity, ResolverConfig, resolve, resolve_async
    from .identity_server import IdentityOptions
    from .pusher import NewAccount, PushReport, push, push_async
    from .server import make_app, serve

#: Network entry points, imported on first use so that ``import pypds`` never imports aiohttp.
_LAZY = {
    "download": "downloader",
    "download_async": "downloader",
    "DownloadReport": "downloader",
    "BlobFailure": "downloader",
    "resolve": "identity",
    "resolve_async": "identity",
    "Identity": "identity",
    "ResolverConfig": "identity",
    "IdentityOptions": "identity_server",
    "push": "pusher",
    "push_async": "pusher",
    "PushReport": "pusher",
    "NewAccount": "pusher",
    "make_app": "server",
    "serve": "server",
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
    "BadSignature",
    "Batch",
    "Check",
    "Outcome",
    "VerifiedCommit",
    "VerifyReport",
    "verify_car",
    "verify_commit_message",
    "verify_proof",
    "BlobRef",
    "BlockHashMismatch",
    "BlockStore",
    "CID",
    "CarFormatError",
    "CarOrder",
    "CarReader",
    "CarWriter",
    "Commit",
    "DidMismatch",
    "DiskFull",
    "GcReport",
    "IntegrityError",
    "InvalidCbor",
    "InvalidCid",
    "InvalidCommit",
    "InvalidCommitMessage",
    "InvalidDid",
    "InvalidInput",
    "InvalidMst",
    "InvalidRecord",
    "InvalidRepoPath",
    "InvalidSigningKey",
    "InvalidTid",
    "K256SigningKey",
    "LimitExceeded",
    "Limits",
    "MST",
    "MissingBlock",
    "PartialTree",
    "NotFound",
    "P256SigningKey",
    "PublicKey",
    "PypdsError",
    "RecordNotFound",
    "RefNotFound",
    "RepoBusy",
    "Repo",
    "RepoClosed",
    "RepoExists",
    "RepoNotFound",
    "RepoStateError",
    "RollbackRefused",
    "SchemaVersionError",
    "SigningKey",
    "SigningKeyMismatch",
    "SigningKeyRequired",
    "StorageError",
    "StoreDamaged",
    "check_car_order",
    "cid_for_cbor",
    "cid_for_raw",
    "decode_commit",
    "from_json",
    "to_json",
    "generate_signing_key",
    "load_signing_key",
    "parse_cid",
    "parse_did_key",
    "sign_commit",
    "service_auth_token",
    # network (lazy)
    "AddressRefused",
    "BlobFailure",
    "DeadlineExceeded",
    "DownloadReport",
    "HandleMismatch",
    "Identity",
    "IdentityOptions",
    "InvalidHandle",
    "ListingTooLong",
    "NetworkError",
    "RemoteError",
    "ResolveError",
    "ResolverConfig",
    "ResponseTooLarge",
    "TransferTooSlow",
    "download",
    "download_async",
    "make_app",
    "NewAccount",
    "PushReport",
    "push",
    "push_async",
    "resolve",
    "resolve_async",
    "serve",
]
