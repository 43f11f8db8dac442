"""Inclusion and exclusion proofs (com.atproto.sync.getRecord CARs)."""

from __future__ import annotations

import io

import pytest

from pypds import (
    BadSignature,
    BlockHashMismatch,
    CarReader,
    CarWriter,
    DidMismatch,
    MissingBlock,
    generate_signing_key,
    verify_proof,
)

from .conftest import DID, POST, post


@pytest.fixture
def filled(repo):
    with repo.batch() as batch:
        for i in range(500):
            batch.put(POST, f"k{i:04d}", post(i))
    return repo


def test_inclusion_proofs_verify_for_every_record(filled):
    for i in range(0, 500, 7):
        rkey = f"k{i:04d}"
        proof = filled.prove(POST, rkey)
        assert verify_proof(proof, POST, rkey, did=DID, key=filled.did_key) == filled.find_cid(POST, rkey)
        blocks = list(CarReader(proof))
        assert blocks[0][0] == filled.head
        assert len(blocks) < 12  # commit, one path, one record: not the repo


@pytest.mark.parametrize("rkey", ["k0000a", "a", "zzzz", "k0250x"])
def test_exclusion_proofs_verify_as_absent(filled, rkey):
    proof = filled.prove(POST, rkey)
    assert verify_proof(proof, POST, rkey, did=DID, key=filled.did_key) is None


def test_proof_at_an_older_commit(filled):
    old = filled.head
    filled.delete(POST, "k0001")
    assert verify_proof(filled.prove(POST, "k0001"), POST, "k0001", did=DID, key=filled.did_key) is None
    proof = filled.prove(POST, "k0001", commit=old)
    assert verify_proof(proof, POST, "k0001", did=DID, key=filled.did_key) is not None


def test_proof_for_another_key_does_not_prove_this_one(filled):
    proof = filled.prove(POST, "k0100")
    with pytest.raises(MissingBlock):  # the path to k0400 is not in it
        verify_proof(proof, POST, "k0400", did=DID, key=filled.did_key)


def test_wrong_key_or_did_is_rejected(filled):
    proof = filled.prove(POST, "k0002")
    with pytest.raises(BadSignature):
        verify_proof(proof, POST, "k0002", did=DID, key=generate_signing_key().did_key)
    with pytest.raises(DidMismatch):
        verify_proof(proof, POST, "k0002", did="did:plc:someoneelse", key=filled.did_key)


def _rewrite(proof, change):
    blocks = list(CarReader(proof))
    out = io.BytesIO()
    writer = CarWriter(out, [blocks[0][0]])
    for cid, data in change(blocks):
        writer.write_block(cid, data)
    return out.getvalue()


def test_missing_or_altered_blocks_are_rejected(filled):
    proof = filled.prove(POST, "k0003")
    record = filled.find_cid(POST, "k0003")
    without_record = _rewrite(proof, lambda bs: [b for b in bs if b[0] != record])
    with pytest.raises(MissingBlock, match="record"):
        verify_proof(without_record, POST, "k0003", did=DID, key=filled.did_key)
    without_node = _rewrite(proof, lambda bs: [bs[0], *bs[2:]])
    with pytest.raises(MissingBlock):
        verify_proof(without_node, POST, "k0003", did=DID, key=filled.did_key)
    altered = _rewrite(proof, lambda bs: [*bs[:-1], (bs[-1][0], bs[-1][1][:-1] + b"\x00")])
    with pytest.raises(BlockHashMismatch):
        verify_proof(altered, POST, "k0003", did=DID, key=filled.did_key)
