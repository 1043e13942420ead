"""HTTP conditional and range requests for unit content (RFC 9110 13 and 14), on the one
representation a unit has: its bytes, whose strong validator is the CID.

One range per request: `bytes=a-b`, `bytes=a-` and `bytes=-n` (the unit in any case, as
RFC 9110 14.1 says). A header the grammar does not cover (several ranges, another unit,
garbage) or an invalid one (`bytes=5-3`: last before first, 14.1.1) is ignored and the
whole content is sent, as RFC 9110 14.2 allows; a valid range that selects nothing (starts
past the end, or `bytes=-0`) is 416.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
_HUGE = 2**63  # a position with more digits than any unit has bytes (and int() would refuse past 4300)


class Unsatisfiable(Exception):
    """The range selects no byte of the content (416)."""


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= 19 else _HUGE


def requested(range_header: str | None, if_range: str | None, etag: str, size: int) -> tuple[int, int] | None:
    """The [start, end) the client asked for, or None for the whole content; raises
    Unsatisfiable when the range selects nothing. An If-Range that is not this ETag (strong
    comparison, so a weak tag or a date never matches) means "send it all"."""
    if range_header is None or (if_range is not None and if_range.strip() != etag):
        return None
    m = _RANGE.fullmatch(range_header.strip())
    if m is None or not (m[1] or m[2]):
        return None
    if not m[1]:  # the last n bytes
        n = _position(m[2])
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size
    first = _position(m[1])
    if m[2] and _position(m[2]) < first:
        return None  # invalid, not unsatisfiable: ignored
    last = _position(m[2]) if m[2] else size - 1
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1) + 1


def none_match(header: str | None, etag: str) -> bool:
    """Whether If-None-Match names this ETag or `*` (weak comparison, as RFC 9110 13.1.2 says)."""
    if header is None:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)
