"""Event-stream frames: encode/decode round trip, and hostile frames get InvalidFrame."""

from __future__ import annotations

import cbrrr
import pytest

from pypds import CID
from pypds.errors import InvalidFrame
from pypds.sync.event_stream import decode_frame, encode_error_frame, encode_frame

LINK = CID.decode("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm")


def test_a_message_frame_round_trips_with_links_and_bytes():
    body = {"seq": 7, "repo": "did:plc:abc", "commit": LINK, "blocks": b"\x00\x01"}
    frame = decode_frame(encode_frame("#commit", body))
    assert (frame.op, frame.type, frame.is_error) == (1, "#commit", False)
    assert frame.body == body
    assert str(frame.body["commit"]) == LINK.encode()  # links decode as pypds CIDs


def test_the_frame_is_header_then_body_as_two_dag_cbor_values():
    data = encode_frame("#info", {"name": "OutdatedCursor"})
    header = cbrrr.encode_dag_cbor({"op": 1, "t": "#info"})
    assert data[: len(header)] == header
    assert cbrrr.decode_dag_cbor(data[len(header) :]) == {"name": "OutdatedCursor"}


def test_an_error_frame_round_trips():
    frame = decode_frame(encode_error_frame("FutureCursor", "cursor 9 is after the newest event 3"))
    assert frame.is_error and frame.type is None
    assert frame.body == {"error": "FutureCursor", "message": "cursor 9 is after the newest event 3"}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "header and a body"),
        (cbrrr.encode_dag_cbor({"op": 1, "t": "#commit"}), "header and a body"),
        (cbrrr.encode_dag_cbor({"op": 1, "t": "#commit"}) + b"\xa1", "canonical"),
        (encode_frame("#commit", {"a": 1}) + b"\x01", "after its body"),
        (cbrrr.encode_dag_cbor([1]) + cbrrr.encode_dag_cbor({}), "header is not a map"),
        (cbrrr.encode_dag_cbor({"op": 2, "t": "#x"}) + cbrrr.encode_dag_cbor({}), "op 2"),
        (cbrrr.encode_dag_cbor({"op": 1}) + cbrrr.encode_dag_cbor({}), "want op 1"),
        (cbrrr.encode_dag_cbor({"op": 1, "t": "#x"}) + cbrrr.encode_dag_cbor([]), "body is not a map"),
        (cbrrr.encode_dag_cbor({"op": -1}) + cbrrr.encode_dag_cbor({"message": "x"}), "no 'error'"),
        (b"\xa2\x61t\x60\x61t\x60" + cbrrr.encode_dag_cbor({}), "canonical"),  # duplicate keys
        (b"\x18\x01" + cbrrr.encode_dag_cbor({}), "canonical"),  # non-minimal integer
    ],
)
def test_malformed_frames_are_refused_with_what_was_wrong(data, says):
    with pytest.raises(InvalidFrame, match=says):
        decode_frame(data)


def test_an_oversized_frame_is_refused_before_decoding():
    data = encode_frame("#commit", {"blocks": b"x" * 1000})
    with pytest.raises(InvalidFrame, match="over the 500-byte limit"):
        decode_frame(data, max_bytes=500)


def test_a_text_message_is_not_a_frame():
    with pytest.raises(InvalidFrame, match="binary"):
        decode_frame("hello")  # type: ignore[arg-type]
