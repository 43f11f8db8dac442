"""Walking a tree from untrusted blocks, checking every MST rule on the way.

:func:`walk_tree` visits a tree in the stream-friendly order (each node
before its children; within a node the left subtree first, then each entry's
record followed by that entry's right subtree, so records come in key
order) and checks, per node: canonical structure (see
:func:`~pypds.mst.node.decode_node`), every key at the node's layer, keys
inside the range the parent's link position allows, no link below layer 0,
no empty node except an empty root, no key-less root pointing down, no node
linked twice, and (optionally) repo path syntax. It is iterative, so a deep
or wide hostile tree cannot exhaust the Python stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from ..codec.cid import CID
from ..errors import InvalidMst, InvalidRepoPath, LimitExceeded, shown
from ..limits import DEFAULT_LIMITS, Limits
from ..syntax import split_repo_path
from .node import Node, key_height
from .nodestore import GetBlock, NodeStore


@dataclass
class TreeWalk:
    """What a complete walk saw."""

    nodes: int = 0
    records: int = 0
    height: int = 0


class WalkStep(NamedTuple):
    """One step of a walk: an MST node (with its block) or a record leaf."""

    cid: CID
    node: Node | None  # set for MST nodes
    key: bytes | None  # set for records: the key it is stored under


def walk_tree(
    get_block: GetBlock,
    root: CID,
    *,
    limits: Limits = DEFAULT_LIMITS,
    check_paths: bool = True,
    stats: TreeWalk | None = None,
) -> Iterator[WalkStep]:
    """Yield every node and record of the tree at ``root``, checking it.

    Raises MissingBlock for an absent node, InvalidMst / InvalidCbor /
    LimitExceeded for a malformed one, InvalidRepoPath for a bad key when
    ``check_paths``. Record blocks are not fetched: the caller checks them.
    """
    stats = stats if stats is not None else TreeWalk()
    nodes = NodeStore(get_block, limits, cache_size=0)
    seen: set[bytes] = set()
    # stack items: (cid, layer or -1 for root, low bound, high bound, parent)
    # or (cid, key) for a record
    stack: list[tuple] = [(root, -1, None, None, None)]
    while stack:
        item = stack.pop()
        if len(item) == 2:
            stats.records += 1
            yield WalkStep(item[0], None, item[1])
            continue
        cid, layer, low, high, parent = item
        if cid.cid_bytes in seen:
            raise InvalidMst(f"MST node {cid.encode()} is linked more than once")
        seen.add(cid.cid_bytes)
        node = nodes.load_node(cid, parent)
        layer = _check_layer(node, cid, layer, limits)
        if layer > stats.height:
            stats.height = layer
        _check_keys(node, cid, layer, low, high, check_paths)
        stats.nodes += 1
        yield WalkStep(cid, node, None)
        keys, vals, links = node.keys, node.vals, node.links
        below = layer - 1
        pending: list[tuple] = []
        if links[0] is not None:
            pending.append((links[0], below, low, keys[0] if keys else high, cid))
        for i, key in enumerate(keys):
            pending.append((vals[i], key))
            if links[i + 1] is not None:
                upper = keys[i + 1] if i + 1 < len(keys) else high
                pending.append((links[i + 1], below, key, upper, cid))
        pending.reverse()
        stack.extend(pending)


def _check_layer(node: Node, cid: CID, layer: int, limits: Limits) -> int:
    if layer == -1:  # the root: its keys say which layer it is on
        if not node.keys:
            if node.links[0] is not None:
                raise InvalidMst(f"MST root {cid.encode()} is a key-less node pointing down")
            return 0
        layer = key_height(node.keys[0])
        if layer > limits.max_mst_depth:
            raise LimitExceeded("max_mst_depth", layer, limits.max_mst_depth, cid.encode())
        return layer
    if layer < 0:
        raise InvalidMst(f"MST node {cid.encode()} is linked from below layer 0")
    if node.is_empty:
        raise InvalidMst(f"MST node {cid.encode()} is empty but not the root (must be pruned)")
    if layer == 0 and any(link is not None for link in node.links):
        raise InvalidMst(f"MST node {cid.encode()} on layer 0 has a subtree link")
    return layer


def _check_keys(node: Node, cid: CID, layer: int, low: bytes | None, high: bytes | None, check_paths: bool) -> None:
    keys = node.keys
    if not keys:
        return
    if low is not None and keys[0] <= low:
        raise InvalidMst(f"MST node {cid.encode()}: key {shown(keys[0])} is outside its subtree range")
    if high is not None and keys[-1] >= high:
        raise InvalidMst(f"MST node {cid.encode()}: key {shown(keys[-1])} is outside its subtree range")
    for key in keys:
        if key_height(key) != layer:
            raise InvalidMst(
                f"MST node {cid.encode()}: key {shown(key)} has height {key_height(key)}, node is on layer {layer}"
            )
        if check_paths:
            try:
                split_repo_path(key.decode("utf-8"))
            except (UnicodeDecodeError, InvalidRepoPath) as exc:
                raise InvalidRepoPath(f"MST node {cid.encode()}: invalid repo path {shown(key)}: {exc}") from None
