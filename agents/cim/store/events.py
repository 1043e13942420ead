"""The events the store writes about units, registered in the event type registry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from ..cid import Cid
from ..events.types import event_type
from .units import Unit


@event_type("unit.created")
class UnitCreated(Unit):
    """A unit was stored: its full metadata and lineage. Aggregate id: the unit's CID."""


@event_type("unit.revised")
class UnitRevised(BaseModel):
    """Appended on a parent when a revision names it, so its page can list its children."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    child: Cid


@event_type("unit.labeled")
class UnitLabeled(BaseModel):
    """Labels added to a unit after it was stored (by a classification or lifecycle step).

    A unit never changes; its effective labels are those it was created with plus these.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    labels: list[str]
    by: str  # provenance: pipeline/step@plugin-version

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        return list(Unit._labels(tuple(v)))  # the same rule as a unit's own labels, sorted and unique
