"""The opaque cursor of GET /v1/units: where the last page ended, sealed by the hub.

A cursor holds a position: the sequence of a unit's `unit.created`, the listing goes on
below it. The index that answers the next page must have applied the stream up to there (the
units below it were all created before it; an index behind would leave holes, and
cim.pipeline.agent refuses it); it need not be as far on as the one that answered before.
The cursor also carries the `as_of` of the index that answered, which this hub does not use:
the format stays the one hubs of the version before read (they ask for an index that far
on), so behind one address old and new hubs go on with each other's cursors. Keyset, not
offset: units stored meanwhile go to the front, and a page costs the same however deep. The
position may be that of a unit the token may not see (the pipeline scans a bounded window,
and the cursor marks where the scan stopped; the hub leaves out rows by their labels), so
the cursor is sealed:

- encrypted (XOR with an HMAC-SHA256 keystream over a random nonce): a client reads
  nothing from it, no sequence and no CID;
- authenticated (HMAC-SHA256 over the nonce, the ciphertext and the binding: the token and
  the filters): a crafted or altered cursor, or one given to another token or for other
  filters, is refused with 400, never passed on.

The key derives from the tokens file's content (cim.hub.tokens), which every hub of a
service reads, so a cursor from one hub is good on another behind the same address
(`--instances`); rewriting the tokens file (a rotation) ends every cursor given out before,
and the client lists again from the start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct

from ..errors import InvalidInput

_VERSION = b"\x01"
_NONCE, _TAG = 12, 16
_BODY = struct.Struct(">QQ")  # position, as_of
_LENGTH = len(_VERSION) + _NONCE + _BODY.size + _TAG
_TEXT = (_LENGTH * 4 + 2) // 3  # base64url without padding
# One answer for every refusal: a client learns nothing about why its cursor failed.
_BAD = ("is not a cursor this API gave out for this token and these filters (or the hub's tokens file changed "
        "since); list again from the start, without cursor")


def binding(token_digest: bytes, labels: list[str], source: str) -> bytes:
    """What a cursor is good for: one token (by its digest) and one set of filters."""
    return json.dumps([token_digest.hex(), sorted(set(labels)), source]).encode()


def _keys(key: bytes) -> tuple[bytes, bytes]:
    return (hmac.new(key, b"cursor encryption", hashlib.sha256).digest(),
            hmac.new(key, b"cursor authentication", hashlib.sha256).digest())


def _tag(mac_key: bytes, sealed: bytes, bound: bytes) -> bytes:
    return hmac.new(mac_key, sealed + b"\0" + bound, hashlib.sha256).digest()[:_TAG]


def _pad(enc_key: bytes, nonce: bytes) -> bytes:
    return hmac.new(enc_key, nonce, hashlib.sha256).digest()[:_BODY.size]


def encode(key: bytes, bound: bytes, position: int, as_of: int) -> str:
    enc_key, mac_key = _keys(key)
    nonce = os.urandom(_NONCE)
    body = bytes(a ^ b for a, b in zip(_BODY.pack(position, as_of), _pad(enc_key, nonce), strict=True))
    sealed = _VERSION + nonce + body
    return base64.urlsafe_b64encode(sealed + _tag(mac_key, sealed, bound)).decode().rstrip("=")


def decode(key: bytes, bound: bytes, cursor: str) -> tuple[int, int]:
    """(position, as_of) of a cursor `encode` made with this key and binding, or
    InvalidInput("cursor") for anything else."""
    if len(cursor) != _TEXT or not cursor.isascii():
        raise InvalidInput("cursor", _BAD)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInput("cursor", _BAD) from None
    if len(raw) != _LENGTH or raw[:1] != _VERSION:
        raise InvalidInput("cursor", _BAD)
    enc_key, mac_key = _keys(key)
    sealed, tag = raw[:-_TAG], raw[-_TAG:]
    if not hmac.compare_digest(tag, _tag(mac_key, sealed, bound)):
        raise InvalidInput("cursor", _BAD)
    nonce, body = sealed[1:1 + _NONCE], sealed[1 + _NONCE:]
    position, as_of = _BODY.unpack(bytes(a ^ b for a, b in zip(body, _pad(enc_key, nonce), strict=True)))
    return position, as_of
