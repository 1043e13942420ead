"""The opaque cursor of GET /v1/units: where the last page ended, as a keyset.

A cursor is base64url of `<seq>:<cid>`, the sequence of the last listed unit's
`unit.created` and its CID. Keyset, not offset: units stored meanwhile go to the front, and a
page starts right after the last unit seen, however deep. The sequence is the same in every
pipeline agent's index (and in one rebuilt by replay), so any of them continues a listing.
Anything else sent as a cursor is refused, never passed on.
"""

from __future__ import annotations

import base64
import binascii
import re

from .. import cid as cidlib
from ..errors import InvalidCid, InvalidInput

_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,200}")
_INSIDE = re.compile(r"([0-9]{1,19}):([a-z2-7]{1,150})")
_BAD = "is not a cursor this API gave out; list again from the start, without cursor"


def encode(seq: int, cid: str) -> str:
    return base64.urlsafe_b64encode(f"{seq}:{cid}".encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[int, str]:
    """(seq, cid) of a cursor, or InvalidInput("cursor") for anything encode did not make."""
    if not _SHAPE.fullmatch(cursor):
        raise InvalidInput("cursor", _BAD)
    try:
        inside = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidInput("cursor", _BAD) from None
    m = _INSIDE.fullmatch(inside)
    if m is None or int(m[1]) >= 2**63:
        raise InvalidInput("cursor", _BAD)
    try:
        cidlib.validate(m[2])
    except InvalidCid:
        raise InvalidInput("cursor", _BAD) from None
    return int(m[1]), m[2]
