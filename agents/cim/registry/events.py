"""What the registry agent records about agents coming and going. Aggregate id: the agent's
instance id (its micro service id), so `cim events tail --subject 'cim.evt.agent.>'` is the
history of the fleet."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..events.types import event_type


class _AgentEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    capability: str
    host: str
    container: str | None = None
    last_seen: datetime


@event_type("agent.appeared")
class AgentAppeared(_AgentEvent):
    """An instance announced itself for the first time (or again, after it was gone)."""

    version: str
    capabilities: dict[str, str]
    endpoints: list[str]
    pid: int
    started_at: datetime


@event_type("agent.stale")
class AgentStale(_AgentEvent):
    """An instance missed its heartbeats; it may be hung, partitioned or dead."""


@event_type("agent.recovered")
class AgentRecovered(_AgentEvent):
    """A stale instance announced itself again."""


@event_type("agent.gone")
class AgentGone(_AgentEvent):
    """An instance left: `stopped` (it removed its record), `expired` (its record aged out) or
    `unseen` (it left while no registry was running, and the bucket no longer tells how)."""

    reason: Literal["stopped", "expired", "unseen"]
