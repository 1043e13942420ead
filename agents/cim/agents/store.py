"""The `store` agent: unit put/get/show/list over NATS for agents and the UI.

Large content does not travel through these requests (a NATS message is capped near
1 MiB); clients with JetStream access stream it through the content bucket with
`cim.unit_store`, which this agent uses too, so there is one implementation of a put.
"""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ..config import AgentConfig
from ..errors import InvalidInput, UnitTooLarge
from ..runtime import AgentContext, endpoint
from ..tiering.fetch import fetch
from ..unit_store import DEFAULT_MAX_UNIT_SIZE, UnitStore
from ..units import Unit

INLINE_LIMIT = 768 * 1024  # leaves room for headers under the default 1 MiB max_payload


class Config(AgentConfig):
    capability: Literal["store"] = "store"
    max_unit_size: int = Field(default=DEFAULT_MAX_UNIT_SIZE, gt=0, description="largest unit accepted, in bytes")
    list_limit: int = Field(default=1000, gt=0, description="most units one list request returns")


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


class Agent:
    def __init__(self, ctx: AgentContext):
        self.config: Config = ctx.config  # type: ignore[assignment]
        self.units = UnitStore(
            ctx.nc, max_unit_size=self.config.max_unit_size, agent=self.config.agent_name, cold=fetch,
        )

    @endpoint("put")
    async def put(self, req: PutRequest) -> PutReply:
        """Store a small unit sent inline (base64)."""
        try:
            data = base64.b64decode(req.content_b64, validate=True)
        except ValueError:
            raise InvalidInput("content_b64", "is not valid base64") from None
        meta = req.model_dump(exclude={"content_b64", "media_type"})
        meta["media_type"] = req.media_type or "application/octet-stream"
        result = await self.units.put_bytes(data, **meta)
        return PutReply(unit=result.unit, created=result.created)

    @endpoint("get")
    async def get(self, req: CidRequest) -> bytes:
        """The content of a unit up to the inline limit, verified against its CID."""
        view = await self.units.show(req.cid)
        if view.unit.size > INLINE_LIMIT:
            raise UnitTooLarge(
                "cid", f"{req.cid} has {view.unit.size} bytes, too large to send inline; read it from the content bucket"
            )
        return b"".join([chunk async for chunk in self.units.get(req.cid)])

    @endpoint("show")
    async def show(self, req: CidRequest) -> ShowReply:
        """Metadata and lineage of a unit."""
        view = await self.units.show(req.cid)
        return ShowReply(unit=view.unit, children=view.children, revision=view.revision)

    @endpoint("list")
    async def list(self, req: ListRequest) -> ListReply:
        """Units, optionally with one label."""
        limit = min(req.limit or self.config.list_limit, self.config.list_limit)
        units = [u async for u in self.units.list(label=req.label, limit=limit + 1)]
        return ListReply(units=units[:limit], truncated=len(units) > limit)
