"""Unit content in a JetStream object store bucket, keyed by CID, verified on every read.

The layout is nats-py's object store's (so `nats object get` works too), written here:
chunks first, the index entry last without a rollup. The bucket refuses rollups and only
the tier agent may purge, so a writer's credential can add entries but never remove any;
readers and `has` check the bytes and fall back past an entry that does not match them.
Reads do not use nats-py either: nats-py's `get` grows one bytes object chunk by chunk, quadratic
in the object size. Here a small object's chunks come in one batched direct get, a larger
one's are read by `cim.nats.read` (batched direct gets), and they are handed out one by one while being hashed;
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
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import NotFoundError

from .. import cid as cidlib
from ..errors import CidMismatch, CimError, JetStreamUnavailable, UnitNotFound, UnitTooLarge
from ..names import CONTENT_BUCKET
from ..nats.api import JsError
from ..nats.publish import publisher_for
from ..nats.read import read_stream
from ..nats.retry import through_elections
from ..provision.spec import DEFAULT_MAX_UNIT_SIZE, MAX_UNIT_SIZE_KEY

LIMIT_FOR = 30.0  # seconds a read of the bucket's unit size limit is used before it is read again
log = logging.getLogger("cim.store.content")

CHUNK_SIZE = 128 * 1024
DIRECT_BATCH = 256  # subjects per batched direct get
# Objects of up to this many chunks (4 MiB) are read in one batched direct get; a consumer
# (create, pull, delete) costs the server and the client about twice as much per object.
DIRECT_CHUNKS = 32
DIRECT_PAUSE = 300  # seconds without direct gets after one went unanswered
LOCATED_KEPT = 1024  # locations a read found, kept for the delete that may follow it
EMPTY_CID = cidlib.compute(b"")
PUT_WINDOW = 64  # chunks of one put in flight (8 MiB)
CID_HEADER = "Cim-Cid"  # on every chunk: the object it belongs to
NUID = re.compile(r"[A-Za-z0-9]{22}")  # the object store's chunk ids (nats NUIDs)
ENTRY_BATCH = 256  # index entries of one object per direct get (normally there is one)


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
        """The entry, or None for a deleted marker or anything that is not an entry (any
        writer may append one: a nuid must be a NUID, never a subject wildcard)."""
        try:
            info = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(info, dict) or info.get("deleted"):
            return None
        nuid = info.get("nuid")
        if not isinstance(nuid, str) or not NUID.fullmatch(nuid):
            return None
        try:
            size, chunks = int(info.get("size", 0)), int(info.get("chunks", 0))
        except (TypeError, ValueError):
            return None
        if size < 0 or chunks < 0:
            return None
        digest = info.get("digest", "")
        return cls(cid, size, chunks, nuid, digest if isinstance(digest, str) else "", seq, info)


THREADED_HASH_MIN_CHUNKS = 8


class ThreadedHasher:
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
        self._bucket_known = False
        self._limit: tuple[int, float] | None = None  # the bucket's unit size limit, and until when it holds
        self._direct_off_until = 0.0
        self._located: OrderedDict[str, ObjectLocation] = OrderedDict()

    async def _ensure_bucket(self) -> None:
        """The bucket must exist (once per store): a put into none gets a clear error."""
        if not self._bucket_known:
            await self.max_unit_size()

    async def max_unit_size(self) -> int:
        """The largest unit this bucket takes: server-side state in the bucket's metadata,
        set by `cim provision`, so every writer applies the same limit. Read again after
        LIMIT_FOR seconds, so a changed limit reaches running agents; a bucket provisioned
        without one takes DEFAULT_MAX_UNIT_SIZE."""
        now = time.monotonic()
        if self._limit is not None and now < self._limit[1]:
            return self._limit[0]
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            raise JetStreamUnavailable(
                f"the content bucket {self.bucket} does not exist; run `cim provision` (or `cim up`)"
            ) from None
        except Exception as err:  # an election, a timeout: the last limit read stays good
            if self._limit is not None:
                return self._limit[0]
            raise JetStreamUnavailable(f"cannot read the content bucket {self.bucket} ({type(err).__name__}: {err}); "
                                       "is JetStream up? `cim status` says") from None
        self._bucket_known = True
        raw = (info.config.metadata or {}).get(MAX_UNIT_SIZE_KEY)
        # Plain ASCII digits only, at most 19 (an int64): anything else is not ours.
        ok = isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) > 0
        limit = int(raw) if ok else DEFAULT_MAX_UNIT_SIZE  # type: ignore[arg-type]  # a str when ok
        self._limit = (limit, now + LIMIT_FOR)
        return limit

    async def locate(self, cid: str) -> ObjectLocation | None:
        """The object's last index entry, read from the leader. Unverified: `get` checks the
        bytes and, if they do not match, falls back to an earlier entry (`_choose`)."""
        return (await self._last_entry(cid))[1]

    async def _last_entry(self, cid: str) -> tuple[bool, ObjectLocation | None]:
        """Whether the object has any index entry, and its last one if that is usable."""
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
                return False, None
            if getattr(err, "err_code", None) == JsError.STREAM_NOT_FOUND:
                raise JetStreamUnavailable(
                    f"the content bucket {self.bucket} does not exist; run `cim provision` (or `cim up`)"
                ) from None
            raise JetStreamUnavailable(f"cannot read the content index for {cid}: {err or type(err).__name__}") from err
        try:
            return True, ObjectLocation.parse(cid, msg.data or b"", msg.seq or 0)
        except (ValueError, TypeError, KeyError, AttributeError):
            return True, None  # not an index entry at all: hostile input, look at the earlier ones

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

    async def entries(self, cid: str) -> list[ObjectLocation]:
        """Every index entry of the object, newest first (normally one). Writers may append an
        entry but never remove or roll one up (the bucket refuses rollups, and only the tier
        agent may purge), so an entry a compromised credential appended cannot hide the
        genuine one: readers verify and fall back to it (`_choose`). All of them are read,
        however many were appended, by batched direct gets; through the leader's message API
        when those do not answer."""
        meta_subject = self._meta_subject(cid)
        msgs: list[tuple[int, bytes]] | None = None
        if not self._direct_paused():
            try:
                msgs = await self._direct_entries(meta_subject)
            except Exception as err:  # every failure here means "ask the leader"
                self._pause_direct(err)
        if msgs is None:
            msgs = []
            seq = 1
            while True:
                try:
                    msg = await self.js.get_msg(self.stream, seq=seq, subject=meta_subject, next=True)
                except Exception as err:
                    if getattr(err, "code", None) == 404 or isinstance(err, NotFoundError):
                        break
                    raise JetStreamUnavailable(f"cannot read the content index for {cid}: {err or type(err).__name__}") from err
                msgs.append((msg.seq or 0, msg.data or b""))
                seq = (msg.seq or seq) + 1
        found = [loc for seq, data in msgs if (loc := ObjectLocation.parse(cid, data, seq)) is not None]
        return found[::-1]

    async def _direct_entries(self, meta_subject: str) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        seq, pub = 1, publisher_for(self.nc)
        while True:
            request = json.dumps({"seq": seq, "next_by_subj": meta_subject, "batch": ENTRY_BATCH}).encode()
            msgs, end = await pub.collect_until_status(f"$JS.API.DIRECT.GET.{self.stream}", request, self.timeout)
            status = (end.headers or {}).get("Status", "")
            if status == "404":
                return out
            if status != "204":
                raise JetStreamUnavailable(f"direct get answered {status}")
            for m in msgs:
                headers = m.headers or {}
                if headers.get("Nats-Subject") == meta_subject:
                    out.append((int(headers["Nats-Sequence"]), m.data))
            if not msgs or not int((end.headers or {}).get("Nats-Num-Pending", 0) or 0):
                return out
            seq = out[-1][0] + 1 if out else seq + 1

    async def put_stream(self, cid: str, source: IO[bytes], *, progress: Callable[[int], None] | None = None) -> bool:
        """Store the bytes of `source` under `cid` unless they are there already.

        The chunks go first and the index entry last, only once every chunk is acknowledged
        and the bytes hashed to `cid`: a put that fails or was fed changing bytes leaves no
        entry (only chunks nothing points at). Returns True when it uploaded, False when the
        content was already stored.
        """
        if await self.has(cid):
            return False
        await self._ensure_bucket()
        start = source.tell() if source.seekable() else None

        async def put() -> None:
            if start is not None:
                source.seek(start)  # a retry sends the content again
            await self._put_chunks(cid, source, progress)

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
        return True

    async def put_bytes(self, data: bytes) -> str:
        """New content (a pipeline step's text), under the bucket's unit size limit like any
        unit. `put_stream` takes what is already a unit's (a tier bringing it back) as it is."""
        limit = await self.max_unit_size()
        if len(data) > limit:
            raise UnitTooLarge("size", f"the content has {len(data)} bytes, over the limit of {limit} bytes "
                                       "(the content bucket's limit, kept on the server)")
        cid = cidlib.compute(data)
        await self.put_stream(cid, io.BytesIO(data))
        return cid

    async def _put_chunks(self, cid: str, source: IO[bytes], progress: Callable[[int], None] | None) -> None:
        """The object store's standard layout (nats-py and the nats CLI read it as usual):
        chunks on `C.<nuid>` pipelined, then the index entry on `M.<name>` without a rollup.
        Each chunk carries `Cim-Cid`, so a delete can tell this object's chunks from chunks
        another entry merely points at."""
        nuid = self.nc._nuid.next().decode()
        chunk_subject = f"$O.{self.bucket}.C.{nuid}"
        headers = {CID_HEADER: cid}
        hasher = cidlib.Hasher()
        acks: list[asyncio.Future] = []
        chunks = 0
        # A file is read off the event loop; bytes already in memory are not worth a thread.
        in_memory = isinstance(source, io.BytesIO)
        try:
            while data := (source.read(CHUNK_SIZE) if in_memory else await asyncio.to_thread(source.read, CHUNK_SIZE)):
                hasher.update(data)
                chunks += 1
                acks.append(await self.js.publish_async(chunk_subject, data, headers=headers))
                if len(acks) >= PUT_WINDOW:
                    await self._acked(acks[: PUT_WINDOW // 2])
                    del acks[: PUT_WINDOW // 2]
                if progress:
                    progress(len(data))
            await self._acked(acks)
        except BaseException:
            for f in acks:
                f.cancel()
            raise
        actual = hasher.cid()
        if actual != cid:
            raise CidMismatch(cid, actual, where="file while it was being stored (it changed)")
        info = api.ObjectInfo(
            name=cid, bucket=self.bucket, nuid=nuid, size=hasher.size, chunks=chunks,
            mtime=datetime.now(UTC).isoformat(), options=api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
            digest="SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(hasher.sha256_hex())).decode(),
        )
        await self.js.publish(self._meta_subject(cid), json.dumps(info.as_dict()).encode(), timeout=self.timeout)

    async def put_small_many(self, items: list[tuple[str, bytes]]) -> list[CimError | None]:
        """Store many small contents (each at most one chunk, each `cid` computed by the caller
        from those very bytes) in two pipelined waves: every chunk, then every index entry.
        Each item's own outcome, in order: an item whose chunk was not acknowledged gets no
        index entry (nothing half-stored), and fails alone. Contents already stored are the
        caller's to leave out (`read_small` finds them, verified)."""
        await self._ensure_bucket()
        out: list[CimError | None] = [None] * len(items)
        nuids = [self.nc._nuid.next().decode() for _ in items]
        pub = publisher_for(self.nc)

        async def wave(messages: list[tuple[int, str, bytes, dict[str, str]]], what: str) -> None:
            futures = [(i, await pub.publish(subject, data, headers)) for i, subject, data, headers in messages]
            if not futures:
                return
            _, pending = await asyncio.wait([f for _, f in futures], timeout=self.timeout)
            for i, f in futures:
                if f in pending:
                    f.cancel()
                    out[i] = JetStreamUnavailable(f"no acknowledgement for {what} of {items[i][0]}; put it again")
                elif f.exception() is not None:
                    err = f.exception()
                    out[i] = JetStreamUnavailable(f"storing {what} of {items[i][0]} failed: {err or type(err).__name__}; "
                                                  "nothing was recorded, put it again")

        for cid, data in items:
            if len(data) > CHUNK_SIZE:
                raise ValueError(f"put_small_many takes contents of one chunk at most ({CHUNK_SIZE} bytes); {cid} is bigger")
        await wave([(i, f"$O.{self.bucket}.C.{nuids[i]}", data, {CID_HEADER: cid})
                    for i, (cid, data) in enumerate(items) if data], "the content")
        entries: list[tuple[int, str, bytes, dict[str, str]]] = []
        for i, (cid, data) in enumerate(items):
            if out[i] is None:
                info = api.ObjectInfo(
                    name=cid, bucket=self.bucket, nuid=nuids[i], size=len(data), chunks=1 if data else 0,
                    mtime=datetime.now(UTC).isoformat(), options=api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
                    digest="SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode())
                entries.append((i, self._meta_subject(cid), json.dumps(info.as_dict()).encode(), {}))
        await wave(entries, "the index entry")
        return out

    async def _acked(self, acks: list[asyncio.Future]) -> None:
        if not acks:
            return
        done, pending = await asyncio.wait(acks, timeout=self.timeout)
        if pending:
            raise JetStreamUnavailable("no acknowledgement for a chunk; put it again")
        for f in done:
            if f.exception():
                raise f.exception()  # type: ignore[misc]

    async def delete(self, cid: str) -> None:
        """Remove the object (the tier agent's right alone): every index entry up to the
        newest one seen (an entry stored after that stays), then the chunks. Chunks are
        purged only when a read just checked them (a move: then nothing is looked up but the
        entries, by one direct get), or when their `Cim-Cid` header names this object, or
        (chunks stored before that header) when they hash to it: an entry pointing at another
        object's chunks cannot make this delete remove them. The entries go first, so a
        delete cut short leaves chunks nothing points at, never an entry without its chunks."""
        known = self._located.pop(cid, None)
        found = await self.entries(cid)
        upto = max([e.seq for e in found] + [known.seq if known is not None else 0])
        if not upto:
            return
        nuids = {known.nuid} if known is not None else set()
        for loc in found:
            if loc.nuid not in nuids and await self._owns(loc):
                nuids.add(loc.nuid)
        await self.js.purge_stream(self.stream, subject=self._meta_subject(cid), seq=upto + 1)
        for nuid in sorted(nuids):
            await self.js.purge_stream(self.stream, subject=f"$O.{self.bucket}.C.{nuid}")

    async def _owns(self, loc: ObjectLocation) -> bool:
        """Whether the chunks `loc` points at are this object's own."""
        try:
            first = await self.js.get_msg(self.stream, seq=1, subject=f"$O.{self.bucket}.C.{loc.nuid}", next=True,
                                          direct=not self._direct_paused())
        except Exception:
            return False  # no chunks there (or unreadable): nothing of ours to purge
        if first.subject != f"$O.{self.bucket}.C.{loc.nuid}":
            return False
        named = (first.headers or {}).get(CID_HEADER)
        if named is not None:
            return named == loc.cid
        try:
            await self._check(loc)
        except (CidMismatch, NotFoundError, JetStreamUnavailable):
            return False
        return True

    async def get(self, cid: str, *, keep_location: bool = False) -> AsyncIterator[bytes]:
        """The content, chunk by chunk, verified against `cid` before the last chunk is given.
        `keep_location`: a delete of it follows (a move), which can then skip the lookup."""
        loc, parts = await self._choose(cid)
        if parts is None:
            started = False
            try:
                async for chunk in self._read(loc):
                    started = True
                    yield chunk
            except (CidMismatch, NotFoundError):
                if started:
                    raise
                # A replica's entry can lag the leader's (the object deleted or stored again
                # meanwhile, its chunks gone): nothing was given yet, so ask the leader.
                loc, parts = await self._choose(cid, direct=False)
                if parts is None:
                    parts = self._read(loc)  # type: ignore[assignment]
        if parts is not None:
            if isinstance(parts, list):
                for chunk in parts:
                    yield chunk
            else:
                async for chunk in parts:
                    yield chunk
        if keep_location:
            self._remember(loc)

    async def _choose(self, cid: str, *, direct: bool = True) -> tuple[ObjectLocation, list[bytes] | None]:
        """Which index entry to read, with its bytes when they were read whole to check them.

        An object of up to DIRECT_CHUNKS chunks (4 MiB) is read whole and checked before a
        byte is handed out, so a wrong entry (a replica's that lags, a failed put's, or one a
        compromised writer appended) costs nothing but a look at the earlier entries. A bigger
        one is streamed as it is checked; it is read from the last entry directly only when
        that is its only one."""
        failed: CimError | None = None
        replica = await self._locate_direct(cid) if direct else None  # cheap, but may lag
        if replica is not None and replica.chunks <= DIRECT_CHUNKS:
            with contextlib.suppress(CidMismatch, NotFoundError, JetStreamUnavailable):
                return replica, await self._whole(replica)
        elif replica is not None and [e.seq for e in await self.entries(cid)] == [replica.seq]:
            return replica, None  # its only entry: streamed as it is checked (`get` retries the leader's)
        exists, loc = await self._last_entry(cid)
        if not exists:
            raise UnitNotFound(cid)
        if loc is not None and loc.chunks <= DIRECT_CHUNKS:
            try:
                return loc, await self._whole(loc)
            except (CidMismatch, NotFoundError) as err:
                failed = err if isinstance(err, CidMismatch) else None
        entries = await self.entries(cid)
        if loc is not None and loc.chunks > DIRECT_CHUNKS and [e.seq for e in entries] == [loc.seq]:
            return loc, None
        for entry in entries:
            if loc is not None and entry.seq == loc.seq and loc.chunks <= DIRECT_CHUNKS:
                continue  # read above
            try:
                parts: list[bytes] | None = None
                if entry.chunks <= DIRECT_CHUNKS:
                    parts = await self._whole(entry)
                else:
                    await self._check(entry)
            except (CidMismatch, NotFoundError, JetStreamUnavailable) as err:
                failed = failed or (err if isinstance(err, CidMismatch) else None)
                continue
            if loc is not None and entry.seq != loc.seq:
                log.warning("the last content index entry of %s (sequence %d) does not match its bytes; read the "
                            "entry at sequence %d instead", cid, loc.seq, entry.seq)
            return entry, parts
        raise failed or UnitNotFound(cid)

    async def _whole(self, loc: ObjectLocation) -> list[bytes]:
        return [chunk async for chunk in self._read(loc)]

    async def _check(self, loc: ObjectLocation) -> None:
        """Read the object once only to check it (CidMismatch if it does not match)."""
        async for _ in self._read(loc):
            pass

    async def has(self, cid: str) -> bool:
        """Whether the object is stored, checked against its bytes: an index entry alone (one
        a compromised writer appended before the real put) must not make a put skip its
        upload. A big object is read once to check it, which only a dedupe hit costs."""
        try:
            loc, parts = await self._choose(cid, direct=False)
            if parts is None:
                await self._check(loc)
        except (UnitNotFound, CidMismatch, NotFoundError):
            return False
        return True

    def _remember(self, loc: ObjectLocation) -> None:
        """Keep where a read found the object, for a delete that may follow (a move)."""
        self._located[loc.cid] = loc
        self._located.move_to_end(loc.cid)
        while len(self._located) > LOCATED_KEPT:
            self._located.popitem(last=False)

    async def _read(self, loc: ObjectLocation) -> AsyncIterator[bytes]:
        cid = loc.cid
        hasher = ThreadedHasher() if loc.chunks > THREADED_HASH_MIN_CHUNKS else cidlib.Hasher()
        held: bytes | None = None
        try:
            # The first `chunks` messages of the chunk subject, never the last: a writer may
            # append to any chunk subject, and what it appends must not shadow the object.
            if 0 < loc.chunks <= DIRECT_CHUNKS and (chunks := await self._direct_chunks(loc)):
                # One batched direct get (most units are one chunk): chunks never change, and
                # the CID checks them.
                for data in chunks[:-1]:
                    hasher.update(data)
                    yield data
                held = chunks[-1]
                hasher.update(held)
            elif loc.chunks == 1:
                subject = f"$O.{self.bucket}.C.{loc.nuid}"
                msg = await through_elections(
                    lambda: self.js.get_msg(self.stream, seq=1, subject=subject, next=True),
                    within=self.timeout * 3, what=f"reading the content of {cid}",
                )
                held = msg.data or b""
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
            if isinstance(hasher, ThreadedHasher):
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
        out: dict[str, bytes] = {}
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
            if not isinstance(info, dict):  # not an index entry: hostile input
                continue
            if not info.get("deleted") and info.get("chunks") == 1 and info.get("nuid"):
                chunk_of[cid] = f"$O.{self.bucket}.C.{info['nuid']}"
            elif not info.get("deleted") and info.get("chunks") == 0 and cid == EMPTY_CID:
                out[cid] = b""  # empty content has no chunk: its entry is all there is
        chunks = await self._direct_last(list(chunk_of.values()))
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
        log.warning("direct gets on %s failed (%s); reading index entries and one-chunk objects through the leader "
                    "for %d s. Bigger objects are read by direct gets only: if this user's permissions are restricted, "
                    "allow publishing to $JS.API.DIRECT.GET.%s and $JS.API.DIRECT.GET.%s.>",
                    self.stream, type(err).__name__, DIRECT_PAUSE, self.stream, self.stream)

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
