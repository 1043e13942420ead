"""The location index: where each unit's bytes are, folded from the unit events.

It is a projection, never a source of truth: `LocationIndex.build` rebuilds it from the
event stream, `apply` keeps it current from live events, and `for_unit` folds one unit's
own events (what a single read needs, without the whole index).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..events import EventStore, StoredEvent
from .urls import HOT

UNIT_EVENTS = "cim.evt.unit.*.*"


@dataclass
class UnitLocation:
    cid: str
    size: int = 0
    labels: tuple[str, ...] = ()
    created_at: datetime | None = None
    tiers: set[str] = field(default_factory=set)
    revision: int = 0  # stream sequence of the unit's last event: the expected revision of a move
    pending: dict | None = None  # an unfinished `unit.moving` (its data + "seq")
    expired: dict | None = None  # the `unit.expired` data + "time", once expired
    known: bool = False  # a `unit.created` was seen
    promoted_at: float | None = None  # when a restore (promotion on read, `cim tier restore`) put it back in hot

    def holds(self, tier: str) -> bool:
        return tier in self.tiers


class LocationIndex:
    def __init__(self) -> None:
        self.units: dict[str, UnitLocation] = {}
        self.last_seq = 0

    def apply(self, e: StoredEvent) -> None:
        if e.aggregate != "unit" or e.problem:
            return
        self.last_seq = max(self.last_seq, e.seq)
        u = self.units.get(e.aggregate_id)
        if u is None:
            u = self.units[e.aggregate_id] = UnitLocation(e.aggregate_id)
        u.revision = max(u.revision, e.seq)
        d = e.data if isinstance(e.data, dict) else {}
        if e.type == "unit.created":
            u.known = True
            u.size = int(d.get("size", 0))
            u.labels = tuple(d.get("labels") or ())
            created = d.get("created_at")
            u.created_at = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else e.time
            u.tiers.add(HOT)  # a put stores the content in the hot bucket before this event
        elif e.type == "unit.labeled":
            # Labels a pipeline added later (classification, retention) count for policies:
            # this is how lifecycle labels such as `tier:archive` drive tiering.
            u.labels = tuple(sorted(set(u.labels) | set(d.get("labels") or ())))
        elif e.type == "unit.moving":
            u.pending = {**d, "seq": e.seq}
        elif e.type == "unit.located":
            if d["tier"] == HOT and (u.pending or {}).get("policy") == "restore" and e.time:
                u.promoted_at = e.time.timestamp()
            u.tiers.add(d["tier"])
            # Only the source of the tier agent's own move intent is dropped: a `unit.located`
            # that no `unit.moving` of action `move` announced drops nothing, whatever it lists.
            intent = u.pending or {}
            for t in d.get("dropped") or ():
                if intent.get("action") == "move" and t == intent.get("from_tier"):
                    u.tiers.discard(t)
            u.pending = None
        elif e.type == "unit.expired":
            u.expired = {**d, "time": e.time.isoformat() if e.time else ""}
            u.tiers.clear()
            u.pending = None

    def apply_all(self, events: Iterable[StoredEvent]) -> LocationIndex:
        for e in events:
            self.apply(e)
        return self

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
