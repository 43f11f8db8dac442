"""TIDs (timestamp identifiers) and the monotonic clock that issues revs.

A TID is a 64-bit integer written as 13 characters of sortable base32
(``234567abcdefghijklmnopqrstuvwxyz``): top bit 0, 53 bits of microseconds
since the Unix epoch, 10 bits of clock id. Because the alphabet is in ASCII
order, string order equals numeric order.

A repository's revs must strictly increase even when the wall clock stalls
or goes backwards: :meth:`TidClock.next` returns
``max(now_us, last_us + 1)``.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

from .errors import InvalidTid
from .syntax import check_tid

__all__ = ["encode_tid", "decode_tid", "TidClock", "utc_timestamp"]

_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_VALUES = {ch: i for i, ch in enumerate(_ALPHABET)}
# The TID syntax admits first characters up to "j", i.e. 64-bit values with the
# top bit set: support the whole 13-character range rather than fail on it.
_MAX_MICROS = (1 << 54) - 1


def encode_tid(micros: int, clock_id: int = 0) -> str:
    """Encode microseconds since the epoch and a 10-bit clock id as a TID."""
    if not 0 <= micros <= _MAX_MICROS:
        raise InvalidTid(f"TID timestamp out of range: {micros}")
    if not 0 <= clock_id < 1024:
        raise InvalidTid(f"TID clock id out of range: {clock_id}")
    value = (micros << 10) | clock_id
    chars = []
    for _ in range(13):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def decode_tid(tid: str) -> tuple[int, int]:
    """Decode a TID into (microseconds since the epoch, clock id)."""
    check_tid(tid)
    value = 0
    for ch in tid:
        value = (value << 5) | _VALUES[ch]
    return value >> 10, value & 1023


class TidClock:
    """Issues strictly increasing TIDs for one repository."""

    def __init__(self, clock_id: int | None = None, last: str | None = None) -> None:
        if clock_id is not None and not 0 <= clock_id < 1024:
            raise InvalidTid(f"TID clock id out of range: {clock_id}")
        self.clock_id = secrets.randbelow(1024) if clock_id is None else clock_id
        self._last_micros = -1
        if last is not None:
            self.observe(last)

    def observe(self, tid: str) -> None:
        """Make sure every later TID sorts after ``tid``."""
        micros, clock_id = decode_tid(tid)
        # a TID with the same micros but a larger clock id would sort after ours
        if clock_id > self.clock_id:
            micros += 1
        self._last_micros = max(self._last_micros, micros)

    def next(self, now_micros: int | None = None) -> str:
        """Return a TID greater than every TID issued or observed so far."""
        if now_micros is None:
            now_micros = time.time_ns() // 1000
        micros = max(now_micros, self._last_micros + 1)
        self._last_micros = micros
        return encode_tid(micros, self.clock_id)


def utc_timestamp() -> str:
    """The current time as an atproto datetime string: UTC, milliseconds, ``Z`` (an event's ``time``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
