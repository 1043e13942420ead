"""The S3 checksum every upload carries, against a real S3 server: CRC-32 (the default) and
SHA-256 (`checksum = "sha256"`), for each way a unit goes up: one request, a multipart
upload streamed from the source, and a bandwidth-limited multipart upload from a spool.
The server must confirm the checksum we expect, so the copy counts as verified there
without being read back."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from cim import cid as cidlib
from cim.errors import CidMismatch
from cim.tier.backends import S3Backend, verified
from cim.tier.urls import TierSpec
from support.tierkit import s3_tier

MiB = 1024**2


async def chunks_of(data: bytes, size: int = 128 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("algorithm", ["crc32", "sha256"])
@pytest.mark.parametrize(("size", "bandwidth"), [(300_000, None), (12 * MiB + 5, None), (11 * MiB, "1G")],
                         ids=["one-request", "streamed-multipart", "spooled-multipart"])
async def test_the_server_confirms_the_checksum_of_each_upload(s3_server, tmp_path, algorithm, size, bandwidth):
    spec = TierSpec(**s3_tier(s3_server, "warm", tmp_path, checksum=algorithm,
                              **({"max_bandwidth": bandwidth} if bandwidth else {})))
    warm = S3Backend(spec)
    data = os.urandom(size)
    cid = cidlib.compute(data)
    try:
        assert await warm.put(cid, size, verified(cid, size, chunks_of(data), "test")) == "s3-checksum"
        head = s3_server.boto3_client().head_object(Bucket=spec.bucket, Key=f"units/{cid}", ChecksumMode="ENABLED")
        def digest(b: bytes) -> bytes:
            return hashlib.sha256(b).digest() if algorithm == "sha256" else zlib.crc32(b).to_bytes(4, "big")

        if size < spec.multipart_threshold:
            expected, suffix = digest(data), ""
        else:  # the composite: the checksum of the parts' checksums, and their number
            parts = [data[i:i + spec.multipart_chunksize] for i in range(0, size, spec.multipart_chunksize)]
            expected, suffix = digest(b"".join(map(digest, parts))), f"-{len(parts)}"
        assert head[f"Checksum{algorithm.upper()}"] == base64.b64encode(expected).decode() + suffix
        assert b"".join([c async for c in warm.get(cid, size)]) == data
    finally:
        warm.close()


async def test_a_source_that_does_not_match_its_cid_leaves_no_object(s3_server, tmp_path):
    spec = TierSpec(**s3_tier(s3_server, "warm", tmp_path))
    warm = S3Backend(spec)
    data = os.urandom(12 * MiB)
    cid = cidlib.compute(data)
    bad = data[:-1] + bytes([data[-1] ^ 1])
    try:
        with pytest.raises(CidMismatch):
            await warm.put(cid, len(bad), verified(cid, len(bad), chunks_of(bad), "the hot tier"))
        assert await warm.size_of(cid) is None
    finally:
        warm.close()
