"""The `store` agent: unit put/get/show/list over NATS for agents and the UI.

Large content does not travel through these requests (a NATS message is capped near
1 MiB); clients with JetStream access stream it through the content bucket with
`cim.store.unit_store`, which this agent uses too, so there is one implementation of a put.
"""

from __future__ import annotations

import base64

from ..errors import InvalidInput, UnitTooLarge
from ..runtime import AgentBase, AgentContext, endpoint
from ..tier.fetch import fetch
from . import api
from .api import CidRequest, ListReply, ListRequest, PutReply, PutRequest, ShowReply
from .config import Config
from .unit_store import UnitStore

INLINE_LIMIT = 768 * 1024  # leaves room for headers under the default 1 MiB max_payload


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        self.units = UnitStore(
            ctx.nc, max_unit_size=self.config.max_unit_size, agent=self.config.agent_name, cold=fetch,
        )

    @endpoint(api.PUT)
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

    @endpoint(api.GET)
    async def get(self, req: CidRequest) -> bytes:
        """The content of a unit up to the inline limit, verified against its CID."""
        view = await self.units.show(req.cid)
        if view.unit.size > INLINE_LIMIT:
            raise UnitTooLarge(
                "cid", f"{req.cid} has {view.unit.size} bytes, too large to send inline; read it from the content bucket"
            )
        return b"".join([chunk async for chunk in self.units.get(req.cid)])

    @endpoint(api.SHOW)
    async def show(self, req: CidRequest) -> ShowReply:
        """Metadata and lineage of a unit."""
        view = await self.units.show(req.cid)
        return ShowReply(unit=view.unit, children=view.children, revision=view.revision)

    @endpoint(api.LIST)
    async def list(self, req: ListRequest) -> ListReply:
        """Units, optionally with one label."""
        limit = min(req.limit or self.config.list_limit, self.config.list_limit)
        units = [u async for u in self.units.list(label=req.label, limit=limit + 1)]
        return ListReply(units=units[:limit], truncated=len(units) > limit)
