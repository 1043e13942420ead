"""What an agent announces about itself in the `CIM_REGISTRY` bucket, and what a reader makes of it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from packaging.specifiers import InvalidSpecifier, Specifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import InvalidInput

State = Literal["up", "stale", "gone"]

# A record is stale once this many heartbeats were missed; a reader without the registry
# agent uses the same rule, so `cim agents ls` and the agent agree.
STALE_AFTER_BEATS = 3.0

_CAPABILITY = re.compile(r"^[a-z][a-z0-9_-]*$")


class AgentRecord(BaseModel):
    """One running agent instance, as it announces itself (the value under its key)."""

    model_config = ConfigDict(extra="ignore")  # a newer agent may announce more

    name: str
    id: str = Field(description="the micro service instance id; unique per process")
    capability: str = Field(description="the capability the agent runs (its container and NATS user)")
    version: str
    capabilities: dict[str, str] = Field(description="capability name -> version it provides")
    endpoints: list[str] = Field(default_factory=list)
    host: str
    container: str | None = None
    pid: int
    started_at: datetime
    last_seen: datetime
    heartbeat: float = Field(gt=0, description="seconds between announcements")

    @property
    def key(self) -> str:
        return registry_key(self.capability, self.id)

    def age(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.last_seen).total_seconds()

    def state(self, now: datetime | None = None, stale_after: float | None = None) -> State:
        limit = stale_after if stale_after is not None else STALE_AFTER_BEATS * self.heartbeat
        return "up" if self.age(now) <= limit else "stale"


class AgentView(BaseModel):
    """A record with the reader's verdict on it."""

    record: AgentRecord
    state: State
    since: datetime | None = Field(default=None, description="when the registry saw this state begin")


def registry_key(capability: str, instance_id: str) -> str:
    """`<capability>.<instance id>`: an agent's NATS user may write only under its capability."""
    return f"{capability}.{instance_id}"


class Requirement(BaseModel):
    """A capability and a PEP 440 version range: `search`, `search>=2`, `search >=1.2,<2`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    capability: str
    spec: str = ""

    @field_validator("capability")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _CAPABILITY.fullmatch(v):
            raise ValueError(f"{v!r} is not a capability name (lower case letters, digits, '-', '_')")
        return v

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: str) -> str:
        v = v.strip()
        try:
            SpecifierSet(v)
        except InvalidSpecifier:
            raise ValueError(f"{v!r} is not a version range (write it like '>=1.2,<2')") from None
        return v

    @classmethod
    def parse(cls, text: str) -> Requirement:
        """`search>=2` -> Requirement('search', '>=2'); raises InvalidInput on bad text."""
        m = re.match(r"^\s*([A-Za-z0-9_-]+)\s*(.*)$", text)
        if not m:
            raise InvalidInput("requirement", f"{text!r} must be a capability name, optionally with a range: 'search>=2'")
        try:
            return cls(capability=m.group(1), spec=m.group(2))
        except ValueError as err:
            raise InvalidInput("requirement", _first_error(err)) from None

    def accepts(self, version: str) -> bool:
        try:
            v = Version(version)
        except InvalidVersion:
            return False
        return SpecifierSet(self.spec).contains(v, prereleases=True)

    def __str__(self) -> str:
        if not self.spec:
            return self.capability
        parts = [f"{s.operator} {s.version}" for s in (Specifier(p) for p in self.spec.split(",") if p.strip())]
        return f"{self.capability} {', '.join(parts)}"


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("ctx", {}).get("error") or first["msg"])
    return str(err)


class Match(BaseModel):
    """The provider negotiation picked for one requirement."""

    requirement: Requirement
    provider: AgentRecord
    version: str


def version_key(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


def now_utc() -> datetime:
    return datetime.now(UTC)
