"""The location index: where each unit's bytes are, folded from the unit events by the one
fold every reader of units shares (cim.store.unit_fold).

It is a projection, never a source of truth. Two kinds answer the same questions
(`Locations`): `LocationIndex` holds every unit in memory (`cim restore`, tests, one-off
tools: `build` folds the whole stream); the tier agent keeps its index on disk
(location_db.py), checkpointed with the stream, so a start resumes instead of replaying.
`for_unit` folds one unit's own events (what a single read needs, without any index).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from ..events import EventStore
from ..store.unit_fold import UnitFold, UnitState

if TYPE_CHECKING:
    from .policies import Policy

UNIT_EVENTS = "cim.evt.unit.*.*"

UnitLocation = UnitState  # the tier agent's name for a unit's folded state


def is_live(u: UnitLocation) -> bool:
    return u.known and not u.expired


def tally(u: UnitLocation) -> dict[str, int]:
    """What one unit adds to the index's counts (`Counts`). Both kinds of index count with
    this, the on-disk one as the difference a batch of events makes, so they agree."""
    out: dict[str, int] = {}
    if u.expired:
        out["expired"] = 1
    if u.known and u.pending:
        out["pending"] = 1
    if is_live(u):
        out["units"] = 1
        for t in u.tiers:
            out[f"units:{t}"] = 1
            out[f"bytes:{t}"] = u.size
    return out


@dataclass(frozen=True)
class Counts:
    """Units (live: created, not expired), expired and pending ones, and per tier the live
    units it holds and their bytes."""

    totals: Counter[str]

    @property
    def units(self) -> int:
        return self.totals["units"]

    @property
    def expired(self) -> int:
        return self.totals["expired"]

    @property
    def pending(self) -> int:
        return self.totals["pending"]

    def held(self, tier: str) -> tuple[int, int]:
        """(units, bytes) that `tier` holds."""
        return self.totals[f"units:{tier}"], self.totals[f"bytes:{tier}"]


class UnitLookup(Protocol):
    def get(self, cid: str, /) -> UnitLocation | None: ...


class Locations(Protocol):
    """What the migrator, the backup and the tier agent ask of a location index."""

    @property
    def units(self) -> UnitLookup: ...

    @property
    def last_seq(self) -> int: ...

    def live(self, tier: str | None = None) -> Iterable[UnitLocation]:
        """Units created and not expired (only those `tier` holds, if given)."""
        ...

    def candidates(self, policies: Sequence[Policy], now: datetime) -> Iterable[UnitLocation]:
        """Live units that may match one of `policies` at `now`: at least those `plan` picks."""
        ...

    def pending(self, limit: int | None = None) -> list[UnitLocation]:
        """Units with a `unit.moving` not yet followed by its `unit.located`."""
        ...

    def counts(self) -> Counts: ...


class LocationIndex(UnitFold):
    """The index in memory: the one fold of unit events (cim.store.unit_fold), over all units."""

    @classmethod
    async def build(cls, events: EventStore) -> LocationIndex:
        index = cls()
        async for e in events.read([UNIT_EVENTS]):
            index.apply(e)
        return index

    def live(self, tier: str | None = None) -> list[UnitLocation]:
        return [u for u in self.units.values() if is_live(u) and (tier is None or u.holds(tier))]

    def candidates(self, policies: Sequence[Policy], now: datetime) -> list[UnitLocation]:
        return self.live()

    def pending(self, limit: int | None = None) -> list[UnitLocation]:
        return [u for u in self.units.values() if u.known and u.pending][:limit]

    def counts(self) -> Counts:
        totals: Counter[str] = Counter()
        for u in self.units.values():
            totals.update(tally(u))
        return Counts(totals)


async def for_unit(events: EventStore, cid: str) -> UnitLocation:
    """One unit's location, folded from its own events (its revision included)."""
    index = LocationIndex().apply_all(await events.aggregate("unit", cid))
    return index.units.get(cid) or UnitLocation(cid)
