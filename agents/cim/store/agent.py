"""The `store` agent: unit put/get/show/list over NATS for agents and the UI.

Large content does not travel through these requests (a NATS message is capped near
1 MiB); clients with JetStream access stream it through the content bucket with
`cim.store.unit_store`, which this agent uses too, so there is one implementation of a put.
"""

from __future__ import annotations

import asyncio
import base64
import logging

from ..errors import InvalidInput, UnitTooLarge
from ..events import StoredEvent
from ..metrics import Sampled
from ..names import EVENTS_STREAM
from ..nats.read import read_stream
from ..runtime import AgentBase, AgentContext, endpoint
from ..tier.fetch import fetch
from . import api
from .api import CidRequest, ListReply, ListRequest, PutReply, PutRequest, ShowReply
from .config import Config
from .metrics import UNIT_BYTES_STORED, UNITS_STORED, event_store
from .unit_store import UnitStore

log = logging.getLogger("cim.store")

INLINE_LIMIT = 768 * 1024  # leaves room for headers under the default 1 MiB max_payload


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        self.units = UnitStore(
            ctx.nc, max_unit_size=self.config.max_unit_size, agent=self.config.agent_name, cold=fetch,
        )

    async def start(self) -> None:
        self.ctx.metrics.register(Sampled("CIM_EVENTS", lambda: event_store(self.nc), asyncio.get_running_loop()))
        try:
            first: int | None = await self._stream_end() + 1
        except Exception as err:  # not provisioned yet, or the server is slow: the counter asks again
            log.info("counting stored units once CIM_EVENTS answers (%s)", err)
            first = None
        self.ctx.tasks.spawn(self._count_units(first), name="units-count")

    async def _stream_end(self) -> int:
        return int((await self.nc.jetstream(timeout=5).stream_info(EVENTS_STREAM)).state.last_seq)

    async def _count_units(self, first: int | None) -> None:
        """Count every `unit.created` appended from `first` on, whoever wrote it: the CLI and
        the hub write units without asking this agent. A counter starts at zero with its
        process, as Prometheus expects; `rate()` is what is read from it."""
        while first is None:
            await asyncio.sleep(1)  # backoff until the stream answers, not a wait for a condition
            try:
                first = await self._stream_end() + 1
            except Exception:
                continue
        while True:
            try:
                async for m in read_stream(self.nc, EVENTS_STREAM, ["cim.evt.unit.*.created"], start_seq=first,
                                           follow=True):
                    first = m.seq + 1
                    event = StoredEvent.from_message(m.subject, m.seq, m.headers, m.data)
                    if event.problem or not isinstance(event.data, dict):
                        continue  # a malformed event is no unit (its readers say so)
                    UNITS_STORED.inc()
                    size = event.data.get("size")
                    if isinstance(size, int) and size >= 0:
                        UNIT_BYTES_STORED.inc(size)
            except Exception as err:  # e.g. the stream was unreachable for a minute: go on where it stopped
                log.warning("counting stored units paused: %s", err)
                await asyncio.sleep(5)  # backoff before reading again, not a wait for a condition

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
