"""Record-level differences between two trees, visiting only subtrees that differ.

Both trees are read as ordered streams whose items are either a leaf
``(key, value)`` or an unexpanded subtree ``(link, layer)``. When both
streams stand at a subtree with the same CID, everything before it has been
compared and the subtree holds the same keys in both, so it is skipped
without being loaded. Otherwise the higher subtree (or both, when level) is
expanded into its entries, and leaves are merged by key. Iterative.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..codec.cid import CID
from ..operation import Action, RecordChange
from .node import Link, Node, NodeSource, key_height, resolve

_LEAF, _TREE = 0, 1


class _Stream:
    """One tree as a stack of pending items, next item on top."""

    def __init__(self, source: NodeSource, root: Link, opened: Callable[[CID], object] | None = None) -> None:
        self._source = source
        self._opened = opened
        node = resolve(source, root)
        self.items: list[tuple] = []
        if node is not None:
            layer = key_height(node.keys[0]) if node.keys else 0
            self.items.append((_TREE, node, layer))

    def expand(self) -> None:
        _, link, layer = self.items.pop()
        if self._opened is not None:
            self._opened(_cid_of(link))
        node: Node | None = resolve(self._source, link)
        if node is None:
            return
        pending: list[tuple] = []
        if node.links[0] is not None:
            pending.append((_TREE, node.links[0], layer - 1))
        for i, key in enumerate(node.keys):
            pending.append((_LEAF, key, node.vals[i]))
            if node.links[i + 1] is not None:
                pending.append((_TREE, node.links[i + 1], layer - 1))
        pending.reverse()
        self.items.extend(pending)


def _cid_of(link: CID | Node) -> CID:
    return link.cid if isinstance(link, Node) else link


def diff_trees(
    source: NodeSource, old_root: Link, new_root: Link, *, new_nodes: Callable[[CID], object] | None = None
) -> Iterator[RecordChange]:
    """Yield the changes that turn the tree at ``old_root`` into the one at ``new_root``, in key order.

    ``new_nodes`` is called with the CID of each node of the new tree the diff
    opens: every node the old tree does not share at its place (and possibly
    a few it does).
    """
    old, new = _Stream(source, old_root), _Stream(source, new_root, new_nodes)
    while old.items and new.items:
        a, b = old.items[-1], new.items[-1]
        if a[0] == _TREE and b[0] == _TREE:
            if _cid_of(a[1]) == _cid_of(b[1]):
                old.items.pop()
                new.items.pop()
            elif a[2] > b[2]:
                old.expand()
            elif b[2] > a[2]:
                new.expand()
            else:
                old.expand()
                new.expand()
        elif a[0] == _TREE:
            old.expand()
        elif b[0] == _TREE:
            new.expand()
        elif a[1] == b[1]:
            old.items.pop()
            new.items.pop()
            if a[2] != b[2]:
                yield RecordChange(a[1].decode(), "update", a[2], b[2])
        elif a[1] < b[1]:
            old.items.pop()
            yield RecordChange(a[1].decode(), "delete", a[2], None)
        else:
            new.items.pop()
            yield RecordChange(b[1].decode(), "create", None, b[2])
    yield from _drain(old, "delete")
    yield from _drain(new, "create")


def _drain(stream: _Stream, action: Action) -> Iterator[RecordChange]:
    while stream.items:
        item = stream.items[-1]
        if item[0] == _TREE:
            stream.expand()
            continue
        stream.items.pop()
        key, value = item[1], item[2]
        if action == "create":
            yield RecordChange(key.decode(), action, None, value)
        else:
            yield RecordChange(key.decode(), action, value, None)
