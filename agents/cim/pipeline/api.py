"""The pipeline agent's service API (cim.pipeline.*): its requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..nats.rpc import Endpoint
from .model import PipelineDef


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Req):
    query: str = Field(min_length=1, max_length=500)
    limit: int = Field(default=10, gt=0, le=100)


class CidRequest(_Req):
    cid: str


class RetryRequest(_Req):
    seq: int = Field(gt=0)


class Empty(_Req):
    pass


class CheckRequest(_Req):
    pipelines: list[PipelineDef] = Field(max_length=256)


# The endpoints (cim.pipeline.*): what each takes and answers, for the agent and its callers alike.
SEARCH: Endpoint[dict] = Endpoint("cim.pipeline.search", SearchRequest, dict)
RELATED: Endpoint[dict] = Endpoint("cim.pipeline.related", CidRequest, dict)
INDEX: Endpoint[dict] = Endpoint("cim.pipeline.index", Empty, dict)
STATUS: Endpoint[dict] = Endpoint("cim.pipeline.status", Empty, dict)
CHECK: Endpoint[dict] = Endpoint("cim.pipeline.check", CheckRequest, dict)
RETRY: Endpoint[dict] = Endpoint("cim.pipeline.retry", RetryRequest, dict)
