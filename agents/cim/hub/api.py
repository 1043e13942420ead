"""The hub agent's service API (cim.hub.*): its requests and replies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(gt=0, description="sequence of the dead letter in CIM_DLQ")


class RetryReply(BaseModel):
    ok: bool
    reason: str


class InfoReply(BaseModel):
    url: str
    webhooks: list[str]
    connectors: list[str]
    broken_plugins: dict[str, str] = Field(default_factory=dict, description="plugins that failed to load: name -> why")
