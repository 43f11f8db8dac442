"""Insert and delete: persistent updates that return a new root.

A tree is handled as ``(root, height)``. Only the nodes on the path to the
changed key (and, for splits and merges, along the seam below it) are
rebuilt; everything else is shared by link. Recursion depth is the tree
height.
"""

from __future__ import annotations

from bisect import bisect_left

from ..codec.cid import CID
from ..errors import RecordNotFound
from .node import Link, Node, NodeSource, empty_node, key_height, resolve


def _prune(node: Node) -> Node | None:
    """``None`` for a node with no keys and no link (pruned at the bottom)."""
    return None if node.is_empty else node


def put(source: NodeSource, root: Node, height: int, key: bytes, value: CID) -> tuple[Node, int]:
    """Set ``key`` to ``value``; returns the new (root, height)."""
    key_layer = key_height(key)
    if root.is_empty:
        return Node((key,), (value,), (None, None)), key_layer
    while key_layer > height:  # grow: wrap the root in key-less nodes
        root = Node((), (), (root,))
        height += 1
    return _put_at(source, root, height, key, value, key_layer), height


def _put_at(source: NodeSource, node: Node, height: int, key: bytes, value: CID, key_layer: int) -> Node:
    keys, vals, links = node.keys, node.vals, node.links
    i = bisect_left(keys, key)
    if height == key_layer:
        if i < len(keys) and keys[i] == key:
            if vals[i] == value:
                return node
            return Node(keys, vals[:i] + (value,) + vals[i + 1 :], links)
        left, right = _split(source, links[i], key)
        return Node(
            keys[:i] + (key,) + keys[i:],
            vals[:i] + (value,) + vals[i:],
            links[:i] + (left, right) + links[i + 1 :],
        )
    child = resolve(source, links[i]) or empty_node()
    new_child = _put_at(source, child, height - 1, key, value, key_layer)
    return Node(keys, vals, links[:i] + (new_child,) + links[i + 1 :])


def _split(source: NodeSource, link: Link, key: bytes) -> tuple[Link, Link]:
    """Split a subtree into the parts before and after ``key``."""
    node = resolve(source, link)
    if node is None:
        return None, None
    keys, vals, links = node.keys, node.vals, node.links
    i = bisect_left(keys, key)
    low, high = _split(source, links[i], key)
    left = Node(keys[:i], vals[:i], links[:i] + (low,))
    right = Node(keys[i:], vals[i:], (high,) + links[i + 1 :])
    return _prune(left), _prune(right)


def delete(source: NodeSource, root: Node, height: int, key: bytes) -> tuple[Node, int]:
    """Remove ``key``; returns the new (root, height). Raises RecordNotFound."""
    new_root = delete_untrimmed(source, root, height, key)
    while new_root is not None and not new_root.keys:  # trim the top
        new_root = resolve(source, new_root.links[0])
        height -= 1
    if new_root is None:
        return empty_node(), 0
    return new_root, height


def delete_untrimmed(source: NodeSource, root: Node, height: int, key: bytes) -> Node | None:
    """Remove ``key`` but leave key-less nodes at the top (None if nothing is left).

    For callers that trim the top themselves, e.g. on a partial tree whose
    lower nodes are known only by CID.
    """
    key_layer = key_height(key)
    if key_layer > height or root.is_empty:
        raise RecordNotFound(f"no record at {key.decode('utf-8', 'replace')}")
    return _delete_at(source, root, height, key, key_layer)


def _delete_at(source: NodeSource, node: Node, height: int, key: bytes, key_layer: int) -> Node | None:
    keys, vals, links = node.keys, node.vals, node.links
    i = bisect_left(keys, key)
    if height == key_layer:
        if i == len(keys) or keys[i] != key:
            raise RecordNotFound(f"no record at {key.decode('utf-8', 'replace')}")
        joined = _merge(source, links[i], links[i + 1])
        new = Node(keys[:i] + keys[i + 1 :], vals[:i] + vals[i + 1 :], links[:i] + (joined,) + links[i + 2 :])
        return _prune(new)
    child = resolve(source, links[i])
    if child is None:
        raise RecordNotFound(f"no record at {key.decode('utf-8', 'replace')}")
    new_child = _delete_at(source, child, height - 1, key, key_layer)
    return _prune(Node(keys, vals, links[:i] + (new_child,) + links[i + 1 :]))


def _merge(source: NodeSource, left_link: Link, right_link: Link) -> Link:
    """Join two adjacent subtrees of the same layer into one."""
    if left_link is None:
        return right_link
    if right_link is None:
        return left_link
    left = resolve(source, left_link)
    right = resolve(source, right_link)
    assert left is not None and right is not None
    seam = _merge(source, left.links[-1], right.links[0])
    return Node(
        left.keys + right.keys,
        left.vals + right.vals,
        left.links[:-1] + (seam,) + right.links[1:],
    )
