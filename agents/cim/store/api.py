"""The store agent's service API (cim.store.*): its requests and replies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ..nats.rpc import Endpoint
from .units import Unit


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PutRequest(_Req):
    content_b64: str
    media_type: str | None = None
    title: str = ""
    labels: list[str] = Field(default_factory=list)
    source: str = ""
    author: str = ""
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    parents: list[str] = Field(default_factory=list)


class CidRequest(_Req):
    cid: str


class ListRequest(_Req):
    label: str | None = None
    limit: int | None = Field(default=None, gt=0)


class PutReply(BaseModel):
    unit: Unit
    created: bool


class ShowReply(BaseModel):
    unit: Unit
    children: list[str]
    revision: int


class ListReply(BaseModel):
    units: list[Unit]
    truncated: bool


# The endpoints (cim.store.*): what each takes and answers, for the agent and its callers alike.
PUT: Endpoint[PutReply] = Endpoint("cim.store.put", PutRequest, PutReply)
GET: Endpoint[bytes] = Endpoint("cim.store.get", CidRequest, bytes)
SHOW: Endpoint[ShowReply] = Endpoint("cim.store.show", CidRequest, ShowReply)
LIST: Endpoint[ListReply] = Endpoint("cim.store.list", ListRequest, ListReply)
