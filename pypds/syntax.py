"""Syntax of atproto identifiers: NSIDs, record keys, repo paths, DIDs, TIDs.

Repo path (= MST key): ``<collection>/<rkey>``, exactly one ``/``, at most
1024 bytes; the collection is an NSID and the record key is 1-512 characters
of ``A-Za-z0-9 . - _ ~ :``, never ``.`` or ``..``. MST keys are compared as
UTF-8 bytes.
"""

from __future__ import annotations

import re

from .errors import InvalidDid, InvalidHandle, InvalidRepoPath, InvalidTid, shown
from .limits import MAX_MST_KEY_BYTES

__all__ = [
    "is_valid_nsid",
    "is_valid_record_key",
    "is_valid_did",
    "is_valid_tid",
    "is_valid_mst_key",
    "check_collection",
    "check_record_key",
    "check_did",
    "check_tid",
    "repo_path",
    "split_repo_path",
    "is_valid_handle",
    "check_handle",
]

_NSID = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"  # first domain segment
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"  # more domain segments
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"  # name
)
_RECORD_KEY = re.compile(r"[A-Za-z0-9._:~-]{1,512}")
_MST_KEY = re.compile(r"[A-Za-z0-9._:~-]+/[A-Za-z0-9._:~-]+")
_DID = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")

MAX_NSID_LENGTH = 317
MAX_DID_LENGTH = 2048


def is_valid_nsid(value: str) -> bool:
    """True for a syntactically valid NSID such as ``app.bsky.feed.post``."""
    return isinstance(value, str) and len(value) <= MAX_NSID_LENGTH and _NSID.fullmatch(value) is not None


def is_valid_record_key(value: str) -> bool:
    """True for a valid record key (1-512 allowed chars, not ``.`` or ``..``)."""
    return isinstance(value, str) and value not in (".", "..") and _RECORD_KEY.fullmatch(value) is not None


def is_valid_mst_key(value: str) -> bool:
    """True for a key the MST accepts (two non-empty segments, <= 1024 bytes).

    This is the looser rule of the reference MST code; repository writes use
    the stricter :func:`split_repo_path` rules.
    """
    return isinstance(value, str) and len(value) <= MAX_MST_KEY_BYTES and _MST_KEY.fullmatch(value) is not None


def is_valid_did(value: str) -> bool:
    """True for a syntactically valid DID."""
    return isinstance(value, str) and len(value) <= MAX_DID_LENGTH and _DID.fullmatch(value) is not None


def is_valid_tid(value: str) -> bool:
    """True for a syntactically valid TID (13 chars, sortable base32)."""
    return isinstance(value, str) and _TID.fullmatch(value) is not None


def check_collection(collection: str) -> str:
    """Return ``collection`` or raise InvalidRepoPath if it is not an NSID."""
    if type(collection) is str and collection in _KNOWN_COLLECTIONS:  # few collections: skip the regex for known ones
        return collection
    if not is_valid_nsid(collection):
        raise InvalidRepoPath(f"invalid collection (not an NSID): {shown(collection)}")
    if len(_KNOWN_COLLECTIONS) < 1024:
        _KNOWN_COLLECTIONS.add(collection)
    return collection


_KNOWN_COLLECTIONS: set[str] = set()


def check_record_key(rkey: str) -> str:
    """Return ``rkey`` or raise InvalidRepoPath if it is not a valid record key."""
    if not is_valid_record_key(rkey):
        raise InvalidRepoPath(f"invalid record key: {shown(rkey)}")
    return rkey


def check_did(did: str) -> str:
    """Return ``did`` or raise InvalidDid."""
    if not is_valid_did(did):
        raise InvalidDid(f"invalid DID: {shown(did)}")
    return did


def check_tid(tid: str, what: str = "TID") -> str:
    """Return ``tid`` or raise InvalidTid."""
    if not is_valid_tid(tid):
        raise InvalidTid(f"invalid {what}: {shown(tid)}")
    return tid


def repo_path(collection: str, rkey: str) -> str:
    """Validate and join a collection and record key into a repo path."""
    check_collection(collection)
    check_record_key(rkey)
    return f"{collection}/{rkey}"


def split_repo_path(path: str) -> tuple[str, str]:
    """Split and validate a repo path into (collection, rkey)."""
    if not isinstance(path, str) or path.count("/") != 1:
        raise InvalidRepoPath(f"repo path must be <collection>/<rkey>: {shown(path)}")
    if len(path) > MAX_MST_KEY_BYTES:
        raise InvalidRepoPath(f"repo path longer than {MAX_MST_KEY_BYTES} bytes: {shown(path)}")
    collection, rkey = path.split("/")
    check_collection(collection)
    check_record_key(rkey)
    return collection, rkey


_HANDLE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"  # labels
    r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"  # top-level label starts with a letter
)
_MAX_HANDLE_LENGTH = 253


def is_valid_handle(value: str) -> bool:
    """True for a syntactically valid handle (a DNS name of two labels or more)."""
    return isinstance(value, str) and len(value) <= _MAX_HANDLE_LENGTH and _HANDLE.fullmatch(value.lower()) is not None


def check_handle(value: str) -> str:
    """The handle in lower case, or :class:`~pypds.errors.InvalidHandle`."""
    if not is_valid_handle(value):
        raise InvalidHandle(f"invalid handle: {shown(value)}")
    return value.lower()
