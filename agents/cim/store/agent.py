"""The `store` agent: unit put/get/show/list over NATS for agents and the UI.

Large content does not travel through these requests (a NATS message is capped near
1 MiB); clients with JetStream access stream it through the content bucket with
`cim.store.unit_store`, which this agent uses too, so there is one implementation of a put.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import cast

from ..errors import InvalidInput, JetStreamUnavailable, UnitTooLarge
from ..events import StoredEvent
from ..metrics import Sampled
from ..names import EVENTS_STREAM
from ..nats.api import api as js_api
from ..nats.read import read_stream
from ..projection_db import WATCH_SECONDS
from ..runtime import AgentBase, AgentContext, endpoint
from ..tasks import cancel_and_wait
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
        try:  # where the count starts, before the agent answers: a unit put once it does is counted
            at: tuple[str, int] = await self._stream()
        except Exception as err:  # not provisioned yet, or the server is slow: the counter asks again
            log.info("counting stored units once %s answers (%s)", EVENTS_STREAM, err)
            at = ("", -1)
        self.ctx.tasks.spawn(self._count_units(*at), name="units-count")

    async def _stream(self) -> tuple[str, int]:
        """CIM_EVENTS' creation time (another one: the stream was deleted and made again) and
        its last sequence."""
        info = await js_api(self.nc, f"STREAM.INFO.{EVENTS_STREAM}", timeout=5)
        if "error" in info:
            raise JetStreamUnavailable(f"cannot read {EVENTS_STREAM}: {info['error'].get('description')}")
        return str(info.get("created", "")), int(info.get("state", {}).get("last_seq", 0))

    async def _count_units(self, created: str, end: int) -> None:
        """Count every `unit.created` appended from now on, whoever wrote it: the CLI and the
        hub write units without asking this agent. A counter starts at zero with its
        process, as Prometheus expects; `rate()` is what is read from it.

        A stream deleted and made again (`cim restore` on a wiped leaf) starts its sequences
        over: the position in the old one means nothing there, and new units would sit below
        it unseen. Seen by its creation time, or by its end falling below the position, the
        count goes on from the new stream's first event (every one of them was appended
        since this agent started)."""
        position = end + 1  # the next sequence to read (0: not known yet)
        while True:
            try:
                now_created, end = await self._stream()
                if not position:
                    created, position = now_created, end + 1
                elif now_created != created or end < position - 1:
                    log.warning("%s was recreated (restored?): counting stored units from its first event", EVENTS_STREAM)
                    created, position = now_created, 1
                position = await self._follow_units(position, created)
            except Exception as err:  # not provisioned yet, or unreachable for a minute: go on where it stopped
                log.info("counting stored units paused: %s", err)
                await asyncio.sleep(5)  # backoff before reading again, not a wait for a condition

    async def _follow_units(self, position: int, created: str) -> int:
        """Count from `position` until the stream turns out to be another one (returns the
        position reached then); the read's own failure is raised."""
        reached = position

        async def read() -> None:
            nonlocal reached
            async for m in read_stream(self.nc, EVENTS_STREAM, ["cim.evt.unit.*.created"], start_seq=position,
                                       follow=True):
                reached = m.seq + 1
                event = StoredEvent.from_message(m.subject, m.seq, m.headers, m.data)
                if event.problem or not isinstance(event.data, dict):
                    continue  # a malformed event is no unit (its readers say so)
                UNITS_STORED.inc()
                size = event.data.get("size")
                if isinstance(size, int) and size >= 0:
                    UNIT_BYTES_STORED.inc(size)

        async def same_stream() -> None:
            while True:
                await asyncio.sleep(WATCH_SECONDS)  # the polling interval, not a wait for a condition
                with contextlib.suppress(Exception):  # unreachable now: the read says so itself
                    now_created, end = await self._stream()
                    if now_created != created or end < reached - 1:
                        return

        reader = asyncio.create_task(read(), name="units-count-read")
        watcher = asyncio.create_task(same_stream(), name="units-count-watch")
        try:
            await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(reader, watcher)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise cast(BaseException, reader.exception())
        return reached

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
