"""One fold of a unit's events, which every reader of units agrees on.

A unit is its `unit.created` event plus what happened to it later: labels pipeline steps
added (`unit.labeled`), revisions (`unit.revised`), where its bytes are (`unit.moving`,
`unit.located`) and its expiry (`unit.expired`). `cim units show` and `cim units ls`, the
dashboard and the tier agent all fold them here, so a label a pipeline added is found by
`cim units ls --label`, by the dashboard's filter and by a tier policy alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..events import StoredEvent
from .units import Unit

HOT = "hot"  # the first tier, the content bucket: a put stores the bytes there first


@dataclass
class UnitState:
    cid: str
    size: int = 0
    labels: tuple[str, ...] = ()  # its own and those pipeline steps added, sorted
    created_at: datetime | None = None
    created: dict[str, Any] | None = None  # the `unit.created` body, if the fold keeps bodies
    created_seq: int = 0
    children: list[str] = field(default_factory=list)  # its revisions
    tiers: set[str] = field(default_factory=set)
    revision: int = 0  # stream sequence of the unit's last event: the expected revision of a move
    pending: dict | None = None  # an unfinished `unit.moving` (its data + "seq")
    expired: dict | None = None  # the `unit.expired` data + "time", once expired
    known: bool = False  # a `unit.created` was seen
    promoted_at: float | None = None  # when a restore (promotion on read, `cim tier restore`) put it back in hot

    def holds(self, tier: str) -> bool:
        return tier in self.tiers

    def unit(self) -> Unit:
        """The unit as created, with every label it has now (as created, if an added label
        is not one a unit may carry: events are hostile input)."""
        if self.created is None:
            raise ValueError(f"no unit.created body for {self.cid} (a fold made with keep_bodies=True has it)")
        try:
            return Unit.model_validate({**self.created, "labels": list(self.labels)})
        except ValidationError:
            return Unit.model_validate(self.created)


class UnitFold:
    """The units of the events applied, by CID; `apply` returns the state an event changed."""

    def __init__(self, *, keep_bodies: bool = False) -> None:
        """`keep_bodies`: keep each `unit.created` body, for `UnitState.unit()`. Off by default:
        the long-lived folds (the tier agent's index, the dashboard's) would hold every unit's
        metadata a second time for nothing."""
        self.units: dict[str, UnitState] = {}
        self.last_seq = 0
        self.keep_bodies = keep_bodies

    def apply(self, e: StoredEvent) -> UnitState | None:
        if e.aggregate != "unit" or e.problem:
            return None
        self.last_seq = max(self.last_seq, e.seq)
        u = self.units.get(e.aggregate_id)
        if u is None:
            u = self.units[e.aggregate_id] = UnitState(e.aggregate_id)
        u.revision = max(u.revision, e.seq)
        d = e.data if isinstance(e.data, dict) else {}
        if e.type == "unit.created":
            if u.known:
                return u  # created once: a repeat (another writer's race) changes nothing
            u.known = True
            u.created_seq = e.seq
            if self.keep_bodies:
                u.created = d
            u.size = int(d.get("size", 0))
            u.labels = tuple(sorted(set(u.labels) | set(d.get("labels") or ())))
            created = d.get("created_at")
            u.created_at = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else e.time
            u.tiers.add(HOT)
        elif e.type == "unit.labeled":
            # Labels a pipeline added later (classification, retention) count everywhere:
            # this is how lifecycle labels such as `tier:archive` drive tiering.
            u.labels = tuple(sorted(set(u.labels) | set(d.get("labels") or ())))
        elif e.type == "unit.revised":
            child = d.get("child")
            if isinstance(child, str) and child not in u.children:
                u.children.append(child)
        elif e.type == "unit.moving":
            u.pending = {**d, "seq": e.seq}
        elif e.type == "unit.located" and isinstance(d.get("tier"), str):
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
        return u

    def apply_all(self, events: Iterable[StoredEvent]):
        for e in events:
            self.apply(e)
        return self

    def in_created_order(self) -> list[UnitState]:
        return sorted((u for u in self.units.values() if u.known), key=lambda u: u.created_seq)
