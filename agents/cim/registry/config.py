"""The registry agent's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..capability import AgentConfig
from .model import (
    STALE_AFTER_BEATS,
)


class Config(AgentConfig):
    capability: Literal["registry"] = "registry"
    stale_after: float | None = Field(
        default=None, gt=0,
        description=f"seconds without a heartbeat before an agent is stale; default {STALE_AFTER_BEATS:g} of its heartbeats",
    )
    gone_after: float | None = Field(
        default=None, gt=0,
        description="seconds without a heartbeat before an agent is gone; default the registry bucket's TTL",
    )
    sweep_interval: float = Field(default=1.0, gt=0, le=60, description="seconds between sweeps of the live view")
    keep_gone: float = Field(default=3600, ge=0, description="seconds a gone agent stays listed by `ls --all`")
