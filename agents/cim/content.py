"""Unit content in a JetStream object store bucket, keyed by CID, verified on every read.

Writes use nats-py's object store (its layout is the standard one, so `nats object get`
works too). Reads do not: nats-py's `get` grows one bytes object chunk by chunk, quadratic
in the object size. Here a small object's chunks come in one batched direct get, a larger
one's are pulled through `jsread`, and they are handed out one by one while being hashed;
the last chunk is held back until the CID checks out, so a reader never receives
complete-looking content that is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import APIError, NotFoundError, ObjectNotFoundError

from . import cid as cidlib
from .errors import CidMismatch, CimError, JetStreamUnavailable, UnitNotFound
from .jspublish import publisher_for
from .jsread import read_stream
from .provision import CONTENT_BUCKET
from .retry import through_elections

log = logging.getLogger("cim.content")

CHUNK_SIZE = 128 * 1024
DIRECT_BATCH = 256  # subjects per batched direct get
# Objects of up to this many chunks (4 MiB) are read in one batched direct get; a consumer
# (create, pull, delete) costs the server and the client about twice as much per object.
DIRECT_CHUNKS = 32
DIRECT_PAUSE = 300  # seconds without direct gets after one went unanswered
LOCATED_KEPT = 1024  # locations a read found, kept for the delete that may follow it


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    cid: str
    size: int
    chunks: int
    nuid: str
    digest: str
    seq: int = 0  # the stream sequence of the index entry this came from
    meta: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, cid: str, raw: bytes, seq: int) -> ObjectLocation | None:
        info = json.loads(raw)
        if info.get("deleted") or not info.get("nuid"):
            return None
        return cls(cid, int(info.get("size", 0)), int(info.get("chunks", 0)), info["nuid"], info.get("digest", ""), seq, info)


class _CountingReader(io.RawIOBase):
    """Feeds nats-py's put while hashing what it actually sent and reporting progress."""

    def __init__(self, raw: BinaryIO, progress: Callable[[int], None] | None):
        self.raw = raw
        self.hasher = cidlib.Hasher()
        self.progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self.raw.readinto(b)
        if n:
            self.hasher.update(memoryview(b)[:n])
            if self.progress:
                self.progress(n)
        return n or 0


THREADED_HASH_MIN_CHUNKS = 8


class _ThreadedHasher:
    """Hashes chunks in order on a worker thread while the event loop receives the next ones.

    hashlib releases the GIL on large buffers, so verification overlaps the network instead
    of adding to it (sha256 alone would cost a third of a fast read).
    """

    def __init__(self) -> None:
        self._hasher = cidlib.Hasher()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cim-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    @property
    def size(self) -> int:
        return self._hasher.size

    def cid(self) -> str:
        return self._hasher.cid()


class ContentStore:
    def __init__(self, nc: Client, bucket: str = CONTENT_BUCKET, *, timeout: float = 5.0):
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.bucket = bucket
        self.stream = f"OBJ_{bucket}"
        self.timeout = timeout
        self._obj = None
        self._direct_off_until = 0.0
        self._located: OrderedDict[str, ObjectLocation] = OrderedDict()

    async def _store(self):
        if self._obj is None:
            try:
                self._obj = await self.js.object_store(self.bucket)
            except NotFoundError:
                raise JetStreamUnavailable(
                    f"the content bucket {self.bucket} does not exist; run `cim provision` (or `cim up`)"
                ) from None
        return self._obj

    async def locate(self, cid: str) -> ObjectLocation | None:
        cidlib.validate(cid)
        meta_subject = self._meta_subject(cid)
        try:
            # From the leader, not a possibly lagging replica (see EventStore.last).
            msg = await through_elections(
                lambda: self.js.get_last_msg(self.stream, meta_subject), within=self.timeout * 3,
                what=f"reading the content index for {cid}",
            )
        except Exception as err:
            if getattr(err, "code", None) == 404 or isinstance(err, NotFoundError):
                return None
            if "stream not found" in str(err).lower():
                raise JetStreamUnavailable(
                    f"the content bucket {self.bucket} does not exist; run `cim provision` (or `cim up`)"
                ) from None
            raise JetStreamUnavailable(f"cannot read the content index for {cid}: {err or type(err).__name__}") from err
        return ObjectLocation.parse(cid, msg.data, msg.seq)

    async def _locate_direct(self, cid: str) -> ObjectLocation | None:
        """The index entry by a direct get, which costs the server a tenth of the leader's
        message API; but any replica may answer, so the entry can lag the leader's. None
        means "ask the leader" (not stored, or not known here yet, or no answer)."""
        msg = await self._direct_one(self._meta_subject(cid))
        if msg is None:
            return None
        try:
            return ObjectLocation.parse(cid, msg.data, int(msg.headers["Nats-Sequence"]))
        except (ValueError, KeyError, TypeError):
            return None

    async def _direct_one(self, subject: str):
        """The last message on `subject` by a direct get, or None (none there, or no answer:
        then direct gets pause, as in `_direct_chunks`)."""
        if self._direct_paused():
            return None
        try:
            msg = await self.nc.request(f"$JS.API.DIRECT.GET.{self.stream}.{subject}", b"", timeout=self.timeout)
        except Exception as err:
            self._pause_direct(err)
            return None
        if not msg.headers or "Nats-Sequence" not in msg.headers or msg.headers.get("Status"):
            return None
        return msg

    async def has(self, cid: str) -> bool:
        return await self.locate(cid) is not None

    async def put_stream(self, cid: str, source: BinaryIO, *, progress: Callable[[int], None] | None = None) -> bool:
        """Store the bytes of `source` under `cid` unless they are there already.

        The bytes are hashed as they are sent; if they do not hash to `cid` (the file
        changed after it was hashed) the object is removed again and CidMismatch raised.
        Returns True when it uploaded, False when the content was already stored.
        """
        if await self.has(cid):
            return False
        start = source.tell() if source.seekable() else None
        if start is not None:
            # Most units fit one chunk: store them in one round trip instead of nats-py's four.
            head = source.read(CHUNK_SIZE + 1)
            if 0 < len(head) <= CHUNK_SIZE:
                actual = cidlib.compute(head)
                if actual != cid:
                    raise CidMismatch(cid, actual, where="file while it was being stored (it changed)")
                await self._put_one_chunk(cid, head, check=False)
                if progress:
                    progress(len(head))
                return True
            source.seek(start)
        store = await self._store()
        reader = _CountingReader(source, progress)

        async def put():
            nonlocal reader
            if reader.hasher.size and start is not None:  # a retry: send the content again
                source.seek(start)
                reader = _CountingReader(source, progress)
            await store.put(cid, io.BufferedReader(reader, CHUNK_SIZE))

        try:
            if start is None:
                await put()
            else:
                await through_elections(put, within=self.timeout * 3, what=f"storing the content of {cid}")
        except CimError:
            raise
        except Exception as err:
            raise JetStreamUnavailable(
                f"storing the content of {cid} failed: {err or type(err).__name__}; nothing was recorded, "
                "put the file again"
            ) from err
        actual = reader.hasher.cid()
        if actual != cid:
            await self.delete(cid)
            raise CidMismatch(cid, actual, where="file while it was being stored (it changed)")
        return True

    async def put_bytes(self, data: bytes) -> str:
        cid = cidlib.compute(data)
        if 0 < len(data) <= CHUNK_SIZE:
            await self._put_one_chunk(cid, data)
        else:
            await self.put_stream(cid, io.BytesIO(data))
        return cid

    async def _put_one_chunk(self, cid: str, data: bytes, *, check: bool = True) -> None:
        """Small content in one round trip: the chunk and its metadata pipelined, in the
        object store's standard layout (so nats-py and the nats CLI read it as usual)."""
        if check and await self.has(cid):
            return
        await self._store()  # the bucket must exist: the same clear error as a large put
        nuid = self.nc._nuid.next().decode()  # noqa: SLF001 - the object store's own id scheme
        chunk_subject = f"$O.{self.bucket}.C.{nuid}"
        info = api.ObjectInfo(
            name=cid, bucket=self.bucket, nuid=nuid, size=len(data), chunks=1,
            mtime=datetime.now(UTC).isoformat(), options=api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
            digest="SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode(),
        )
        meta_subject = self._meta_subject(cid)
        chunk_ack = await self.js.publish_async(chunk_subject, data)
        meta_ack = await self.js.publish_async(meta_subject, json.dumps(info.as_dict()).encode(),
                                               headers={"Nats-Rollup": "sub"})
        done, pending = await asyncio.wait([chunk_ack, meta_ack], timeout=self.timeout)
        failed = pending or any(f.exception() for f in done)
        if failed:
            for f in pending:
                f.cancel()
            # Whatever got stored goes again: metadata without its chunk must not remain.
            with contextlib.suppress(Exception):
                await self.js.purge_stream(self.stream, subject=meta_subject)
            with contextlib.suppress(Exception):
                await self.js.purge_stream(self.stream, subject=chunk_subject)
            err = next((f.exception() for f in done if f.exception()), None)
            raise JetStreamUnavailable(f"storing the content of {cid} failed: {err or 'no acknowledgement'}; put it again")

    async def delete(self, cid: str) -> None:
        """Remove the object, as nats-py does: its index entry marked deleted (rolling up the
        earlier ones), then its chunks purged. Right after a read of it (a move), the entry
        that read found is replaced on condition that it is still the last one, which saves
        looking it up again; if anything changed meanwhile, the server refuses, and the
        object is deleted the usual way."""
        known = self._located.pop(cid, None)
        if known is not None and known.seq:
            gone = {**known.meta, "deleted": True, "size": 0, "chunks": 0, "digest": "", "mtime": ""}
            try:
                await self.js.publish(self._meta_subject(cid), json.dumps(gone).encode(), headers={
                    "Nats-Rollup": "sub", "Nats-Expected-Last-Subject-Sequence": str(known.seq)})
            except APIError:
                pass  # the entry changed (or the server refused): the usual way below
            else:
                await self.js.purge_stream(self.stream, subject=f"$O.{self.bucket}.C.{known.nuid}")
                return
        store = await self._store()
        try:
            await store.delete(cid)
        except ObjectNotFoundError:
            pass

    async def get(self, cid: str, *, keep_location: bool = False) -> AsyncIterator[bytes]:
        """The content, chunk by chunk, verified against `cid` before the last chunk is given.
        `keep_location`: a delete of it follows (a move), which can then skip the lookup."""
        loc = await self._locate_direct(cid)
        if loc is not None:
            started = False
            try:
                async for chunk in self._read(loc):
                    started = True
                    yield chunk
                if keep_location:
                    self._remember(loc)
                return
            except (CidMismatch, NotFoundError):
                if started:
                    raise
                # A replica's index entry can lag the leader's (the object deleted or stored
                # again meanwhile, its chunks gone): nothing was given yet, so ask the leader.
        loc = await self.locate(cid)
        if loc is None:
            raise UnitNotFound(cid)
        async for chunk in self._read(loc):
            yield chunk
        if keep_location:
            self._remember(loc)

    def _remember(self, loc: ObjectLocation) -> None:
        """Keep where a read found the object, for a delete that may follow (a move)."""
        self._located[loc.cid] = loc
        self._located.move_to_end(loc.cid)
        while len(self._located) > LOCATED_KEPT:
            self._located.popitem(last=False)

    async def _read(self, loc: ObjectLocation) -> AsyncIterator[bytes]:
        cid = loc.cid
        hasher = _ThreadedHasher() if loc.chunks > THREADED_HASH_MIN_CHUNKS else cidlib.Hasher()
        held: bytes | None = None
        try:
            if loc.chunks == 1:
                # One chunk (most units): one request instead of a consumer's four; a direct
                # get when it answers (chunks never change, and the CID checks them).
                subject = f"$O.{self.bucket}.C.{loc.nuid}"
                msg = await self._direct_one(subject) or await through_elections(
                    lambda: self.js.get_last_msg(self.stream, subject),
                    within=self.timeout * 3, what=f"reading the content of {cid}",
                )
                held = msg.data or b""
                hasher.update(held)
            elif 1 < loc.chunks <= DIRECT_CHUNKS and (chunks := await self._direct_chunks(loc)):
                for data in chunks[:-1]:
                    hasher.update(data)
                    yield data
                held = chunks[-1]
                hasher.update(held)
            elif loc.chunks:
                async for m in read_stream(
                    self.nc, self.stream, [f"$O.{self.bucket}.C.{loc.nuid}"], batch=64, timeout=self.timeout,
                    resume_for=self.timeout * 3, count=loc.chunks,
                ):
                    hasher.update(m.data)
                    if held is not None:
                        yield held
                    held = m.data
        finally:
            if isinstance(hasher, _ThreadedHasher):
                await asyncio.to_thread(hasher.finish)
        actual = hasher.cid()
        if actual != cid or hasher.size != loc.size:
            raise CidMismatch(cid, actual)
        if held is not None:
            yield held

    async def read_small(self, cids: list[str]) -> dict[str, bytes]:
        """The verified content of those CIDs stored here in one chunk, for all of them in
        two requests (batched direct gets of their index entries, then of their chunks).

        Best effort by design: a CID that is not stored here, is bigger than a chunk, or
        was asked of a replica that has not caught up is simply left out (the same holds
        for bytes that do not match their CID): read those with `get`, which says why.
        """
        meta_of = {c: self._meta_subject(c) for c in cids}
        metas = await self._direct_last(list(meta_of.values()))
        chunk_of: dict[str, str] = {}
        for cid, subject in meta_of.items():
            raw = metas.get(subject)
            if raw is None:
                continue
            try:
                info = json.loads(raw)
            except ValueError:
                continue
            if not info.get("deleted") and info.get("chunks") == 1 and info.get("nuid"):
                chunk_of[cid] = f"$O.{self.bucket}.C.{info['nuid']}"
        chunks = await self._direct_last(list(chunk_of.values()))
        out = {}
        for cid, subject in chunk_of.items():
            data = chunks.get(subject)
            if data is not None and cidlib.compute(data) == cid:
                out[cid] = data
        return out

    async def _direct_chunks(self, loc: ObjectLocation) -> list[bytes] | None:
        """All the chunks of a small object in one batched direct get, or None when that
        did not bring exactly them (an older server, a replica still catching up, a
        timeout): the caller then reads through a consumer, which says what is wrong."""
        if self._direct_paused():
            return None
        subject = f"$O.{self.bucket}.C.{loc.nuid}"
        request = json.dumps({"seq": 1, "next_by_subj": subject, "batch": loc.chunks}).encode()
        try:
            msgs = await publisher_for(self.nc).collect(f"$JS.API.DIRECT.GET.{self.stream}", request, self.timeout)
        except Exception as err:  # every failure here means "take the consumer path"
            self._pause_direct(err)
            return None
        if len(msgs) != loc.chunks or any((m.headers or {}).get("Nats-Subject") != subject for m in msgs):
            return None
        return [m.data for m in msgs]

    def _direct_paused(self) -> bool:
        return asyncio.get_running_loop().time() < self._direct_off_until

    def _pause_direct(self, err: BaseException) -> None:
        """No answer at all is what a refused publish looks like (the server reports a
        permissions violation to the connection, not to the request): stop asking for a
        while rather than wait out every read."""
        self._direct_off_until = asyncio.get_running_loop().time() + DIRECT_PAUSE
        log.warning("direct gets on %s failed (%s); reading content through the leader and consumers for %d s. "
                    "If this user's permissions are restricted, allow publishing to $JS.API.DIRECT.GET.%s and "
                    "$JS.API.DIRECT.GET.%s.>", self.stream, type(err).__name__, DIRECT_PAUSE, self.stream, self.stream)

    def _meta_subject(self, cid: str) -> str:
        return f"$O.{self.bucket}.M.{base64.urlsafe_b64encode(cid.encode()).decode()}"

    async def _direct_last(self, subjects: list[str]) -> dict[str, bytes]:
        """The last message of each subject, by subject, in one batched direct get
        (`multi_last`); subjects without one are absent. Never raises: {} on any failure."""
        out: dict[str, bytes] = {}
        if not subjects:
            return out
        pub = publisher_for(self.nc)
        try:
            for start in range(0, len(subjects), DIRECT_BATCH):
                part = subjects[start:start + DIRECT_BATCH]
                # The messages, then a status message (204 "EOB", or 404: none).
                for m in await pub.collect(f"$JS.API.DIRECT.GET.{self.stream}",
                                           json.dumps({"multi_last": part, "batch": len(part)}).encode(), self.timeout):
                    if m.headers and "Nats-Subject" in m.headers:
                        out[m.headers["Nats-Subject"]] = m.data
        except Exception:  # a timeout or an older server: the callers fall back to `get`
            pass
        return out

    async def read(self, cid: str) -> bytes:
        """Small content in one piece (the UI previews and agents' inline replies)."""
        parts = [chunk async for chunk in self.get(cid)]
        return b"".join(parts)
