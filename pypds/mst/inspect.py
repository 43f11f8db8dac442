"""What a stored tree looks like: counts and sizes (``pypds inspect``) and a node-by-node layout
(``pypds mst``), both from one checked walk over a block source."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..codec.cid import CID
from ..errors import MissingBlock
from .node import key_height, link_cid
from .nodestore import GetBlock, NodeStore
from .walk import TreeWalk, walk_tree

__all__ = ["TreeStats", "tree_layout", "tree_stats"]


@dataclass
class TreeStats:
    """What a checked walk of one tree found."""

    nodes: int = 0
    node_bytes: int = 0
    records: int = 0
    record_blocks: int = 0
    record_bytes: int = 0
    layer: int = 0
    collections: Counter[str] = field(default_factory=Counter)


def tree_stats(get_block: GetBlock, root: CID) -> TreeStats:
    """Walk the tree at ``root`` (checking it) and count nodes, records and bytes."""
    stats = TreeStats()
    walk = TreeWalk()
    seen: set[bytes] = set()
    for step in walk_tree(get_block, root, stats=walk):
        if step.node is not None:
            stats.nodes += 1
            stats.node_bytes += len(step.node.data)
            continue
        stats.records += 1
        stats.collections[(step.key or b"").split(b"/", 1)[0].decode()] += 1
        if step.cid.cid_bytes in seen:
            continue
        seen.add(step.cid.cid_bytes)
        data = get_block(step.cid)
        if data is None:
            raise MissingBlock(f"record {step.cid.encode()} is missing", step.cid)
        stats.record_blocks += 1
        stats.record_bytes += len(data)
    stats.layer = walk.height
    return stats


def tree_layout(get_block: GetBlock, root: CID) -> list[dict]:
    """Every node in pre-order as a dict: ``cid``, ``layer``, ``depth``, ``parent``, ``left`` link and
    ``entries`` (``key``, ``value``, ``right``), CIDs as strings."""
    out: list[dict] = []
    source = NodeStore(get_block, cache_size=0)
    stack: list[tuple[CID, int, int, str | None]] = [(root, -1, 0, None)]
    while stack:
        cid, layer, depth, parent = stack.pop()
        node = source.load_node(cid)
        if layer < 0:
            layer = key_height(node.keys[0]) if node.keys else 0
        links = [link_cid(link) for link in node.links]
        out.append(
            {
                "cid": cid.encode(),
                "layer": layer,
                "depth": depth,
                "parent": parent,
                "left": _text(links[0]),
                "entries": [
                    {"key": key.decode(), "value": node.vals[i].encode(), "right": _text(links[i + 1])}
                    for i, key in enumerate(node.keys)
                ],
            }
        )
        children = [link for link in links if link is not None]
        stack.extend((child, layer - 1, depth + 1, cid.encode()) for child in reversed(children))
    return out


def _text(cid: CID | None) -> str | None:
    return None if cid is None else cid.encode()
