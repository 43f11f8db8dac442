"""Reading and checking a full repository CAR before anything is stored.

:class:`LoadedCar` reads a CAR into memory (every block hash-checked by the
reader, bounded by :mod:`pypds.limits`), decodes its root commit, and walks
the commit's MST from those blocks alone, checking every MST rule, that
every node and record is present, and that every record is a valid atproto
record. What it returns is exactly the set of blocks to store.
"""

from __future__ import annotations

from collections.abc import Callable

from . import cbor
from .car import CarReader, CarSource
from .cid import CID, is_dag_cbor
from .commit import Commit, decode_commit
from .errors import InvalidCbor, InvalidMst, InvalidRecord, LimitExceeded, MissingBlock, PartialTree, shown
from .limits import Limits
from .mst.verify import walk_tree


class LoadedCar:
    """A CAR read fully into memory, every block hash-checked."""

    def __init__(self, root: CID, blocks: dict[bytes, bytes]) -> None:
        self.root = root
        self.blocks = blocks

    @classmethod
    def read(cls, source: CarSource, limits: Limits) -> LoadedCar:
        blocks: dict[bytes, bytes] = {}
        total = 0
        with CarReader(source, limits=limits) as reader:
            for cid, data in reader:
                total += len(data)
                if total > limits.max_import_bytes:
                    raise LimitExceeded("max_import_bytes", total, limits.max_import_bytes)
                blocks[cid.cid_bytes] = data
                if len(blocks) > limits.max_import_blocks:
                    raise LimitExceeded("max_import_blocks", len(blocks), limits.max_import_blocks)
            return cls(reader.roots[0], blocks)

    def get(self, cid: CID) -> bytes | None:
        return self.blocks.get(cid.cid_bytes)

    def commit(self) -> Commit:
        data = self.get(self.root)
        if data is None:
            raise MissingBlock(f"CAR root commit {self.root.encode()} is not in the CAR", self.root)
        return decode_commit(data, self.root)

    def tree_blocks(
        self,
        commit: Commit,
        limits: Limits,
        held: Callable[[CID], bytes | None] | None = None,
        leaves: list[tuple[bytes, CID]] | None = None,
    ) -> list[tuple[CID, bytes]]:
        """Walk and check the commit's tree; the CAR's blocks it reaches, commit first.

        With ``held`` (the blocks a repository already has), the tree may be
        completed from there: a diff CAR. Blocks found only in ``held`` are
        checked like the rest but not returned. ``leaves``, if given,
        receives every ``(key, record CID)`` in key order.
        """
        if held is None:
            try:
                return self._tree_blocks(commit, limits, self.get, leaves)
            except MissingBlock as exc:
                raise partial_tree(exc) from None
        return self._tree_blocks(commit, limits, lambda cid: self.get(cid) or held(cid), leaves)

    def _tree_blocks(
        self,
        commit: Commit,
        limits: Limits,
        get: Callable[[CID], bytes | None],
        leaves: list[tuple[bytes, CID]] | None,
    ) -> list[tuple[CID, bytes]]:
        kept = [(self.root, self.blocks[self.root.cid_bytes])]
        records: set[bytes] = set()
        for step in walk_tree(get, commit.data, limits=limits):
            raw = step.cid.cid_bytes
            if step.node is not None:
                if raw in self.blocks:
                    kept.append((step.cid, step.node.data))
                continue
            if leaves is not None:
                leaves.append((step.key, step.cid))  # type: ignore[arg-type]
            if raw in records:
                continue
            data = get(step.cid)
            if data is None:
                raise MissingBlock(f"record {step.cid.encode()} for {_path(step.key)} is not in the CAR", step.cid)
            check_record(step.cid, step.key, data, limits)
            records.add(raw)
            if raw in self.blocks:
                kept.append((step.cid, data))
        return kept


def _path(key: bytes | None) -> str:
    return shown((key or b"").decode("utf-8", "replace"))


def partial_tree(exc: MissingBlock) -> PartialTree:
    """The error for a block absent from a CAR read as a whole repository."""
    return PartialTree(
        f"the CAR holds a partial tree: {exc}. That is what a proof CAR (getRecord) or a diff CAR "
        "(getRepo?since=, a firehose message) looks like: check those with verify_proof, apply_car or "
        "verify_commit_message; reading a whole repository needs a full repository CAR",
        exc.cid,
    )


def check_record(cid: CID, key: bytes | None, data: bytes, limits: Limits) -> None:
    """A record reached from the tree must be a dag-cbor block holding a valid record."""
    path = (key or b"").decode("utf-8", "replace")
    if not is_dag_cbor(cid):
        raise InvalidMst(f"record {cid.encode()} at {path}: value CID is not dag-cbor sha2-256")
    try:
        cbor.decode_record(data, path, limits)
    except (InvalidCbor, InvalidRecord) as exc:
        raise type(exc)(f"record {cid.encode()}: {exc}") from None
