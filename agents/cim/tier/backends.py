"""One interface over the places unit bytes can live; every read is verified by CID.

A backend's `get` yields the content chunk by chunk and holds the last chunk back until
the bytes hashed to the CID (the content store's rule, for every tier). `put` takes such a
verified stream from another tier, stores it and verifies it THERE (S3 checksums where the
server keeps them, else a read-back), returning how it verified.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import hashlib
import os
import tempfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from nats.aio.client import Client

from .. import cid as cidlib
from ..errors import CidMismatch, CimError, UnitNotFound
from ..spool import Spool
from ..store.content import THREADED_HASH_MIN_CHUNKS, ContentStore, ThreadedHasher
from ..tasks import cancel_and_wait
from .errors import ObjectMissing, TierConfigError, TierError, TierUnavailable
from .events import VerifiedBy
from .urls import TierSpec, read_credentials

READ_CHUNK = 1024 * 1024
S3_READ_CHUNK = 8 * 1024 * 1024
SPOOL_IN_MEMORY = 32 * 1024**2  # larger sources spill to a temporary file while they are copied


class _Crc32:
    """zlib's CRC-32 behind hashlib's update/digest (big-endian, as S3's ChecksumCRC32)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class S3Checksum:
    """The checksum every S3 upload carries, computed over the bytes sent; the server refuses
    (BadDigest) bytes that do not match it and reports it for what it stored, per object or,
    multipart, as the composite of the parts' (the checksum of their checksums, "-N")."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm.upper()  # CRC32 or SHA256, S3's names
        self.field = f"Checksum{self.algorithm}"

    def new(self):
        return hashlib.sha256() if self.algorithm == "SHA256" else _Crc32()

    def digest(self, data) -> bytes:
        h = self.new()
        h.update(data)
        return h.digest()

    @staticmethod
    def encode(digest: bytes) -> str:
        return base64.b64encode(digest).decode()

    def of_object(self, cid: str, data: bytes) -> str:
        # SHA-256 over a whole object is the CID's own digest: nothing to compute.
        return self.encode(cidlib.digest_of(cid) if self.algorithm == "SHA256" else self.digest(data))

    def composite(self, part_digests: list[bytes]) -> str:
        return f"{self.encode(self.digest(b''.join(part_digests)))}-{len(part_digests)}"


async def verified(cid: str, size: int | None, chunks: AsyncIterator[bytes], where: str) -> AsyncIterator[bytes]:
    """Pass `chunks` on, hashing them; the last one only once the CID checked out."""
    big = size is not None and size > THREADED_HASH_MIN_CHUNKS * READ_CHUNK
    hasher = ThreadedHasher() if big else cidlib.Hasher()
    held: bytes | None = None
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            hasher.update(chunk)
            if held is not None:
                yield held
            held = chunk
    finally:
        if isinstance(hasher, ThreadedHasher):
            await asyncio.to_thread(hasher.finish)
    actual = hasher.cid()
    if actual != cid or (size is not None and hasher.size != size):
        raise CidMismatch(cid, actual, where=where)
    if held is not None:
        yield held


class PartSums:
    """The checksums of a source in S3 part sizes, fed as it is spooled, so a multipart
    object's composite checksum can be predicted before the upload."""

    def __init__(self, part_size: int, checksum: S3Checksum):
        self.part_size = part_size
        self.checksum = checksum
        self.part_digests: list[bytes] = []
        self._part = checksum.new()
        self._in_part = 0

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            take = min(len(view), self.part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self.part_size:
                self.part_digests.append(self._part.digest())
                self._part, self._in_part = self.checksum.new(), 0

    def composite(self) -> str:
        digests = self.part_digests + ([self._part.digest()] if self._in_part or not self.part_digests else [])
        return self.checksum.composite(digests)


class Backend(abc.ABC):
    """A tier's store. Subclasses implement the raw operations; errors are CimErrors."""

    def __init__(self, spec: TierSpec):
        self.spec = spec
        self.name = spec.name

    def where(self) -> str:
        return f"tier {self.name!r} ({self.spec.where()})"

    async def get(self, cid: str, size: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in verified(cid, size, self._raw_get(cid), self.where()):
            yield chunk

    @abc.abstractmethod
    def _raw_get(self, cid: str) -> AsyncIterator[bytes]:
        """The stored bytes, unverified (`get` verifies them)."""

    @abc.abstractmethod
    async def put(self, cid: str, size: int, source: AsyncIterator[bytes]) -> VerifiedBy:
        """Store and verify there; returns the checksum the tier holds."""

    @abc.abstractmethod
    async def size_of(self, cid: str) -> int | None:
        """The stored size, or None when the tier does not hold it."""

    @abc.abstractmethod
    async def delete(self, cid: str) -> None:
        """Remove the object (no error when it is gone already)."""

    @abc.abstractmethod
    def list(self) -> AsyncIterator[tuple[str, int]]:
        """Every (cid, size) the tier holds."""

    async def check(self) -> None:
        """Fail now, with what to fix, if this tier cannot work (bucket, keys, endpoint)."""

    async def put_blob(self, key: str, data: bytes) -> None:
        raise TierError(f"{self.where()} cannot hold backups; give the archive an s3:// or file:// tier")

    async def get_blob(self, key: str) -> bytes | None:
        raise TierError(f"{self.where()} holds no backups; restore from an s3:// or file:// archive")

    async def read_back(self, cid: str, size: int) -> None:
        async for _ in self.get(cid, size):
            pass

    def close(self) -> None:
        pass


# --- JetStream object bucket --------------------------------------------------------------


class JetStreamBackend(Backend):
    def __init__(self, spec: TierSpec, nc: Client, timeout: float = 5.0):
        super().__init__(spec)
        self.content = ContentStore(nc, spec.bucket, timeout=timeout)
        self.nc = nc

    def _raw_get(self, cid: str) -> AsyncIterator[bytes]:
        # The content store verifies the CID itself; `get` below reads through it directly.
        return self.content.get(cid)

    async def get(self, cid: str, size: int | None = None) -> AsyncIterator[bytes]:
        try:
            # Verified by the content store itself; a move deletes what it read next.
            async for chunk in self.content.get(cid, keep_location=True):
                yield chunk
        except UnitNotFound:
            raise ObjectMissing(self.name, cid) from None

    async def put(self, cid: str, size: int, source: AsyncIterator[bytes]) -> VerifiedBy:
        spool = await Spool(in_memory=SPOOL_IN_MEMORY).fill(source)
        try:
            # put_stream hashes what it sends and refuses (and removes) bytes that do not
            # match the CID: verified by the CID there.
            await self.content.put_stream(cid, await spool.file())
        finally:
            spool.close()
        stored = await self.content.locate(cid)
        if stored is None or stored.size != size:
            raise TierUnavailable(f"{self.where()} did not keep {cid} ({stored.size if stored else 'missing'} of {size} bytes)")
        return "cid"

    async def size_of(self, cid: str) -> int | None:
        loc = await self.content.locate(cid)
        return loc.size if loc else None

    async def delete(self, cid: str) -> None:
        await self.content.delete(cid)

    async def list(self) -> AsyncIterator[tuple[str, int]]:
        import json

        from ..nats.read import read_stream

        live: dict[str, int] = {}
        async for m in read_stream(self.nc, self.content.stream, [f"$O.{self.content.bucket}.M.>"]):
            info = json.loads(m.data)
            if info.get("deleted"):
                live.pop(info.get("name", ""), None)
            else:
                live[info.get("name", "")] = int(info.get("size", 0))
        for name, size in live.items():
            yield name, size


# --- a directory --------------------------------------------------------------------------


class FileBackend(Backend):
    """Objects as files named by CID; written to a temporary name, synced, then renamed, so a
    crash never leaves a half-written object under a CID."""

    def __init__(self, spec: TierSpec):
        super().__init__(spec)
        self.root = spec.path

    def _path(self, key: str) -> Path:
        return self.root / key

    async def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TierConfigError(f"tiers.{self.name}.url", f"cannot create {self.root}: {err.strerror}") from None

    async def _raw_get(self, cid: str) -> AsyncIterator[bytes]:
        try:
            f = await asyncio.to_thread(open, self._path(cid), "rb")
        except FileNotFoundError:
            raise ObjectMissing(self.name, cid) from None
        with f:
            while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
                yield chunk

    def _write(self, key: str, data_or_file) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data_or_file, bytes):
                    out.write(data_or_file)
                else:
                    while block := data_or_file.read(READ_CHUNK):
                        out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path(key))
            # The rename is a change of the folder: until the folder is synced, a crash can
            # lose the new name even though the bytes are on disk, after a move recorded it.
            dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def put(self, cid: str, size: int, source: AsyncIterator[bytes]) -> VerifiedBy:
        spool = await Spool(in_memory=SPOOL_IN_MEMORY).fill(source)
        try:
            await asyncio.to_thread(self._write, cid, await spool.file())
        except OSError as err:
            raise TierUnavailable(f"{self.where()}: cannot write {cid}: {err.strerror}") from None
        finally:
            spool.close()
        await self.read_back(cid, size)
        return "read-back"

    async def size_of(self, cid: str) -> int | None:
        try:
            return self._path(cid).stat().st_size
        except FileNotFoundError:
            return None

    async def delete(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(cid).unlink()

    async def list(self) -> AsyncIterator[tuple[str, int]]:
        if not self.root.is_dir():
            return
        for entry in os.scandir(self.root):
            if entry.is_file() and not entry.name.startswith("."):
                yield entry.name, entry.stat().st_size

    async def put_blob(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._write, key, data)

    async def get_blob(self, key: str) -> bytes | None:
        try:
            return await asyncio.to_thread((self.root / key).read_bytes)
        except FileNotFoundError:
            return None


# --- S3 (MinIO, Wasabi, seaweedfs, AWS) ----------------------------------------------------

_DOWN = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ResponseStreamingError,
)
_REFUSED_KEYS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}


class S3Backend(Backend):
    def __init__(self, spec: TierSpec):
        super().__init__(spec)
        key, secret = read_credentials(spec)
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=spec.endpoint,
            region_name=spec.region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(
                # Every upload here carries its checksum in a signed header, which the server
                # checks against the body; signing the body as well (what SigV4 does over
                # plain http) would hash every byte with SHA-256 once more for no more safety.
                s3={"addressing_style": spec.addressing_style, "payload_signing_enabled": False},
                # The agent retries with backoff itself; one quick retry here covers a blip.
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=spec.timeout,
                read_timeout=spec.timeout,
                max_pool_connections=max(10, spec.max_concurrency * 4),
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=spec.multipart_threshold,
            multipart_chunksize=spec.multipart_chunksize,
            max_concurrency=spec.max_concurrency,
            max_bandwidth=spec.max_bandwidth,
        )
        self.checksum = S3Checksum(spec.checksum)

    def _key(self, name: str) -> str:
        return f"{self.spec.prefix}{name}"

    def _map(self, err: Exception, doing: str, cid: str | None = None) -> CimError:
        if isinstance(err, CimError):
            return err
        if isinstance(err, _DOWN):
            return TierUnavailable(
                f"{self.where()} is unreachable while {doing} ({type(err).__name__}); the data is not lost: "
                "check that the S3 server runs and the endpoint is right; the agent retries"
            )
        if isinstance(err, botocore.exceptions.ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound") and cid:
                return ObjectMissing(self.name, cid)
            if code == "NoSuchBucket":
                return TierConfigError(
                    f"tiers.{self.name}.url",
                    f"the bucket {self.spec.bucket!r} does not exist at {self.spec.endpoint or 'AWS'}; create it "
                    "(on NixOS services.cim.tier.minio creates it) or fix the URL",
                )
            if code in _REFUSED_KEYS:
                return TierConfigError(
                    f"tiers.{self.name}.credentials_file",
                    f"{self.where()} refused the keys in {self.spec.credentials_file} ({code}); put valid keys there",
                )
            return TierUnavailable(f"{self.where()} failed while {doing}: {code} {err}")
        if isinstance(err, botocore.exceptions.BotoCoreError):
            return TierUnavailable(f"{self.where()} failed while {doing}: {err}")
        return TierUnavailable(f"{self.where()} failed while {doing}: {type(err).__name__}: {err}")

    async def _call(self, doing: str, fn, *args, cid: str | None = None, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as err:
            raise self._map(err, doing, cid) from None

    async def check(self) -> None:
        await self._call("checking the bucket", self.client.head_bucket, Bucket=self.spec.bucket)

    async def _raw_get(self, cid: str) -> AsyncIterator[bytes]:
        def open_and_read_small():
            # One hop to a worker thread for most objects: the request and, when the whole
            # object fits one read, the body with it.
            resp = self.client.get_object(Bucket=self.spec.bucket, Key=self._key(cid))
            if int(resp.get("ContentLength", 0)) > S3_READ_CHUNK:
                return resp, None
            with contextlib.closing(resp["Body"]) as body:
                return resp, body.read()

        resp, whole = await self._call(f"reading {cid}", open_and_read_small, cid=cid)
        if whole is not None:
            if whole:
                yield whole
            return
        body = resp["Body"]
        try:
            # Big reads: each one is a hop to a worker thread, so fewer of them keeps up with the wire.
            while chunk := await self._call(f"reading {cid}", body.read, S3_READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def put(self, cid: str, size: int, source: AsyncIterator[bytes]) -> VerifiedBy:
        key = self._key(cid)
        multipart = size >= self.spec.multipart_threshold
        if multipart and self.spec.max_bandwidth is None:
            # Streamed: parts go up while the source is still being read, nothing is spooled.
            return await self._checked(cid, size, key, *await self._put_streaming(cid, key, source))
        sums = PartSums(self.spec.multipart_chunksize, self.checksum) if multipart else None
        spool = await Spool(in_memory=SPOOL_IN_MEMORY, on_chunk=sums.update if sums else None).fill(source)
        echoed = None
        try:
            spooled = await spool.file()
            if sums is None:
                # One request; the server checks the checksum we send (BadDigest otherwise).
                data = await asyncio.to_thread(spooled.read)
                # (off the event loop when big: a CRC over 16 MiB takes milliseconds)
                expected = (self.checksum.of_object(cid, data) if len(data) <= READ_CHUNK
                            else await asyncio.to_thread(self.checksum.of_object, cid, data))
                r = await self._call(
                    f"storing {cid}", self.client.put_object, Bucket=self.spec.bucket, Key=key, Body=data,
                    **{self.checksum.field: expected},
                )
                echoed = r.get(self.checksum.field)
            else:
                # Multipart, parts in parallel (bounded) and bandwidth-limited; each part's
                # checksum is checked by the server.
                await self._call(
                    f"storing {cid}", self.client.upload_fileobj, spooled, self.spec.bucket, key,
                    ExtraArgs={"ChecksumAlgorithm": self.checksum.algorithm}, Config=self.transfer,
                )
                expected = sums.composite()
        finally:
            spool.close()
        return await self._checked(cid, size, key, expected, echoed)

    async def _put_streaming(self, cid: str, key: str, source: AsyncIterator[bytes]) -> tuple[str, str | None]:
        """A multipart upload fed straight from `source`, up to max_concurrency parts in flight,
        each with its checksum checked by the server. `source` holds its last chunk back until
        the CID checked out, so the last part (and the completion) only follow a good source;
        on any failure the upload is aborted and no object appears. Returns the expected
        composite checksum, and the one the server reports for what it assembled."""
        part_size = self.spec.multipart_chunksize
        upload = await self._call(f"storing {cid}", self.client.create_multipart_upload, Bucket=self.spec.bucket, Key=key,
                                  ChecksumAlgorithm=self.checksum.algorithm)
        upload_id = upload["UploadId"]
        digests: list[bytes] = []
        parts: dict[int, dict] = {}
        gate = asyncio.Semaphore(self.spec.max_concurrency)
        sending: set[asyncio.Task] = set()

        async def send(number: int, data: bytes, digest: bytes) -> None:
            try:
                checksum = {self.checksum.field: self.checksum.encode(digest)}
                r = await self._call(f"storing part {number} of {cid}", self.client.upload_part, Bucket=self.spec.bucket,
                                     Key=key, UploadId=upload_id, PartNumber=number, Body=data, **checksum)
                parts[number] = {"PartNumber": number, "ETag": r["ETag"], **checksum}
            finally:
                gate.release()

        async def part(data: bytes) -> None:
            for t in [t for t in sending if t.done()]:
                sending.discard(t)
                t.result()  # a failed part fails the upload now
            digest = await asyncio.to_thread(self.checksum.digest, data)
            digests.append(digest)
            await gate.acquire()
            sending.add(asyncio.create_task(send(len(digests), data, digest)))

        try:
            # Chunks are gathered as they come and joined once per part (one copy of each byte).
            pending: list[bytes] = []
            have = 0
            async for chunk in source:
                pending.append(chunk)
                have += len(chunk)
                while have >= part_size:
                    joined = b"".join(pending)
                    await part(joined[:part_size])
                    rest = joined[part_size:]
                    pending, have = ([rest] if rest else []), len(rest)
            if have or not digests:
                await part(b"".join(pending))
            await asyncio.gather(*sending)
            done = await self._call(f"storing {cid}", self.client.complete_multipart_upload, Bucket=self.spec.bucket,
                                    Key=key, UploadId=upload_id,
                                    MultipartUpload={"Parts": [parts[n] for n in sorted(parts)]})
        except BaseException:
            await cancel_and_wait(*sending)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.client.abort_multipart_upload, Bucket=self.spec.bucket, Key=key,
                                        UploadId=upload_id)
            raise
        return self.checksum.composite(digests), done.get(self.checksum.field)

    async def _checked(self, cid: str, size: int, key: str, expected: str, echoed: str | None = None) -> VerifiedBy:
        """Verified THERE: the checksum the server computed over what it stored, as
        its answer to the write reports it (the usual case: no further request) or as a HEAD
        reports it with the size; failing both, a read-back."""
        if echoed == expected:
            return "s3-checksum"
        head = await self._call(
            f"checking {cid}", self.client.head_object, Bucket=self.spec.bucket, Key=key, ChecksumMode="ENABLED", cid=cid
        )
        if int(head.get("ContentLength", -1)) != size:
            raise TierUnavailable(f"{self.where()} holds {head.get('ContentLength')} of {size} bytes of {cid}")
        if head.get(self.checksum.field) == expected:
            return "s3-checksum"
        await self.read_back(cid, size)  # the server keeps no usable checksum: hash it ourselves
        return "read-back"

    async def size_of(self, cid: str) -> int | None:
        try:
            head = await self._call(f"checking {cid}", self.client.head_object, Bucket=self.spec.bucket, Key=self._key(cid), cid=cid)
        except ObjectMissing:
            return None
        return int(head["ContentLength"])

    async def delete(self, cid: str) -> None:
        await self._call(f"deleting {cid}", self.client.delete_object, Bucket=self.spec.bucket, Key=self._key(cid))

    async def list(self) -> AsyncIterator[tuple[str, int]]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = await self._call(
            "listing objects", lambda: list(paginator.paginate(Bucket=self.spec.bucket, Prefix=self.spec.prefix, Delimiter="/"))
        )
        for page in pages:
            for obj in page.get("Contents") or []:
                yield obj["Key"][len(self.spec.prefix):], int(obj["Size"])

    async def put_blob(self, key: str, data: bytes) -> None:
        await self._call(
            f"writing {key}", self.client.put_object, Bucket=self.spec.bucket, Key=self._key(key), Body=data,
            **{self.checksum.field: self.checksum.encode(self.checksum.digest(data))},
        )

    async def get_blob(self, key: str) -> bytes | None:
        try:
            resp = await self._call(f"reading {key}", self.client.get_object, Bucket=self.spec.bucket, Key=self._key(key), cid=key)
        except ObjectMissing:
            return None
        return await self._call(f"reading {key}", resp["Body"].read)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def open_backend(spec: TierSpec, nc: Client | None = None, timeout: float = 5.0) -> Backend:
    if spec.scheme == "s3":
        return S3Backend(spec)
    if spec.scheme == "file":
        return FileBackend(spec)
    if nc is None:
        raise TierConfigError(f"tiers.{spec.name}.url", "a jetstream:// tier needs a NATS connection")
    return JetStreamBackend(spec, nc, timeout)


