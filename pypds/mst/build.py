"""Bulk construction: build a whole tree bottom-up from sorted items.

Used for imports of large batches and for empty repositories: one pass over
the sorted keys, no intermediate trees. Produces exactly the tree that
inserting the keys one by one would.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from ..codec.cid import CID
from .node import Node, empty_node, key_height


def build_tree(items: Sequence[tuple[bytes, CID]]) -> tuple[Node, int]:
    """Build the tree for sorted, unique ``(key, value)`` pairs; returns (root, height)."""
    if not items:
        return empty_node(), 0
    keys = [k for k, _ in items]
    vals = [v for _, v in items]
    heights = [key_height(k) for k in keys]
    top = max(heights)
    at_height: list[list[int]] = [[] for _ in range(top + 1)]
    for index, h in enumerate(heights):
        at_height[h].append(index)

    def build(lo: int, hi: int, height: int) -> Node | None:
        if lo >= hi:
            return None
        level = at_height[height]
        first = bisect_left(level, lo)
        last = bisect_left(level, hi, first)
        if height == 0:
            return Node(tuple(keys[lo:hi]), tuple(vals[lo:hi]), (None,) * (hi - lo + 1))
        positions = level[first:last]
        links = []
        start = lo
        for pos in positions:
            links.append(build(start, pos, height - 1))
            start = pos + 1
        links.append(build(start, hi, height - 1))
        return Node(
            tuple(keys[p] for p in positions),
            tuple(vals[p] for p in positions),
            tuple(links),
        )

    root = build(0, len(items), top)
    assert root is not None
    return root, top
