"""TIDs: encoding, ordering, and the strictly increasing rev clock."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pypds import InvalidTid
from pypds.syntax import is_valid_tid
from pypds.tid import TidClock, decode_tid, encode_tid

MAX_MICROS = (1 << 54) - 1  # 13 sortable-base32 chars hold 64 bits: 54 of micros + 10 of clock id
micros_st = st.integers(min_value=0, max_value=MAX_MICROS)
clock_id_st = st.integers(min_value=0, max_value=1023)
NOW = 1_700_000_000_000_000  # 2023-11-14 in microseconds


@settings(max_examples=200, deadline=None)
@given(micros_st, clock_id_st)
def test_encode_decode_round_trip(micros, clock_id):
    tid = encode_tid(micros, clock_id)
    assert len(tid) == 13
    assert decode_tid(tid) == (micros, clock_id)


@settings(max_examples=200, deadline=None)
@given(micros_st, clock_id_st)
def test_encoded_tid_is_syntactically_valid(micros, clock_id):
    assert is_valid_tid(encode_tid(micros, clock_id))


@settings(max_examples=200, deadline=None)
@given(micros_st, clock_id_st, micros_st, clock_id_st)
def test_tid_string_order_equals_numeric_order(m1, c1, m2, c2):
    a, b = encode_tid(m1, c1), encode_tid(m2, c2)
    n1, n2 = (m1 << 10) | c1, (m2 << 10) | c2
    assert (a < b) == (n1 < n2)
    assert (a == b) == (n1 == n2)


@settings(max_examples=200, deadline=None)
@given(micros_st, clock_id_st)
def test_decode_inverts_encode_for_valid_tid_strings(micros, clock_id):
    tid = encode_tid(micros, clock_id)
    assert encode_tid(*decode_tid(tid)) == tid


def test_known_tid_values():
    assert encode_tid(0, 0) == "2222222222222"
    assert encode_tid(MAX_MICROS, 1023) == "jzzzzzzzzzzzz"  # the largest TID the syntax allows
    assert decode_tid("2222222222223") == (0, 1)
    assert decode_tid("2222222222322") == (1, 0)  # the last 2 characters are the clock id


@pytest.mark.parametrize(("micros", "clock_id"), [(-1, 0), (MAX_MICROS + 1, 0), (0, -1), (0, 1024)])
def test_encode_tid_rejects_out_of_range_parts(micros, clock_id):
    with pytest.raises(ValueError):
        encode_tid(micros, clock_id)


@pytest.mark.parametrize("bad", ["", "3jzfcijpj2z2", "3JZFCIJPJ2Z2A", "kjzfcijpj2z2a", "3jzfcijpj2z21"])
def test_decode_tid_rejects_invalid_strings(bad):
    with pytest.raises(InvalidTid):
        decode_tid(bad)


# -- TidClock -----------------------------------------------------------------------------


def test_clock_uses_the_wall_clock_when_it_advances():
    clock = TidClock(clock_id=5)
    assert decode_tid(clock.next(NOW)) == (NOW, 5)
    assert decode_tid(clock.next(NOW + 1000)) == (NOW + 1000, 5)


def test_clock_is_strictly_increasing_when_time_stalls():
    clock = TidClock(clock_id=7)
    tids = [clock.next(NOW) for _ in range(50)]
    assert all(a < b for a, b in pairwise(tids))
    assert len(set(tids)) == 50


def test_clock_is_strictly_increasing_when_time_goes_backwards():
    clock = TidClock(clock_id=7)
    first = clock.next(NOW)
    later = [clock.next(NOW - i * 1_000_000) for i in range(1, 20)]
    seq = [first, *later]
    assert all(a < b for a, b in pairwise(seq))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=MAX_MICROS - 1000), min_size=1, max_size=30), clock_id_st)
def test_clock_is_strictly_increasing_for_any_time_sequence(times, clock_id):
    clock = TidClock(clock_id=clock_id)
    tids = [clock.next(t) for t in times]
    assert all(a < b for a, b in pairwise(tids))
    assert all(is_valid_tid(t) for t in tids)
    assert all(decode_tid(t)[1] == clock_id for t in tids)


def test_clock_without_explicit_time_uses_the_real_clock_and_increases():
    clock = TidClock()
    tids = [clock.next() for _ in range(200)]
    assert all(a < b for a, b in pairwise(tids))
    assert all(is_valid_tid(t) for t in tids)
    assert 0 <= clock.clock_id < 1024


@pytest.mark.parametrize("other_clock_id", [0, 5, 6, 1023])
def test_observe_makes_next_greater_than_observed_tid(other_clock_id):
    clock = TidClock(clock_id=5)
    seen = encode_tid(NOW + 10_000_000, other_clock_id)
    clock.observe(seen)
    nxt = clock.next(NOW)  # the wall clock is behind the observed TID
    assert nxt > seen


def test_observe_equal_micros_with_larger_clock_id_still_orders_after():
    clock = TidClock(clock_id=3)
    seen = encode_tid(NOW, 900)  # same microsecond, larger clock id
    clock.observe(seen)
    nxt = clock.next(NOW - 1)
    assert nxt > seen
    # and when the wall clock sits exactly on the observed microsecond
    clock2 = TidClock(clock_id=3)
    clock2.observe(seen)
    assert clock2.next(NOW) > seen


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=MAX_MICROS - 10),
    clock_id_st,
    clock_id_st,
    st.integers(min_value=0, max_value=MAX_MICROS - 10),
)
def test_next_after_observe_is_greater_for_any_tid(micros, their_id, our_id, now):
    seen = encode_tid(micros, their_id)
    clock = TidClock(clock_id=our_id)
    clock.observe(seen)
    assert clock.next(now) > seen


def test_observing_a_smaller_tid_does_not_move_the_clock_backwards():
    clock = TidClock(clock_id=1)
    high = clock.next(NOW)
    clock.observe(encode_tid(NOW - 5_000_000, 1023))
    assert clock.next(NOW - 10_000_000) > high


def test_clock_constructed_with_last_orders_after_it():
    last = encode_tid(NOW, 1023)
    clock = TidClock(clock_id=0, last=last)
    assert clock.next(0) > last


def test_observe_rejects_invalid_tid():
    clock = TidClock(clock_id=1)
    with pytest.raises(InvalidTid):
        clock.observe("not-a-tid")


# -- TIDs whose first character is c..j --------------------------------------------------
# The interop syntax (and is_valid_tid) accepts a first character up to 'j', i.e. a
# 64-bit value whose top bit is set: pypds supports the whole range.


@pytest.mark.parametrize("first", list("234567abcdefghij"))
def test_every_syntactically_valid_tid_decodes_and_re_encodes_or_is_rejected(first):
    tid = first + "2" * 12
    assert is_valid_tid(tid)
    try:
        parts = decode_tid(tid)
    except InvalidTid:
        return  # rejecting the TID outright would also be consistent
    assert encode_tid(*parts) == tid


def test_clock_keeps_working_after_observing_a_tid_with_the_top_bit_set():
    seen = "c222222222222"
    assert is_valid_tid(seen)
    clock = TidClock(clock_id=0)
    try:
        clock.observe(seen)
    except InvalidTid:
        return  # refusing it up front is acceptable
    assert clock.next(NOW) > seen
