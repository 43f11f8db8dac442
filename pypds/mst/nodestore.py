"""A read-through cache of decoded MST nodes, keyed by CID."""

from __future__ import annotations

from collections.abc import Callable

from ..codec.cid import CID
from ..errors import MissingBlock
from ..limits import DEFAULT_LIMITS, Limits
from .node import Node, decode_node

#: Decoded MST nodes kept in memory per cache (about 1 KiB each).
NODE_CACHE_SIZE = 200_000


class NodeCache:
    """Decoded MST nodes by CID, read through from the block store."""

    def __init__(self, get_block: Callable[[CID], bytes | None], limits: Limits = DEFAULT_LIMITS) -> None:
        self._get_block = get_block
        self._limits = limits
        self._nodes: dict[bytes, Node] = {}

    def load_node(self, cid: CID) -> Node:
        node = self._nodes.get(cid.cid_bytes)
        if node is None:
            data = self._get_block(cid)
            if data is None:
                raise MissingBlock(f"missing MST node {cid.encode()}", cid)
            node = decode_node(data, cid, self._limits)
            self.add(node)
        return node

    def cached(self, cid: CID) -> Node | None:
        """The node if it is in the cache (nothing is loaded)."""
        return self._nodes.get(cid.cid_bytes)

    def clear(self) -> None:
        """Forget every cached node (after blocks were removed from the store)."""
        self._nodes.clear()

    def add(self, node: Node) -> None:
        if len(self._nodes) >= NODE_CACHE_SIZE:
            self._nodes.clear()
        self._nodes[node.cid.cid_bytes] = node
