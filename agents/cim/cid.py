"""CIDv1, raw codec, sha2-256, base32 multibase: the `bafkrei...` form IPFS uses.

Small enough to write out in full, which keeps the hot path free of a general multiformats
dependency; the tests compare it against the `multiformats` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Annotated

from pydantic import AfterValidator

from .errors import InvalidCid

CID_VERSION = 1
RAW_CODEC = 0x55
SHA2_256 = 0x12
DIGEST_LEN = 32
_PREFIX = bytes([CID_VERSION, RAW_CODEC, SHA2_256, DIGEST_LEN])  # every value < 0x80: 1-byte varints
CID_LENGTH = 59  # 'b' + base32 of 36 bytes without padding


def from_digest(digest: bytes) -> str:
    if len(digest) != DIGEST_LEN:
        raise InvalidCid("digest", f"a sha2-256 digest has {DIGEST_LEN} bytes, not {len(digest)}")
    return "b" + base64.b32encode(_PREFIX + digest).decode("ascii").lower().rstrip("=")


def compute(data: bytes | bytearray | memoryview) -> str:
    return from_digest(hashlib.sha256(data).digest())


class Hasher:
    """Incremental CID computation for streamed content."""

    __slots__ = ("_h", "size")

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._h.update(chunk)
        self.size += len(chunk)

    def cid(self) -> str:
        return from_digest(self._h.digest())

    def sha256_hex(self) -> str:
        return self._h.hexdigest()


# Every canonical CIDv1/raw/sha2-256 in base32: the fixed prefix, 3 digest bits beside the
# prefix's last 2 bits (so a-h), and a last character whose 2 padding bits are zero.
_CANONICAL = re.compile(r"^bafkrei[a-h][a-z2-7]{50}[aeimquy4]$")


def digest_of(cid: str) -> bytes:
    """Parse a CID string and return its sha2-256 digest, or raise InvalidCid saying what is wrong."""
    if not isinstance(cid, str) or not cid:
        raise InvalidCid("cid", "must be a non-empty string")
    if cid[0] != "b":
        raise InvalidCid("cid", f"{cid!r} is not base32 multibase (a CIDv1 starts with 'b', like bafkrei...)")
    if len(cid) != CID_LENGTH:
        raise InvalidCid(
            "cid", f"{cid!r} has {len(cid)} characters; a CIDv1 raw sha2-256 in base32 has {CID_LENGTH} (bafkrei...)"
        )
    body = cid[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (ValueError, binascii.Error):
        raise InvalidCid("cid", f"{cid!r} has characters outside base32 (a-z, 2-7)") from None
    if raw[0] != CID_VERSION:
        raise InvalidCid("cid", f"{cid!r} is not CID version 1")
    if raw[1] != RAW_CODEC:
        raise InvalidCid("cid", f"{cid!r} does not use the raw codec (0x55)")
    if raw[2] != SHA2_256 or raw[3] != DIGEST_LEN:
        raise InvalidCid("cid", f"{cid!r} is not a sha2-256 multihash")
    if from_digest(raw[4:]) != cid:
        raise InvalidCid("cid", f"{cid!r} is not in canonical form (lower-case base32, no padding)")
    return raw[4:]


def validate(cid: str) -> str:
    # The fast path matters: every event about a unit carries CIDs to check.
    if isinstance(cid, str) and _CANONICAL.fullmatch(cid):
        return cid
    digest_of(cid)  # raises InvalidCid with the precise rule broken
    return cid


# For pydantic models: a field that only takes a valid CID.
Cid = Annotated[str, AfterValidator(validate)]
