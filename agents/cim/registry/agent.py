"""The `registry` agent: a live view of every announced agent, its history as events, and
capability queries over NATS (`cim.registry.{ls,show,providers,negotiate}`).

Agents announce themselves in the `CIM_REGISTRY` bucket (see `cim.registry.announce`); this
agent follows the bucket and sweeps it: an instance is `up` while its heartbeats arrive,
`stale` after `stale_after` seconds without one, and `gone` when it deletes its record (a
clean stop) or `gone_after` seconds pass (its record has expired). Each change is an event
(`agent.appeared`, `agent.stale`, `agent.recovered`, `agent.gone`) on the agent's instance
id, appended with the expected revision, so two registry agents never record one twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel

from .. import __version__
from ..errors import ConcurrencyConflict, JetStreamUnavailable, NotFound, ProjectionUnavailable
from ..events import Event, EventStore
from ..events.envelope import aggregate_filter
from ..metrics import Sampled
from ..names import REGISTRY_BUCKET
from ..nats.read import read_stream
from ..runtime import AgentBase, AgentContext, endpoint
from ..tasks import until_any
from . import api
from .api import Agents, LsRequest, Negotiated, NegotiateRequest, Provider, Providers, ProvidersRequest, ShowRequest
from .client import CAPABILITIES, PREFIX, STREAM, is_removal, parse_record, select
from .config import Config
from .events import AgentAppeared, AgentGone, AgentRecovered, AgentStale
from .metrics import agents
from .model import (
    STALE_AFTER_BEATS,
    AgentRecord,
    AgentView,
    Requirement,
    State,
    registry_key,
)
from .query import negotiate, providers

log = logging.getLogger("cim.agent.registry")

DEFAULT_TTL = 30.0  # the bucket's TTL when its config cannot be read
CATCH_UP_WAIT = 10.0  # seconds start() waits for the bucket's history before serving anyway


@dataclass
class Tracked:
    record: AgentRecord
    state: State
    since: datetime
    seen: float  # time.monotonic() of its last heartbeat, as received
    revision: int | None = None  # the aggregate's last event sequence, once read
    recorded: str | None = None  # the type of that event

    def view(self) -> AgentView:
        return AgentView(record=self.record, state=self.state, since=self.since)


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        self.events = EventStore(ctx.nc)
        self.instances: dict[str, Tracked] = {}
        self.ttl = DEFAULT_TTL
        self._lock = asyncio.Lock()
        self._closing = False
        self._caught_up = asyncio.Event()  # the bucket's history has been read once
        self._follow_error: str | None = None  # why the last read of the bucket failed
        self._removed_keys: set[str] = set()  # removals of records this registry never saw

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.ttl = await self._bucket_ttl()
        self.ctx.metrics.register(Sampled("the registry's view", self._agents, asyncio.get_running_loop()))
        self.ctx.tasks.spawn(self._follow(), name="registry-follow")
        self.ctx.tasks.spawn(self._sweeper(), name="registry-sweep")
        self.ctx.tasks.spawn(self._close_missed(), name="registry-missed")
        # Ready (`$SRV.PING` answering, endpoints served) once the bucket's history is read:
        # an answer before that lists fewer agents than the bucket holds. Bounded, so a bucket
        # not made yet does not keep the agent from starting (until then `views` refuses),
        # and a stop asked meanwhile is not kept waiting.
        await until_any(self._caught_up, self.ctx.stopping, timeout=CATCH_UP_WAIT)
        if not self._caught_up.is_set() and not self.ctx.stopping.is_set():
            log.warning("the registry bucket's history is not read after %gs; answering 'not ready' until it is",
                        CATCH_UP_WAIT)

    async def _agents(self) -> list:
        # A record's body is whatever its writer put there: a label is a capability this
        # version knows, or "other", so no writer can make the series grow without bound.
        return agents((t.record.capability if t.record.capability in CAPABILITIES else "other", t.state)
                      for t in list(self.instances.values()))

    async def quiesce(self) -> None:
        self._closing = True  # the follower records nothing more; the runtime then cancels it

    async def _bucket_ttl(self) -> float:
        try:
            msg = await self.nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=5)
            max_age = json.loads(msg.data).get("config", {}).get("max_age", 0)
        except Exception as err:
            log.warning("cannot read the registry bucket's TTL (%s); assuming %gs", err, DEFAULT_TTL)
            return DEFAULT_TTL
        return max_age / 1e9 if max_age else DEFAULT_TTL

    def stale_after(self, record: AgentRecord) -> float:
        return self.config.stale_after or STALE_AFTER_BEATS * record.heartbeat

    def gone_after(self, record: AgentRecord) -> float:
        return max(self.config.gone_after or self.ttl, self.stale_after(record))

    # --- the live view ------------------------------------------------------------------

    async def _follow(self) -> None:
        next_seq = 1
        while True:
            try:
                if not self._caught_up.is_set():
                    # The bucket's history first, to its end as it is now (records may expire
                    # meanwhile: a bounded read still ends), then live.
                    async for msg in read_stream(self.nc, STREAM, [PREFIX + ">"], start_seq=next_seq):
                        await self._apply(msg)
                        next_seq = msg.seq + 1
                    self._caught_up.set()
                    self._follow_error = None
                async for msg in read_stream(self.nc, STREAM, [PREFIX + ">"], start_seq=next_seq, follow=True):
                    if self._closing:
                        return
                    await self._apply(msg)
                    next_seq = msg.seq + 1
            except asyncio.CancelledError:
                raise
            except Exception as err:  # keep the view alive: the bucket may not exist yet
                log.warning("following the registry bucket failed (%s); retrying", err)
                self._follow_error = str(err)
            await asyncio.sleep(2)  # backoff before following again, not a wait for a condition

    async def _apply(self, msg) -> None:
        age = max(0.0, time.time() - msg.timestamp_ns / 1e9)
        async with self._lock:
            if is_removal(msg):
                await self._removed(msg.subject[len(PREFIX):])
            elif (record := parse_record(msg)) is not None:
                await self._heard(record, time.monotonic() - age)

    async def _heard(self, record: AgentRecord, seen: float) -> None:
        t = self.instances.get(record.id)
        if t is None or t.state == "gone":
            t = Tracked(record=record, state="up", since=datetime.now(UTC), seen=seen)
            self.instances[record.id] = t
            if time.monotonic() - seen > self.gone_after(record):
                t.state = "gone"  # an old record not yet purged by the server: nothing to announce
                return
            await self._record(t, "agent.appeared", AgentAppeared(
                **self._common(record), version=record.version, capabilities=record.capabilities,
                endpoints=record.endpoints, pid=record.pid, started_at=record.started_at,
            ))
            return
        t.record, t.seen = record, max(t.seen, seen)
        if t.state == "stale" and time.monotonic() - t.seen <= self.stale_after(record):
            self._set(t, "up")
            await self._record(t, "agent.recovered", AgentRecovered(**self._common(record)))

    async def _removed(self, key: str) -> None:
        t = next((t for t in self.instances.values() if t.record.key == key), None)
        if t is None:
            self._removed_keys.add(key)
        elif t.state != "gone":
            self._set(t, "gone")
            await self._record(t, "agent.gone", AgentGone(**self._common(t.record), reason="stopped"))

    async def _close_missed(self) -> None:
        """Agents that left while no registry was running: their history still ends with
        them here (appeared, recovered or stale) but the bucket no longer holds their
        record. Once the bucket has been read, each gets its `agent.gone`, once."""
        await self._caught_up.wait()
        latest: dict[str, tuple[int, str, dict]] = {}  # instance id -> (last seq, last type, identity)
        try:
            async for e in self.events.read([aggregate_filter("agent")]):
                if e.problem or not isinstance(e.data, dict):
                    continue
                latest[e.aggregate_id] = (e.seq, e.type, e.data)  # every agent event names the agent
        except JetStreamUnavailable as err:
            log.warning("cannot read the agents' history to find those that left unseen: %s", err)
            return
        missed = 0
        for instance_id, (seq, last_type, identity) in latest.items():
            async with self._lock:  # per agent: a query waits for one append at most
                tracked = self.instances.get(instance_id)
                if last_type == "agent.gone" or (tracked is not None and tracked.state != "gone"):
                    continue
                key = registry_key(identity.get("capability", ""), instance_id)
                # A removal marker still in the bucket says it stopped cleanly; without one (it
                # aged out, or the record simply expired) the registry cannot tell which.
                reason = "stopped" if key in self._removed_keys else "unseen"
                data = AgentGone(name=identity.get("name", "?"), capability=identity.get("capability", "?"),
                                 host=identity.get("host", "?"), container=identity.get("container"),
                                 last_seen=identity.get("last_seen"), reason=reason)  # type: ignore[arg-type]
                event = Event.of(data, instance_id, agent=self.config.agent_name, agent_version=__version__)
                try:
                    await self.events.append(event, expected_revision=seq)
                    missed += 1
                    log.info("agent %s (%s) left while no registry was watching (%s)", data.name, instance_id, reason)
                except ConcurrencyConflict:
                    pass  # something happened to it meanwhile (it is back, or a twin recorded it)
                except JetStreamUnavailable as err:
                    log.warning("could not record agent.gone for %s: %s", instance_id, err)
        log.info("history checked: %d agents of %d left while no registry was watching", missed, len(latest))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)  # the sweep period
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry sweep failed")

    async def sweep(self) -> None:
        now = time.monotonic()
        for key, t in list(self.instances.items()):
            # The lock per agent, not per sweep: after a laptop's sleep every agent turns
            # stale at once, and a query waits for one append, not for all of them.
            async with self._lock:
                silent = now - t.seen
                if t.state == "up" and silent > self.stale_after(t.record):
                    self._set(t, "stale")
                    await self._record(t, "agent.stale", AgentStale(**self._common(t.record)))
                if t.state == "stale" and silent > self.gone_after(t.record):
                    self._set(t, "gone")
                    await self._record(t, "agent.gone", AgentGone(**self._common(t.record), reason="expired"))
                if t.state == "gone" and silent > self.gone_after(t.record) + self.config.keep_gone:
                    self.instances.pop(key, None)

    @staticmethod
    def _set(t: Tracked, state: State) -> None:
        log.info("agent %s (%s) is %s", t.record.name, t.record.id, state)
        t.state, t.since = state, datetime.now(UTC)

    @staticmethod
    def _common(record: AgentRecord) -> dict:
        return {"name": record.name, "capability": record.capability, "host": record.host,
                "container": record.container, "last_seen": record.last_seen}

    async def _record(self, t: Tracked, type_name: str, data: BaseModel) -> None:
        """Append the transition unless the agent's history already ends with it (after a
        restart of this agent, or when a twin registry was first)."""
        for _ in range(3):
            if t.revision is None:
                await self._read_history(t)
            if t.recorded == type_name:
                return
            event = Event.of(data, t.record.id, agent=self.config.agent_name, agent_version=__version__)
            try:
                appended = await self.events.append(event, expected_revision=t.revision)
            except ConcurrencyConflict:
                t.revision = None  # someone else wrote: read again and decide again
                continue
            except JetStreamUnavailable as err:
                log.warning("could not record %s for %s: %s", type_name, t.record.id, err)
                return
            t.revision, t.recorded = appended.seq, type_name
            return

    async def _read_history(self, t: Tracked) -> None:
        try:
            last = await self.events.last(aggregate_filter("agent", t.record.id))
            t.revision, t.recorded = last.seq, last.type
        except NotFound:
            t.revision, t.recorded = 0, None

    # --- queries ------------------------------------------------------------------------

    def views(self, include_gone: bool = False) -> list[AgentView]:
        if not self._caught_up.is_set():
            why = f" (reading it failed: {self._follow_error}; is it provisioned, and may this agent read it?)" \
                if self._follow_error else ""
            raise ProjectionUnavailable(
                f"the registry agent has not read the {REGISTRY_BUCKET} bucket yet{why}; try again shortly "
                "(`cim agents` reads the bucket itself meanwhile)")
        views = [t.view() for t in self.instances.values() if include_gone or t.state != "gone"]
        return sorted(views, key=lambda v: (v.record.name, v.record.started_at))

    async def _current(self, include_gone: bool = False) -> list[AgentView]:
        """The view between transitions: a state changes, then its event is appended, both
        under the lock, so an answer does not show a state whose event is still on its way
        (an append that fails leaves the state, and the log says so)."""
        async with self._lock:
            return self.views(include_gone)

    @endpoint(api.LS)
    async def ls(self, req: LsRequest) -> Agents:
        """Announced agents with their state; `all` includes those gone."""
        views = await self._current(req.all)
        if req.capability:
            views = [v for v in views if req.capability in v.record.capabilities]
        return Agents(agents=views)

    @endpoint(api.SHOW)
    async def show(self, req: ShowRequest) -> Agents:
        """The instances of one agent (by name or instance id), gone ones included."""
        return Agents(agents=select(await self._current(include_gone=True), req.name))

    @endpoint(api.PROVIDERS)
    async def providers(self, req: ProvidersRequest) -> Providers:
        """Live agents providing a capability within a version range, best first."""
        requirement = Requirement.parse(f"{req.capability}{req.spec}")
        return Providers(providers=[Provider(agent=v, version=ver) for v, ver in providers(await self._current(), requirement)])

    @endpoint(api.NEGOTIATE)
    async def negotiate(self, req: NegotiateRequest) -> Negotiated:
        """A provider per requirement, or an error naming every unmet one."""
        reqs = [r if isinstance(r, Requirement) else Requirement.parse(r) for r in req.requirements]
        return Negotiated(matches=negotiate(await self._current(), reqs))
