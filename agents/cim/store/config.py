"""The store agent's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..capability import AgentConfig


class Config(AgentConfig):
    capability: Literal["store"] = "store"
    max_unit_size: int | None = Field(default=None, gt=0, description=(
        "largest unit this agent accepts, in bytes; only lowers the content bucket's limit, which every writer "
        "reads from the server (max_unit_size of CIM_CONTENT in the provisioning spec)"))
    list_limit: int = Field(default=1000, gt=0, description="most units one list request returns")
