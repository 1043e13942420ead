"""Backup to the archive tier, and rebuilding a fresh leaf from it.

The event stream is exported continuously in sequence-ordered chunks
(`_backup/events/<first>-<last>.jsonl.gz`, each message with its subject and headers)
and a manifest (`_backup/manifest.json`) listing every chunk with its sequence range,
event count and sha256. A chunk is written and read back before the manifest names it,
so the manifest never points at a missing or broken chunk; the manifest is also where the
export resumes. Unit bytes reach the archive as ordinary copies (`unit.located` events),
so the archive alone holds everything: events, content, and so every projection.

Content that is not a unit but that events point at (what pipeline steps derived, such as
the text `extract` stored as `text_cid`, which the search index is rebuilt from) is copied
to `_backup/content/<cid>` before the chunk holding the event is named in the manifest,
and `restore` puts it back in the content bucket: the same search results, no step re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client

from .. import cid as cidlib
from ..errors import CimError, JetStreamUnavailable, UnitNotFound
from ..events import StoredEvent
from ..events.envelope import H_ID, H_MSG_ID
from ..names import EVENTS_STREAM
from ..nats.read import last_seq, read_stream
from ..pipeline.events import step_outputs
from ..spool import Spool
from ..store.content import ContentStore
from ..store.unit_fold import HOT
from .backends import SPOOL_IN_MEMORY, Backend
from .errors import ObjectMissing, TierError
from .locations import LocationIndex, Locations

log = logging.getLogger("cim.tier.backup")

PREFIX = "_backup/"
MANIFEST = f"{PREFIX}manifest.json"
DERIVED = f"{PREFIX}content/"
# Headers that were instructions to the original stream, not part of the event.
_DROP_HEADERS = ("Nats-Expected-", "Nats-Batch-")
# Each event goes back at its own sequence or not at all: the stream refuses it if anything
# else was appended meanwhile (an agent started on the leaf being restored).
_EXPECTED_LAST = "Nats-Expected-Last-Sequence"


def _replayed(headers: dict[str, str]) -> dict[str, str]:
    """An archived event's headers as it goes back into the stream, its id in `ce-id` only
    (an event of the old form gets it there from its Nats-Msg-Id, where readers find it
    too): two events of a long history may share an id (a letter redelivered twice, minutes
    apart), and replayed within seconds the server would take the second for a duplicate
    and drop it, shifting every later sequence."""
    kept = {k: v for k, v in headers.items() if not k.startswith(_DROP_HEADERS)}
    msg_id = kept.pop(H_MSG_ID, None)
    if msg_id is not None and H_ID not in kept:
        kept[H_ID] = msg_id
    return kept


def derived_cids(e: StoredEvent) -> list[str]:
    """Content a `steps.done` event points at (its steps' `*_cid` outputs), e.g. extracted text."""
    return [v for _, out in step_outputs(e) if isinstance(out, dict) for k, v in out.items()
            if k.endswith("_cid") and isinstance(v, str) and v.startswith("b") and "/" not in v]


def _empty_manifest() -> dict:
    return {"version": 1, "stream": EVENTS_STREAM, "last_seq": 0, "events": 0, "chunks": [], "updated": None}


async def read_manifest(archive: Backend) -> dict:
    raw = await archive.get_blob(MANIFEST)
    if raw is None:
        return _empty_manifest()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise TierError(f"the backup manifest in {archive.where()} is not JSON ({err.msg}); it was damaged") from None


class Exporter:
    def __init__(self, nc: Client, archive: Backend, *, chunk_events: int = 5000, timeout: float = 5.0):
        self.nc = nc
        self.archive = archive
        self.chunk_events = chunk_events
        self.timeout = timeout
        self.last_run: float | None = None
        self.last_error: str | None = None
        self.content = ContentStore(nc, timeout=timeout)
        self._archived: set[str] = set()  # derived content known to be in the archive

    async def _archive_derived(self, cid: str) -> None:
        """Copy content an event points at to the archive (once), verified by CID."""
        if cid in self._archived:
            return
        key = f"{DERIVED}{cid}"
        if await self.archive.size_of(key) is None:
            try:
                data = await self.content.read(cid)  # verified against the CID by the content store
            except UnitNotFound:
                # Plain text is its own text: these bytes may be a unit's, moved on to a colder
                # tier since; the archive holds every unit, so it holds them as that unit.
                if await self.archive.size_of(cid) is None:
                    log.warning("content %s named by a steps.done event is neither in the content bucket nor "
                                "in the archive; not archived", cid)
                    return
            else:
                await self.archive.put_blob(key, data)
        self._archived.add(cid)

    async def export(self) -> int:
        """Export every event not yet in the archive; returns how many were written."""
        manifest = await read_manifest(self.archive)
        end = await last_seq(self.nc, EVENTS_STREAM, None, self.timeout)
        written = 0
        start = manifest["last_seq"] + 1
        while start <= end:
            lines: list[bytes] = []
            first = last = 0
            derived: list[str] = []
            async for m in read_stream(self.nc, EVENTS_STREAM, None, start_seq=start, timeout=self.timeout):
                first = first or m.seq
                last = m.seq
                if m.subject.endswith(".done"):
                    derived += derived_cids(StoredEvent.from_message(m.subject, m.seq, m.headers or {}, m.data))
                lines.append(json.dumps({
                    "seq": m.seq, "subject": m.subject, "headers": m.headers, "time_ns": m.timestamp_ns,
                    "data": m.data.decode("utf-8", "surrogateescape"),
                }, separators=(",", ":")).encode())
                if len(lines) >= self.chunk_events or m.seq >= end:
                    break
            if not lines:
                break
            for cid in derived:  # before the manifest names the chunk that points at it
                await self._archive_derived(cid)
            body = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=5)
            name = f"{PREFIX}events/{first:020d}-{last:020d}.jsonl.gz"
            digest = hashlib.sha256(body).hexdigest()
            await self.archive.put_blob(name, body)
            back = await self.archive.get_blob(name)
            if back is None or hashlib.sha256(back).hexdigest() != digest:
                raise TierError(f"the backup chunk {name} did not read back intact from {self.archive.where()}")
            manifest["chunks"].append({"name": name, "first_seq": first, "last_seq": last, "events": len(lines),
                                       "bytes": len(body), "sha256": digest})
            manifest["last_seq"] = last
            manifest["events"] += len(lines)
            manifest["updated"] = time.time()
            await self.archive.put_blob(MANIFEST, json.dumps(manifest, indent=1).encode())
            written += len(lines)
            start = last + 1
        self.last_run = time.time()
        return written

    async def status(self, index: Locations | None = None) -> dict:
        manifest = await read_manifest(self.archive)
        end = await last_seq(self.nc, EVENTS_STREAM, None, self.timeout)
        out = {
            "archive": self.archive.name, "where": self.archive.spec.where(),
            "exported_seq": manifest["last_seq"], "stream_seq": end, "lag_events": max(0, end - manifest["last_seq"]),
            "chunks": len(manifest["chunks"]), "exported_events": manifest["events"], "updated": manifest["updated"],
            "last_run": self.last_run, "last_error": self.last_error,
        }
        if index is not None:
            counts = index.counts()
            out["units"] = counts.units
            out["units_archived"] = counts.held(self.archive.name)[0]
        return out


# --- disaster recovery ----------------------------------------------------------------------


@dataclass
class RestoreReport:
    events: int
    units: int
    units_restored: int
    chunks: int
    derived_restored: int = 0


def _decode_chunk(name: str, body: bytes, sha256: str) -> list[dict]:
    if hashlib.sha256(body).hexdigest() != sha256:
        raise TierError(f"the backup chunk {name} does not match its checksum in the manifest; the archive is damaged")
    return [json.loads(line) for line in gzip.decompress(body).splitlines() if line]


async def _stored_at(nc: Client, fut: asyncio.Future, seq: int, timeout: float) -> None:
    """The replayed event `seq` is in the stream at `seq`, or the restore stops saying why.

    Bounded: nats-py leaves the future of an async publish the server refused unresolved (it
    reports the error to the connection instead), so a refusal shows as no answer, and the
    stream's end then says which it was."""
    try:
        ack = await asyncio.wait_for(fut, timeout)
    except (TimeoutError, nats.js.errors.APIError):
        end = await last_seq(nc, EVENTS_STREAM, None, timeout)
        if end >= seq:
            raise TierError(f"something else appended to {EVENTS_STREAM} while event #{seq} was being restored (the "
                            f"stream ends at #{end}): stop every agent and client of this leaf, then restore again onto "
                            "an empty leaf") from None
        raise JetStreamUnavailable(f"event #{seq} was not stored during restore (the stream ends at #{end}); check "
                                   "the server (`cim status`), then restore again onto an empty leaf") from None
    if ack.seq != seq or ack.duplicate:
        raise TierError(f"event #{seq} was taken for a duplicate of #{ack.seq} and not stored again; restore again "
                        "onto an empty leaf, and report the archive: every replayed event carries its own id")


async def restore(nc: Client, archive: Backend, *, provision: Callable[[Client], Awaitable[object]],
                  progress: Callable[[str, int, int], None] | None = None, timeout: float = 5.0) -> RestoreReport:
    """Rebuild an EMPTY leaf from the archive: streams and buckets (`provision`, which the
    caller passes: cim.provision.apply knows every capability), every event in its original
    order (so sequences, and with them revisions, are the same), and the content of every unit
    the index places in the hot tier. Refuses a leaf that already has events."""
    manifest = await read_manifest(archive)
    if not manifest["chunks"]:
        raise TierError(f"{archive.where()} holds no backup (no {MANIFEST}); check the URL and prefix")
    await provision(nc)
    # Its last sequence, not its last message: a purged stream holds none and still goes on
    # from where it was, where the events cannot go back at their own sequences.
    if (await nc.jetstream(timeout=timeout).stream_info(EVENTS_STREAM)).state.last_seq:
        raise TierError(
            f"{EVENTS_STREAM} already holds events (or held them: purged, it goes on from its last sequence): "
            "`cim restore` rebuilds an empty leaf only. Point it at a fresh server (an empty data directory)"
        )
    js = nc.jetstream(timeout=timeout)
    index = LocationIndex()
    total = manifest["events"]
    done = 0
    expected_seq = 1
    derived: dict[str, None] = {}
    for chunk in manifest["chunks"]:
        body = await archive.get_blob(chunk["name"])
        if body is None:
            raise TierError(f"the backup chunk {chunk['name']} named in the manifest is missing from {archive.where()}")
        futures = []
        for rec in _decode_chunk(chunk["name"], body, chunk["sha256"]):
            if rec["seq"] != expected_seq:
                raise TierError(f"the backup skips from sequence {expected_seq - 1} to {rec['seq']}; the archive is incomplete")
            expected_seq += 1
            headers = _replayed(rec["headers"])
            data = rec["data"].encode("utf-8", "surrogateescape")
            futures.append((rec["seq"], await js.publish_async(
                rec["subject"], data, headers={**headers, _EXPECTED_LAST: str(rec["seq"] - 1)})))
            stored = StoredEvent.from_message(rec["subject"], rec["seq"], headers, data)
            index.apply(stored)
            derived.update(dict.fromkeys(derived_cids(stored)))
        for seq, fut in futures:
            await _stored_at(nc, fut, seq, timeout)
        done += len(futures)
        if progress:
            progress("events", done, total)
    content = ContentStore(nc, timeout=timeout)
    hot = [u for u in index.live() if u.holds(HOT)]
    restored = 0
    for u in hot:
        try:
            spool = await Spool(in_memory=SPOOL_IN_MEMORY).fill(archive.get(u.cid, u.size))
            try:
                await content.put_stream(u.cid, await spool.file())
            finally:
                spool.close()
        except ObjectMissing:
            raise TierError(f"unit {u.cid} belongs in the hot tier but the archive has no copy of it") from None
        except CimError:
            raise
        restored += 1
        if progress:
            progress("units", restored, len(hot))
    derived_restored = 0
    for cid in derived:
        if await content.has(cid):  # a unit's own bytes, restored above
            continue
        data = await archive.get_blob(f"{DERIVED}{cid}")
        if data is None and index.units.get(cid) is not None:  # a unit's own bytes: archived as that unit
            with contextlib.suppress(ObjectMissing):
                data = b"".join([chunk async for chunk in archive.get(cid, index.units[cid].size)])
        if data is None:
            log.warning("derived content %s is not in the archive; what depends on it cannot be rebuilt", cid)
            continue
        if cidlib.compute(data) != cid:
            raise TierError(f"the archived content {DERIVED}{cid} does not match its CID; the archive is damaged")
        await content.put_bytes(data)
        derived_restored += 1
        if progress:
            progress("derived content", derived_restored, len(derived))
    return RestoreReport(events=done, units=len(index.live()), units_restored=restored, chunks=len(manifest["chunks"]),
                         derived_restored=derived_restored)
