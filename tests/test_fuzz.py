"""Property and fuzz tests: any input yields a result or a PypdsError, in bounded time and memory.

Covers the CAR reader, DAG-CBOR decoding of MST nodes and commits, record
decoding, ``Repo.import_car`` / ``Repo.from_car``, inputs nested far deeper
than any limit, and lengths announcing far more data than exists.

Every property is checked against an independent oracle where one is cheap
(which structured inputs must be accepted, what an accepted value re-encodes
to); otherwise the contract is only "a result or a PypdsError". Any other
exception (RecursionError, MemoryError, KeyError, ...) propagates and fails
the test. Bugs found this way are kept as ``test_regression_*`` tests next
to the property they broke.

A libFuzzer harness for longer runs lives in ``benchmarks/fuzz_atheris.py``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import shutil
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypds import (
    CID,
    CarFormatError,
    CarReader,
    CarWriter,
    Commit,
    IntegrityError,
    InvalidCbor,
    InvalidCommit,
    InvalidMst,
    InvalidRecord,
    LimitExceeded,
    Limits,
    PypdsError,
    Repo,
    cid_for_cbor,
    cid_for_raw,
    decode_commit,
    load_signing_key,
    sign_commit,
)
from pypds.car.writer import encode_varint
from pypds.codec import cbor as pcbor
from pypds.limits import MAX_CAR_HEADER_BYTES
from pypds.mst import Node, decode_node, encode_node, key_height, walk_tree

from .conftest import DID, POST, encode_dag_cbor

LIKE = "app.bsky.feed.like"
DAG = b"\x01\x71\x12\x20"
RAW = b"\x01\x55\x12\x20"
SIGNING_KEY = bytes.fromhex("5a" * 32)  # fixed: the source CAR's signatures are reproducible
REV = "3kabcdefghijk"

# Per-example bound: part of the contract ("bounded time"), not just a flakiness guard.
DEADLINE_MS = 2000
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]


# PYPDS_FUZZ_SCALE=20 runs twenty times as many examples per property (a longer fuzzing session).
SCALE = float(os.environ.get("PYPDS_FUZZ_SCALE", "1"))


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=DEADLINE_MS, suppress_health_check=SLOW_OK)


# -- the source repository --------------------------------------------------------------------


@dataclass
class Source:
    car: bytes
    head: CID
    rev: str
    blocks: list[tuple[CID, bytes]]  # in CAR order
    by_cid: dict[bytes, bytes]
    commit: bytes
    nodes: list[bytes]
    records: list[bytes]


def record(collection: str, i: int) -> dict:
    return {"$type": collection, "text": f"record {i}", "createdAt": f"2024-01-01T00:00:{i:02d}.000Z"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    path = tmp_path_factory.mktemp("fuzz-source") / "repo"
    with Repo.create(path, DID, signing_key=SIGNING_KEY, store_key=True, durability="normal") as repo:
        for i in range(30):
            collection = POST if i % 2 else LIKE
            repo.put(collection, f"3kabc{i:04d}xyz", record(collection, i))
        car = repo.export_car()
        head, rev, data_root = repo.head, repo.rev, repo.commit().data
    with CarReader(car) as reader:
        blocks = list(reader)
    by_cid = {cid.cid_bytes: data for cid, data in blocks}
    nodes, records = [], []
    for step in walk_tree(lambda c: by_cid.get(c.cid_bytes), data_root):
        if step.node is not None:
            nodes.append(step.node.data)
        else:
            records.append(by_cid[step.cid.cid_bytes])
    assert len(records) == 30 and len(nodes) >= 3
    return Source(car, head, rev, blocks, by_cid, by_cid[head.cid_bytes], nodes, records)


# -- strategies -------------------------------------------------------------------------------

digests = st.binary(min_size=32, max_size=32)
dag_cids = digests.map(lambda d: CID(DAG + d))
raw_cids = digests.map(lambda d: CID(RAW + d))
odd_cids = st.one_of(
    st.binary(max_size=40).map(CID),  # any bytes after the 0x00 multibase prefix
    digests.map(lambda d: CID(b"\x12\x20" + d)),  # CIDv0 form
    st.binary(min_size=4, max_size=4).flatmap(lambda p: digests.map(lambda d: CID(p + d))),
)
any_cids = st.one_of(dag_cids, raw_cids, odd_cids)

ints = st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1)  # what DAG-CBOR can hold
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=16),
    st.binary(max_size=48),
    any_cids,
)
dag_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=24,
)


@st.composite
def mutated(draw, base: bytes, max_ops: int = 4) -> bytes:
    """``base`` with 1..max_ops byte-level edits: flip, set, insert, delete, truncate, splice."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice", "overwrite"]))
        n = len(data)
        if op == "flip" and n:
            data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            # bytes that change CBOR major types / lengths or varint continuation
            value = draw(
                st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x1B, 0x3B, 0x5B, 0x7B, 0x9B, 0xBB, 0xD8, 0xF6])
            )
            data[draw(st.integers(0, n - 1))] = value
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif op == "splice" and base:
            start = draw(st.integers(0, len(base) - 1))
            chunk = base[start : start + draw(st.integers(1, 256))]
            at = draw(st.integers(0, n))
            if draw(st.booleans()):
                data[at:at] = chunk
            else:
                data[at : at + len(chunk)] = chunk
        elif op == "overwrite" and n:
            at = draw(st.integers(0, n - 1))
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


# -- helpers ----------------------------------------------------------------------------------


def write_car(roots: list[CID], blocks) -> bytes:
    out = io.BytesIO()
    writer = CarWriter(out, roots)
    for cid, data in blocks:
        writer.write_block(cid, data)
    return out.getvalue()


def frame(raw: bytes) -> bytes:
    return encode_varint(len(raw)) + raw


class Drip:
    """A binary stream returning at most ``step`` bytes per read (a slow socket)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1) -> bytes:
        return self._data.read(self._step if size < 0 else min(size, self._step))


def read_car(source) -> tuple:
    """('ok', roots, blocks) after checking what the reader hands out, or ('error', type, message)."""
    try:
        with CarReader(source) as reader:
            roots = [r.cid_bytes for r in reader.roots]
            blocks = [(cid.cid_bytes, data) for cid, data in reader]
    except PypdsError as exc:
        return ("error", type(exc), str(exc))
    assert roots and len(roots[0]) == 36 and roots[0][:4] == DAG
    for cid, data in blocks:
        assert len(cid) == 36 and cid[:4] in (DAG, RAW)
        assert hashlib.sha256(data).digest() == cid[4:]
    return ("ok", roots, blocks)


def read_car_every_way(car: bytes) -> tuple:
    """Read ``car`` from bytes, a BytesIO and 1- and 7-byte drips; all must agree."""
    results = [read_car(car), read_car(io.BytesIO(car)), read_car(Drip(car, 1)), read_car(Drip(car, 7))]
    assert all(r == results[0] for r in results[1:]), results
    return results[0]


def outcome(fn, *args, **kwargs):
    """The result, or the PypdsError raised; anything else propagates and fails the test."""
    try:
        return fn(*args, **kwargs)
    except PypdsError as exc:
        return exc


def check_node_result(result, data: bytes) -> None:
    """An accepted node block is canonical: re-encoding the Node gives back the same bytes."""
    if isinstance(result, PypdsError):
        return
    assert type(result) is Node
    assert encode_node(result) == data
    assert result.cid == cid_for_cbor(data)
    assert len(result.links) == len(result.keys) + 1 == len(result.vals) + 1


def check_commit_result(result, data: bytes) -> None:
    """An accepted commit block re-encodes to the same bytes."""
    if isinstance(result, PypdsError):
        return
    assert type(result) is Commit
    assert result.encode() == data


_dirs = itertools.count()


def fresh_path(base: Path) -> Path:
    return base / f"r{next(_dirs)}"


def make_target(base: Path) -> Repo:
    """A repository of the source's DID holding blocks of its own (so a partial import shows)."""
    repo = Repo.create(fresh_path(base), DID, durability="normal")
    repo.put(POST, "own1", record(POST, 1))
    repo.put(LIKE, "own2", record(LIKE, 2))
    return repo


def state(repo: Repo) -> tuple:
    return repo.head, repo.rev, len(repo.blockstore)


class Importer:
    """Imports CARs into a target repository (one per test, replaced after each successful
    import so it never holds the source blocks) and with ``from_car``."""

    def __init__(self, source: Source, base: Path) -> None:
        self.source = source
        self.base = base
        self._target: Repo | None = None
        self._reimported: set[bytes] = set()

    def target(self) -> Repo:
        if self._target is None:
            self._target = make_target(self.base)
        return self._target

    def close(self) -> None:
        if self._target is not None:
            self._target.close()
            self._target = None

    def check(self, car: bytes) -> bool:
        """``car`` imports both ways as the source repository, or fails both ways cleanly.

        On success the imported repository exports the source CAR, and that
        export re-imports into a fresh repository with the same head. On
        failure the target is unchanged (head, rev, block count) and from_car
        left no directory. Returns whether the import succeeded.
        """
        source = self.source
        target = self.target()
        before = state(target)
        error = outcome(target.import_car, car)
        if isinstance(error, PypdsError):
            assert state(target) == before, error
        else:
            assert (target.head, target.rev) == (source.head, source.rev)
            exported = target.export_car()
            assert exported == source.car
            self.close()  # the next CAR goes to a target without the source blocks
            if exported not in self._reimported:
                with Repo.from_car(fresh_path(self.base), exported, durability="normal") as again:
                    assert again.head == source.head
                self._reimported.add(exported)

        path = fresh_path(self.base)
        result = outcome(Repo.from_car, path, car, durability="normal")
        if isinstance(result, PypdsError):
            assert not path.exists(), result
            assert isinstance(error, PypdsError), f"import_car accepted what from_car rejected: {result!r}"
            return False
        with result:
            assert (result.head, result.rev) == (source.head, source.rev)
            assert result.export_car() == source.car
        shutil.rmtree(path)
        assert not isinstance(error, PypdsError), f"from_car accepted what import_car rejected: {error!r}"
        return True


@pytest.fixture(scope="module")
def importer(source, tmp_path_factory):
    imp = Importer(source, tmp_path_factory.mktemp("fuzz-import"))
    yield imp
    imp.close()


# == 1. the CAR reader ========================================================================


@fuzz_settings(300)
@given(st.binary(max_size=2048))
def test_carreader_on_arbitrary_bytes(data):
    assert read_car_every_way(data)[0] in ("ok", "error")


@fuzz_settings(300)
@given(st.binary(max_size=2048))
def test_carreader_on_arbitrary_sections_after_a_valid_header(data):
    header = frame(encode_dag_cbor({"roots": [cid_for_cbor(b"\xa0")], "version": 1}))
    read_car_every_way(header + data)


@fuzz_settings(300)
@given(st.data())
def test_carreader_on_mutated_valid_car(source, data):
    car = data.draw(mutated(source.car))
    result = read_car_every_way(car)
    if result[0] == "ok":
        # every block handed out was hash-checked, so it can only be one of the source
        # blocks (moved, repeated or cut short at a section boundary): no edit forges a digest
        original = {(cid.cid_bytes, block) for cid, block in source.blocks}
        assert set(result[2]) <= original


def test_carreader_on_the_source_car_reads_every_block(source):
    assert read_car_every_way(source.car) == (
        "ok",
        [source.head.cid_bytes],
        [(cid.cid_bytes, data) for cid, data in source.blocks],
    )


# structured but wrong: headers and sections built piece by piece, with an oracle


def header_ok(obj) -> bool:
    if type(obj) is not dict:
        return False
    version, roots = obj.get("version"), obj.get("roots")
    if type(version) is not int or version != 1 or type(roots) is not list or not roots:
        return False
    if any(type(r) is not CID for r in roots):
        return False
    first = roots[0].cid_bytes
    return len(first) == 36 and first[:4] == DAG


header_objects = st.one_of(
    st.fixed_dictionaries(
        {
            "roots": st.one_of(st.lists(st.one_of(dag_cids, any_cids), min_size=1, max_size=3), dag_values),
            "version": st.one_of(st.just(1), st.integers(-2, 3), dag_values),
        },
        optional={"extra": dag_values},
    ),
    dag_values,
)


@st.composite
def sections(draw) -> tuple[bytes, tuple[bytes, bytes] | None]:
    """(section bytes, (cid, data) if the section is valid else None)."""
    kind = draw(st.sampled_from(["cbor", "raw", "wrong-hash", "bad-cid", "cidv0", "bad-length", "random"]))
    data = draw(st.binary(max_size=64))
    digest = hashlib.sha256(data).digest()
    if kind == "cbor":
        return frame(DAG + digest + data), (DAG + digest, data)
    if kind == "raw":
        return frame(RAW + digest + data), (RAW + digest, data)
    if kind == "wrong-hash":
        other = draw(digests.filter(lambda d: d != digest))
        return frame(draw(st.sampled_from([DAG, RAW])) + other + data), None
    if kind == "bad-cid":
        prefix = draw(st.binary(min_size=4, max_size=4).filter(lambda p: p not in (DAG, RAW)))
        return frame(prefix + digest + data), None
    if kind == "cidv0":
        return frame(b"\x12\x20" + digest + data), None
    body = DAG + digest + data
    if kind == "bad-length":
        length = draw(st.one_of(st.integers(0, 35), st.integers(len(body) + 1, len(body) + 100), st.just(1 << 40)))
        return encode_varint(length) + body, None
    return draw(st.binary(min_size=1, max_size=80)), None


@fuzz_settings(250)
@given(
    header=header_objects,
    header_length=st.one_of(st.none(), st.integers(0, 200), st.just(1 << 40)),
    parts=st.lists(sections(), max_size=6),
)
def test_carreader_on_structured_cars_accepts_exactly_the_valid_ones(header, header_length, parts):
    raw = encode_dag_cbor(header)
    length = len(raw) if header_length is None else header_length
    car = encode_varint(length) + raw + b"".join(p for p, _ in parts)
    expect_ok = length == len(raw) and header_ok(header) and all(block is not None for _, block in parts)
    result = read_car_every_way(car)
    assert (result[0] == "ok") == expect_ok, (result, expect_ok)
    if expect_ok:
        assert result[1] == [r.cid_bytes for r in header["roots"]]
        assert result[2] == [block for _, block in parts]
    if length > MAX_CAR_HEADER_BYTES:
        assert result[1] is LimitExceeded


@fuzz_settings(200)
@given(length=st.integers(0, (1 << 63) - 1), tail=st.binary(max_size=64))
def test_carreader_on_random_section_length_varints(length, tail):
    header = frame(encode_dag_cbor({"roots": [cid_for_cbor(b"\xa0")], "version": 1}))
    result = read_car_every_way(header + encode_varint(length) + tail)
    # no block can hash-check: a section needs a CID and the right digest
    assert result[0] == "error"
    if length > Limits().max_car_section_bytes:
        assert result[1] is LimitExceeded


# == 2. DAG-CBOR decoding of MST nodes and commits ===========================================


@fuzz_settings(400)
@given(st.binary(max_size=512))
def test_decode_node_and_commit_on_arbitrary_bytes(data):
    check_node_result(outcome(decode_node, data), data)
    check_commit_result(outcome(decode_commit, data), data)


@fuzz_settings(200)
@given(dag_values)
def test_decode_node_and_commit_on_random_dag_cbor_values(value):
    data = encode_dag_cbor(value)
    node = outcome(decode_node, data)
    check_node_result(node, data)
    assert not isinstance(node, InvalidCbor), node  # valid DAG-CBOR is never a CBOR error
    commit = outcome(decode_commit, data)
    check_commit_result(commit, data)


# node-shaped maps: a valid node (small alphabet, so prefixes are shared) plus random damage


def node_ok(obj, limits: Limits) -> bool:
    """Independent statement of what decode_node accepts."""
    if type(obj) is not dict or set(obj) != {"e", "l"} or type(obj["e"]) is not list:
        return False
    if not _link_ok(obj["l"]) or len(obj["e"]) > limits.max_mst_node_entries:
        return False
    prev = b""
    for i, entry in enumerate(obj["e"]):
        if type(entry) is not dict or set(entry) != {"k", "p", "t", "v"}:
            return False
        k, p = entry["k"], entry["p"]
        if type(k) is not bytes or type(p) is not int or not 0 <= p <= len(prev):
            return False
        key = prev[:p] + k
        if len(key) > limits.max_mst_key_bytes or (i > 0 and key <= prev):
            return False
        if shared_prefix(prev, key) != p or not _link_ok(entry["t"]):
            return False
        v = entry["v"]
        if type(v) is not CID or len(v.cid_bytes) != 36 or v.cid_bytes[:4] not in (DAG, RAW):
            return False
        prev = key
    return True


def _link_ok(link) -> bool:
    return link is None or (type(link) is CID and len(link.cid_bytes) == 36 and link.cid_bytes[:4] == DAG)


def shared_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix, by bisection on slices (fast for long keys)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def compress(keys: list[bytes], vals: list[CID], links: list[CID | None]) -> dict:
    entries, prev = [], b""
    for key, val, link in zip(keys, vals, links[1:], strict=True):
        p = shared_prefix(prev, key)
        entries.append({"k": key[p:], "p": p, "t": link, "v": val})
        prev = key
    return {"e": entries, "l": links[0]}


link_values = st.one_of(st.none(), dag_cids, raw_cids, odd_cids, dag_values)
DAMAGE = ["p", "k", "t", "v", "l", "drop-field", "extra-field", "swap", "duplicate", "e", "long-key", "top-field"]


@st.composite
def node_maps(draw) -> dict:
    keys = sorted(set(draw(st.lists(st.binary(min_size=1, max_size=5).map(lambda b: bytes(x % 3 + 97 for x in b))))))
    vals = [draw(st.one_of(dag_cids, raw_cids)) for _ in keys]
    links = [draw(st.one_of(st.none(), dag_cids)) for _ in range(len(keys) + 1)]
    obj = compress(keys, vals, links)
    compressed = [i for i, e in enumerate(obj["e"]) if e["p"] > 0]
    if compressed and draw(st.booleans()):  # the same key, less compressed than it could be
        i = draw(st.sampled_from(compressed))
        p = draw(st.integers(0, obj["e"][i]["p"] - 1))
        obj["e"][i].update(k=keys[i][p:], p=p)
    for _ in range(draw(st.integers(0, 2))):
        damage = draw(st.sampled_from(DAMAGE))
        entries = obj["e"] if type(obj.get("e")) is list else []
        entry = entries[draw(st.integers(0, len(entries) - 1))] if entries else None
        if damage == "l":
            obj["l"] = draw(link_values)
        elif damage == "e":
            obj["e"] = draw(dag_values)
        elif damage == "top-field":
            obj[draw(st.sampled_from(["x", "E", "ee"]))] = draw(dag_values)
        elif damage == "swap" and len(entries) > 1:
            i = draw(st.integers(0, len(entries) - 2))
            entries[i], entries[i + 1] = entries[i + 1], entries[i]
        elif damage == "duplicate" and entries:
            i = draw(st.integers(0, len(entries) - 1))
            entries.insert(i, dict(entries[i]) if type(entries[i]) is dict else entries[i])
        elif type(entry) is not dict:
            continue
        elif damage == "p":
            entry["p"] = draw(st.one_of(st.integers(-2, 8), st.just((1 << 64) - 1), dag_values))
        elif damage == "k":
            entry["k"] = draw(st.one_of(st.binary(max_size=4), dag_values))
        elif damage in ("t", "v"):
            entry[damage] = draw(link_values)
        elif damage == "drop-field":
            entry.pop(draw(st.sampled_from("kptv")), None)
        elif damage == "extra-field":
            entry[draw(st.sampled_from(["x", "kk", "P"]))] = draw(dag_values)
        elif damage == "long-key":
            k = entry.get("k")
            entry["k"] = (k if type(k) is bytes else b"") + b"z" * draw(st.integers(1, 40))
    return obj


small_limits = st.builds(
    Limits,
    max_mst_node_entries=st.one_of(st.just(Limits().max_mst_node_entries), st.integers(0, 6)),
    max_mst_key_bytes=st.one_of(st.just(Limits().max_mst_key_bytes), st.integers(0, 12)),
)


@fuzz_settings(300)
@given(obj=node_maps(), limits=small_limits)
def test_decode_node_accepts_exactly_the_well_formed_node_maps(obj, limits):
    data = encode_dag_cbor(obj)
    result = outcome(decode_node, data, None, limits)
    check_node_result(result, data)
    expect = node_ok(obj, limits)
    assert (not isinstance(result, PypdsError)) == expect, (obj, result)
    if isinstance(result, PypdsError):
        assert isinstance(result, (InvalidMst, LimitExceeded)), result


# commit-shaped maps: each field good, bad, or absent


GOOD_DIDS = [DID, "did:web:example.com", "did:plc:" + "a" * 24, "did:x:" + "y" * 2000]
BAD_DIDS = [
    "",
    "did:",
    "did:plc:",
    "DID:plc:abc",
    "did:plc:abc%",
    "did:plc:abc:",
    "did:plc:" + "a" * 2041,
    "did:pl c:x",
]
GOOD_TIDS = ["3jui7kd54zh2y", "2222222222222", "jzzzzzzzzzzzz", REV]
BAD_TIDS = ["", "3jui7kd54zh2", "3jui7kd54zh2yy", "kjui7kd54zh2y", "3JUI7KD54ZH2Y", "1jui7kd54zh2y", "3jui7kd54zh2-"]


def not_str(value) -> bool:
    return type(value) is not str


COMMIT_FIELDS = {
    "did": (st.sampled_from(GOOD_DIDS), st.one_of(st.sampled_from(BAD_DIDS), dag_values.filter(not_str))),
    "version": (
        st.sampled_from([2, 3]),
        st.one_of(st.integers(-1, 5), st.booleans(), dag_values).filter(
            lambda v: type(v) is not int or v not in (2, 3)
        ),
    ),
    "data": (
        dag_cids,
        st.one_of(raw_cids, odd_cids, dag_values).filter(lambda v: type(v) is not CID or v.cid_bytes[:4] != DAG),
    ),
    "rev": (st.sampled_from(GOOD_TIDS), st.one_of(st.sampled_from(BAD_TIDS), dag_values.filter(not_str))),
    "prev": (st.one_of(st.none(), any_cids), st.one_of(st.booleans(), ints, st.text(), st.binary())),
    "sig": (st.binary(max_size=80), st.one_of(st.none(), ints, st.text(), any_cids)),
}
OPTIONAL = {"prev"}


@st.composite
def commit_maps(draw) -> tuple[dict, bool]:
    """A commit map with 0-2 defects (a bad value, a missing field, an extra field), and whether it is valid.

    Version 3 needs a rev; version 2 must not have one (both with a good version and no other defect).
    """
    defects = draw(st.sets(st.sampled_from([*COMMIT_FIELDS, "extra"]), max_size=2))
    obj, valid = {}, True
    for name, (good, bad) in COMMIT_FIELDS.items():
        if name not in defects:
            if name not in OPTIONAL or draw(st.booleans()):
                obj[name] = draw(good)
        elif draw(st.booleans()):
            obj[name] = draw(bad)
            valid = False
        else:  # absent
            valid = valid and (name in OPTIONAL or name == "rev")
    if "extra" in defects:
        obj[draw(st.sampled_from(["extra", "sigs", "Did", "prevData"]))] = draw(dag_values)
        valid = False
    if obj.get("version") == 3 and "rev" not in obj:
        valid = False
    if obj.get("version") == 2 and "rev" in obj:
        valid = False
    return obj, valid


@fuzz_settings(300)
@given(commit_maps())
def test_decode_commit_accepts_exactly_the_well_formed_commit_maps(drawn):
    obj, expect = drawn
    data = encode_dag_cbor(obj)
    result = outcome(decode_commit, data)
    check_commit_result(result, data)
    assert (not isinstance(result, PypdsError)) == expect, (obj, result)
    if isinstance(result, PypdsError):
        assert isinstance(result, InvalidCommit), result
    else:
        assert result.has_prev == ("prev" in obj)


@fuzz_settings(300)
@given(st.data())
def test_decode_node_on_mutated_real_node_blocks(source, data):
    block = data.draw(st.sampled_from(source.nodes))
    bad = data.draw(mutated(block, max_ops=3))
    check_node_result(outcome(decode_node, bad), bad)


@fuzz_settings(300)
@given(st.data())
def test_decode_commit_on_mutated_real_commit_blocks(source, data):
    bad = data.draw(mutated(source.commit, max_ops=3))
    check_commit_result(outcome(decode_commit, bad), bad)


@fuzz_settings(200)
@given(st.data())
def test_decode_record_on_mutated_real_record_blocks(source, data):
    block = data.draw(st.sampled_from(source.records))
    bad = data.draw(mutated(block, max_ops=3))
    result = outcome(pcbor.decode_record, bad)
    if not isinstance(result, PypdsError):
        assert type(result) is dict and pcbor.encode(result) == bad


def test_real_blocks_decode_and_re_encode_identically(source):
    for block in source.nodes:
        check_node_result(decode_node(block), block)
    check_commit_result(decode_commit(source.commit), source.commit)


def test_worst_case_node_decodes_within_the_time_bound():
    """8192 entries, 1024-byte keys sharing ~1020-byte prefixes: the most prefix work one node allows."""
    stem = b"app.bsky.feed.post/" + b"a" * (1024 - 19 - 23)
    keys = [stem + b"%023d" % i for i in range(Limits().max_mst_node_entries)]
    value = cid_for_cbor(b"\xa0")
    data = encode_dag_cbor(compress(keys, [value] * len(keys), [None] * (len(keys) + 1)))
    started = time.perf_counter()
    node = decode_node(data)
    assert time.perf_counter() - started < DEADLINE_MS / 1000
    assert node.keys == tuple(keys)


# == 3. import_car / from_car ==================================================================


@fuzz_settings(150)
@given(st.data())
def test_import_of_a_byte_mutated_export_succeeds_as_the_source_or_changes_nothing(source, importer, data):
    importer.check(data.draw(mutated(source.car)))


@st.composite
def block_edits(draw, source: Source) -> tuple[bytes, bool]:
    """A CAR rebuilt from the source blocks with block-level edits, and whether it must import."""
    blocks = list(source.blocks)
    roots = [source.head]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "rehash", "corrupt", "extra", "bad-extra", "root", "roots"]))
        i = draw(st.integers(0, len(blocks) - 1)) if blocks else None
        if op == "drop" and blocks:
            del blocks[i]
        elif op == "dup" and blocks:
            blocks.insert(draw(st.integers(0, len(blocks))), blocks[i])
        elif op == "swap" and blocks:
            j = draw(st.integers(0, len(blocks) - 1))
            blocks[i], blocks[j] = blocks[j], blocks[i]
        elif op == "rehash" and blocks:  # new content under its own, correct CID
            new = draw(st.one_of(mutated(blocks[i][1], 2), dag_values.map(encode_dag_cbor)))
            blocks[i] = (cid_for_cbor(new), new)
        elif op == "corrupt" and blocks:  # new content under the old CID
            new = draw(mutated(blocks[i][1], 2).filter(lambda b, old=blocks[i][1]: b != old))
            blocks[i] = (blocks[i][0], new)
        elif op == "extra":
            new = draw(dag_values.map(encode_dag_cbor) | st.binary(max_size=40))
            make = draw(st.sampled_from([cid_for_cbor, cid_for_raw]))
            blocks.insert(draw(st.integers(0, len(blocks))), (make(new), new))
        elif op == "bad-extra":
            new = draw(st.binary(max_size=40))
            prefix = draw(st.binary(min_size=4, max_size=4).filter(lambda p: p not in (DAG, RAW)))
            blocks.insert(draw(st.integers(0, len(blocks))), (CID(prefix + hashlib.sha256(new).digest()), new))
        elif op == "root" and blocks:
            roots[0] = draw(st.sampled_from([cid for cid, _ in blocks if cid.cid_bytes[:4] == DAG] or [source.head]))
        elif op == "roots":
            roots.append(draw(any_cids))
    intact = all(len(c.cid_bytes) == 36 and c.cid_bytes[:4] in (DAG, RAW) for c, _ in blocks) and all(
        hashlib.sha256(d).digest() == c.cid_bytes[4:] for c, d in blocks
    )
    present = {c.cid_bytes for c, _ in blocks}
    expect = intact and roots[0] == source.head and all(c.cid_bytes in present for c, _ in source.blocks)
    return write_car(roots, blocks), expect


@fuzz_settings(150)
@given(st.data())
def test_import_of_a_block_edited_export_accepts_exactly_the_complete_ones(source, importer, data):
    car, expect = data.draw(block_edits(source))
    assert importer.check(car) == expect


@fuzz_settings(100)
@given(st.binary(max_size=1024))
def test_import_of_arbitrary_bytes_fails_cleanly(importer, data):
    assert not importer.check(data)


def test_import_harness_accepts_the_unmodified_export(source, tmp_path):
    importer = Importer(source, tmp_path)
    try:
        assert importer.check(source.car)
        assert importer.check(source.car)  # again, into a new target
    finally:
        importer.close()


# == 4. deep nesting ==========================================================================

DEPTHS = [10_000, 100_000]


def deep_list(depth: int) -> bytes:
    return b"\x81" * depth + b"\x00"


def deep_map(depth: int) -> bytes:
    return b"\xa1\x61a" * depth + b"\x00"


def cbor_map(fields: dict[str, bytes]) -> bytes:
    """A canonical DAG-CBOR map from already-encoded values (keys sorted by length, then bytes)."""
    out = bytearray([0xA0 + len(fields)])
    for name in sorted(fields, key=lambda k: (len(k), k)):
        out += bytes([0x60 + len(name)]) + name.encode() + fields[name]
    return bytes(out)


def enc(value) -> bytes:
    return encode_dag_cbor(value)


def commit_with(field_name: str, deep: bytes) -> bytes:
    fields = {
        "did": enc(DID),
        "version": enc(3),
        "data": enc(cid_for_cbor(b"\xa0")),
        "rev": enc(REV),
        "prev": enc(None),
        "sig": enc(b"\x00" * 64),
    }
    fields[field_name] = deep
    return cbor_map(fields)


def deep_params(fields=("did", "version", "data", "rev", "prev", "sig")):
    """(field, depth, shape) parameters.

    Regression: error messages once repr()-ed such values and raised RecursionError.
    """
    return [
        pytest.param(name, depth, shape, id=f"{name}-{shape}-{depth}")
        for name in fields
        for depth in DEPTHS
        for shape in ("list", "map")
    ]


def deep_value(shape: str, depth: int) -> bytes:
    return deep_list(depth) if shape == "list" else deep_map(depth)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["list", "map"])
def test_deep_record_is_limit_exceeded(depth, shape):
    record_bytes = cbor_map({"a": deep_value(shape, depth), "$type": enc(POST)})
    with pytest.raises(LimitExceeded) as info:
        pcbor.decode_record(record_bytes)
    assert info.value.limit == "max_cbor_depth"
    # as a whole record, not wrapped in a map
    with pytest.raises((LimitExceeded, InvalidRecord)):
        pcbor.decode_record(deep_value(shape, depth))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["list", "map"])
def test_deep_cbor_block_decodes_without_recursion(depth, shape):
    # plain decode has no depth limit, but must not recurse either
    value = pcbor.decode(deep_value(shape, depth))
    assert type(value) in (list, dict)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["list", "map"])
@pytest.mark.parametrize("where", ["node", "e", "l", "entry", "k", "p", "t", "v"])
def test_deep_mst_node_is_invalid_mst(depth, shape, where):
    deep = deep_value(shape, depth)
    value = enc(cid_for_cbor(b"\xa0"))
    entry = {"k": enc(b"a/b"), "p": enc(0), "t": enc(None), "v": value}
    if where in entry:
        entry[where] = deep
    node = {"e": b"\x81" + cbor_map(entry), "l": enc(None)}
    if where in ("e", "l"):
        node[where] = deep
    elif where == "entry":
        node["e"] = b"\x81" + deep
    data = deep if where == "node" else cbor_map(node)
    with pytest.raises(InvalidMst):
        decode_node(data)


@pytest.mark.parametrize(("name", "depth", "shape"), deep_params())
def test_deep_commit_field_is_invalid_commit(name, depth, shape):
    with pytest.raises(InvalidCommit):
        decode_commit(commit_with(name, deep_value(shape, depth)))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["list", "map"])
def test_deep_commit_block_is_invalid_commit(depth, shape):
    with pytest.raises(InvalidCommit):
        decode_commit(deep_value(shape, depth))


def header_with(name: str, deep: bytes) -> bytes:
    fields = {"roots": b"\x81" + enc(cid_for_cbor(b"\xa0")), "version": enc(1)}
    fields[name] = deep
    return cbor_map(fields)


BIG_HEADER = Limits(max_car_header_bytes=1 << 22)


@pytest.mark.parametrize(
    ("name", "depth", "shape"),
    deep_params(fields=("version", "roots", "extra", "header")),
)
def test_deep_car_header_is_a_pypds_error(name, depth, shape):
    deep = deep_value(shape, depth)
    raw = deep if name == "header" else header_with(name, deep)
    car = frame(raw)
    if len(raw) > MAX_CAR_HEADER_BYTES:
        with pytest.raises(LimitExceeded):
            CarReader(car)
    # with the header limit raised (or not needed), the deep value itself reaches the checks
    for limits in (Limits(), BIG_HEADER) if len(raw) <= MAX_CAR_HEADER_BYTES else (BIG_HEADER,):
        if name == "extra":  # extra header fields are ignored
            assert CarReader(car, limits=limits).roots == [cid_for_cbor(b"\xa0")]
        else:
            with pytest.raises(CarFormatError):
                CarReader(car, limits=limits)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["list", "map"])
def test_put_of_a_deep_record_is_limit_exceeded_and_writes_nothing(repo, depth, shape):
    before = state(repo)
    with pytest.raises(LimitExceeded):
        repo.put(POST, "deepbytes", cbor_map({"a": deep_value(shape, depth), "$type": enc(POST)}))
    nested: object = 0
    for _ in range(depth):
        nested = [nested] if shape == "list" else {"a": nested}
    with pytest.raises(LimitExceeded):
        repo.put(POST, "deepdict", {"$type": POST, "a": nested})
    assert state(repo) == before


def signed_commit(root: CID) -> tuple[CID, bytes]:
    _commit, block, cid = sign_commit(DID, root, REV, load_signing_key(SIGNING_KEY))
    return cid, block


def assert_import_fails(car: bytes, errors, tmp_path: Path) -> None:
    with make_target(tmp_path) as target:
        before = state(target)
        with pytest.raises(errors):
            target.import_car(car)
        assert state(target) == before
    path = fresh_path(tmp_path)
    with pytest.raises(errors):
        Repo.from_car(path, car)
    assert not path.exists()


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("shape", ["list", "map"])
def test_import_of_deep_blocks_is_a_pypds_error(source, tmp_path, depth, shape):
    deep = deep_value(shape, depth)
    deep_cid = cid_for_cbor(deep)
    # the root commit block itself is deep
    assert_import_fails(write_car([deep_cid], [(deep_cid, deep)]), InvalidCommit, tmp_path)
    # the commit's data points at a deep "node"
    commit = signed_commit(deep_cid)
    assert_import_fails(write_car([commit[0]], [commit, (deep_cid, deep)]), InvalidMst, tmp_path)
    # a record of an otherwise valid one-key tree is deep
    record_bytes = cbor_map({"a": deep, "$type": enc(POST)})
    record_cid = cid_for_cbor(record_bytes)
    node = encode_dag_cbor(compress([f"{POST}/deep".encode()], [record_cid], [None, None]))
    commit = signed_commit(cid_for_cbor(node))
    car = write_car([commit[0]], [commit, (cid_for_cbor(node), node), (record_cid, record_bytes)])
    assert_import_fails(car, LimitExceeded, tmp_path)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("field_name", ["did", "version", "rev"])
def test_regression_import_of_a_commit_with_a_deep_field(tmp_path, field_name, depth):
    block = commit_with(field_name, deep_list(depth))
    cid = cid_for_cbor(block)
    assert_import_fails(write_car([cid], [(cid, block)]), InvalidCommit, tmp_path)


# records whose nested typed objects carry a deep value: cbor._check_typed_object formats it


def typed_record(inner: bytes) -> bytes:
    return cbor_map({"a": inner, "$type": enc(POST)})


def deep_type(depth: int) -> bytes:
    return typed_record(cbor_map({"$type": deep_list(depth)}))


def deep_blob_size(depth: int) -> bytes:
    blob = {"ref": enc(cid_for_raw(b"x")), "size": deep_list(depth), "$type": enc("blob"), "mimeType": enc("a/b")}
    return typed_record(cbor_map(blob))


# regression: cbor._check_typed_object once repr()-ed these values (RecursionError)
TYPED = [
    pytest.param(make, depth, id=f"{what}-{depth}")
    for make, what in ((deep_type, "$type"), (deep_blob_size, "size"))
    for depth in DEPTHS
]


@pytest.mark.parametrize(("make", "depth"), TYPED)
def test_regression_record_with_a_deep_value_in_a_nested_typed_object(make, depth):
    with pytest.raises(InvalidRecord):
        pcbor.decode_record(make(depth))


@pytest.mark.parametrize(("make", "depth"), TYPED)
def test_regression_put_of_a_record_with_a_deep_value_in_a_nested_typed_object(repo, make, depth):
    before = state(repo)
    with pytest.raises(InvalidRecord):
        repo.put(POST, "deeptyped", make(depth))
    assert state(repo) == before


@pytest.mark.parametrize(("make", "depth"), TYPED)
def test_regression_import_of_a_record_with_a_deep_value_in_a_nested_typed_object(tmp_path, make, depth):
    record_bytes = make(depth)
    record_cid = cid_for_cbor(record_bytes)
    node = encode_dag_cbor(compress([f"{POST}/deep".encode()], [record_cid], [None, None]))
    commit = signed_commit(cid_for_cbor(node))
    car = write_car([commit[0]], [commit, (cid_for_cbor(node), node), (record_cid, record_bytes)])
    assert_import_fails(car, InvalidRecord, tmp_path)


def test_regression_put_of_a_dict_with_a_deeply_nested_non_string_key(repo):
    key: tuple = ()
    for _ in range(10_000):
        key = (key,)
    before = state(repo)
    with pytest.raises(InvalidRecord):
        repo.put(POST, "deepkey", {"$type": POST, key: 1})
    assert state(repo) == before


# deep MSTs: key-less intermediate nodes are legal, but every layer costs a 2-bit hash prefix


def key_of_height(prefix: str, height: int) -> bytes:
    for n in itertools.count():
        key = f"{prefix}{n}".encode()
        if key_height(key) == height:
            return key
    raise AssertionError  # pragma: no cover


ROOT_HEIGHT = 7  # 14 leading zero bits: ~16k hashes to find


@pytest.fixture(scope="module")
def chain_keys() -> tuple[bytes, bytes]:
    """A high key (layer ROOT_HEIGHT) and a layer-0 key sorting before it."""
    return key_of_height(f"{POST}/a", 0), key_of_height(f"{POST}/z", ROOT_HEIGHT)


def chain_car(low: bytes, high: bytes, chain: int, *, keyless_root: bool = False) -> bytes:
    """root [high] --l--> ``chain`` key-less nodes --> leaf [low]: valid iff chain == ROOT_HEIGHT - 1."""
    record_bytes = enc({"$type": POST, "text": "deep"})
    record_cid = cid_for_cbor(record_bytes)
    blocks = [(record_cid, record_bytes)]
    leaf = enc(compress([low], [record_cid], [None, None]))
    blocks.append((cid_for_cbor(leaf), leaf))
    below = cid_for_cbor(leaf)
    for _ in range(chain):
        node = enc({"e": [], "l": below})
        below = cid_for_cbor(node)
        blocks.append((below, node))
    if not keyless_root:
        root = enc(compress([high], [record_cid], [below, None]))
        below = cid_for_cbor(root)
        blocks.append((below, root))
    commit = signed_commit(below)
    return write_car([commit[0]], [commit, *reversed(blocks)])


def test_deep_valid_mst_imports_and_reexports(chain_keys, tmp_path):
    low, high = chain_keys
    car = chain_car(low, high, ROOT_HEIGHT - 1)
    with make_target(tmp_path) as target:
        target.import_car(car)
        assert [k for k, _ in target.list(POST)] == [low.decode().split("/")[1], high.decode().split("/")[1]]
        with Repo.from_car(fresh_path(tmp_path), target.export_car()) as again:
            assert again.head == target.head


def test_deep_valid_mst_deeper_than_max_mst_depth_is_limit_exceeded(chain_keys, tmp_path):
    low, high = chain_keys
    car = chain_car(low, high, ROOT_HEIGHT - 1)
    limits = Limits(max_mst_depth=ROOT_HEIGHT - 1)
    repo = Repo.create(fresh_path(tmp_path), DID, limits=limits, durability="normal")
    with repo:
        before = state(repo)
        with pytest.raises(LimitExceeded) as info:
            repo.import_car(car)
        assert info.value.limit == "max_mst_depth" and state(repo) == before
    path = fresh_path(tmp_path)
    with pytest.raises(LimitExceeded):
        Repo.from_car(path, car, limits=limits)
    assert not path.exists()


@pytest.mark.parametrize("chain", [ROOT_HEIGHT, ROOT_HEIGHT + 1, 10_000])
def test_mst_chain_longer_than_its_root_layer_is_invalid_mst(chain_keys, tmp_path, chain):
    low, high = chain_keys
    assert_import_fails(chain_car(low, high, chain), InvalidMst, tmp_path)


@pytest.mark.parametrize("chain", [1, 10_000, 100_000])
def test_keyless_root_over_a_deep_chain_is_invalid_mst(chain_keys, tmp_path, chain):
    low, high = chain_keys
    assert_import_fails(chain_car(low, high, chain, keyless_root=True), InvalidMst, tmp_path)


# == 5. memory: huge announced lengths fail before allocating ===================================

HUGE = 1 << 40
PEAK_LIMIT = 50 << 20


class Endless:
    """Serves ``prefix``, then zeros forever, in at most 1 MiB per read.

    Fails the test (instead of hanging or exhausting memory) as soon as the
    reader asks for more than 4 MiB at once or has been served 8 MiB beyond
    ``prefix``: a reader that trusted an announced length would do either.
    """

    def __init__(self, prefix: bytes) -> None:
        self._prefix = io.BytesIO(prefix)
        self._limit = len(prefix) + (8 << 20)
        self.served = 0
        self.largest_request = 0

    def read(self, size: int = -1) -> bytes:
        self.largest_request = max(self.largest_request, size)
        if size < 0 or size > 4 << 20:
            raise AssertionError(f"the reader asked for {size} bytes at once")
        out = self._prefix.read(size) or bytes(min(size, 1 << 20))
        self.served += len(out)
        if self.served > self._limit:
            raise AssertionError("the reader kept reading far beyond any limit")
        return out


def peak_of(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = outcome(fn)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


GOOD_HEADER = frame(enc({"roots": [cid_for_cbor(b"\xa0")], "version": 1}))
HUGE_CARS = {
    "header": encode_varint(HUGE),
    "section": GOOD_HEADER + encode_varint(HUGE),
    # a block other than the root: an import reads on past it, looking for the root commit
    "section-after-a-block": GOOD_HEADER
    + frame(DAG + hashlib.sha256(b"\x80").digest() + b"\x80")
    + encode_varint(HUGE),
}


@pytest.mark.parametrize("what", HUGE_CARS)
def test_huge_announced_length_is_limit_exceeded_before_reading_or_allocating(what):
    stream = Endless(HUGE_CARS[what])
    result, peak = peak_of(lambda: list(CarReader(stream)))
    assert isinstance(result, LimitExceeded), result
    assert peak < PEAK_LIMIT, peak
    assert stream.served < 4 << 20


@pytest.mark.parametrize("what", HUGE_CARS)
def test_huge_announced_length_in_import_is_limit_exceeded_with_small_peak(what, tmp_path):
    car = HUGE_CARS[what] + bytes(1 << 10)
    with make_target(tmp_path) as target:
        before = state(target)
        result, peak = peak_of(lambda: target.import_car(car))
        assert isinstance(result, LimitExceeded) and peak < PEAK_LIMIT, (result, peak)
        assert state(target) == before
    path = fresh_path(tmp_path)
    result, peak = peak_of(lambda: Repo.from_car(path, car))
    assert isinstance(result, LimitExceeded) and peak < PEAK_LIMIT, (result, peak)
    assert not path.exists()


# CBOR lengths inside a block: an array / map / string announcing 2**40 items or bytes
HUGE_CBOR = {
    "array": b"\x9b" + HUGE.to_bytes(8, "big"),
    "map": b"\xbb" + HUGE.to_bytes(8, "big"),
    "bytes": b"\x5b" + HUGE.to_bytes(8, "big"),
    "text": b"\x7b" + HUGE.to_bytes(8, "big"),
    "cid": b"\xd8\x2a\x5b" + HUGE.to_bytes(8, "big"),
}


@pytest.mark.parametrize("what", HUGE_CBOR)
def test_huge_cbor_length_inside_a_block_fails_without_allocating(what):
    inner = HUGE_CBOR[what]
    for fn, data in [
        (pcbor.decode_record, cbor_map({"a": inner, "$type": enc(POST)})),
        (pcbor.decode_record, inner),
        (decode_node, cbor_map({"e": inner, "l": enc(None)})),
        (decode_commit, commit_with("sig", inner)),
    ]:
        result, peak = peak_of(lambda fn=fn, data=data: fn(data))
        assert isinstance(result, IntegrityError), (fn, result)
        assert peak < PEAK_LIMIT, (fn, peak)


def test_regression_announced_length_beyond_a_short_file_under_a_raised_limit(tmp_path):
    length = 1 << 62
    path = tmp_path / "short.car"
    path.write_bytes(GOOD_HEADER + encode_varint(length) + DAG + bytes(64))
    with (
        pytest.raises(CarFormatError, match="truncated"),
        CarReader(path, limits=Limits(max_car_section_bytes=length)) as reader,
    ):
        list(reader)


def test_import_limits_are_checked_as_blocks_arrive(tmp_path):
    """max_import_blocks / max_import_bytes stop the read early, not after reading everything."""
    payloads = [i.to_bytes(4, "big") + bytes(10_000) for i in range(300)]  # 3 MB: three read chunks
    car = write_car([cid_for_cbor(b"\xa0")], [(cid_for_raw(p), p) for p in payloads])
    for limits in (Limits(max_import_blocks=50), Limits(max_import_bytes=500_000)):
        stream = Endless(car)
        result, _ = peak_of(
            lambda limits=limits, stream=stream: Repo.from_car(fresh_path(tmp_path), stream, limits=limits)
        )
        assert isinstance(result, LimitExceeded), result
        assert stream.served < len(car), "the whole CAR was read before the limit was applied"
