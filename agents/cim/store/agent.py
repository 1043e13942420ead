"""The `store` agent: unit put/get/show/list over NATS for agents and the UI.

Large content does not travel through these requests (a NATS message is capped near
1 MiB); clients with JetStream access stream it through the content bucket with
`cim.store.unit_store`, which this agent uses too, so there is one implementation of a put.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
from collections.abc import Callable

from ..errors import InvalidInput, JetStreamUnavailable, UnitTooLarge
from ..events import EventStore, StoredEvent
from ..metrics import Sampled
from ..names import EVENTS_STREAM
from ..nats.api import JsError, error_code
from ..nats.api import api as js_api
from ..projection_db import Follower, ProjectionDb
from ..runtime import AgentBase, AgentContext, endpoint
from ..tier.fetch import fetch
from . import api
from .api import CidRequest, ListReply, ListRequest, PutReply, PutRequest, ShowReply
from .config import Config
from .metrics import UNIT_BYTES_STORED, UNITS_STORED, event_store
from .unit_store import UnitStore

log = logging.getLogger("cim.store")

PLACE_ATTEMPTS = 3  # asks for the stream's end before serving (each up to 10 s: its info, its last event)
INLINE_LIMIT = 768 * 1024  # leaves room for headers under the default 1 MiB max_payload


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        self.units = UnitStore(
            ctx.nc, max_unit_size=self.config.max_unit_size, agent=self.config.agent_name, cold=fetch,
        )

    async def start(self) -> None:
        self.ctx.metrics.register(Sampled("CIM_EVENTS", lambda: event_store(self.nc), asyncio.get_running_loop()))
        # The units counter is a projection kept in memory: the Follower that feeds every
        # other read model follows the stream, and starts over from its first event when the
        # stream is made again (`cim restore` on a wiped leaf: all of those are new units).
        counter = ProjectionDb(None, "stored-units", schema="", version=1)
        counter.open()
        counter.rebuilt_because = None  # in memory by design: a counter starts at zero with its process
        # Where the count starts, before the agent answers: a unit put once it does is counted.
        # A slow server (a loaded machine, a leader election) is asked a few times first;
        # past that the agent serves, and the count starts where the stream is by then.
        placed = await self._placed(counter)
        for _ in range(PLACE_ATTEMPTS - 1):
            if placed or self.ctx.stopping.is_set():  # asked to stop meanwhile: not kept waiting
                break
            await asyncio.sleep(1)  # backoff before asking again, not a wait for a condition
            placed = await self._placed(counter)
        self.ctx.tasks.spawn(self._count(counter, placed), name="units-count")

    async def _count(self, counter: ProjectionDb, placed: bool) -> None:
        # Never counted from the first event for want of an answer: that would add every unit
        # ever stored at once, a spike in every rate() and an ingest alert.
        while not placed:
            await asyncio.sleep(5)  # backoff before asking again, not a wait for a condition
            placed = await self._placed(counter)
        await Follower(EventStore(self.nc), counter, ["cim.evt.unit.*.created"], _count_units).run()

    async def _placed(self, counter: ProjectionDb) -> bool:
        """One try at `_start_at_the_end`; whether it worked (why not, logged)."""
        try:
            await self._start_at_the_end(counter)
            return True
        except Exception as err:
            log.info("counting stored units once %s answers (%s)", EVENTS_STREAM, err)
            return False

    async def _start_at_the_end(self, counter: ProjectionDb) -> None:
        """Checkpoint the counter at the stream's last event: units stored before this
        process started were counted by the one before, and Prometheus' `rate()` reads on.
        A stream not made yet has no units: every one from now on is counted."""
        info = await js_api(self.nc, f"STREAM.INFO.{EVENTS_STREAM}", timeout=5)
        if error_code(info) == JsError.STREAM_NOT_FOUND:
            return
        if "error" in info:
            raise JetStreamUnavailable(f"cannot read {EVENTS_STREAM}: {info['error'].get('description')}")
        end = int(info.get("state", {}).get("last_seq", 0))
        if end:
            msg = await self.nc.jetstream().get_msg(EVENTS_STREAM, end)
            last = StoredEvent.from_message(msg.subject or "", end, dict(msg.headers or {}), msg.data or b"")
            counter.commit(lambda _conn: None, str(info.get("created", "")), last)

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


def _count_units(batch: list[StoredEvent]) -> Callable[[sqlite3.Connection], None]:
    """Count every `unit.created`, whoever wrote it: the CLI and the hub write units without
    asking this agent. A counter starts at zero with its process, as Prometheus expects."""

    def count(_conn: sqlite3.Connection) -> None:
        for event in batch:
            if event.problem or not isinstance(event.data, dict):
                continue  # a malformed event is no unit (its readers say so)
            UNITS_STORED.inc()
            size = event.data.get("size")
            if isinstance(size, int) and size >= 0:
                UNIT_BYTES_STORED.inc(size)

    return count
