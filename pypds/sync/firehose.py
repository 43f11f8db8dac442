"""Firehose ``#commit`` messages (sync 1.1): covering proofs and verification by inversion.

A ``#commit`` message carries the new commit, its ops (``action``, ``path``,
``cid``, ``prev``), the previous MST root (``prevData``) and a diff CAR. The
CAR holds every new block plus a **covering proof**: for each changed key,
the nodes on the paths (in the new tree) to the key and to its nearest
neighbours on either side. With those nodes a consumer can undo every op on
the partial tree: deleting a created key re-merges what it split (the merge
walks the neighbours' spines), re-inserting a deleted or updated key splits
along the key's own path. The undone tree's root must equal ``prevData``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypedDict

from ..car.reader import CarReader
from ..codec.atjson import from_json
from ..codec.cid import CID, relink
from ..commit import Commit, decode_commit
from ..errors import InvalidCommitMessage, MissingBlock, RecordNotFound, shown
from ..keys import PublicKey, SigningKey, load_public_key
from ..limits import DEFAULT_LIMITS, Limits
from ..mst.edit import delete_untrimmed, put
from ..mst.node import Link, Node, NodeSource, empty_node, key_height, link_cid, resolve
from ..mst.nodestore import NodeStore
from ..mst.tree import iter_range, lookup
from ..operation import CommitOp, RecordChange
from .proof import proof_path

__all__ = ["CommitEvent", "CommitOp", "VerifiedCommit", "covering_proof", "proof_nodes", "verify_commit_message"]


class CommitEvent(TypedDict):
    """A sync 1.1 ``#commit`` message body, as DAG-CBOR values (CIDs, bytes)."""

    repo: str
    commit: CID
    rev: str
    since: str | None
    prevData: CID | None
    ops: list[CommitOp]
    blobs: list[CID]
    blocks: bytes
    rebase: bool
    tooBig: bool
    time: str


def covering_proof(source: NodeSource, root: CID, keys: Iterable[bytes]) -> dict[bytes, Node]:
    """The nodes of the tree at ``root`` a consumer needs to undo changes to ``keys``.

    For each key: the lookup path to the key itself, and the lookup paths to
    its nearest neighbours below and above (the spines a merge walks).
    Returns nodes by CID bytes.
    """
    nodes: dict[bytes, Node] = {}
    for key in keys:
        targets = [key]
        below = next(iter_range(source, root, None, key, reverse=True), None)
        above = next(iter_range(source, root, key + b"\x00", None), None)
        targets.extend(found[0] for found in (below, above) if found is not None)
        for target in targets:
            for node, _value in proof_path(source, root, target):
                nodes.setdefault(node.cid.cid_bytes, node)
    return nodes


def proof_nodes(blocks: dict[bytes, bytes], commit: CID, limits: Limits) -> NodeStore:
    """The MST nodes of a diff CAR; a node the proof lacks is a MissingBlock naming it."""

    def missing(cid: CID) -> str:
        return (
            f"commit {commit.encode()}: the diff CAR lacks proof block {cid.encode()} (an MST node "
            "needed to check or undo the ops)"
        )

    return NodeStore(lambda cid: blocks.get(cid.cid_bytes), limits, missing=missing)


@dataclass(frozen=True)
class VerifiedCommit:
    """What a verified ``#commit`` message established."""

    commit: Commit
    commit_cid: CID
    data: CID  # the MST root after the commit
    #: the MST root before it, recomputed by undoing the ops; None when they could not be undone
    prev_data: CID | None
    prev_data_checked: bool  # whether the message carried prevData and it matched
    #: whether the ops were undone on the partial tree; False only for a legacy message (no
    #: prevData) with an update or delete that lacks ``prev``, which cannot be undone
    inverted: bool = True
    #: the diff CAR's blocks (by CID bytes, each hash-checked) and the parsed ops, for applying the commit
    blocks: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)
    changes: tuple[RecordChange, ...] = field(default=(), repr=False, compare=False)
    #: the CAR's MST nodes, as the verification decoded them
    nodes: NodeStore | None = field(default=None, repr=False, compare=False)


def verify_commit_message(
    message: dict,
    *,
    key: PublicKey | SigningKey | str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedCommit:
    """Check a ``#commit`` message the sync 1.1 way; raises a PypdsError on any failure.

    ``message`` is a dict as decoded from DAG-CBOR (CIDs, bytes) or in the
    atproto JSON form (``$link``, ``$bytes``). Checks: the CAR's root is the
    message's commit; the commit is for the message's repo and rev (and
    signed by ``key`` when given); every create/update op's CID is the
    value in the new tree and every deleted path is absent; undoing every op
    on the partial tree succeeds using only the CAR's blocks; and, when the
    message carries ``prevData``, the undone tree's root equals it.

    A message without ``prevData`` predates sync 1.1; its update and delete
    ops may lack ``prev`` (optional in the lexicon), and then the ops cannot
    be undone. Such a message is checked for everything else and accepted
    with ``inverted=False`` and ``prev_data=None``. With ``prevData``, an op
    without ``prev`` is an error.
    """
    msg = _normalise(message)
    repo, rev, commit_cid = msg.get("repo"), msg.get("rev"), msg.get("commit")
    car, ops = msg.get("blocks"), msg.get("ops")
    if type(commit_cid) is not CID or type(car) is not bytes or type(ops) is not list:
        raise InvalidCommitMessage("#commit message needs 'commit' (a CID), 'blocks' (a CAR) and 'ops' (a list)")
    blocks = _read_car(car, commit_cid, limits)
    commit = decode_commit(blocks[commit_cid.cid_bytes], commit_cid)
    if commit.did != repo:
        raise InvalidCommitMessage(f"commit {commit_cid.encode()} is for {commit.did}, message is for {shown(repo)}")
    if commit.rev != rev:
        raise InvalidCommitMessage(f"commit {commit_cid.encode()} has rev {commit.rev}, message says {shown(rev)}")
    if key is not None:
        commit.verify(load_public_key(key))
    tree = proof_nodes(blocks, commit_cid, limits)
    parsed = [RecordChange.from_op(op, index) for index, op in enumerate(ops)]
    for change in parsed:
        found = lookup(tree, commit.data, change.path.encode())
        if found != change.new:
            got = "absent" if found is None else found.encode()
            raise InvalidCommitMessage(f"op {change.action} {change.path}: the new tree holds {got}")
    prev_data = msg.get("prevData")
    if prev_data is None and not _invertible(parsed):
        return VerifiedCommit(
            commit,
            commit_cid,
            commit.data,
            None,
            False,
            inverted=False,
            blocks=blocks,
            changes=tuple(parsed),
            nodes=tree,
        )
    root = _undo(tree, commit.data, parsed)
    if prev_data is not None:
        if type(prev_data) is not CID:
            raise InvalidCommitMessage("'prevData' is not a CID")
        if root != prev_data:
            raise InvalidCommitMessage(
                f"undoing the ops gives MST root {root.encode()}, the message's prevData is {prev_data.encode()}"
            )
    return VerifiedCommit(
        commit, commit_cid, commit.data, root, prev_data is not None, blocks=blocks, changes=tuple(parsed), nodes=tree
    )


def _invertible(ops: list[RecordChange]) -> bool:
    """Whether every op can be undone: a create always, an update or delete only with its ``prev``."""
    return all(op.action == "create" or op.old is not None for op in ops)


def _normalise(message: dict) -> dict:
    if type(message) is not dict:
        raise InvalidCommitMessage(f"#commit message must be a map, not {type(message).__name__}")
    if isinstance(message.get("blocks"), dict) or isinstance(message.get("commit"), dict):
        # atproto JSON form; only the fields we use need converting
        fields = {k: message[k] for k in ("repo", "rev", "commit", "blocks", "ops", "prevData") if k in message}
        return from_json(fields)
    return relink(message)  # CIDs decoded by cbrrr itself become pypds CIDs


def _read_car(car: bytes, commit_cid: CID, limits: Limits) -> dict[bytes, bytes]:
    blocks: dict[bytes, bytes] = {}
    with CarReader(car, limits=limits) as reader:
        if reader.roots[0] != commit_cid:
            raise InvalidCommitMessage(
                f"diff CAR root {reader.roots[0].encode()} is not the message's commit {commit_cid.encode()}"
            )
        for cid, data in reader:
            blocks[cid.cid_bytes] = data
    if commit_cid.cid_bytes not in blocks:
        raise MissingBlock(f"diff CAR lacks the commit block {commit_cid.encode()}", commit_cid)
    return blocks


def _undo(tree: NodeStore, root_cid: CID, ops: list[RecordChange]) -> CID:
    """Undo the ops (in reverse order) on the partial tree; the resulting root CID."""
    root: Link = root_cid
    height = -1
    for op in reversed(ops):
        path = op.path.encode()
        node = resolve(tree, root) or empty_node()
        if height < 0:
            height = key_height(node.keys[0]) if node.keys else 0
        try:
            if op.action == "create":
                root, height = _trim_partial(tree, delete_untrimmed(tree, node, height, path), height)
            elif op.old is None:
                # without the old value an update or delete cannot be undone
                raise InvalidCommitMessage(f"op {op.action} {op.path} has no 'prev': the commit cannot be inverted")
            else:
                root, height = put(tree, node, height, path, op.old)
        except RecordNotFound:
            raise InvalidCommitMessage(f"undoing create {op.path}: the key is not in the tree") from None
    cid = link_cid(root)
    return empty_node().cid if cid is None else cid


def _trim_partial(tree: NodeStore, node: Node | None, height: int) -> tuple[Link, int]:
    """Trim key-less nodes off the top without loading a node the proof lacks.

    A key-less top node's single child becomes the root. If that child is
    known only by CID it is not in the diff CAR because the commit did not
    change it: it is the previous root, which has keys, so trimming stops.
    """
    while node is not None and not node.keys:
        child = node.links[0]
        height -= 1
        if type(child) is CID and not tree.has(child):
            return child, height
        node = resolve(tree, child)
    return (empty_node() if node is None else node), max(height, 0)
