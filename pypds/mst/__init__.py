"""Merkle Search Tree (MST): the ordered key -> CID map inside every repository.

Terminology
-----------
* **key**: a repo path such as ``app.bsky.feed.post/3jui7kd54zh2y``,
  handled as UTF-8 bytes and compared bytewise.
* **height** of a key: leading zero bits of sha256(key), halved (rounded down).
  Fanout is therefore about 4. Layer 0 is the bottom.
* **node**: one block, ``{"e": [entries], "l": left link}``. All keys in a node
  have the same height: the node's layer. Keys and links interleave::

        l   k0   t0   k1   t1   k2   t2
        ^         ^         ^         ^
        keys<k0   k0<..<k1  k1<..<k2  keys>k2   (links point one layer down)

  In memory a :class:`Node` keeps full keys, their values and ``len(keys)+1``
  links; on disk each entry is ``{"k": suffix, "p": prefix_len, "t": link,
  "v": value}`` with maximal prefix compression against the previous key.
* **link**: ``None`` (empty), a :class:`CID` (a node in a block store, loaded
  lazily) or a :class:`Node` (built in memory, maybe not yet stored).
* **tree**: a root node plus its layer. The tree's shape is a pure function of
  its key set: insertion order never matters.

Tricky bits
-----------
* **Inserting above the top**: a key higher than the root grows the tree:
  the old root is wrapped in key-less nodes up to the new key's layer, then
  split around the new key.
* **Splits two (or more) layers down**: inserting a key at layer h splits the
  subtree between its neighbours at every layer below h; the halves that keep
  only a link stay as key-less intermediate nodes (links never skip a layer).
* **Merges on delete**: removing a key joins the subtrees on either side of
  it, recursively joining the rightmost spine of the left one with the
  leftmost spine of the right one.
* **Trimming**: empty nodes are pruned at the bottom (a key-less node with no
  link is ``None``), and at the top a key-less root with a single link is
  replaced by its child, repeatedly. The empty tree is one node with no
  entries and ``l`` null.

Hacking
-------
Nodes are immutable: edits return new nodes and share untouched subtrees by
link. The only mutable bit is ``Node.persisted``, set once the node's block is
durably stored. Work that follows untrusted links is iterative or bounded by
the tree height (itself bounded by :data:`pypds.limits.MAX_MST_DEPTH`).
"""

from .build import build_tree
from .diff import diff_trees
from .edit import delete, put
from .node import Link, Node, NodeSource, decode_node, empty_node, encode_node, key_height
from .tree import MST, iter_range, iter_stored_stream_order, iter_stream_order, lookup
from .walk import TreeWalk, walk_tree

__all__ = [
    "Link",
    "MST",
    "Node",
    "NodeSource",
    "TreeWalk",
    "build_tree",
    "decode_node",
    "delete",
    "diff_trees",
    "empty_node",
    "encode_node",
    "iter_range",
    "iter_stream_order",
    "iter_stored_stream_order",
    "key_height",
    "lookup",
    "put",
    "walk_tree",
]
