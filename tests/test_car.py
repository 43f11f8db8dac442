"""CAR v1: CarWriter output, CarReader verification, and hostile framing."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time

import dag_cbor
import multiformats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypds import (
    CID,
    BlockHashMismatch,
    CarFormatError,
    CarReader,
    CarWriter,
    InvalidCid,
    LimitExceeded,
    Limits,
    PypdsError,
    cid_for_cbor,
    cid_for_raw,
)
from pypds.car.writer import encode_varint
from pypds.limits import MAX_CAR_HEADER_BYTES, MAX_CAR_SECTION_BYTES

from .conftest import REFERENCE, encode_dag_cbor, load_json, read_uvarint

ROOT = cid_for_cbor(b"\xa0")  # the empty map


# -- helpers -----------------------------------------------------------------------------


def b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def write_car(roots: list[CID], blocks: list[tuple[CID, bytes]]) -> bytes:
    out = io.BytesIO()
    writer = CarWriter(out, roots)
    for cid, data in blocks:
        writer.write_block(cid, data)
    return out.getvalue()


def read_car(source, **kwargs) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    with CarReader(source, **kwargs) as reader:
        return list(reader.roots), list(reader)


def header(obj) -> bytes:
    raw = encode_dag_cbor(obj)
    return encode_varint(len(raw)) + raw


HEADER = header({"roots": [ROOT], "version": 1})


def section(cid_bytes: bytes, data: bytes) -> bytes:
    return encode_varint(len(cid_bytes) + len(data)) + cid_bytes + data


def cbor_block(value) -> tuple[CID, bytes]:
    data = encode_dag_cbor(value)
    return cid_for_cbor(data), data


def small_car() -> tuple[bytes, list[tuple[CID, bytes]], list[int]]:
    """A small valid CAR, its blocks, and the offset where each section starts (plus the end)."""
    blocks = [
        cbor_block({"a": 1}),
        (cid_for_raw(b""), b""),  # a section of exactly 36 bytes
        cbor_block({"text": "x" * 150}),  # > 127 bytes: a two-byte length varint
        (cid_for_raw(b"raw blob bytes"), b"raw blob bytes"),
        cbor_block([1, 2, 3]),
    ]
    car = write_car([blocks[0][0]], blocks)
    starts = []
    offset = len(header({"roots": [blocks[0][0]], "version": 1}))
    for cid, data in blocks:
        starts.append(offset)
        offset += len(section(cid.cid_bytes, data))
    assert offset == len(car)
    return car, blocks, [*starts, len(car)]


def independent_read(car: bytes) -> tuple[dict, list[tuple[bytes, bytes]]]:
    """Parse a CAR with the dag_cbor and multiformats packages (not pypds)."""
    stream = io.BytesIO(car)

    def varint() -> int:
        return read_uvarint(stream)

    head = dag_cbor.decode(stream.read(varint()))
    blocks = []
    while stream.tell() < len(car):
        raw = stream.read(varint())
        cid = multiformats.CID.decode(raw[:36])
        blocks.append((bytes(cid), raw[36:]))
    return head, blocks


class ShortReads:
    """An unbuffered binary stream that returns at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        self._data = data
        self._pos = 0
        self._step = step
        self.calls = 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if size < 0:
            size = len(self._data)
        # vary the length: 1, 2, ..., step, 1, 2, ...
        n = min(size, 1 + self.calls % self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


class GuardedStream:
    """Serves ``prefix`` and fails the test if the reader asks for anything beyond it.

    Stands for a network stream whose next read would block on (or pull in) a
    huge section body the reader should refuse before reading.
    """

    def __init__(self, prefix: bytes) -> None:
        self._prefix = prefix
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        if self._pos >= len(self._prefix):
            raise AssertionError("the reader asked for bytes beyond the length it should have refused")
        if size < 0:
            size = len(self._prefix)
        out = self._prefix[self._pos : self._pos + size]
        self._pos += len(out)
        return out


# -- the upstream @atproto/repo fixture --------------------------------------------------

FIXTURES = load_json(REFERENCE / "car-file-fixtures.json")


def test_upstream_fixture_has_the_full_car_bytes():
    assert FIXTURES and all("car" in fixture for fixture in FIXTURES)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f["root"][:16])
def test_carwriter_reproduces_the_upstream_car_byte_for_byte(fixture):
    blocks = [(CID.decode(b["cid"]), b64(b["bytes"])) for b in fixture["blocks"]]
    assert write_car([CID.decode(fixture["root"])], blocks) == b64(fixture["car"])


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f["root"][:16])
def test_carreader_reads_the_upstream_car_root_and_blocks_in_order(fixture):
    roots, blocks = read_car(b64(fixture["car"]))
    assert [r.encode() for r in roots] == [fixture["root"]]
    assert [(cid.encode(), data) for cid, data in blocks] == [(b["cid"], b64(b["bytes"])) for b in fixture["blocks"]]


# -- round trips -------------------------------------------------------------------------

block_lists = st.lists(
    st.tuples(st.booleans(), st.binary(max_size=300)),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=block_lists, extra_roots=st.integers(0, 2), step=st.integers(1, 7))
def test_written_car_round_trips_and_matches_an_independent_decoder(items, extra_roots, step):
    blocks = [((cid_for_raw if raw else cid_for_cbor)(data), data) for raw, data in items]
    roots = [ROOT] + [cid_for_raw(bytes([i])) for i in range(extra_roots)]
    car = write_car(roots, blocks)

    assert read_car(car) == (roots, blocks)
    assert read_car(ShortReads(car, step)) == (roots, blocks)

    head, independent = independent_read(car)
    assert head == {"roots": [multiformats.CID.decode(r.cid_bytes) for r in roots], "version": 1}
    assert independent == [(cid.cid_bytes, data) for cid, data in blocks]
    for cid_bytes, data in independent:
        assert hashlib.sha256(data).digest() == cid_bytes[4:]


def test_car_with_only_a_header_has_no_blocks():
    assert read_car(write_car([ROOT], [])) == ([ROOT], [])


def test_duplicate_blocks_are_all_yielded_in_stream_order():
    a, b = cbor_block({"a": 1}), cbor_block({"b": 2})
    assert read_car(write_car([ROOT], [a, b, a, a]))[1] == [a, b, a, a]


def test_reader_does_not_decode_block_data_only_hashes_it():
    junk = b"\xff\x00 not cbor"
    assert read_car(write_car([ROOT], [(cid_for_cbor(junk), junk)]))[1] == [(cid_for_cbor(junk), junk)]


# -- header ------------------------------------------------------------------------------

BLOCK = cbor_block({"a": 1})
BAD_HEADERS = {
    "version-2": {"roots": [ROOT], "version": 2},
    "version-0": {"roots": [ROOT], "version": 0},
    "version-string": {"roots": [ROOT], "version": "1"},
    "version-true": {"roots": [ROOT], "version": True},
    "version-null": {"roots": [ROOT], "version": None},
    "version-missing": {"roots": [ROOT]},
    "roots-empty": {"roots": [], "version": 1},
    "roots-missing": {"version": 1},
    "roots-null": {"roots": None, "version": 1},
    "roots-a-cid-not-a-list": {"roots": ROOT, "version": 1},
    "root-a-string": {"roots": [ROOT.encode()], "version": 1},
    "root-bytes": {"roots": [ROOT.cid_bytes], "version": 1},
    "root-null": {"roots": [None], "version": 1},
    "second-root-not-a-cid": {"roots": [ROOT, "x"], "version": 1},
    "header-a-list": [ROOT, 1],
    "header-an-int": 1,
    "header-a-string": "version 1",
    "header-null": None,
}


@pytest.mark.parametrize("obj", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_malformed_header_is_a_car_format_error(obj):
    with pytest.raises(CarFormatError):
        read_car(header(obj) + section(BLOCK[0].cid_bytes, BLOCK[1]))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",  # not CBOR
        b"\xa2",  # truncated map
        encode_dag_cbor({"roots": [ROOT], "version": 1}) + b"\x00",  # trailing byte in the header
        # the two keys in non-canonical order (version before roots)
        b"\xa2\x67version\x01\x65roots\x81" + encode_dag_cbor(ROOT),
        # version as a non-minimal integer
        b"\xa2\x65roots\x81" + encode_dag_cbor(ROOT) + b"\x67version\x18\x01",
    ],
    ids=["not-cbor", "truncated-map", "trailing-byte", "non-canonical-key-order", "non-minimal-int"],
)
def test_header_that_is_not_canonical_dag_cbor_is_a_car_format_error(raw):
    with pytest.raises(CarFormatError):
        CarReader(encode_varint(len(raw)) + raw)


def test_header_with_extra_fields_is_accepted():
    assert read_car(header({"roots": [ROOT], "version": 1, "extra": "x"})) == ([ROOT], [])


def test_header_length_zero_is_a_car_format_error():
    with pytest.raises(CarFormatError, match="length 0"):
        CarReader(b"\x00" + HEADER)


@pytest.mark.parametrize(
    "source",
    [b"", bytearray(), io.BytesIO(b""), ShortReads(b"")],
    ids=["bytes", "bytearray", "bytesio", "short-reads"],
)
def test_empty_input_is_a_car_format_error(source):
    with pytest.raises(CarFormatError, match="empty"):
        CarReader(source)


def test_empty_file_is_a_car_format_error(tmp_path):
    (tmp_path / "empty.car").write_bytes(b"")
    with pytest.raises(CarFormatError):
        CarReader(tmp_path / "empty.car")


def test_header_longer_than_the_input_is_a_car_format_error():
    with pytest.raises(CarFormatError, match="truncated"):
        CarReader(HEADER[:-1])


@pytest.mark.parametrize("length", [MAX_CAR_HEADER_BYTES + 1, 1 << 40, (1 << 63) - 1])
def test_header_length_over_the_limit_raises_limit_exceeded_before_reading_it(length):
    with pytest.raises(LimitExceeded) as info:
        CarReader(GuardedStream(encode_varint(length) + b"\xa2" * 16))
    assert info.value.limit == "max_car_header_bytes"
    assert info.value.value == length and info.value.maximum == MAX_CAR_HEADER_BYTES


def test_header_limit_is_overridable_and_inclusive():
    size = len(HEADER) - 1  # the varint is one byte
    assert read_car(HEADER, limits=Limits(max_car_header_bytes=size)) == ([ROOT], [])
    with pytest.raises(LimitExceeded):
        CarReader(HEADER, limits=Limits(max_car_header_bytes=size - 1))


SHA512_CID = b"\x01\x71\x13\x40" + b"\x11" * 64
UNSUPPORTED_ROOTS = {
    "raw-codec": cid_for_raw(b"blob").cid_bytes,
    "cidv0": b"\x12\x20" + b"\x11" * 32,
    "sha512": SHA512_CID,
    "dag-pb": b"\x01\x70\x12\x20" + b"\x11" * 32,
    "short-digest": b"\x01\x71\x12\x10" + b"\x11" * 16,
    "empty": b"",
}


@pytest.mark.parametrize("raw", UNSUPPORTED_ROOTS.values(), ids=UNSUPPORTED_ROOTS.keys())
def test_first_root_must_be_a_dag_cbor_sha256_cidv1(raw):
    with pytest.raises(InvalidCid):
        CarReader(header({"roots": [CID(raw)], "version": 1}))


# -- sections ------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [bytes, ShortReads], ids=["bytes", "short-reads"])
def test_truncation_at_every_offset_is_a_car_format_error_unless_at_a_section_boundary(wrap):
    car, blocks, boundaries = small_car()
    for cut in range(len(car)):
        if cut in boundaries:
            _, got = read_car(wrap(car[:cut]))
            assert got == blocks[: boundaries.index(cut)], cut
            continue
        with pytest.raises(CarFormatError):
            read_car(wrap(car[:cut]))


def test_flipped_bit_in_block_data_raises_block_hash_mismatch_naming_the_section_offset():
    car, blocks, boundaries = small_car()
    for index, (cid, data) in enumerate(blocks):
        start = boundaries[index]
        data_at = boundaries[index + 1] - len(data)
        for pos in range(data_at, data_at + len(data)):
            for bit in range(8):
                bad = bytearray(car)
                bad[pos] ^= 1 << bit
                got = []
                with pytest.raises(BlockHashMismatch, match=rf"{cid.encode()} at byte {start}:"):
                    for item in CarReader(bytes(bad)):
                        got.append(item)
                assert got == blocks[:index]  # earlier blocks were streamed out first


def test_any_single_bit_flip_raises_a_pypds_error_or_changes_what_is_read():
    car, _, _ = small_car()
    original = read_car(car)
    for pos in range(len(car)):
        for bit in range(8):
            bad = bytearray(car)
            bad[pos] ^= 1 << bit
            try:
                result = read_car(bytes(bad))
            except PypdsError:
                continue
            assert result != original, (pos, bit)


def guarded_section_stream(length: int) -> GuardedStream:
    return GuardedStream(HEADER + encode_varint(length) + b"\x01\x71\x12\x20" + b"\x00" * 12)


@pytest.mark.parametrize("length", [MAX_CAR_SECTION_BYTES + 1, 1 << 32, (1 << 63) - 1])
def test_section_length_over_the_limit_raises_limit_exceeded_before_reading_the_body(length):
    reader = CarReader(guarded_section_stream(length))
    with pytest.raises(LimitExceeded, match=rf"at byte {len(HEADER)}:") as info:
        list(reader)
    assert info.value.limit == "max_car_section_bytes"
    assert info.value.value == length and info.value.maximum == MAX_CAR_SECTION_BYTES


def test_section_limit_is_overridable_and_inclusive():
    block = cbor_block({"text": "y" * 100})
    car = write_car([ROOT], [block])
    size = 36 + len(block[1])
    assert read_car(car, limits=Limits(max_car_section_bytes=size))[1] == [block]
    with pytest.raises(LimitExceeded):
        read_car(car, limits=Limits(max_car_section_bytes=size - 1))
    with pytest.raises(LimitExceeded):
        list(CarReader(guarded_section_stream(size), limits=Limits(max_car_section_bytes=size - 1)))


@pytest.mark.parametrize("size", [0, 1, 35])
def test_section_too_short_to_hold_a_cid_is_a_car_format_error(size):
    with pytest.raises(CarFormatError):
        read_car(HEADER + encode_varint(size) + b"\x01\x71\x12\x20" + b"\x00" * 40)


def _cid_with_digest(prefix: bytes, data: bytes, digest: bytes | None = None) -> bytes:
    return prefix + (hashlib.sha256(data).digest() if digest is None else digest)


DATA = encode_dag_cbor({"text": "a block long enough to fill any section"})
UNSUPPORTED_SECTION_CIDS = {
    "cidv0": _cid_with_digest(b"\x12\x20", DATA),
    "sha512": b"\x01\x71\x13\x40" + hashlib.sha512(DATA).digest(),
    "dag-pb": _cid_with_digest(b"\x01\x70\x12\x20", DATA),
    "dag-json": _cid_with_digest(b"\x01\xa9\x02\x12\x20", DATA),
    "libp2p-key": _cid_with_digest(b"\x01\x72\x12\x20", DATA),
    "cidv2": _cid_with_digest(b"\x02\x71\x12\x20", DATA),
    "identity-hash": b"\x01\x71\x00" + encode_varint(len(DATA)) + DATA,
    "sha256-truncated-digest": b"\x01\x71\x12\x10" + hashlib.sha256(DATA).digest()[:16],
    "blake2b-256": b"\x01\x71\xa0\xe4\x02\x20" + hashlib.blake2b(DATA, digest_size=32).digest(),
}


@pytest.mark.parametrize("cid_bytes", UNSUPPORTED_SECTION_CIDS.values(), ids=UNSUPPORTED_SECTION_CIDS.keys())
def test_section_with_an_unsupported_cid_form_raises_invalid_cid(cid_bytes):
    good = cbor_block({"ok": True})
    car = HEADER + section(good[0].cid_bytes, good[1]) + section(cid_bytes, DATA)
    got = []
    with pytest.raises(InvalidCid, match=rf"byte {len(HEADER) + len(section(good[0].cid_bytes, good[1]))}"):
        for item in CarReader(car):
            got.append(item)
    assert got == [good]


# -- varints -------------------------------------------------------------------------------


def test_encode_varint_is_unsigned_leb128():
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint((1 << 63) - 1) == b"\xff" * 8 + b"\x7f"
    for value in (0, 1, 127, 128, 16383, 16384, 1 << 35, (1 << 63) - 1):
        assert multiformats.varint.decode(encode_varint(value)) == value


def non_minimal(value: int, extra: int = 1) -> bytes:
    """``value`` as LEB128 padded with ``extra`` redundant zero groups."""
    raw = bytearray(encode_varint(value))
    raw[-1] |= 0x80
    raw += b"\x80" * (extra - 1) + b"\x00"
    return bytes(raw)


@pytest.mark.parametrize("extra", [1, 2, 5])
def test_non_minimal_header_length_varint_is_a_car_format_error(extra):
    raw = HEADER[1:]
    with pytest.raises(CarFormatError, match="not minimal"):
        CarReader(non_minimal(len(raw), extra) + raw)


@pytest.mark.parametrize("extra", [1, 2, 5])
def test_non_minimal_section_length_varint_is_a_car_format_error(extra):
    cid, data = cbor_block({"a": 1})
    with pytest.raises(CarFormatError, match="not minimal"):
        read_car(HEADER + non_minimal(36 + len(data), extra) + cid.cid_bytes + data)


@pytest.mark.parametrize("where", ["header", "section"])
def test_varint_longer_than_ten_bytes_is_a_car_format_error(where):
    overlong = b"\xff" * 10 + b"\x01"
    with pytest.raises(CarFormatError, match="too long"):
        read_car(overlong + HEADER[1:] if where == "header" else HEADER + overlong)


@pytest.mark.parametrize("where", ["header", "section"])
def test_ten_byte_varint_is_a_car_format_error(where):
    overlong = b"\xff" * 9 + b"\x01"  # 2**64 - 1: 10 bytes, beyond the 9-byte / 63-bit maximum
    with pytest.raises(CarFormatError):
        read_car(overlong + HEADER[1:] if where == "header" else HEADER + overlong)


@pytest.mark.parametrize("tail", [b"\x80", b"\xff\xff", b"\x80" * 8])
def test_varint_cut_off_by_the_end_of_input_is_a_car_format_error(tail):
    with pytest.raises(CarFormatError, match="truncated"):
        read_car(HEADER + tail)
    with pytest.raises(CarFormatError, match="truncated"):
        CarReader(tail)


# -- sources -------------------------------------------------------------------------------

UPSTREAM = b64(FIXTURES[0]["car"])
UPSTREAM_READ = read_car(UPSTREAM)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


SOURCES = {
    "bytes": lambda p: UPSTREAM,
    "bytearray": lambda p: bytearray(UPSTREAM),
    "memoryview": lambda p: memoryview(UPSTREAM),
    "pathlib-path": lambda p: p,
    "str-path": lambda p: str(p),
    "bytesio": lambda p: io.BytesIO(UPSTREAM),
    "short-reads-1": lambda p: ShortReads(UPSTREAM, 1),
    "short-reads-5": lambda p: ShortReads(UPSTREAM, 5),
    "unbuffered-file": lambda p: open(p, "rb", buffering=0),  # noqa: SIM115
    "buffered-file": lambda p: open(p, "rb"),  # noqa: SIM115
}


@pytest.mark.parametrize("make", SOURCES.values(), ids=SOURCES.keys())
def test_every_source_kind_reads_the_same_roots_and_blocks(make, tmp_path):
    path = tmp_path / "fixture.car"
    path.write_bytes(UPSTREAM)
    source = make(path)
    try:
        assert read_car(source) == UPSTREAM_READ
    finally:
        if hasattr(source, "close"):
            source.close()


def test_caller_file_object_is_left_open_and_positioned_after_the_car(tmp_path):
    stream = io.BytesIO(UPSTREAM)
    with CarReader(stream) as reader:
        list(reader)
    assert not stream.closed
    assert stream.tell() == len(UPSTREAM)


def test_path_source_is_closed_after_reading_and_after_errors(tmp_path):
    good = tmp_path / "good.car"
    good.write_bytes(UPSTREAM)
    bad_header = tmp_path / "bad-header.car"
    bad_header.write_bytes(header({"roots": [ROOT], "version": 2}))
    bad_block = tmp_path / "bad-block.car"
    bad_block.write_bytes(UPSTREAM[:-1] + bytes([UPSTREAM[-1] ^ 1]))

    before = _open_fds()
    with CarReader(good) as reader:
        list(reader)
    with pytest.raises(CarFormatError):
        CarReader(str(bad_header))
    with pytest.raises(BlockHashMismatch), CarReader(bad_block) as reader:
        list(reader)
    assert _open_fds() == before


def test_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        CarReader(tmp_path / "absent.car")


@pytest.mark.parametrize("source", [123, None, ["a"]], ids=repr)
def test_source_of_another_type_is_a_type_error(source):
    with pytest.raises(TypeError):
        CarReader(source)


class _Drip:
    """A stream returning 8 bytes per read (a slow socket); fails once a time budget is spent."""

    def __init__(self, data: bytes, budget: float) -> None:
        self._data = io.BytesIO(data)
        self._deadline = time.monotonic() + budget

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise AssertionError("reading the CAR through short reads took too long")
        return self._data.read(min(8, size) if size >= 0 else 8)


def test_reading_a_large_block_through_short_reads_takes_linear_time():
    data = os.urandom(MAX_CAR_SECTION_BYTES - 36)
    car = write_car([ROOT], [(cid_for_raw(data), data)])
    # about 260k reads: well under a second when each read costs O(1), about 10 s when
    # each one copies the buffered part of the section
    assert read_car(_Drip(car, budget=2.0))[1] == [(cid_for_raw(data), data)]
