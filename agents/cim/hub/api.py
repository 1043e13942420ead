"""The hub agent's service API (cim.hub.*): its requests and replies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..nats.rpc import Endpoint


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


# The endpoints (cim.hub.*): what each takes and answers, for the agent and its callers alike.
INFO: Endpoint[InfoReply] = Endpoint("cim.hub.info", None, InfoReply)
RETRY: Endpoint[RetryReply] = Endpoint("cim.hub.retry", RetryRequest, RetryReply)
