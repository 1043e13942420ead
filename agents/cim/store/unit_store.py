"""Putting, getting, showing and listing units: content store + unit events, together.

The order of a put keeps a crash harmless: content first (content-addressed, so a
repeat is a no-op), then the `unit.created` event appended with expected revision 0.
The event is the record of the unit; content without its event is invisible and is
completed by putting the same file again. Nothing is acknowledged before both are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mimetypes
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nats.aio.client import Client

from .. import __version__
from .. import cid as cidlib
from ..errors import (
    CimError,
    ConcurrencyConflict,
    InvalidInput,
    JetStreamUnavailable,
    NotFound,
    UnitExpiredError,
    UnitNotFound,
    UnitTooLarge,
)
from ..events import Event, EventStore, StoredEvent
from ..spool import Spool
from .content import CHUNK_SIZE, ContentStore
from .events import UnitCreated, UnitRevised
from .unit_fold import UnitFold
from .units import Unit

# Reads a unit from a colder tier: (connection, the unit's folded state, timeout) -> its bytes.
ColdReader = Callable[..., AsyncGenerator[bytes, None]]  # closed when a read ends early

_HASH_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class PutResult:
    unit: Unit
    created: bool  # False: this content was stored before; `unit` is the stored one


@dataclass
class UnitView:
    unit: Unit
    children: list[str] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    revision: int = 0

    @property
    def labels(self) -> tuple[str, ...]:
        """The unit's own labels plus those pipeline steps added later (`unit.labeled`)."""
        state = UnitFold().apply_all(self.events).units.get(self.unit.cid)
        return state.labels if state is not None else tuple(sorted(self.unit.labels))


def guess_media_type(name: str | None) -> str:
    if not name:
        return "application/octet-stream"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class UnitStore:
    def __init__(
        self,
        nc: Client,
        *,
        max_unit_size: int | None = None,
        agent: str = "cim-cli",
        agent_version: str = __version__,
        timeout: float = 5.0,
        report_access: bool = False,
        cold: ColdReader | None = None,
    ):
        self.nc = nc
        # What reads a unit whose bytes left the hot tier (cim.tier.fetch.fetch, which asks
        # the tier agent); injected, so this module needs nothing of tiering.
        self.cold = cold
        # Off by default: a report is a publish on cim.tier.access, which an agent's
        # permissions must allow; `cim units get` turns it on for the `idle` policies.
        self.report_access = report_access
        self.events = EventStore(nc, timeout=timeout)
        self.content = ContentStore(nc, timeout=timeout)
        # The limit is the content bucket's (server-side, one for every writer); a writer's
        # own setting (the hub's max_body_size, a store agent's max_unit_size) only lowers it.
        self.max_unit_size = max_unit_size
        self.agent = agent
        self.agent_version = agent_version

    async def limit(self) -> tuple[int, str]:
        """The largest unit this writer may put, and where that limit is set."""
        bucket = await self.content.max_unit_size()
        if self.max_unit_size is not None and self.max_unit_size < bucket:
            return self.max_unit_size, "raise max_unit_size in this writer's settings, or split the file"
        return bucket, ("the content bucket's limit, kept on the server: raise max_unit_size of CIM_CONTENT in the "
                        "provisioning spec (`cim provision --spec`), or split the file")

    async def _check_size(self, size: int, what: str) -> None:
        limit, where = await self.limit()
        if size > limit:
            raise self._too_large(size, what, limit, where)

    @staticmethod
    def _too_large(size: int, what: str, limit: int, where: str) -> UnitTooLarge:
        return UnitTooLarge("size", f"{what} has {size} bytes, over the limit of {limit} bytes ({where})")

    # --- put ----------------------------------------------------------------------------

    async def put_file(self, path: Path, *, progress: Callable[[int], None] | None = None, **meta: Any) -> PutResult:
        path = Path(path)
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise InvalidInput("file", f"{path} is not a regular file")
        except FileNotFoundError:
            raise InvalidInput("file", f"{path} does not exist") from None
        await self._check_size(size, str(path))
        meta.setdefault("title", path.name)
        meta.setdefault("media_type", guess_media_type(path.name))
        with await asyncio.to_thread(path.open, "rb") as f:
            cid = await asyncio.to_thread(_hash_file, f)  # big files must not stall the loop
            f.seek(0)
            return await self._put(cid, size, f, progress=progress, **meta)

    async def put_bytes(self, data: bytes, **meta: Any) -> PutResult:
        await self._check_size(len(data), "the content")
        return await self._put(cidlib.compute(data), len(data), io.BytesIO(data), **meta)

    async def put_stream(self, reader: IO[bytes], **meta: Any) -> PutResult:
        """Content from a pipe: spooled (to a temporary file past a mebibyte, never all in
        memory), read and written off the event loop, hashed on the way, then put."""
        limit, where = await self.limit()
        spool = Spool(hash=True, limit=limit, too_large=lambda size: self._too_large(size, "the input", limit, where))
        try:
            return await self.put_spool(await spool.fill_from(reader), **meta)
        finally:
            spool.close()

    async def put_spool(self, spool: Spool, **meta: Any) -> PutResult:
        """Content a spool collected with `hash=True` (the hub's uploads, a pipe)."""
        await self._check_size(spool.size, "the content")
        return await self._put(spool.cid(), spool.size, await spool.file(), **meta)

    async def revise(self, parent: str, source: Path | bytes, **changes: Any) -> PutResult:
        """Store new content as a revision of `parent`: a new unit naming it as parent."""
        base = (await self.show(parent)).unit
        if isinstance(source, bytes):
            await self._check_size(len(source), "the revision")
            return await self._put_revision(base, cidlib.compute(source), len(source), io.BytesIO(source), changes)
        path = Path(source)
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            raise InvalidInput("file", f"{path} does not exist") from None
        await self._check_size(size, str(path))
        with await asyncio.to_thread(path.open, "rb") as f:  # streamed, like put_file: never all in memory
            cid = await asyncio.to_thread(_hash_file, f)
            f.seek(0)
            return await self._put_revision(base, cid, size, f, changes)

    async def _put_revision(self, base: Unit, cid: str, size: int, content: IO[bytes], changes: dict) -> PutResult:
        fields = base.revise(cid=cid, size=size, **changes).model_dump()
        return await self._put(cid, size, content, **{k: v for k, v in fields.items() if k not in ("cid", "size")})

    async def put_small_many(self, items: list[tuple[bytes, dict[str, Any]]]) -> list[PutResult | CimError]:
        """Many small units at once, pipelined: one lookup of which contents are stored
        already, every missing content in two waves (chunks, then index entries), then every
        `unit.created` in one wave, each with expected revision 0. The guarantees of `_put`
        hold per unit: its event is appended only after its content is stored, a retry
        finds it stored (created=False), and a failure fails that unit alone.

        A unit bigger than one chunk, or a revision, goes through `_put` on its own."""
        out: list[PutResult | CimError | None] = [None] * len(items)
        limit, where = await self.limit()
        batch: list[tuple[int, Unit, bytes]] = []
        for i, (data, meta) in enumerate(items):
            try:
                if len(data) > limit:
                    raise self._too_large(len(data), "the content", limit, where)
                cid = cidlib.compute(data)
                if len(data) > CHUNK_SIZE or meta.get("parents"):
                    out[i] = await self._put(cid, len(data), io.BytesIO(data), **meta)
                    continue
                batch.append((i, Unit.create(cid=cid, size=len(data), **meta), data))
            except CimError as err:
                out[i] = err
        stored = await self.content.read_small(list(dict.fromkeys(u.cid for _, u, _ in batch)))
        missing = {u.cid: data for _, u, data in batch if u.cid not in stored}
        outcome = dict(zip(missing, await self.content.put_small_many(list(missing.items())), strict=True))
        events = []
        for i, unit, _ in batch:
            failed = outcome.get(unit.cid)
            if failed is not None:
                out[i] = failed
                continue
            events.append((i, unit, Event.of(UnitCreated.model_validate(unit.model_dump()), unit.cid,
                                             id=f"unit-created-{unit.cid}", agent=self.agent,
                                             agent_version=self.agent_version)))
        appended = await self.events.append_each([e for _, _, e in events], expected_revision=0)
        for (i, unit, _), result in zip(events, appended, strict=True):
            if isinstance(result, ConcurrencyConflict):  # stored before (a retry, or the same bytes twice)
                try:
                    out[i] = await self._stored_before(unit.cid)
                except CimError as err:
                    out[i] = err
            elif isinstance(result, CimError):
                out[i] = result
            else:
                out[i] = PutResult(unit, created=True)
        return [r if r is not None else JetStreamUnavailable("no outcome; put it again") for r in out]

    async def _put(self, cid: str, size: int, content: IO[bytes], *, progress=None, **meta: Any) -> PutResult:
        unit = Unit.create(cid=cid, size=size, **meta)  # validates before anything is stored
        for p in unit.parents:
            await self.show(p)  # a revision of a unit we do not have is refused up front
        await self.content.put_stream(cid, content, progress=progress)
        created = Event.of(
            UnitCreated.model_validate(unit.model_dump()), cid, id=f"unit-created-{cid}",
            agent=self.agent, agent_version=self.agent_version,
        )
        try:
            await self.events.append(created, expected_revision=0)
        except ConcurrencyConflict:
            result = await self._stored_before(cid)
        else:
            result = PutResult(unit, created=True)
        # Also after a conflict: a put retried because a parent's `unit.revised` failed finds
        # the child stored, and the parent must still learn of it (the ids make it once). The
        # parents the stored record names, not this request's: the same bytes put earlier as
        # another unit's revision (or as none) are that, whatever a later put says.
        for p in result.unit.parents:
            await self.events.append(
                Event.of(
                    UnitRevised(child=cid), p, id=f"unit-revised-{p}-{cid}",
                    causation_id=created.id, agent=self.agent, agent_version=self.agent_version,
                )
            )
        return result

    async def _stored_before(self, cid: str) -> PutResult:
        """The unit a put found stored already (a retry, or the same bytes twice): created=False.
        An expired one is refused: its history ends with its expiry, and the bytes just put
        would be swept as a copy nothing holds, while the put said "already stored"."""
        view = await self.show(cid)
        state = UnitFold().apply_all(view.events).units[cid]
        if state.expired:
            raise UnitExpiredError(cid, state.expired.get("policy", "?"), state.expired.get("time", "?"), put=True)
        return PutResult(view.unit, created=False)

    # --- read ---------------------------------------------------------------------------

    async def unit(self, cid: str) -> Unit:
        """Just the unit (its `unit.created` record): one request, for hot paths."""
        cidlib.validate(cid)
        try:
            created = await self.events.last(f"cim.evt.unit.{cid}.created")
        except NotFound:
            raise UnitNotFound(cid) from None
        return Unit.model_validate(created.data)

    async def show(self, cid: str) -> UnitView:
        cidlib.validate(cid)
        events = await self.events.aggregate("unit", cid)
        created = next((e for e in events if e.type == "unit.created" and not e.problem), None)
        if created is None:
            raise UnitNotFound(cid)
        state = UnitFold().apply_all(events).units[cid]
        return UnitView(Unit.model_validate(created.data), list(state.children), events, events[-1].seq)

    async def get(self, cid: str) -> AsyncIterator[bytes]:
        cidlib.validate(cid)
        try:
            async for chunk in self.content.get(cid):
                yield chunk
        except UnitNotFound:
            pass  # no hot copy (raised before any chunk): maybe in a colder tier, below
        else:
            await self._report_access(cid)
            return
        # Read-through: the unit's own events, folded, say where the bytes went; the cold
        # reader (the tier agent, which holds the colder tiers' keys) streams them from there,
        # verified by CID on both sides.
        where = UnitFold().apply_all(await self.events.aggregate("unit", cid)).units.get(cid)
        if where is None or not where.known:
            raise UnitNotFound(cid)
        if where.expired:
            raise UnitExpiredError(cid, where.expired.get("policy", "?"), where.expired.get("time", "?"))
        if self.cold is None:
            raise NotFound(f"the bytes of {cid} are in the {', '.join(sorted(where.tiers)) or 'colder'} tier(s), and this "
                           "reader has no cold-tier reader (UnitStore(cold=cim.tier.fetch.fetch) asks the tier agent)")
        # Closed with this reader, not whenever the collector finds it: a hub download's cold
        # place (cim.hub.http_api) is given back when the cold read ends.
        async with contextlib.aclosing(self.cold(self.nc, where, timeout=max(self.events.timeout * 6, 30.0))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _report_access(self, cid: str) -> None:
        """Tell the tier agent a unit was read (its `idle` policies); best effort, no reply."""
        if not self.report_access:
            return
        try:
            await self.nc.publish("cim.tier.access", cid.encode())
        except Exception:  # a read never fails for want of this report
            pass

    async def exists(self, cid: str) -> bool:
        try:
            await self.events.last(f"cim.evt.unit.{cid}.created")
            return True
        except NotFound:
            return False

    async def list(self, *, label: str | None = None, limit: int | None = None) -> AsyncIterator[Unit]:
        """Units in the order they were stored, each with every label it has now: its own and
        those pipeline steps added (`unit.labeled`), folded by cim.store.unit_fold; with `label`,
        only those carrying it. The labels added are read first, then the units stream by, so
        only labeled units are held in memory."""
        fold = UnitFold(keep_bodies=True)
        async for e in self.events.read(["cim.evt.unit.*.labeled"]):
            fold.apply(e)
        count = 0
        async for e in self.events.read(["cim.evt.unit.*.created"]):
            state = fold.apply(e)
            if state is None or not state.known:
                continue
            fold.units.pop(state.cid, None)
            if label and label not in state.labels:
                continue
            yield state.unit()
            count += 1
            if limit is not None and count >= limit:
                return


def _hash_file(f: IO[bytes]) -> str:
    hasher = cidlib.Hasher()
    while block := f.read(_HASH_BLOCK):
        hasher.update(block)
    return hasher.cid()
