"""Reading a tree: point lookups, ordered range scans, and the MST view."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from ..codec.cid import CID
from ..errors import MissingBlock
from .node import Link, Node, NodeSource, decode_links, link_cid, resolve


def lookup(source: NodeSource, root: Link, key: bytes) -> CID | None:
    """The value stored under ``key``, or None. O(height) node visits."""
    node = resolve(source, root)
    while node is not None:
        keys = node.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return node.vals[i]
        node = resolve(source, node.links[i])
    return None


def iter_range(
    source: NodeSource,
    root: Link,
    start: bytes | None = None,
    stop: bytes | None = None,
    *,
    reverse: bool = False,
) -> Iterator[tuple[bytes, CID]]:
    """Yield ``(key, value)`` for ``start <= key < stop`` in key order.

    ``reverse=True`` yields the same range from the largest key down. Only the
    subtrees overlapping the range are visited; iterative (no recursion).
    """
    if reverse:
        yield from _iter_reverse(source, root, start, stop)
        return
    # frame: [node, next index, whether links[index] was already visited]
    stack: list[list] = []

    def push(link: Link) -> None:
        node = resolve(source, link)
        if node is not None:
            index = 0 if start is None else bisect_left(node.keys, start)
            stack.append([node, index, False])

    push(root)
    while stack:
        frame = stack[-1]
        node, index, link_done = frame
        if not link_done:
            frame[2] = True
            push(node.links[index])
            continue
        if index >= len(node.keys):
            stack.pop()
            continue
        key = node.keys[index]
        if stop is not None and key >= stop:
            return
        frame[1] = index + 1
        frame[2] = False
        if start is None or key >= start:
            yield key, node.vals[index]


def _iter_reverse(
    source: NodeSource, root: Link, start: bytes | None, stop: bytes | None
) -> Iterator[tuple[bytes, CID]]:
    # frame: [node, index of the link to visit next (keys[index - 1] follows it), link_done]
    stack: list[list] = []

    def push(link: Link) -> None:
        node = resolve(source, link)
        if node is not None:
            index = len(node.keys) if stop is None else bisect_left(node.keys, stop)
            stack.append([node, index, False])

    push(root)
    while stack:
        frame = stack[-1]
        node, index, link_done = frame
        if not link_done:
            frame[2] = True
            push(node.links[index])
            continue
        if index == 0:
            stack.pop()
            continue
        key = node.keys[index - 1]
        if start is not None and key < start:
            return
        frame[1] = index - 1
        frame[2] = False
        if stop is None or key < stop:
            yield key, node.vals[index - 1]


def iter_stream_order(
    source: NodeSource, root: Link, *, keep: Callable[[CID], bool] | None = None
) -> Iterator[tuple[CID, Node | None]]:
    """Every node and record of a tree in the stream-friendly CAR order.

    Yields ``(cid, node)`` for MST nodes and ``(cid, None)`` for records:
    each node before its children; within a node the left subtree first,
    then each entry's record followed by that entry's right subtree (so
    records come in key order). Iterative; no structural checks (use
    :func:`~pypds.mst.walk.walk_tree` for untrusted blocks).

    With ``keep``, a record or node whose CID fails ``keep(cid)`` is left
    out, and so is everything below such a node.
    """
    stack: list = [root]
    while stack:
        item = stack.pop()
        if type(item) is tuple:
            if keep is None or keep(item[0]):
                yield item[0], None
            continue
        if item is None or (keep is not None and not keep(item if type(item) is CID else item.cid)):
            continue
        node = resolve(source, item)
        assert node is not None
        yield node.cid, node
        pending: list = [node.links[0]]
        for i, value in enumerate(node.vals):
            pending.append((value,))
            pending.append(node.links[i + 1])
        pending.reverse()
        stack.extend(pending)


def iter_stored_stream_order(
    cached: Callable[[CID], Node | None],
    get_block: Callable[[CID], bytes | None],
    root: CID,
    *,
    keep: Callable[[CID], bool] | None = None,
) -> Iterator[tuple[CID, bytes | None]]:
    """The order of :func:`iter_stream_order` for a stored tree: ``(cid, block)`` for nodes, ``(cid, None)``
    for records.

    Nodes come from ``cached`` when it has them, else from ``get_block``,
    decoded only for their links (:func:`~pypds.mst.node.decode_links`):
    the fast path for exporting a tree the store already holds.
    """
    stack: list[tuple[CID, bool]] = [(root, True)]
    while stack:
        cid, is_node = stack.pop()
        if keep is not None and not keep(cid):
            continue
        if not is_node:
            yield cid, None
            continue
        node = cached(cid)
        if node is not None:
            yield cid, node.data
            left = link_cid(node.links[0])
            entries = [(value, link_cid(node.links[i + 1])) for i, value in enumerate(node.vals)]
        else:
            data = get_block(cid)
            if data is None:
                raise MissingBlock(f"missing MST node {cid.encode()}", cid)
            yield cid, data
            left, entries = decode_links(data, cid)
        pending: list[tuple[CID, bool]] = [] if left is None else [(left, True)]
        for value, right in entries:
            pending.append((value, False))
            if right is not None:
                pending.append((right, True))
        pending.reverse()
        stack.extend(pending)


class MST:
    """A read-only view of one tree: ``get``, ordered iteration, ``len`` and ``root``.

    Keys are repo paths (``str``); values are record CIDs.
    """

    def __init__(self, source: NodeSource, root: Node | CID) -> None:
        self._source = source
        self._root = root

    @property
    def root(self) -> CID:
        """The CID of the root node."""
        root = self._root
        return root if isinstance(root, CID) else root.cid

    def get(self, key: str) -> CID | None:
        """The value under ``key``, or None."""
        return lookup(self._source, self._root, key.encode())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def items(self, prefix: str = "", *, reverse: bool = False) -> Iterator[tuple[str, CID]]:
        """``(key, value)`` pairs in key order, optionally only under ``prefix``."""
        start = prefix.encode() if prefix else None
        stop = _prefix_end(start) if start else None
        for key, value in iter_range(self._source, self._root, start, stop, reverse=reverse):
            yield key.decode(), value

    def __iter__(self) -> Iterator[tuple[str, CID]]:
        return self.items()

    def __len__(self) -> int:
        return sum(1 for _ in iter_range(self._source, self._root))

    def __repr__(self) -> str:
        return f"MST(root={self.root.encode()})"


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
