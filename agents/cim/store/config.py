"""The store agent's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..capability import AgentConfig
from .unit_store import DEFAULT_MAX_UNIT_SIZE


class Config(AgentConfig):
    capability: Literal["store"] = "store"
    max_unit_size: int = Field(default=DEFAULT_MAX_UNIT_SIZE, gt=0, description="largest unit accepted, in bytes")
    list_limit: int = Field(default=1000, gt=0, description="most units one list request returns")
