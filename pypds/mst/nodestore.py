"""The one way MST nodes are loaded: :class:`NodeStore`, over any block source.

A block source is anything that maps a CID to its bytes or None
(:data:`GetBlock`): ``Store.get_block`` (SQLite), ``dict.get`` over a CAR's
blocks, a streaming CAR. A :class:`NodeStore` turns node CIDs into decoded,
checked :class:`~pypds.mst.node.Node` objects, raising
:class:`~pypds.errors.MissingBlock` with a message that names the source and
the node that linked to the missing one. It implements
:class:`~pypds.mst.node.NodeSource`, so every tree operation (lookup, walks,
edits, diffs, proofs) reads through it.

Nodes are immutable, so caching them by CID is always safe; a store built
with ``cache_size=0`` caches nothing (a one-pass walk over untrusted blocks).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from ..codec.cid import CID
from ..errors import MissingBlock
from ..limits import DEFAULT_LIMITS, Limits
from .node import Node, decode_node

__all__ = ["GetBlock", "NODE_CACHE_SIZE", "NodeStore"]

#: A block source: the bytes of a block, or None if the source does not hold it.
GetBlock = Callable[[CID], "bytes | None"]

#: Decoded MST nodes kept in memory per store by default (about 1 KiB each).
NODE_CACHE_SIZE = 200_000


class NodeStore:
    """Decoded MST nodes by CID, read through from a block source.

    ``where`` names the source in errors ("the CAR", "the proof"...);
    ``missing``, when given, writes the whole message for an absent node.
    """

    def __init__(
        self,
        get_block: GetBlock,
        limits: Limits = DEFAULT_LIMITS,
        *,
        where: str = "",
        cache_size: int = NODE_CACHE_SIZE,
        missing: Callable[[CID], str] | None = None,
    ) -> None:
        self.get_block = get_block
        self._limits = limits
        self._where = where
        self._cache_size = cache_size
        self._missing = missing
        self._nodes: dict[bytes, Node] = {}

    def has(self, cid: CID) -> bool:
        """Whether the node is cached or its block is in the source."""
        return cid.cid_bytes in self._nodes or self.get_block(cid) is not None

    def load_node(self, cid: CID, parent: CID | None = None) -> Node:
        """The decoded node; MissingBlock if the source lacks it (``parent``: who linked to it)."""
        node = self._nodes.get(cid.cid_bytes)
        if node is not None:
            return node
        data = self.get_block(cid)
        if data is None:
            raise MissingBlock(self._missing_message(cid, parent), cid)
        node = decode_node(data, cid, self._limits)
        if self._cache_size:
            self.add(node)
        return node

    def _missing_message(self, cid: CID, parent: CID | None) -> str:
        if self._missing is not None:
            return self._missing(cid)
        origin = f" (linked from {parent.encode()})" if parent is not None else ""
        where = f" in {self._where}" if self._where else ""
        return f"missing MST node {cid.encode()}{origin}{where}"

    def cached(self, cid: CID) -> Node | None:
        """The node if it is in the cache (nothing is loaded)."""
        return self._nodes.get(cid.cid_bytes)

    def clear(self) -> None:
        """Forget every cached node (after blocks were removed from the source)."""
        self._nodes.clear()

    def add(self, node: Node) -> None:
        """Cache a node (one just built and stored, say); a full cache drops its oldest quarter."""
        nodes = self._nodes
        if len(nodes) >= self._cache_size:
            for old in list(itertools.islice(nodes, max(1, self._cache_size // 4))):
                del nodes[old]
        nodes[node.cid.cid_bytes] = node
