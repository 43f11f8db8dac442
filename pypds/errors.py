"""The pypds exception hierarchy.

Every error pypds raises on purpose is a :class:`PypdsError`. Callers can
catch the whole family, one branch (bad input, integrity failure, not found,
limit exceeded, repository state) or one precise class. Messages name the CID,
key or byte offset at fault.

    PypdsError
    ├── InvalidInput            caller-supplied value is malformed
    │   ├── InvalidRepoPath     collection / record key / MST key syntax
    │   ├── InvalidRecord       not a valid atproto record
    │   ├── LoadError           a bad line of a bulk load (nothing written)
    │   ├── InvalidDid
    │   ├── InvalidTid
    │   └── InvalidSigningKey
    ├── IntegrityError          stored or imported data is wrong
    │   ├── CarFormatError      CAR framing or header
    │   ├── BlockHashMismatch   a block's bytes do not hash to its CID
    │   ├── MissingBlock        a block the structure needs is absent
    │   │   └── PartialTree     a CAR holds only part of its tree (a proof or diff CAR)
    │   ├── InvalidCid          unsupported or malformed CID
    │   ├── InvalidCbor         bytes are not canonical DAG-CBOR
    │   ├── InvalidMst          MST structure rules violated
    │   ├── InvalidCommit       commit object malformed
    │   ├── BadSignature        commit signature does not verify
    │   ├── DidMismatch         commit belongs to another repository
    │   ├── RollbackRefused     a commit not newer than HEAD would move a copy back
    │   ├── InvalidCommitMessage  a firehose #commit does not check out
    │   ├── InvalidFrame          an event-stream frame is oversized or malformed
    │   ├── CommitGap             a followed commit does not build on what the copy holds
    │   └── StoreDamaged        pds.db lacks a table or holds a value of the wrong type
    ├── NotFound
    │   ├── RecordNotFound
    │   └── RefNotFound
    ├── LoadIncomplete          a bulk load in several commits stopped after writing some
    ├── LimitExceeded           a named safety limit was hit
    └── RepoStateError          the repository handle cannot do this
        ├── RepoClosed
        ├── RepoExists
        ├── RepoNotFound
        ├── SchemaVersionError
        ├── SigningKeyRequired
        ├── SigningKeyMismatch  the signing key did not sign HEAD (writing would rotate the key)
        ├── RepoBusy            another writer held the lock past the timeout
        │   └── HeadMoved       another writer moved HEAD while a write that needs it unchanged was prepared
        └── StorageError        the repository's files cannot be read or written
            └── DiskFull        no space left (ENOSPC, quota, SQLITE_FULL); nothing was written
"""

from __future__ import annotations

_SHOWN_CHARS = 80


def shown(value: object) -> str:
    """A short rendering of an untrusted value for an error message.

    Never fails and never recurses: containers are named by type and size,
    scalars are ``repr``-ed and truncated, huge integers are described.
    """
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[: _SHOWN_CHARS + 1])
        return text if len(value) <= _SHOWN_CHARS else f"{text}... ({len(value)} long)"
    size = f" of {len(value)}" if isinstance(value, (list, tuple, dict, set)) else ""
    return f"<{type(value).__name__}{size}>"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and the noun that agrees with it, for messages: ``1 node``, ``2 nodes``, ``0 entries``."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


class PypdsError(Exception):
    """Base class of every error raised by pypds."""


class InvalidInput(PypdsError, ValueError):
    """A value handed to pypds is malformed."""


class InvalidRepoPath(InvalidInput):
    """A collection, record key or repo path (MST key) has invalid syntax."""


class InvalidRecord(InvalidInput):
    """A record is not a valid atproto record (not a map, floats, bad CBOR...)."""


class LoadError(InvalidInput):
    """A line of a bulk load (or a file of a loaded directory) is bad; nothing was written.

    ``source`` names the input, ``line`` is the 1-based line number (None
    for a file of a directory).
    """

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        super().__init__(f"{source}{'' if line is None else f' line {line}'}: {message}")
        self.source = source
        self.line = line


class InvalidDid(InvalidInput):
    """A DID has invalid syntax."""


class InvalidTid(InvalidInput):
    """A TID (timestamp identifier, used for revs) has invalid syntax."""


class InvalidSigningKey(InvalidInput):
    """Key material (private key, did:key) cannot be used."""


class IntegrityError(PypdsError):
    """Data read from a CAR or the store breaks an integrity rule."""


class CarFormatError(IntegrityError):
    """The CAR framing or header is malformed."""


class BlockHashMismatch(IntegrityError):
    """A block's bytes do not hash to the digest in its CID."""


class MissingBlock(IntegrityError):
    """A block needed to complete a structure is not present."""

    def __init__(self, message: str, cid: object = None) -> None:
        super().__init__(message)
        self.cid = cid


class PartialTree(MissingBlock):
    """A CAR read as a whole repository holds only part of its commit's tree.

    That is what a proof CAR (``getRecord``) or a diff CAR (``getRepo?since=``,
    a firehose message) looks like; they are read with ``verify_proof``,
    ``apply_car`` and ``verify_commit_message`` instead.
    """


class InvalidCid(IntegrityError, ValueError):
    """A CID is malformed or uses a version, codec or hash pypds does not accept."""


class InvalidCbor(IntegrityError):
    """Bytes are not canonical DAG-CBOR."""


class InvalidMst(IntegrityError):
    """An MST node or tree breaks the MST rules."""


class InvalidCommit(IntegrityError):
    """A commit object does not have the v3 structure."""


class BadSignature(IntegrityError):
    """A commit signature does not verify against the expected key."""


class DidMismatch(IntegrityError):
    """A commit's DID is not the repository's DID."""


class RollbackRefused(IntegrityError):
    """A commit offered as an update is not newer than HEAD: taking it would move the repository back.

    ``offered`` / ``offered_rev`` are the refused commit and its rev (None for
    a commit without one), ``head`` / ``head_rev`` what the repository holds.
    A missing rev counts as older than any rev. Moving back is only ever an
    explicit action: ``Repo.set_head`` (``pypds head --set``) to a stored
    commit, or ``Repo.import_car`` (``pypds import``) of the older CAR. A
    source moved back with ``head --set`` breaks every copy this way;
    ``Repo.revert`` (``pypds revert``) goes back with a new commit instead,
    which copies follow.
    """

    def __init__(
        self, offered: object, offered_rev: str | None, head: object, head_rev: str | None, *, source: str = "the CAR"
    ) -> None:
        super().__init__(
            f"refusing to move HEAD back: {source} offers commit {_cid_text(offered)} (rev {offered_rev or 'none'}), "
            f"not newer than HEAD {_cid_text(head)} (rev {head_rev or 'none'}); if the source was moved "
            "back with `pypds head --set`, go back there with `pypds revert PATH COMMIT` instead (a new commit "
            "with the old tree, which copies follow); to move this copy back on purpose, use "
            "`pypds head PATH --set CID` for a stored commit or `pypds import PATH CAR`"
        )
        self.offered = offered
        self.offered_rev = offered_rev
        self.head = head
        self.head_rev = head_rev


def _cid_text(cid: object) -> str:
    encode = getattr(cid, "encode", None)
    return encode() if callable(encode) and not isinstance(cid, str) else str(cid)


class InvalidCommitMessage(IntegrityError):
    """A firehose ``#commit`` message is inconsistent with its own blocks."""


class InvalidFrame(IntegrityError):
    """An event-stream frame (``subscribeRepos``) is oversized, not canonical DAG-CBOR, or not header + body."""


class CommitGap(IntegrityError):
    """A followed commit does not build on what the copy holds: its ``since`` is not the copy's rev,
    or its ``prevData`` is not the copy's MST root. The copy is unchanged; a mirror resyncs the account."""


class StoreDamaged(IntegrityError):
    """``pds.db`` is not as pypds wrote it: a table is missing, or a value (HEAD, a block) has the wrong type."""


class NotFound(PypdsError, KeyError):
    """Something looked up by name or key does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RecordNotFound(NotFound):
    """No record exists at the given collection and record key."""


class RefNotFound(NotFound):
    """No named ref exists with the given name."""


class LoadIncomplete(PypdsError):
    """A bulk load in several commits stopped after some of them were written.

    ``commits`` are the commits written (each complete: the repository is
    consistent), ``records`` the writes they hold, ``line`` the first input
    line not written (None for a directory); the cause is chained.
    """

    def __init__(self, message: str, *, commits: list, records: int, line: int | None) -> None:
        super().__init__(message)
        self.commits = commits
        self.records = records
        self.line = line


class LimitExceeded(PypdsError):
    """Input exceeded a named safety limit (see :mod:`pypds.limits`)."""

    def __init__(self, limit: str, value: int, maximum: int, where: str = "") -> None:
        at = f" at {where}" if where else ""
        super().__init__(f"limit {limit} exceeded{at}: {value} > {maximum}")
        self.limit = limit
        self.value = value
        self.maximum = maximum


class RepoStateError(PypdsError):
    """The repository handle cannot perform the operation in its current state."""


class RepoClosed(RepoStateError):
    """The repository has been closed."""


class RepoExists(RepoStateError):
    """A repository already exists at the path given to create."""


class RepoNotFound(RepoStateError):
    """No repository exists at the path given to open."""


class SchemaVersionError(RepoStateError):
    """The store was written by a newer (or unknown) version of pypds."""


class SigningKeyRequired(RepoStateError):
    """A write needs a signing key, but the repository has none."""


class SigningKeyMismatch(RepoStateError):
    """The handle's signing key did not sign HEAD's commit.

    Writing with it would leave a history that verifies against two keys;
    open with ``rotate_key=True`` to do that on purpose.
    """


class RepoBusy(RepoStateError):
    """Another connection held the write lock for longer than ``busy_timeout``."""


class HeadMoved(RepoBusy):
    """Another writer moved HEAD while a write that depends on it (a revert) was being prepared;
    nothing was written, and trying again builds on the new HEAD."""


class StorageError(RepoStateError):
    """The repository's files cannot be read or written (an I/O error); nothing was changed."""


class DiskFull(StorageError):
    """No space was left for a write (ENOSPC, a quota, SQLITE_FULL); nothing was changed."""


# -- network: pypds.net.identity, pypds.net.downloader, pypds.net.server ------------------------
#
#   PypdsError
#   ├── InvalidInput
#   │   └── InvalidHandle       a handle has invalid syntax
#   ├── LimitExceeded
#   │   ├── ResponseTooLarge    (also a NetworkError) a response passed its size cap
#   │   └── ListingTooLong      (also a NetworkError) a paged listing passed its bound
#   └── NetworkError            a network operation failed (connection, timeout, bad answer)
#       ├── ResolveError        a handle or DID cannot be resolved, or its document is unusable
#       │   └── HandleMismatch  the DID document does not claim the handle it was reached from
#       ├── RemoteError         a server answered with an error (XRPC name and HTTP status)
#       ├── StreamError         an event stream could not be reached, was cut, or sent an error frame
#       ├── AddressRefused      a network-learned endpoint is a non-public address
#       ├── TransferTooSlow     a response arrived slower than the minimum rate
#       └── DeadlineExceeded    the overall deadline of a download passed


class InvalidHandle(InvalidInput):
    """A handle (``alice.example.com``) has invalid syntax."""


class NetworkError(PypdsError):
    """A network operation failed: no connection, a timeout, or an unusable answer."""


class StreamError(NetworkError):
    """An event stream (``subscribeRepos``) could not be reached, was cut, or sent an error frame."""


class ResolveError(NetworkError):
    """A handle or DID cannot be resolved, or its DID document is unusable."""


class HandleMismatch(ResolveError):
    """A handle resolved to a DID whose document does not claim that handle."""


class RemoteError(NetworkError):
    """A server answered with an error status; ``error`` is the XRPC error name (or ``HTTP<status>``),
    ``detail`` the server's own message (may be empty)."""

    def __init__(self, message: str, *, status: int, error: str, url: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.url = url
        self.detail = detail


class ResponseTooLarge(LimitExceeded, NetworkError):
    """A response body is larger than the cap set for it."""


class ListingTooLong(LimitExceeded, NetworkError):
    """A paged listing from a server (``listBlobs``) passed the bound set for it: pages or entries."""


class AddressRefused(NetworkError):
    """An endpoint learned from the network (a DID document's PDS, a did:web or handle host, a
    redirect, a host name's resolved address) is not a public address, and private networks
    were not allowed (``allow_private_network``)."""


class TransferTooSlow(NetworkError):
    """A response body arrived slower, on average, than the minimum transfer rate."""


class DeadlineExceeded(NetworkError):
    """A download did not finish its network transfers within its overall deadline."""
