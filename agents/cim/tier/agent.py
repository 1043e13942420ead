"""The `tier` agent: moves units between tiers by policy, serves reads from colder tiers,
verifies, restores single units and exports the event stream to the archive.

Endpoints (`cim.tier.*`): status, migrate, verify, restore, backup_status; plus the
streaming `cim.tier.fetch` (read-through, see tiering/fetch.py) and `cim.tier.access`
(last-access reports from readers, kept in the KV bucket CIM_TIER_ACCESS).

The location index is a projection on disk under the agent's state directory
(location_db.py): a start resumes from its checkpoint and folds only newer unit events.
Whatever plans from it first waits until it covers the stream's end (`_require_fresh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from .. import cid as cidlib
from ..errors import CimError, ProjectionUnavailable, UnitNotFound
from ..events import EventStore
from ..metrics import Sampled
from ..names import CONTENT_BUCKET
from ..projection_db import state_dir
from ..runtime import AgentBase, AgentContext, endpoint
from ..runtime import progress as runtime_progress
from ..store.unit_fold import HOT
from . import api
from .api import CidRequest, Empty, MigrateRequest, VerifyRequest
from .backends import Backend, open_backend
from .backup import Exporter
from .config import ACCESS_BUCKET, Config
from .errors import ObjectMissing, TierUnavailable, UnitExpiredError
from .fetch import FetchServer
from .location_db import LocationProjection
from .locations import for_unit
from .metrics import holdings
from .migrate import BACKOFF, Migrator, MoveResult
from .urls import TierSpec

log = logging.getLogger("cim.tier")

ACCESS_SUBJECT = "cim.tier.access"
# Reads from colder tiers served at once; more wait in the subscription's queue.
FETCHES_AT_ONCE = 32
HOT_SPEC = TierSpec(name=HOT, url=f"jetstream://{CONTENT_BUCKET}")
# How long a plan (policy run, resumed move, verify) waits for the index to cover the
# stream's end before it is skipped and says why; a status answers stale after STATUS_WAIT.
CATCH_UP_WAIT = 30.0
STATUS_WAIT = 2.0


# --- requests and replies -------------------------------------------------------------------


def _result(r: MoveResult) -> dict:
    return {k: getattr(r, k) for k in ("cid", "policy", "action", "from_tier", "to_tier", "size", "ok", "error")}


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        self.events = EventStore(ctx.nc)
        self.tiers: dict[str, Backend] = {HOT: open_backend(HOT_SPEC, ctx.nc)}
        for spec in self.config.tiers:
            self.tiers[spec.name] = open_backend(spec, ctx.nc)  # a missing credentials file fails here
        self.migrator = Migrator(self.events, self.tiers, agent=self.config.agent_name,
                                 concurrency=self.config.concurrency, retry_for=self.config.read_retry_for)
        self.exporter = (Exporter(ctx.nc, self.tiers[self.config.backup.tier], chunk_events=self.config.backup.chunk_events)
                         if self.config.backup else None)
        self.locations = LocationProjection(self.events, state_dir(self.config.state_dir))
        self.index = self.locations.index
        self.access: dict[str, float] = {}
        self._access_dirty: set[str] = set()
        self._access_flush: asyncio.Task | None = None
        self.fetcher = FetchServer(ctx.nc, self._open_stream, ctx.tasks.bounded(FETCHES_AT_ONCE))
        self.last_migration: dict | None = None
        self._wake = asyncio.Event()
        # Promotions on read run beside reads, a few at a time; one past that is skipped (the
        # unit is promoted when it is read again).
        self._promotions = ctx.tasks.bounded(self.config.concurrency)
        self._promoting: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        for backend in self.tiers.values():
            try:
                await backend.check()
            except TierUnavailable as err:  # a tier that is down now may come back; retried later
                self.migrator.note_error(f"checking tier {backend.name}", err)
        self.locations.open()
        self.ctx.tasks.spawn(self.locations.run(), name="index")
        self.ctx.metrics.register(Sampled("the location index", self._holdings, asyncio.get_running_loop()))
        await self._load_access()
        await self.fetcher.start()
        await self.nc.subscribe(ACCESS_SUBJECT, cb=self._on_access)
        self.ctx.tasks.spawn(self._loop(), name="migrate")
        if self.exporter:
            self.ctx.tasks.spawn(self._backup_loop(), name="backup")

    async def quiesce(self) -> None:
        await self.fetcher.stop()  # new reads go to the other tier agents; those in flight are told

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._flush_access()
        for b in self.tiers.values():
            b.close()
        self.locations.close()

    async def _holdings(self) -> list:
        return holdings(list(self.tiers), self.index.counts())

    async def _require_fresh(self, what: str) -> None:
        """A plan never works from a stale index: wait for it to catch up, or skip the plan."""
        why = await self.locations.current(CATCH_UP_WAIT)
        if why:
            raise ProjectionUnavailable(f"{what} was skipped: {why} after waiting {CATCH_UP_WAIT:g} s. It runs once "
                                        "the index has caught up (`cim tier status` says stale: false then)")

    async def _loop(self) -> None:
        """Finish interrupted moves first, then run the policies every migrate_interval."""
        await self.locations.built(self.ctx.stopping)
        while not self.ctx.stopping.is_set():
            try:
                await self._require_fresh("this migration run")
                await self.migrator.resume(self.index)
                if self.config.policies:
                    await self._run(dry_run=False)
            except CimError as err:
                self.migrator.note_error("migration run", err)
            except Exception as err:  # never let the loop die; the error is reported in status
                log.exception("migration run failed")
                self.migrator.note_error("migration run", err)
            await self._sleep(self.config.migrate_interval)

    async def _sleep(self, seconds: float) -> None:
        """Wait for the next run, or for SIGTERM, whichever comes first."""
        stop = asyncio.create_task(self.ctx.stopping.wait())
        try:
            await asyncio.wait([stop], timeout=seconds)
        finally:
            stop.cancel()

    async def _backup_loop(self) -> None:
        assert self.exporter and self.config.backup
        await self.locations.built(self.ctx.stopping)
        while not self.ctx.stopping.is_set():
            try:
                await self._require_fresh("this backup run")
                await self.migrator.copy_all_to(self.index, self.config.backup.tier)
                await self.exporter.export()
                self.exporter.last_error = None
            except Exception as err:
                self.exporter.last_error = str(err)
                self.migrator.note_error("backup", err)
            await self._sleep(self.config.backup.interval)

    async def _run(self, dry_run: bool, progress: Callable[[dict], Coroutine[Any, Any, None]] | None = None) -> dict:
        await self._require_fresh("the policy run")
        sent: list[asyncio.Task] = []
        planned_info: dict = {}

        def planned(n: int, size: int) -> None:
            planned_info.update(units=n, bytes=size)
            if progress:
                sent.append(asyncio.create_task(progress({"planned": n, "bytes": size})))

        def each(r: MoveResult) -> None:
            if progress:
                sent.append(asyncio.create_task(progress(_result(r))))

        report = await self.migrator.run_policies(self.index, self.config.policies, self.access, dry_run=dry_run,
                                                  progress=each, planned=planned, promote_hold=self.config.promote_hold)
        await asyncio.gather(*sent)
        summary = {
            "dry_run": dry_run, "planned": planned_info.get("units", 0), "bytes": planned_info.get("bytes", 0),
            "done": sum(1 for r in report.moved if r.ok), "failed": [_result(r) for r in report.failed],
            "results": [_result(r) for r in report.moved], "finished": time.time(),
        }
        if not dry_run:
            self.last_migration = {k: v for k, v in summary.items() if k != "results"}
            await self.locations.current(STATUS_WAIT)  # so a status right after counts these moves
        return summary

    # --- last access ----------------------------------------------------------------------

    async def _load_access(self) -> None:
        from ..nats.read import read_stream

        try:
            async for m in read_stream(self.nc, f"KV_{ACCESS_BUCKET}", [f"$KV.{ACCESS_BUCKET}.>"], resume_for=5):
                self.access[m.subject.rsplit(".", 1)[-1]] = float(m.data or 0)
        except CimError as err:  # no bucket yet: every unit counts as never read
            log.info("no access times loaded: %s", err)

    async def _on_access(self, msg) -> None:
        # Any reader may report here: only a valid CID is recorded, so junk neither grows
        # `self.access` nor becomes a KV subject (`b*`, `b>` and `b x` would break the flush).
        try:
            cid = cidlib.validate(msg.data.decode().strip())
        except ValueError:  # not UTF-8, or not a CID (InvalidCid)
            return
        self._accessed(cid)

    def _accessed(self, cid: str) -> None:
        """Record a read, and write it to the KV a little later with the reads that arrive
        meanwhile (not one put per read). Whoever records a read also makes sure a flush is
        on its way: before, a read recorded without one left every later report unwritten."""
        self.access[cid] = time.time()
        self._access_dirty.add(cid)
        if self._access_flush is None or self._access_flush.done():
            self._access_flush = self.ctx.tasks.spawn(self._flush_access(after=2.0), name="access-flush")

    async def _flush_access(self, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)  # batching reports that arrive meanwhile, not waiting for a condition
        self._access_flush = None  # reads from here on need a flush of their own
        dirty, self._access_dirty = self._access_dirty, set()
        if not dirty:
            return
        js = self.nc.jetstream()
        pending = list(dirty)
        failed: list[str] = []
        in_a_row = 0
        try:
            while pending:
                cid = pending.pop()
                try:
                    # Straight to the KV subject: no bucket lookup, so no extra permission needed.
                    await js.publish(f"$KV.{ACCESS_BUCKET}.{cid}", str(self.access[cid]).encode(), stream=f"KV_{ACCESS_BUCKET}")
                    in_a_row = 0
                except Exception as err:  # one read that cannot be written costs only itself
                    failed.append(cid)
                    in_a_row += 1
                    if in_a_row == 1:
                        self.migrator.note_error("recording last access", err)
                    if in_a_row >= 3:  # the server is away, not one subject wrong: no timeout per read
                        failed += pending
                        pending = []
        except asyncio.CancelledError:
            self._access_dirty |= dirty  # cancelled on stop: the final flush writes them (again: harmless)
            raise
        self._access_dirty.update(failed)  # kept for the next flush (the next read's, or the one at stop)

    # --- read-through ----------------------------------------------------------------------

    async def _open_stream(self, cid: str, notify: Callable[[str], Awaitable[None]]) -> AsyncIterator[bytes]:
        u = await for_unit(self.events, cid)
        if not u.known:
            raise UnitNotFound(cid)
        if u.expired:
            raise UnitExpiredError(cid, u.expired.get("policy", "?"), u.expired.get("time", "?"))
        failures: list[str] = []
        unavailable = False  # a tier that may hold it did not answer: an outage, not a loss
        loop = asyncio.get_running_loop()
        for name in self.migrator.order(u.tiers):
            backend = self.tiers[name]
            deadline = loop.time() + self.config.read_retry_for
            attempt = 0
            while True:
                gen = backend.get(cid, u.size)
                try:
                    first = await gen.__anext__()
                except StopAsyncIteration:
                    first = b""
                except ObjectMissing:
                    failures.append(f"{backend.where()} has no copy")
                    break
                except TierUnavailable as err:
                    await gen.aclose()  # type: ignore[attr-defined]  # an async generator
                    if loop.time() >= deadline:
                        failures.append(str(err))
                        unavailable = True
                        break
                    await notify(f"{err}; retrying")
                    await asyncio.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])  # backoff at a tier that is down
                    attempt += 1
                    continue
                self._accessed(cid)
                return self._rest(cid, name, first, gen)
        if not unavailable:
            # Every tier that should hold it answered, and none has it: a loss, not an outage.
            raise TierUnavailable(
                f"unit {cid} has no copy in any tier: " + "; ".join(failures or ["no tier is recorded as holding it"])
                + ". Its content is lost unless a backup holds it: `cim tier verify` lists such units, "
                "and `cim backup restore` brings back what the archive has"
            )
        raise TierUnavailable(
            f"unit {cid} cannot be read now: " + "; ".join(failures or ["no tier holds it"])
            + ". Nothing is lost: start the tier's server (or fix its endpoint) and read again"
        )

    async def _rest(self, cid: str, tier: str, first: bytes, gen: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in gen:
            yield chunk
        if self.config.promote_on_read and tier != HOT and cid not in self._promoting:
            self._promoting.add(cid)  # now, so a second read finishing meanwhile starts no second promotion
            if self._promotions.try_spawn(self._promote(cid), name=f"promote-{cid}") is None:
                self._promoting.discard(cid)
                log.info("not promoting %s now: %d promotions are running", cid, self._promotions.running)

    async def _promote(self, cid: str) -> None:
        try:
            await self.migrator.restore(cid)
        finally:
            self._promoting.discard(cid)

    # --- endpoints -------------------------------------------------------------------------

    @endpoint(api.STATUS)
    async def status(self, req: Empty) -> dict:
        """Units and bytes per tier, pending moves and the last errors, and how fresh the
        location index is (`stale`: it may miss unit events; `replayed`: applied since start)."""
        fresh = await self.locations.current(STATUS_WAIT) is None
        counts = self.index.counts()  # before start() opens the index, this answers that the agent is starting
        tiers = []
        for name, backend in self.tiers.items():
            units, size = counts.held(name)
            tiers.append({"name": name, "url": backend.spec.where(), "units": units, "bytes": size})
        return {
            "tiers": tiers,
            "units": counts.units,
            "expired": counts.expired,
            "pending": counts.pending,
            "pending_moves": [{"cid": u.cid, **{k: v for k, v in (u.pending or {}).items() if k != "seq"}}
                              for u in self.index.pending(limit=20)],
            "policies": [p.model_dump(by_alias=True) for p in self.config.policies],
            "last_migration": self.last_migration,
            "errors": list(self.migrator.errors),
            **self.locations.state(fresh),
        }

    @endpoint(api.MIGRATE)
    async def migrate(self, req: MigrateRequest) -> dict:
        """Run the policies now (or only plan them with dry_run)."""
        if not req.dry_run:
            await self._require_fresh("resuming interrupted moves")
            await self.migrator.resume(self.index)
        return await self._run(req.dry_run, runtime_progress if req.progress else None)

    @endpoint(api.VERIFY)
    async def verify(self, req: VerifyRequest) -> dict:
        """Re-hash objects in each tier; report missing, corrupt and orphan ones."""
        if req.tier is not None and req.tier not in self.tiers:
            from ..errors import InvalidInput

            raise InvalidInput("tier", f"no tier {req.tier!r}; configured: {', '.join(self.tiers)}")
        await self._require_fresh("the verify")
        return await self.migrator.verify(self.index, req.tier, req.sample)

    @endpoint(api.RESTORE)
    async def restore(self, req: CidRequest) -> dict:
        """Bring a unit back to the hot tier."""
        result = await self.migrator.restore(req.cid)
        if not result.ok:
            raise TierUnavailable(result.error or f"restoring {req.cid} failed")
        return _result(result)

    @endpoint(api.BACKUP_STATUS)
    async def backup_status(self, req: Empty) -> dict:
        """How far the event export to the archive is."""
        if self.exporter is None:
            return {"configured": False}
        await self.locations.current(STATUS_WAIT)
        return {"configured": True, **await self.exporter.status(self.index)}

