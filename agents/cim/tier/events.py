"""The events the tier agent writes about where a unit's bytes are.

They live on the unit's own aggregate (`cim.evt.unit.<cid>.*`), so one append with the
unit's expected revision orders them against everything else that happens to the unit,
and `cim units show` lists them. The location index is a fold over these events.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..events.types import event_type

TIER_NAME = r"^[a-z][a-z0-9_-]*$"


# How a copy was checked: the server's S3 checksum, reading it back, or the content bucket's CID.
VerifiedBy = Literal["s3-checksum", "read-back", "cid"]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@event_type("unit.moving")
class UnitMoving(_Body):
    """Intent, appended before the first byte is copied: a crash leaves it pending and the
    agent resumes it. `action` copy keeps the source, move drops it once the copy is recorded."""

    from_tier: str = Field(pattern=TIER_NAME)
    to_tier: str = Field(pattern=TIER_NAME)
    action: Literal["copy", "move"]
    policy: str


@event_type("unit.located")
class UnitLocated(_Body):
    """The bytes are verified in `tier`; the tiers in `dropped` no longer count as holding
    them (their copies are deleted only after this event is stored)."""

    tier: str = Field(pattern=TIER_NAME)
    url: str  # where, for people (never carries credentials)
    size: int = Field(ge=0)
    verified_by: VerifiedBy
    dropped: list[str] = Field(default_factory=list)


@event_type("unit.expired")
class UnitExpired(_Body):
    """A retention policy expired the unit: its bytes are deleted from every tier after this."""

    policy: str
    reason: str
