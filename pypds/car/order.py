"""Is a repository CAR in the stream-friendly block order?

The order (used by newer exporters and by :meth:`pypds.Repo.export_car`):
the commit first, then a depth-first walk where each MST node comes before
its children and, within a node, the left subtree comes first and each
entry's record block is followed by that entry's right subtree, so records
appear in key order. A consumer can then process a repository in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codec.cid import CID
from ..commit import decode_commit
from ..errors import MissingBlock, counted
from ..limits import DEFAULT_LIMITS, Limits
from ..mst.nodestore import NodeStore
from ..mst.tree import iter_stream_order
from .reader import CarReader, CarSource

__all__ = ["CarOrder", "check_car_order"]


@dataclass(frozen=True)
class CarOrder:
    """Whether a CAR follows the stream-friendly order, and where it first departs."""

    ok: bool
    detail: str
    blocks: int


def check_car_order(source: CarSource, *, limits: Limits = DEFAULT_LIMITS) -> CarOrder:
    """Check a full repository CAR's block order (blocks are hash-checked as they are read).

    Repeated blocks are judged by their first appearance; blocks the tree
    does not reach count as out of order. Raises a PypdsError if the CAR is
    malformed or incomplete.
    """
    order: list[bytes] = []
    blocks: dict[bytes, bytes] = {}
    with CarReader(source, limits=limits) as reader:
        root = reader.roots[0]
        for cid, data in reader:
            if cid.cid_bytes not in blocks:
                blocks[cid.cid_bytes] = data
                order.append(cid.cid_bytes)
    commit_data = blocks.get(root.cid_bytes)
    if commit_data is None:
        raise MissingBlock(f"CAR root commit {root.encode()} is not in the CAR", root)
    commit = decode_commit(commit_data, root)
    expected = [root.cid_bytes]
    seen = {root.cid_bytes}
    nodes = NodeStore(lambda cid: blocks.get(cid.cid_bytes), limits, where="the CAR", cache_size=0)
    for cid, _node in iter_stream_order(nodes, commit.data):
        if cid.cid_bytes not in seen:
            seen.add(cid.cid_bytes)
            expected.append(cid.cid_bytes)
    for index, (got, want) in enumerate(zip(order, expected, strict=False)):
        if got != want:
            return CarOrder(
                False,
                f"block {index} is {CID(got).encode()}, the stream order expects {CID(want).encode()}",
                len(order),
            )
    if len(order) > len(expected):
        extra = len(order) - len(expected)
        unreached = counted(extra, "block")
        return CarOrder(False, f"{unreached} the tree does not reach, from block {len(expected)}", len(order))
    if len(order) < len(expected):
        missing = len(expected) - len(order)
        missing_blocks = f"{counted(missing, 'block')} of the tree {'is' if missing == 1 else 'are'} missing"
        return CarOrder(False, f"{missing_blocks} after block {len(order)}", len(order))
    return CarOrder(True, "stream-friendly order", len(order))
