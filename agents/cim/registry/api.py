"""The registry agent's service API (cim.registry.*): its requests and replies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..nats.rpc import Endpoint
from .model import (
    AgentView,
    Match,
    Requirement,
)


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LsRequest(_Req):
    capability: str | None = None
    all: bool = Field(default=False, description="include agents that are gone")


class ShowRequest(_Req):
    name: str = Field(description="an agent name, an instance id (or its first characters) or a key")


class ProvidersRequest(_Req):
    capability: str
    spec: str = Field(default="", description="PEP 440 version range, e.g. '>=1.2,<2'")


class NegotiateRequest(_Req):
    requirements: list[Requirement | str] = Field(min_length=1)


class Agents(BaseModel):
    agents: list[AgentView]


class Provider(BaseModel):
    agent: AgentView
    version: str


class Providers(BaseModel):
    providers: list[Provider]


class Negotiated(BaseModel):
    matches: list[Match]


# The endpoints (cim.registry.*): what each takes and answers, for the agent and its callers alike.
LS: Endpoint[Agents] = Endpoint("cim.registry.ls", LsRequest, Agents)
SHOW: Endpoint[Agents] = Endpoint("cim.registry.show", ShowRequest, Agents)
PROVIDERS: Endpoint[Providers] = Endpoint("cim.registry.providers", ProvidersRequest, Providers)
NEGOTIATE: Endpoint[Negotiated] = Endpoint("cim.registry.negotiate", NegotiateRequest, Negotiated)
