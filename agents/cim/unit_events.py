"""The events the store writes about units, registered in the event type registry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .cid import Cid
from .events.types import event_type
from .units import Unit


@event_type("unit.created")
class UnitCreated(Unit):
    """A unit was stored: its full metadata and lineage. Aggregate id: the unit's CID."""


@event_type("unit.revised")
class UnitRevised(BaseModel):
    """Appended on a parent when a revision names it, so its page can list its children."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    child: Cid
