"""Running one pipeline: a durable pull consumer, steps applied exactly once, dead letters.

Delivery is at least once (a message is acked only after the unit is recorded). A unit's
steps run in order; their effects (with ids made of pipeline, step and unit CID) are
appended first, then one `steps.done` with every step's provenance and output, with
expected revision 0 on `<pipeline>--<cid>`. That record is the commit: a unit is done
with all of its steps or with none. A redelivered message whose unit is recorded runs no
step again; one that crashed before its record re-runs the steps, and their effects,
already stored, are recognised by their ids, so none is applied twice. A fresh consumer
on a stream that already holds records (a leaf rebuilt by `cim restore`) treats every
event up to then as possibly processed, so no step re-runs there either.
After `max_attempts` failures the message goes to CIM_DLQ with the reason and its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg

from .. import __version__
from .. import cid as cidlib
from ..errors import CimError, ConcurrencyConflict, ConsumerGone, NotFound, UnitNotFound
from ..events import Event, EventStore, StoredEvent
from ..events.envelope import H_MSG_ID, safe_id, source_for, subject_for, validated
from ..names import DLQ_STREAM, EVENTS_STREAM
from ..nats.api import JsError, api, error_code
from ..nats.pull import PullFetcher
from ..plugins import Plugins, StepContext
from ..store.unit_store import UnitStore
from ..store.units import Unit
from ..tasks import cancel_and_wait
from ..tier.fetch import fetch
from .coalesce import CoalescedReads
from .events import StepRecord, StepsDone
from .metrics import DEAD_LETTERS, FAILED, PROCESSED, SKIPPED
from .model import UNIT_CREATED, PipelineDef, run_key, step_key

log = logging.getLogger("cim.pipeline")
RECORDS = "cim.evt.steps.*.done"
NS = 1_000_000_000


def _batch_size(concurrency: int) -> int:
    """Units per fetched batch: big enough to pipeline the appends, small enough that a few
    batches overlap (one computes while another waits for the server)."""
    return max(1, min(64, -(-concurrency // 4)))


@dataclass
class _Work:
    """One fetched event on its way through the steps of a batch."""

    event: StoredEvent
    redelivered: bool
    msg: Msg | None = None
    applied: bool = False  # False: not a unit event, or the unit is out of this pipeline's context
    recorded_before: bool = False  # an earlier delivery ran it (and was counted then)
    effects: list[Event] = field(default_factory=list)
    record: Event | None = None  # its `steps.done`; None when there is nothing to record
    error: BaseException | None = None


@dataclass
class RunnerStats:
    processed: int = 0
    skipped: int = 0
    failed_attempts: int = 0
    dead_letters: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.time)


async def ensure_consumer(nc: Client, p: PipelineDef) -> None:
    """Create or update the pipeline's durable consumer (its filters and back-pressure)."""
    config = {
        "durable_name": p.consumer,
        "name": p.consumer,
        "description": f"CIM pipeline {p.name}",
        "deliver_policy": p.start,
        "ack_policy": "explicit",
        "ack_wait": int(p.ack_wait * NS),
        "max_deliver": -1,  # the engine counts attempts itself, to dead-letter with a reason
        "max_ack_pending": p.max_ack_pending,
        "filter_subjects": p.trigger,
    }
    for action in ("create", "update"):
        if action == "update":
            # The start policy cannot change in place (the consumer keeps its position): an
            # update carries the one the consumer has.
            info = await api(nc, f"CONSUMER.INFO.{EVENTS_STREAM}.{p.consumer}", timeout=10)
            config["deliver_policy"] = info.get("config", {}).get("deliver_policy", config["deliver_policy"])
        resp = await api(nc, f"CONSUMER.CREATE.{EVENTS_STREAM}.{p.consumer}",
                         {"stream_name": EVENTS_STREAM, "config": config, "action": action}, timeout=10)
        if "error" not in resp:
            return
        if action == "create" and error_code(resp) == JsError.CONSUMER_ALREADY_EXISTS:  # another config: update it
            continue
        raise CimError(f"cannot set up the consumer of pipeline {p.name}: {resp['error'].get('description')}")


class Runner:
    def __init__(self, nc: Client, definition: PipelineDef, plugins: Plugins, *, agent: str,
                 read: Callable[[str], Awaitable[bytes]], store_text: Callable[[str], Awaitable[str]],
                 read_many: Callable[[list[str]], Awaitable[dict[str, bytes]]] | None = None):
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.p = definition
        self.plugins = plugins
        self.agent = agent
        self.events = EventStore(nc, timeout=10)
        self.units = UnitStore(nc, agent=agent, timeout=10, cold=fetch)
        self.read = read
        # Small contents the units of a batch ask for together come in one request;
        # whatever that misses is read singly through `read` (tiers, limits, errors).
        self._batched = CoalescedReads(read_many) if read_many else None
        self.store_text = store_text
        self.stats = RunnerStats()
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._replay_until = 0  # events up to this sequence may have been processed before
        # `unit.created` happens once per unit; any other trigger (a label, a revision) can
        # come again for a unit already run, on a first delivery: it is looked up each time.
        self._triggers_repeat = definition.trigger != [UNIT_CREATED]
        # Resolve plugins and settings up front: a bad pipeline fails when applied, not per unit.
        self.steps = [(s, plugins.get(s.plugin), plugins.get(s.plugin).parse_settings(s.settings)) for s in definition.steps]

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"pipeline-{self.p.name}")

    async def stop(self, timeout: float = 30) -> None:
        """Finish the batch in hand, then leave: a cancelled fetch would strand messages the
        server already handed to it until their ack_wait ran out."""
        self._stop.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (TimeoutError, Exception):
                await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        await ensure_consumer(self.nc, self.p)
        self._replay_until = await self._processed_before()
        # Several batches in flight, each fetched by its own fetcher from the one durable
        # consumer: while one batch waits for its acknowledgements the next one runs.
        size = _batch_size(self.p.concurrency)
        fetchers = [PullFetcher(self.nc, EVENTS_STREAM, self.p.consumer) for _ in range(-(-self.p.concurrency // size))]
        log.info("pipeline %s running (%d steps, %d batches of %d in flight)", self.p.name, len(self.steps),
                 len(fetchers), size)
        async with contextlib.AsyncExitStack() as stack:
            for f in fetchers:
                await stack.enter_async_context(f)
            await asyncio.gather(*(self._fetch_loop(f, size) for f in fetchers))

    async def _processed_before(self) -> int:
        """For a consumer that has delivered nothing yet on a stream that already holds step
        records (a restored leaf): the last sequence now, else 0. (Step subjects cannot be
        filtered by pipeline, so any pipeline's records count; that costs a lookup, no more.)"""
        info = await self.js.consumer_info(EVENTS_STREAM, self.p.consumer)
        if info.delivered.stream_seq:
            return 0
        try:
            await self.events.last(RECORDS)
        except NotFound:
            return 0
        return int((await self.js.stream_info(EVENTS_STREAM)).state.last_seq)

    async def _fetch_loop(self, fetcher: PullFetcher, size: int) -> None:
        while not self._stop.is_set():
            try:
                msgs = await fetcher.fetch(size, timeout=2)
                if self._stop.is_set():  # paused or reloaded while waiting: what came is not ours to run
                    fetcher.unread(msgs)
                    return
                if not msgs:
                    continue
            except ConsumerGone:  # its stream was deleted and made again (`cim restore`): a new consumer
                if self._stop.is_set():
                    return
                log.warning("pipeline %s: its consumer was deleted (the event stream was recreated?); making it again",
                            self.p.name)
                # Until it exists again: a fetch from a consumer that is not there gets no
                # answer at all, so nothing else would notice.
                while not self._stop.is_set():
                    try:
                        await ensure_consumer(self.nc, self.p)
                        self._replay_until = await self._processed_before()
                        break
                    except Exception as err:
                        log.warning("pipeline %s: cannot make its consumer yet (%s); retrying", self.p.name, err)
                        await asyncio.sleep(1)  # backoff before the next try, not a wait for a condition
                continue
            except Exception as err:  # a reconnect or leader change: try again shortly
                if self._stop.is_set():
                    return
                log.warning("pipeline %s: fetch failed (%s); retrying", self.p.name, err)
                await asyncio.sleep(1)  # backoff before the next fetch, not a wait for a condition
                continue
            await self._handle_batch(msgs)

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        """Run the steps of a whole fetched batch, then commit it in two pipelined waves.

        Per unit the steps run in order; across the batch they run concurrently, and their
        appends are not awaited one by one: every effect of the batch goes out in one wave,
        every `steps.done` in the next, each wave acknowledged as a whole. A unit's record
        therefore still follows its effects (the commit rule above), and a crash between
        the waves is the redelivery case the engine handles already.
        """
        works = []
        for msg in msgs:
            event = StoredEvent.from_message(msg.subject, msg.metadata.sequence.stream, dict(msg.headers or {}),
                                             msg.data)
            redelivered = msg.metadata.num_delivered > 1 or event.seq <= self._replay_until
            works.append(_Work(event, redelivered, msg))
        await asyncio.gather(*(self._run_steps(w) for w in works))
        await self._commit(works)
        failed = []
        for w in works:  # the usual case in line: a task per unit only to ack it costs more than the ack
            if w.error is None:
                await self._settle(w)
            else:
                failed.append(w)
        await asyncio.gather(*(self._settle(w) for w in failed))

    async def _settle(self, w: _Work) -> None:
        msg, event = w.msg, w.event
        assert msg is not None
        if w.error is None:
            if w.recorded_before:
                pass  # counted when it was done: a redelivery is no second unit processed
            elif w.applied:
                self.stats.processed += 1
                PROCESSED.labels(self.p.name).inc()
            else:
                self.stats.skipped += 1
                SKIPPED.labels(self.p.name).inc()
            await msg.ack()
            return
        err = w.error
        attempt = msg.metadata.num_delivered
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, CimError) else str(err)
        self.stats.failed_attempts += 1
        FAILED.labels(self.p.name).inc()
        self.stats.last_error = reason
        if attempt >= self.p.max_attempts:
            await self._dead_letter(msg, event, reason, attempt)
            await msg.term()
            self.stats.dead_letters += 1
            DEAD_LETTERS.labels(self.p.name).inc()
            log.error("pipeline %s: event #%d dead-lettered after %d tries: %s", self.p.name, event.seq, attempt, reason)
        else:
            delay = self.p.backoff[min(attempt - 1, len(self.p.backoff) - 1)] if self.p.backoff else 0
            log.warning("pipeline %s: event #%d failed (try %d of %d, again in %gs): %s",
                        self.p.name, event.seq, attempt, self.p.max_attempts, delay, reason)
            await msg.nak(delay=delay)

    def _in_context(self, unit: Unit) -> bool:
        c = self.p.context
        if c.labels and not set(c.labels) & set(unit.labels):
            return False
        return not c.sources or any(fnmatch.fnmatch(unit.source, g) for g in c.sources)

    async def process(self, event: StoredEvent, redelivered: bool = True) -> bool:
        """Apply every step to the event's unit and commit; False when it is out of context.
        (One event on its own: `cim dlq retry`. Errors are raised.)"""
        w = _Work(event, redelivered)
        await self._run_steps(w)
        await self._commit([w])
        if w.error is not None:
            raise w.error
        return w.applied

    async def _unit_of(self, event: StoredEvent) -> Unit | None:
        if event.problem or event.aggregate != "unit":
            return None
        if event.type == "unit.created":  # the trigger is the unit's own record: no lookup
            unit = event.typed()
            assert isinstance(unit, Unit)
            return unit
        try:
            return await self.units.unit(event.aggregate_id)
        except UnitNotFound:
            return None

    async def _run_steps(self, w: _Work) -> None:
        """Run the steps for one unit, collecting (not yet storing) its effects and record."""
        try:
            unit = await self._unit_of(w.event)
            if unit is None or not self._in_context(unit):
                return
            w.applied = True
            key = run_key(self.p.name, unit.cid)
            repeatable = self._triggers_repeat and w.event.type != "unit.created"  # that one comes once
            if (w.redelivered or repeatable) and await self._recorded(key):
                w.recorded_before = True
                return  # done by an earlier delivery: nothing runs again
            trigger = w.event
            # Ids from a stored trigger may predate today's rules (a blank at an end): made safe,
            # or the unit's records could never be appended and it would fail for good.
            correlation = safe_id(trigger.correlation_id or trigger.id)
            record_id = f"steps-done-{key}"
            previous: dict[str, dict] = {}
            steps: list[StepRecord] = []
            read, store_text = self._content_access()
            for step, plugin, settings in self.steps:
                ctx = StepContext(unit=unit, settings=settings, previous=dict(previous), read=read,
                                  store_text=store_text, pipeline=self.p.name, step=step.name)
                assert plugin.run is not None  # a step plugin (checked when the pipeline was built)
                result = await plugin.run(ctx)
                skey = step_key(self.p.name, step.name, unit.cid)
                effects = [e.model_copy(update={"id": f"{skey}-effect-{i}", "agent": self.agent,
                                                "source": source_for(self.agent), "agent_version": __version__,
                                                "correlation_id": correlation, "causation_id": record_id})
                           for i, e in enumerate(result.events)]
                # Checked here, not when the batch is sent: a step's bad event fails its own unit only.
                w.effects += [validated(e) for e in effects]
                previous[step.name] = result.output
                steps.append(StepRecord(step=step.name, plugin=plugin.name, plugin_version=plugin.version,
                                        output=result.output))
            if w.redelivered:  # a crash may have come after some effects were stored
                w.effects = [e for e in w.effects if not await self._already(e)]
            record = Event.of(
                StepsDone(pipeline=self.p.name, cid=unit.cid, trigger_seq=trigger.seq, steps=steps), key, id=record_id,
                agent=self.agent, agent_version=__version__, correlation_id=correlation,
                causation_id=safe_id(trigger.id))
            w.record = validated(record, as_built=True)
        except Exception as err:
            w.error = err

    def _content_access(self) -> tuple[Callable[[str], Awaitable[bytes]], Callable[[str], Awaitable[str]]]:
        """`read` and `store_text` for one unit's steps. Content read or written while the
        unit goes through them is kept by CID: the text one step extracts is what the next
        one indexes, with no second trip."""
        seen: dict[str, bytes] = {}
        hot: set[str] = set()  # of those, the ones read from (or written to) the hot content bucket

        async def read(cid: str) -> bytes:
            if cid not in seen:
                data = await self._batched.get(cid) if self._batched else None
                if data is not None:
                    hot.add(cid)
                seen[cid] = data if data is not None else await self.read(cid)
            return seen[cid]

        async def store_text(text: str) -> str:
            data = text.encode("utf-8")
            cid = cidlib.compute(data)
            # Plain text is its own text: bytes just read from the hot bucket are there
            # already. (Read through from a colder tier, they are stored hot like any text:
            # the search index reads texts from the hot bucket.)
            if cid not in hot:
                cid = await self.store_text(text)
                seen[cid] = data
                hot.add(cid)
            return cid

        return read, store_text

    async def _recorded(self, key: str) -> bool:
        try:
            await self.events.last(subject_for("steps.done", key))
        except NotFound:
            return False
        return True

    async def _commit(self, works: list[_Work]) -> None:
        """Effects first, `steps.done` records last: the record is the commit.

        (An atomic batch would say the same, but the server serialises batches at ~2 ms
        each, which caps a pipeline at a few hundred units a second.) A redelivery after a
        crash between the two waves re-sends effects with the same ids: the server drops
        them within its de-duplication window, and `_already` finds them after it. A record
        refused because it exists (expected revision 0) means the unit was recorded by an
        earlier delivery: that is success, not an error.
        """
        for wave in ("effects", "records"):
            items = [(w, e) for w in works if w.error is None
                     for e in (w.effects if wave == "effects" else [w.record] if w.record else [])]
            if not items:
                continue
            try:
                results = await self.events.append_each([e for _, e in items], checked=True,
                                                        expected_revision=0 if wave == "records" else None)
            except CimError as err:  # no answer for the wave: every unit in it goes again
                results = [err] * len(items)
            for (w, _), result in zip(items, results, strict=True):
                if isinstance(result, ConcurrencyConflict) and wave == "records":
                    continue
                if isinstance(result, Exception) and w.error is None:
                    w.error = result

    async def _already(self, effect: Event) -> bool:
        """Is this effect (by its id) stored already? Only asked on redeliveries."""
        async for e in self.events.read([effect.subject]):
            if e.id == effect.id:
                return True
        return False

    async def _dead_letter(self, msg: Msg, event: StoredEvent, reason: str, attempts: int) -> None:
        headers = {k if k != H_MSG_ID else "cim-orig-Nats-Msg-Id": v for k, v in (msg.headers or {}).items()}
        headers.update({
            "cim-dlq-reason": reason[:2000],
            "cim-dlq-pipeline": self.p.name,
            "cim-dlq-attempts": str(attempts),
            "cim-dlq-subject": msg.subject,
            "cim-dlq-seq": str(event.seq),
            H_MSG_ID: f"dlq-{self.p.name}-{event.seq}",
        })
        await self.js.publish(f"cim.dlq.pipeline.{self.p.name}", msg.data, headers=headers, stream=DLQ_STREAM)

    async def lag(self) -> dict:
        try:
            info = await self.js.consumer_info(EVENTS_STREAM, self.p.consumer)
        except Exception as err:
            return {"error": str(err)}
        return {"pending": info.num_pending, "ack_pending": info.num_ack_pending, "redelivered": info.num_redelivered,
                "delivered": info.delivered.stream_seq if info.delivered else 0}
