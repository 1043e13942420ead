"""Which units go where: policies by age, size, labels and last access.

A policy moves (or copies) units from one tier to the next colder one; a retention policy
(`action: expire`) expires them, which is an event, never a silent delete.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..store.unit_fold import HOT
from .events import TIER_NAME
from .locations import UnitLocation
from .urls import Duration, Size


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    action: Literal["move", "copy", "expire"] = "move"
    from_tier: str = Field(default="hot", alias="from", pattern=TIER_NAME)
    to_tier: str | None = Field(default=None, alias="to", pattern=TIER_NAME, description="not for expire")
    min_age: Duration = Field(default=0, description="only units older than this (seconds or 30d)")
    min_size: Size = 0
    max_size: Size | None = None
    labels: list[str] = Field(default_factory=list, description="only units with at least one of these labels")
    idle: Duration | None = Field(default=None, description="only units not read for this long")

    @model_validator(mode="after")
    def _targets(self) -> Policy:
        if self.action == "expire" and self.to_tier is not None:
            raise ValueError(f"policy {self.name!r}: an expire policy has no 'to' tier")
        if self.action != "expire" and self.to_tier is None:
            raise ValueError(f"policy {self.name!r}: say which tier it {self.action}s to ('to')")
        if self.to_tier == self.from_tier:
            raise ValueError(f"policy {self.name!r}: 'from' and 'to' are the same tier")
        return self

    def matches(self, u: UnitLocation, last_access: float | None, now: datetime | None = None, *,
                promote_hold: float = 0) -> bool:
        now = now or datetime.now(UTC)
        if not u.known or u.expired or u.pending:
            return False
        # Brought back to hot because someone needed it: it stays there for a while after its
        # last read, or a policy that moved it once would send it straight back.
        if (self.action == "move" and self.from_tier == HOT and u.promoted_at is not None
                and now.timestamp() - max(u.promoted_at, last_access or 0) < promote_hold):
            return False
        if self.action != "expire" and not u.holds(self.from_tier):
            return False
        if self.to_tier and u.holds(self.to_tier) and self.action == "copy":
            return False
        if u.created_at is not None and (now - u.created_at).total_seconds() < self.min_age:
            return False
        if u.size < self.min_size or (self.max_size is not None and u.size > self.max_size):
            return False
        if self.labels and not set(self.labels) & set(u.labels):
            return False
        if self.idle is not None:
            seen = last_access if last_access is not None else (u.created_at.timestamp() if u.created_at else 0)
            if now.timestamp() - seen < self.idle:
                return False
        return True


def plan(policies: list[Policy], units: Iterable[UnitLocation], access: dict[str, float], *,
         promote_hold: float = 0, now: datetime | None = None) -> list[tuple[UnitLocation, Policy]]:
    """Each unit with the first policy that matches it (expiry first: no point moving what goes);
    a unit promoted back to hot is left there for `promote_hold` seconds after its last read."""
    now = now or datetime.now(UTC)
    ordered = [p for p in policies if p.action == "expire"] + [p for p in policies if p.action != "expire"]
    out = []
    for u in units:
        for p in ordered:
            if p.matches(u, access.get(u.cid), now, promote_hold=promote_hold):
                out.append((u, p))
                break
    return out
