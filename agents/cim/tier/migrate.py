"""The migration protocol, in its fixed order, resumable at every step:

1. `unit.moving` (the intent) is appended with the unit's expected revision;
2. the bytes are copied to the colder tier and verified THERE;
3. `unit.located` records the new place, with the expected revision of the intent;
4. only then is the hotter copy deleted.

All state is in the event stream: after a crash, `resume()` finds every intent without its
`unit.located` and finishes it (copying again is harmless: objects are keyed by CID), and
every copy the index says was dropped but still exists is deleted (step 4 again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal

from pydantic import BaseModel

from .. import __version__
from ..errors import CidMismatch, CimError, ConcurrencyConflict, NotFound
from ..events import Event, EventStore
from ..store.unit_fold import HOT
from .backends import Backend
from .errors import ObjectMissing, TierError, TierUnavailable
from .events import UnitExpired, UnitLocated, UnitMoving, VerifiedBy
from .locations import Locations, UnitLocation, for_unit
from .metrics import ERRORS, EXPIRED, MOVED_BYTES, MOVES, direction
from .policies import Policy, plan

log = logging.getLogger("cim.tier")

BACKOFF = (0.2, 0.5, 1, 2, 5)
PLAN_PAGE = 1000  # units planned between yields to the event loop: reads and status answer meanwhile


@dataclass
class MoveResult:
    cid: str
    policy: str
    action: str
    from_tier: str | None
    to_tier: str | None
    size: int
    ok: bool
    error: str | None = None


@dataclass
class Report:
    moved: list[MoveResult] = field(default_factory=list)

    @property
    def failed(self) -> list[MoveResult]:
        return [m for m in self.moved if not m.ok]


def _snapshot(u: UnitLocation) -> UnitLocation:
    """A copy a move can change without changing the index it came from."""
    return dataclasses.replace(u, tiers=set(u.tiers), pending=dict(u.pending) if u.pending else None)


class Migrator:
    def __init__(self, events: EventStore, tiers: dict[str, Backend], *, agent: str = "cim-tier",
                 concurrency: int = 4, retry_for: float = 10.0):
        self.events = events
        self.tiers = tiers  # hot first, then colder ones, in the configured order
        self.agent = agent
        self.concurrency = concurrency
        self.retry_for = retry_for
        self.errors: deque[dict] = deque(maxlen=20)
        self._lock = asyncio.Lock()

    def note_error(self, what: str, err: BaseException) -> None:
        log.warning("%s: %s", what, err)
        self.errors.append({"time": time.time(), "what": what, "error": str(err)})
        ERRORS.inc()

    def _event(self, data: BaseModel, cid: str, **kw: Any) -> Event:
        return Event.of(data, cid, agent=self.agent, agent_version=__version__, **kw)

    def order(self, tiers) -> list[str]:
        return [t for t in self.tiers if t in tiers]

    # --- one unit -----------------------------------------------------------------------

    async def move(self, cid: str, policy: str, from_tier: str | None, to_tier: str, action: Literal["copy", "move"], *,
                   seen: UnitLocation | None = None) -> MoveResult:
        """Copy or move one unit, from `from_tier` (None: the hottest that holds it).

        `seen` is the unit as the caller's index has it, taken as is instead of reading the
        unit's events again: the intent's expected revision refuses a stale view, and then
        the move starts over from the events."""
        u = _snapshot(seen) if seen else await for_unit(self.events, cid)
        src = from_tier or next(iter(self.order(u.tiers)), None)
        result = MoveResult(cid, policy, action, src, to_tier, u.size, ok=False)
        try:
            if not u.known or u.expired:
                raise NotFound(f"unit {cid} is not stored (or expired); nothing to move")
            if u.pending:
                return await self._finish(u)
            if src is None or not u.holds(src):
                result.action = "skip"  # moved meanwhile (the index lagged): nothing to do
                result.ok = True
                return result
            if u.holds(to_tier) and action == "copy":
                result.ok = True
                return result
            intent = self._event(UnitMoving(from_tier=src, to_tier=to_tier, action=action, policy=policy), cid)
            appended = await self.events.append(intent, expected_revision=u.revision)
            u.pending = {**intent.data, "seq": appended.seq}
            u.revision = appended.seq
            return await self._finish(u, fresh=True)
        except ConcurrencyConflict as err:
            if seen is not None:  # the index was behind the unit: once more, from its events
                return await self.move(cid, policy, from_tier, to_tier, action)
            result.error = f"the unit changed while it was being moved ({err}); the next run retries it"
        except CimError as err:
            result.error = str(err)
            self.note_error(f"{action} {cid} {src} -> {to_tier}", err)
        return result

    async def _finish(self, u: UnitLocation, fresh: bool = False) -> MoveResult:
        """Steps 2-4 of a recorded intent; harmless to repeat. `fresh`: the intent was just
        recorded by this run, so no earlier attempt can have left a copy to reuse."""
        p = u.pending or {}
        src, dst, action = p["from_tier"], p["to_tier"], p["action"]
        result = MoveResult(u.cid, p.get("policy", ""), action, src, dst, u.size, ok=False)
        source, target = self.tiers.get(src), self.tiers.get(dst)
        if source is None or target is None:
            raise TierError(f"unit {u.cid} is being moved {src} -> {dst}, but tier {src if source is None else dst!r} "
                            "is not configured any more; add it back to finish the move")
        # A move onto a tier that already holds a copy (a unit promoted on read, moved back)
        # still records the drop: the index must not place the unit where it is deleted.
        if not u.holds(dst) or (action == "move" and u.holds(src)):
            verified_by = await self._copy(u, source, target, fresh)
            dropped = [src] if action == "move" else []
            located = self._event(UnitLocated(tier=dst, url=target.spec.where(), size=u.size, verified_by=verified_by,
                                              dropped=dropped), u.cid)
            appended = await self.events.append(located, expected_revision=u.revision)
            u.revision = appended.seq
            u.tiers.add(dst)
            u.tiers.difference_update(dropped)
            way = direction(list(self.tiers), src, dst)
            MOVES.labels(dst, way).inc()
            MOVED_BYTES.labels(dst, way).inc(u.size)
        u.pending = None
        if action == "move":
            await self._retrying(f"deleting {u.cid} from {src}", lambda: source.delete(u.cid))
        result.ok = True
        return result

    async def _copy(self, u: UnitLocation, source: Backend, target: Backend, fresh: bool) -> VerifiedBy:
        attempts = 0

        async def copy() -> VerifiedBy:
            nonlocal attempts
            attempts += 1
            # A copy already verified there (a crash after step 2) needs no second upload;
            # only a resumed intent or a retry can find one, so a fresh one does not ask.
            if (not fresh or attempts > 1) and await target.size_of(u.cid) == u.size:
                try:
                    await target.read_back(u.cid, u.size)
                    return "read-back"
                except CidMismatch:
                    pass  # a broken earlier copy: overwrite it
            return await target.put(u.cid, u.size, source.get(u.cid, u.size))

        return await self._retrying(f"copying {u.cid} {source.name} -> {target.name}", copy)

    async def _retrying(self, what: str, op: Callable):
        """Retry an outage with backoff for `retry_for` seconds; other errors are final."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        attempt = 0
        while True:
            try:
                return await op()
            except TierUnavailable as err:
                if loop.time() >= deadline:
                    raise
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)] * (0.8 + 0.4 * random.random())
                attempt += 1
                log.info("%s: %s; retry %d in %.1fs", what, err, attempt, delay)
                await asyncio.sleep(delay)  # backoff between attempts at a tier that is down

    async def expire(self, cid: str, policy: str, reason: str, *,
                     still: Callable[[UnitLocation], bool] | None = None) -> MoveResult:
        """Expire one unit; with `still`, only if the unit as its events have it now still
        matches (a page of a run is planned before its units are worked, and a read or a
        promotion meanwhile must keep the unit: its bytes go for good)."""
        u = await for_unit(self.events, cid)
        if still is not None and not u.expired and not still(u):
            return MoveResult(cid, policy, "none", None, None, u.size, ok=True)
        result = MoveResult(cid, policy, "expire", None, None, u.size, ok=False)
        try:
            if not u.expired:
                await self.events.append(self._event(UnitExpired(policy=policy, reason=reason), cid),
                                         expected_revision=u.revision)
            await self._drop_everywhere(cid)
            if not u.expired:  # counted once, by the run that recorded it
                EXPIRED.inc()
            result.ok = True
        except CimError as err:
            result.error = str(err)
            self.note_error(f"expire {cid}", err)
        return result

    async def _drop_everywhere(self, cid: str) -> None:
        for backend in self.tiers.values():
            await self._retrying(f"deleting expired {cid} from {backend.name}", lambda b=backend: b.delete(cid))

    async def restore(self, cid: str) -> MoveResult:
        """Bring a unit back to the hot tier (a copy: the colder copy stays)."""
        u = await for_unit(self.events, cid)
        if u.holds(HOT) and not u.pending:
            return MoveResult(cid, "restore", "copy", HOT, HOT, u.size, ok=True)
        return await self.move(cid, "restore", None, HOT, "copy")

    # --- many units ---------------------------------------------------------------------

    async def _each(self, jobs, run, progress: Callable[[MoveResult], None] | None) -> Report:
        report = Report()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(job):
            async with gate:
                r = await run(job)
            report.moved.append(r)
            if progress:
                progress(r)

        await asyncio.gather(*(one(j) for j in jobs))
        return report

    async def resume(self, index: Locations) -> Report:
        """Finish what a crash interrupted: pending intents, then copies left behind."""
        async def finish(u: UnitLocation) -> MoveResult:
            fresh = await for_unit(self.events, u.cid)
            if not fresh.pending:
                return MoveResult(u.cid, "resume", "none", None, None, fresh.size, ok=True)
            try:
                return await self._finish(fresh)
            except CimError as err:
                self.note_error(f"resuming the move of {u.cid}", err)
                return MoveResult(u.cid, "resume", fresh.pending["action"], fresh.pending["from_tier"],
                                  fresh.pending["to_tier"], fresh.size, ok=False, error=str(err))

        async with self._lock:  # one run at a time: two finishing one intent would conflict
            report = await self._each(index.pending(), finish, None)
            await self.sweep(index)
        return report

    async def sweep(self, index: Locations) -> list[str]:
        """Delete copies that were dropped (a crash between steps 3 and 4) and bytes of expired
        units: the index picks the candidates, each unit's own events decide. Content of units
        with no `unit.created` is left alone: it is a put in progress."""
        done = []
        for name, backend in self.tiers.items():
            try:
                async for cid, _size in backend.list():
                    if not _dropped(index.units.get(cid), name):
                        continue
                    # The index may be behind a copy made since it was read (a backup copy
                    # between the freshness check and this list): only the unit's own events
                    # may condemn a copy, or a copy they record would be deleted.
                    if not _dropped(await for_unit(self.events, cid), name):
                        continue
                    await backend.delete(cid)
                    done.append(f"{name}:{cid}")
            except CimError as err:
                self.note_error(f"sweeping tier {name}", err)
        return done

    async def run_policies(self, index: Locations, policies: list[Policy], access: dict[str, float], *,
                           dry_run: bool = False, progress: Callable[[MoveResult], None] | None = None,
                           planned: Callable[[int, int], None] | None = None, promote_hold: float = 0) -> Report:
        """Plan, then move a page of units at a time: the plan is made twice (a count for
        `planned`, then page by page as the moves go), so a run over a million units never
        holds them all."""
        async with self._lock:
            now = datetime.now(UTC)
            count = size = 0
            preview: list[MoveResult] = []
            async for jobs in _plan(index, policies, access, promote_hold, now):
                count += len(jobs)
                size += sum(u.size for u, _ in jobs)
                if dry_run:
                    preview += [MoveResult(u.cid, p.name, p.action, p.from_tier if p.action != "expire" else None,
                                           p.to_tier, u.size, ok=True) for u, p in jobs]
            if planned:
                planned(count, size)
            if dry_run:
                return Report(preview)

            async def run(job):
                u, p = job
                if p.action == "expire":
                    return await self.expire(u.cid, p.name, f"matched retention policy {p.name!r}", still=lambda fresh, p=p:
                                             p.matches(fresh, access.get(fresh.cid), datetime.now(UTC),
                                                       promote_hold=promote_hold))
                return await self.move(u.cid, p.name, p.from_tier, p.to_tier, p.action, seen=u)

            report = Report()
            if count:
                async for jobs in _plan(index, policies, access, promote_hold, now):
                    report.moved += (await self._each(jobs, run, progress)).moved
            return report

    async def copy_all_to(self, index: Locations, tier: str, policy: str = "backup") -> Report:
        """Every live unit gets a copy in `tier` (the archive: disaster recovery needs them all)."""
        async with self._lock:
            report = Report()
            todo = (u for u in index.live() if not u.holds(tier) and not u.pending)
            while page := list(islice(todo, PLAN_PAGE)):  # a page at a time, as run_policies
                moved = await self._each(page, lambda u: self.move(u.cid, policy, None, tier, "copy", seen=u), None)
                report.moved += moved.moved
            return report

    # --- verify -------------------------------------------------------------------------

    async def verify(self, index: Locations, tier: str | None = None, sample: int | None = None) -> dict:
        """Re-hash what the index says each tier holds; list missing, corrupt and orphan objects."""
        out: dict = {"checked": 0, "missing": [], "corrupt": [], "orphans": [], "unreachable": []}
        for name, backend in self.tiers.items():
            if tier and name != tier:
                continue
            expected = index.live(name) if sample is None else _sample(index.live(name), sample)
            try:
                present = {cid: size async for cid, size in backend.list()}
            except TierUnavailable as err:
                out["unreachable"].append({"tier": name, "error": str(err)})
                continue
            for u in expected:
                out["checked"] += 1
                if u.cid not in present:
                    out["missing"].append({"tier": name, "cid": u.cid})
                    continue
                try:
                    await backend.read_back(u.cid, u.size)
                except CidMismatch as err:
                    out["corrupt"].append({"tier": name, "cid": u.cid, "error": str(err)})
                except ObjectMissing:
                    out["missing"].append({"tier": name, "cid": u.cid})
                except TierUnavailable as err:
                    out["unreachable"].append({"tier": name, "cid": u.cid, "error": str(err)})
            for cid in present:
                found = index.units.get(cid)
                if found is None or not found.known:
                    if name != HOT:  # in the hot bucket that is a put in progress, not an orphan
                        out["orphans"].append({"tier": name, "cid": cid})
                elif not found.holds(name) and not found.pending:
                    out["orphans"].append({"tier": name, "cid": cid})
        out["clean"] = not (out["missing"] or out["corrupt"] or out["orphans"] or out["unreachable"])
        return out



async def _plan(index: Locations, policies: list[Policy], access: dict[str, float], promote_hold: float,
                now: datetime) -> AsyncIterator[list[tuple[UnitLocation, Policy]]]:
    """`plan` over the index's candidates, a page at a time: an index of a million units is
    never held whole, and the event loop is not held for the whole scan. A page is planned
    when it is asked for, so units that earlier pages moved are planned as they are now."""
    units = iter(index.candidates(policies, now))
    while page := list(islice(units, PLAN_PAGE)):
        if jobs := plan(policies, page, access, promote_hold=promote_hold, now=now):
            yield jobs
        await asyncio.sleep(0)  # a turn for the other tasks, not a wait for a condition


def _dropped(u: UnitLocation | None, tier: str) -> bool:
    """A copy in `tier` that `u`'s location says should not be there: a known unit, no move
    of it in flight, and `tier` not among the tiers that hold it."""
    return u is not None and u.known and not u.pending and not u.holds(tier)


def _sample(units: Iterable[UnitLocation], k: int) -> list[UnitLocation]:
    """k of `units` at random (all, if there are no more), holding only k (reservoir sampling)."""
    out: list[UnitLocation] = []
    for i, u in enumerate(units):
        if i < k:
            out.append(u)
        elif (j := random.randrange(i + 1)) < k:
            out[j] = u
    return out
