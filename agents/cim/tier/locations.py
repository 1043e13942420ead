"""The location index: where each unit's bytes are, folded from the unit events by the one
fold every reader of units shares (cim.store.unit_fold).

It is a projection, never a source of truth: `LocationIndex.build` rebuilds it from the
event stream, `apply` keeps it current from live events, and `for_unit` folds one unit's
own events (what a single read needs, without the whole index).
"""

from __future__ import annotations

from ..events import EventStore
from ..store.unit_fold import UnitFold, UnitState

UNIT_EVENTS = "cim.evt.unit.*.*"

UnitLocation = UnitState  # the tier agent's name for a unit's folded state


class LocationIndex(UnitFold):
    """The tier agent's index: the one fold of unit events (cim.store.unit_fold), over all units."""

    @classmethod
    async def build(cls, events: EventStore) -> LocationIndex:
        index = cls()
        async for e in events.read([UNIT_EVENTS]):
            index.apply(e)
        return index

    def live(self) -> list[UnitLocation]:
        return [u for u in self.units.values() if u.known and not u.expired]

    def pending(self) -> list[UnitLocation]:
        return [u for u in self.units.values() if u.known and u.pending]


async def for_unit(events: EventStore, cid: str) -> UnitLocation:
    """One unit's location, folded from its own events (its revision included)."""
    index = LocationIndex().apply_all(await events.aggregate("unit", cid))
    return index.units.get(cid) or UnitLocation(cid)
