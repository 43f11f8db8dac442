"""Record proofs: a CAR that proves a record's presence or absence at a commit.

A proof CAR (what ``com.atproto.sync.getRecord`` returns) holds the signed
commit, every MST node on the path from the root to the key, and the record
block when the key is present. Because the commit is signed and every node
is named by its hash, anyone holding the signer's key can re-run the lookup
over those few blocks: it either reaches the key (inclusion) or reaches an
empty link where the key would be (exclusion).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from ..car.reader import CarReader, CarSource
from ..codec.cid import CID
from ..commit import decode_commit
from ..errors import DidMismatch, MissingBlock
from ..keys import PublicKey, SigningKey, load_public_key
from ..limits import DEFAULT_LIMITS, Limits
from ..mst.node import Node, NodeSource, resolve
from ..mst.nodestore import NodeStore
from ..syntax import repo_path

__all__ = ["proof_path", "verify_proof"]


def proof_path(source: NodeSource, root: CID, key: bytes) -> Iterator[tuple[Node, CID | None]]:
    """The nodes a lookup of ``key`` visits, root first; with the last, the value found (or None)."""
    node = resolve(source, root)
    while node is not None:
        i = bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            yield node, node.vals[i]
            return
        child = node.links[i]
        yield node, None
        node = resolve(source, child)


def verify_proof(
    car: CarSource,
    collection: str,
    rkey: str,
    *,
    did: str,
    key: PublicKey | SigningKey | str,
    limits: Limits = DEFAULT_LIMITS,
) -> CID | None:
    """Check a proof CAR; the record's CID if the commit's tree holds it, None if it proves absence.

    Raises BadSignature, DidMismatch, MissingBlock (the proof lacks a node or
    the record) or another PypdsError for a malformed proof.
    """
    path = repo_path(collection, rkey).encode()
    blocks: dict[bytes, bytes] = {}
    with CarReader(car, limits=limits) as reader:
        root = reader.roots[0]
        for cid, data in reader:
            blocks[cid.cid_bytes] = data

    def get(cid: CID) -> bytes | None:
        return blocks.get(cid.cid_bytes)

    commit_block = get(root)
    if commit_block is None:
        raise MissingBlock(f"proof lacks its commit {root.encode()}", root)
    commit = decode_commit(commit_block, root)
    if commit.did != did:
        raise DidMismatch(f"proof commit {root.encode()} is for {commit.did}, not {did}")
    commit.verify(load_public_key(key))
    found: CID | None = None
    nodes = NodeStore(get, limits, missing=lambda cid: f"proof lacks MST node {cid.encode()} on the path")
    for _node, value in proof_path(nodes, commit.data, path):
        found = value
    if found is not None and get(found) is None:
        raise MissingBlock(f"proof lacks the record block {found.encode()} for {path.decode()}", found)
    return found
