"""Full verification of a repository CAR or a stored repository, as a report.

:func:`verify_car` and :meth:`pypds.Repo.verify` run every check that
``import_car`` runs and return a :class:`VerifyReport` listing each check
with its outcome instead of raising at the first failure. Checks run in
dependency order; when one fails, the checks that depend on it are reported
as ``not run``: after the first failure every later check is ``not run``, in
order. Checks that need an input that was not given (a DID, a key) are
``skipped`` and do not make the report fail.

Version 2 commits (no rev) are verified like version 3; a high-S signature
is accepted on a version 2 commit only, and the ``signature`` check says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from ..car.reader import CarSource
from ..car.stream import StreamedCar, check_record, partial_tree
from ..codec.cid import CID
from ..commit import Commit, decode_commit
from ..errors import (
    BlockHashMismatch,
    CarFormatError,
    InvalidCid,
    InvalidRepoPath,
    LimitExceeded,
    MissingBlock,
    PypdsError,
    counted,
    shown,
)
from ..keys import PublicKey, SigningKey, load_public_key
from ..limits import DEFAULT_LIMITS, Limits
from ..mst.walk import TreeWalk, walk_tree

__all__ = ["Outcome", "Check", "VerifyReport", "verify_car", "verify_tree"]

GetBlock = Callable[[CID], "bytes | None"]


class Outcome(StrEnum):
    """The result of one check."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not requested (no DID or key given)
    NOT_RUN = "not run"  # an earlier check failed


#: Every check, in the order it runs, with what it establishes.
CHECKS: dict[str, str] = {
    "car-framing": "CAR v1 framing and header; first root is a dag-cbor CID; lengths within limits",
    "block-hashes": "every block's bytes hash (sha2-256) to its CID",
    "cid-form": "every CID is CIDv1 sha2-256, dag-cbor (commit, MST, records) or raw",
    "commit": "the root is a version 3 commit (field set, types, TID rev), or a version 2 one (no rev)",
    "did": "the commit's DID is the expected DID",
    "signature": "64-byte ECDSA signature by the expected key (secp256k1 or P-256), low-S (version 2: either)",
    "mst": "MST canonical: sorted unique keys, right layers, ranges, maximal compression, pruning, no shared nodes",
    "completeness": "every MST node and record the tree reaches is present",
    "repo-paths": "every key is <NSID>/<record key>, never . or ..",
    "records": "every record is canonical DAG-CBOR, no floats, a map with a string $type",
    "index": "the paths index (used for reads) holds exactly HEAD's records",
    "blob-files": "every file under blobs/ hashes to its name",
}


@dataclass
class Check:
    """One verification check and its outcome."""

    name: str
    outcome: Outcome
    detail: str = ""

    @property
    def description(self) -> str:
        return CHECKS[self.name]


@dataclass
class VerifyReport:
    """The outcome of every check; ``ok`` only if none failed or was left unrun."""

    checks: list[Check] = field(default_factory=list)
    commit: CID | None = None
    did: str | None = None
    rev: str | None = None  # None for a version 2 commit
    version: int | None = None
    blocks: int = 0
    nodes: int = 0
    records: int = 0

    @property
    def ok(self) -> bool:
        return all(c.outcome in (Outcome.PASSED, Outcome.SKIPPED) for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.outcome is Outcome.FAILED]

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"{c.name.ljust(width)}  {c.outcome.value:<7}  {c.detail}".rstrip() for c in self.checks]
        lines.append(f"{'result'.ljust(width)}  {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)

    def add(self, name: str, outcome: Outcome, detail: str = "") -> None:
        """Append the outcome of check ``name``."""
        self.checks.append(Check(name, outcome, detail))

    def _stop(self, failed: str, exc: Exception, remaining: list[str]) -> VerifyReport:
        """Record ``failed`` and mark the rest of ``remaining`` (in its order) as not run.

        ``remaining`` lists the checks without a verdict yet, in report order;
        checks that ran together with the failed one (the tree walk checks
        several rules at once) have no verdict of their own and are not run.
        """
        if failed not in remaining:
            remaining = [failed, *remaining]
        for name in remaining:
            if name == failed:
                self.add(name, Outcome.FAILED, f"{type(exc).__name__}: {exc}")
            else:
                self.add(name, Outcome.NOT_RUN)
        return self

    def _not_run(self, names: list[str]) -> None:
        for name in names:
            self.add(name, Outcome.NOT_RUN)


_READ_FAILURES: list[tuple[type[Exception], str]] = [
    (BlockHashMismatch, "block-hashes"),
    (InvalidCid, "cid-form"),
    (CarFormatError, "car-framing"),
    (LimitExceeded, "car-framing"),
]
_TREE_CHECKS = ["mst", "completeness", "repo-paths", "records"]


def verify_car(
    source: CarSource,
    *,
    did: str | None = None,
    key: PublicKey | SigningKey | str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifyReport:
    """Verify a full repository CAR without storing anything.

    The CAR is read in one streaming pass (see :class:`~pypds.car.stream.StreamedCar`),
    with bounded memory whatever its size or block order.
    """
    order = ["car-framing", "block-hashes", "cid-form", "commit", "did", "signature", *_TREE_CHECKS]
    tree = VerifyReport()
    car: StreamedCar | None = None
    try:
        with StreamedCar(source, limits) as car:
            verify_tree(car.get, car.root, tree, did=did, key=key, limits=limits, whole_car=True)
            if tree.ok:
                car.finish()
    except PypdsError as exc:
        if car is None or car.read_error is None:  # the header, or the commit block while reading it
            return _read_failure(exc, order)
    if car.read_error is not None:
        return _read_failure(car.read_error, order)
    report = VerifyReport(blocks=car.blocks)
    report.add("car-framing", Outcome.PASSED, f"root {car.root.encode()}")
    report.add("block-hashes", Outcome.PASSED, counted(car.blocks, "block") if tree.ok else "every block read so far")
    report.add("cid-form", Outcome.PASSED)
    report.checks.extend(tree.checks)
    report.commit, report.did, report.rev, report.version = tree.commit, tree.did, tree.rev, tree.version
    report.nodes, report.records = tree.nodes, tree.records
    return report


def _read_failure(exc: Exception, order: list[str]) -> VerifyReport:
    """The report for a CAR whose framing, hashes, CIDs or size limits fail."""
    report = VerifyReport()
    failed = next((name for cls, name in _READ_FAILURES if isinstance(exc, cls)), "car-framing")
    for name in order[: order.index(failed)]:
        report.add(name, Outcome.PASSED)
    return report._stop(failed, exc, order[order.index(failed) :])


def verify_tree(
    get_block: GetBlock,
    commit_cid: CID,
    report: VerifyReport,
    *,
    did: str | None,
    key: PublicKey | SigningKey | str | None,
    limits: Limits,
    rehash: bool = False,
    whole_car: bool = False,
) -> VerifyReport:
    """Run the commit, DID, signature and tree checks, appending to ``report``.

    With ``rehash``, every block is hashed again as it is read (for blocks
    from a store rather than a freshly verified CAR) and a ``block-hashes``
    check reports the result. With ``whole_car``, the blocks are a CAR's, and
    an absent tree block is reported as a partial tree (a proof or diff CAR).
    """
    if rehash:
        get_block = _rehashing(get_block)
    tree_checks = (["block-hashes"] if rehash else []) + _TREE_CHECKS
    remaining = ["commit", "did", "signature", *tree_checks]
    report.commit = commit_cid
    try:
        data = get_block(commit_cid)
        if data is None:
            raise MissingBlock(f"commit {commit_cid.encode()} is not present", commit_cid)
        commit = decode_commit(data, commit_cid)
    except BlockHashMismatch as exc:
        return report._stop("block-hashes", exc, remaining)
    except PypdsError as exc:
        return report._stop("commit", exc, remaining)
    report.did, report.rev, report.version = commit.did, commit.rev, commit.version
    version = f"version 3, rev {commit.rev}" if commit.rev is not None else "version 2 (no rev)"
    report.add("commit", Outcome.PASSED, f"{version}, data {commit.data.encode()}")
    if not _check_did(report, commit, did):
        report._not_run(["signature", *tree_checks])
    elif not _check_signature(report, commit, key):
        report._not_run(tree_checks)
    else:
        _check_tree(report, get_block, commit, limits, tree_checks, whole_car)
    return report


def _rehashing(get_block: GetBlock) -> GetBlock:
    def get(cid: CID) -> bytes | None:
        data = get_block(cid)
        if data is not None and hashlib.sha256(data).digest() != cid.cid_bytes[4:]:
            raise BlockHashMismatch(f"stored block {cid.encode()}: bytes do not hash to its CID")
        return data

    return get


def _check_did(report: VerifyReport, commit: Commit, did: str | None) -> bool:
    """Append the ``did`` check; False if it failed."""
    if did is None:
        report.add("did", Outcome.SKIPPED, f"no DID given (commit is for {commit.did})")
    elif commit.did != did:
        report.add("did", Outcome.FAILED, f"DidMismatch: commit is for {commit.did}, expected {did}")
        return False
    else:
        report.add("did", Outcome.PASSED, did)
    return True


def _check_signature(report: VerifyReport, commit: Commit, key: PublicKey | SigningKey | str | None) -> bool:
    """Append the ``signature`` check; False if it failed."""
    if key is None:
        report.add("signature", Outcome.SKIPPED, "no key given")
        return True
    try:
        public = load_public_key(key)
        commit.verify(public)
    except PypdsError as exc:
        report.add("signature", Outcome.FAILED, f"{type(exc).__name__}: {exc}")
        return False
    high_s = " (high-S: accepted for version 2 commits only)" if commit.high_s(public) else ""
    report.add("signature", Outcome.PASSED, public.did_key + high_s)
    return True


def _check_tree(
    report: VerifyReport, get_block: GetBlock, commit: Commit, limits: Limits, checks: list[str], whole_car: bool
) -> None:
    stats = TreeWalk()
    seen_records: set[bytes] = set()
    steps = walk_tree(get_block, commit.data, limits=limits, stats=stats)
    while True:
        try:
            step = next(steps, None)
        except PypdsError as exc:
            report._stop(_tree_failure(exc), _partial(exc) if whole_car else exc, checks)
            return
        if step is None:
            break
        if step.node is not None or step.cid.cid_bytes in seen_records:
            continue
        seen_records.add(step.cid.cid_bytes)
        try:
            data = get_block(step.cid)
            if data is None:
                raise MissingBlock(f"record {step.cid.encode()} for {shown(step.key)} is missing", step.cid)
        except PypdsError as exc:
            report._stop(_tree_failure(exc), _partial(exc) if whole_car else exc, checks)
            return
        try:
            check_record(step.cid, step.key, data, limits)
        except PypdsError as exc:
            report._stop("records", exc, checks)
            return
    report.nodes, report.records = stats.nodes, stats.records
    if "block-hashes" in checks:
        report.add("block-hashes", Outcome.PASSED, "every block re-hashed on read")
    nodes = counted(stats.nodes, "node")
    report.add("mst", Outcome.PASSED, f"{nodes}, root layer {stats.height}")
    report.add("completeness", Outcome.PASSED, f"{nodes}, {counted(len(seen_records), 'record block')}")
    report.add("repo-paths", Outcome.PASSED, counted(stats.records, "key"))
    report.add("records", Outcome.PASSED, counted(len(seen_records), "record"))


def _partial(exc: PypdsError) -> PypdsError:
    return partial_tree(exc) if isinstance(exc, MissingBlock) else exc


def _tree_failure(exc: PypdsError) -> str:
    """The check a failure during the tree walk belongs to."""
    if isinstance(exc, BlockHashMismatch):
        return "block-hashes"
    if isinstance(exc, MissingBlock):
        return "completeness"
    if isinstance(exc, InvalidRepoPath):
        return "repo-paths"
    return "mst"
