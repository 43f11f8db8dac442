"""Verifying a stored repository: everything an import checks, plus the paths index and blob files.

:func:`verify` re-hashes every block it reads (a store can be damaged after
it was written), runs the checks of :func:`pypds.sync.verify.verify_tree`
on HEAD, then checks that the paths index holds exactly HEAD's records and
that every file under ``blobs/`` is a regular file that hashes to its name
(read without following links or blocking).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import zip_longest

from ..codec.cid import CID
from ..errors import IntegrityError, PypdsError, counted
from ..keys import PublicKey, SigningKey
from ..mst import iter_range
from ..storage.blobs import BlobStore
from ..sync.verify import Outcome, VerifyReport, verify_tree
from .state import RepoState

__all__ = ["check_blob_files", "check_index", "verify"]


def verify(state: RepoState, key: PublicKey | SigningKey | str | None, did: str | None) -> VerifyReport:
    """See :meth:`pypds.Repo.verify`."""
    state.refresh()
    store = state.store
    report = VerifyReport()
    expected = state.did if did is None else did
    with store.snapshot():
        head = store.head()
        verify_tree(store.get_block, head, report, did=expected, key=key, limits=state.limits, rehash=True)
        tree = [] if not report.ok else iter_range(state.nodes, state.load_commit(head).data)
        check_index(report, store.index_all(), tree)
    check_blob_files(report, state.blobs)
    return report


def check_index(report: VerifyReport, index: Iterable[tuple[bytes, CID]], tree: Iterable[tuple[bytes, CID]]) -> None:
    """Append the ``index`` check: the index rows equal the tree's leaves, in order."""
    if not report.ok:
        report.add("index", Outcome.NOT_RUN)
        return
    count = 0
    for row, leaf in zip_longest(index, tree):
        if row != leaf:
            report.add("index", Outcome.FAILED, f"the paths index {_index_difference(row, leaf)}")
            return
        count += 1
    report.add("index", Outcome.PASSED, counted(count, "path"))


def _index_difference(row: tuple[bytes, CID] | None, leaf: tuple[bytes, CID] | None) -> str:
    if leaf is not None and (row is None or leaf[0] < row[0]):
        return f"lacks {leaf[0].decode('utf-8', 'replace')}, which HEAD's tree holds"
    if row is None:
        return "differs from HEAD's tree"  # not reached: zip_longest never gives two Nones
    if leaf is None or row[0] < leaf[0]:
        return f"holds {row[0].decode('utf-8', 'replace')}, which HEAD's tree does not"
    return f"has the wrong CID for {row[0].decode('utf-8', 'replace')}"


def check_blob_files(report: VerifyReport, blobs: BlobStore) -> None:
    """Append the ``blob-files`` check: every file under ``blobs/`` is a regular file named by
    a blob CID that it hashes to (read without following links or blocking, a segment at a time)."""
    if not report.ok:
        report.add("blob-files", Outcome.NOT_RUN)
        return
    count = 0
    for path in blobs.files():
        count += 1
        try:
            cid = CID.decode(path.name)
            blob = blobs.open(cid)
            if blob is None:
                raise IntegrityError(f"{path}: not named by a blob CID in its shard directory")
            with blob:
                for _done in blob.check():
                    pass
        except ValueError:
            report.add("blob-files", Outcome.FAILED, f"{path}: file name is not a CID")
            return
        except PypdsError as exc:
            report.add("blob-files", Outcome.FAILED, f"{type(exc).__name__}: blob file {path}: {exc}")
            return
    report.add("blob-files", Outcome.PASSED, counted(count, "blob"))
