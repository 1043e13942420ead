"""The `pipeline` agent: runs the pipelines in CIM_PIPELINES and serves search and relations.

Pipelines come from this agent's config (the NixOS settings) and from
`cim pipelines apply`; both land in the KV bucket, which the agent polls, so a changed
definition or step setting takes effect without a restart. The search index and the
relation graph are projections in one SQLite file under the agent's state directory
(cim.projection_db): a start resumes from its checkpoint and replays only what is newer.

Several pipeline agents share the work: each pipeline is one durable consumer, and every
agent pulls from it, so a unit goes to one of them. Each agent keeps its own projection of
the whole stream, so any of them answers a search completely.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import CidMismatch, CimError, ConfigError, InvalidInput, NotFound, ProjectionUnavailable, UnitNotFound
from ..events import Event, EventStore, StoredEvent
from ..metrics import Sampled
from ..names import EVENTS_STREAM
from ..plugins import discover
from ..projection_db import Follower, ProjectionDb, is_corrupt, state_dir
from ..registry import NoProvider, negotiate
from ..runtime import AgentBase, AgentContext, endpoint
from ..store.content import ContentStore
from ..store.unit_store import UnitStore
from ..tier.errors import TierError
from ..tier.fetch import fetch
from . import api, definitions, graph, projection, search
from .api import CheckRequest, CidRequest, Empty, RetryRequest, SearchRequest, UnitsRequest
from .config import Config
from .dlq import delete_letter, get_letter
from .engine import Runner
from .events import DlqRetried
from .metrics import lag
from .model import PipelineDef, check_plugins

log = logging.getLogger("cim.pipeline")
POLL_SECONDS = 2.0
T = TypeVar("T")


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        self.units = UnitStore(ctx.nc, agent=self.config.agent_name, timeout=10, cold=fetch)
        self.content = ContentStore(ctx.nc, timeout=10)
        self.events = EventStore(ctx.nc, timeout=10)
        self.plugins = discover()
        self.runners: dict[str, Runner] = {}
        self.versions: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.paused: set[str] = set()
        self.db = ProjectionDb(state_dir(self.config.state_dir), "pipeline", schema=projection.SCHEMA,
                               version=projection.VERSION)
        self.projection = Follower(self.events, self.db, projection.SUBJECTS,
                                   lambda batch: projection.prepare(batch, self._read_texts))

    def capabilities(self) -> dict[str, str]:
        """Announced in the registry: what the loaded plugins provide."""
        return self.plugins.providers()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        for name, why in self.plugins.broken.items():
            log.error("plugin %s is not available: %s", name, why)
        self.db.open()
        self.ctx.metrics.register(Sampled("the pipelines' consumers", self._lag, asyncio.get_running_loop()))
        for p in self.config.pipelines:
            await self._install(p)
        self.ctx.tasks.spawn(self._watch(), name="pipelines-watch")
        self.ctx.tasks.spawn(self.projection.run(), name="projection")

    async def _lag(self) -> list:
        runners = list(self.runners.items())  # a copy: a reload may change the dict meanwhile
        states = await asyncio.gather(*(r.lag() for _, r in runners))
        return lag(zip([name for name, _ in runners], states, strict=True))

    async def _install(self, p: PipelineDef) -> None:
        """Install a pipeline of this agent's config, unless one of its name was applied with
        `cim pipelines apply`: an operator's pipeline is never reverted by a restart."""
        if (await definitions.install_from_config(self.nc, p)).source != "config":
            log.info("pipeline %s was applied with `cim pipelines apply`; the config's definition does not replace it", p.name)

    async def stop(self) -> None:
        # Together: each runner waits at most its own bound for the batch in hand.
        await asyncio.gather(*(r.stop() for r in list(self.runners.values())), return_exceptions=True)
        self.db.close()

    async def _read(self, cid: str) -> bytes:
        parts, size = [], 0
        async for chunk in self.units.get(cid):
            size += len(chunk)
            if size > self.config.max_content_bytes:
                raise InvalidInput("size", f"{cid} is over max_content_bytes ({self.config.max_content_bytes}) for pipeline steps")
            parts.append(chunk)
        return b"".join(parts)

    async def _read_many(self, cids: list[str]) -> dict[str, bytes]:
        found = await self.content.read_small(cids)
        return {cid: data for cid, data in found.items() if len(data) <= self.config.max_content_bytes}

    async def _read_texts(self, cids: list[str]) -> dict[str, bytes]:
        """Texts for the search index: small ones in two requests, the rest one by one. A text
        that is not there (or not what its CID says, or in a colder tier that cannot be read
        through now) is left out, and its unit stays searchable by title; a failure of JetStream
        itself (a timeout, a leader election) fails the batch, which is read again: the
        checkpoint never moves past a text the hot tier only could not answer for."""
        found = await self.content.read_small(cids)
        for cid in cids:
            if cid not in found:
                try:
                    found[cid] = await self._text(cid)
                except (NotFound, CidMismatch, InvalidInput, TierError) as err:
                    # Gone for good (expired, lost), not what its CID says, or no tier agent
                    # to read it through: the unit stays searchable by title, and one such
                    # text never holds up the whole index.
                    log.warning("the text %s for the search index cannot be used: %s", cid, err)
        return found

    async def _text(self, cid: str) -> bytes:
        """One text from the hot tier, or, when it is a unit's own bytes (plain text is its own
        text) that the tier agent moved to a colder tier, from there: read through the tier
        agent as any unit is."""
        try:
            return await self.content.read(cid)
        except UnitNotFound:
            return await self._read(cid)

    async def _store_text(self, text: str) -> str:
        return await self.content.put_bytes(text.encode("utf-8"))

    async def _watch(self) -> None:
        """Poll the definitions: start, restart (changed), pause and remove runners."""
        while True:
            try:
                records = {r.definition.name: r for r in await definitions.list_all(self.nc)}
                await self._reconcile(records)
            except Exception as err:  # the bucket may be briefly unavailable; keep the runners
                log.warning("reading pipeline definitions failed: %s", err)
            await asyncio.sleep(POLL_SECONDS)  # the polling interval, not a wait for a condition

    async def _reconcile(self, records: dict[str, definitions.PipelineRecord]) -> None:
        for name in list(self.runners):
            r = records.get(name)
            version = r.definition.model_dump_json() if r else None
            if r is None or r.paused or version != self.versions.get(name):
                await self.runners.pop(name).stop()
                self.versions.pop(name, None)
                log.info("pipeline %s %s", name, "paused" if r and r.paused else "stopped" if r is None else "reloading")
        # Reported only now that its runner has stopped: "paused" means nothing more runs.
        self.paused = {name for name, r in records.items() if r.paused}
        for name, r in records.items():
            if r.paused or name in self.runners:
                continue
            if r.definition.requires:
                try:
                    await negotiate(self.nc, r.definition.requires)
                except NoProvider as err:  # e.g. "nothing provides ocr >= 2 (available: ...)"
                    if self.errors.get(name) != str(err):
                        log.error("pipeline %s waits for a provider: %s", name, err)
                    self.errors[name] = str(err)
                    continue
            try:
                runner = Runner(self.nc, r.definition, self.plugins, agent=self.config.agent_name,
                                read=self._read, store_text=self._store_text, read_many=self._read_many)
            except CimError as err:
                if self.errors.get(name) != str(err):
                    log.error("pipeline %s cannot run: %s", name, err)
                self.errors[name] = str(err)
                continue
            self.errors.pop(name, None)
            runner.start()
            self.runners[name] = runner
            self.versions[name] = r.definition.model_dump_json()

    # --- endpoints ------------------------------------------------------------------------

    def _query(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query on the projection; a corrupt file is rebuilt, never served."""
        try:
            return run(self.db.conn)
        except sqlite3.DatabaseError as err:
            if not is_corrupt(err):
                raise ProjectionUnavailable(f"the search index cannot answer now ({err}); try again shortly") from None
            self.projection.rebuild(f"a query failed on it ({err})")
            raise ProjectionUnavailable(
                "the search index is damaged and is being rebuilt from the event stream; try again shortly") from None

    def _fresh(self) -> dict[str, Any]:
        return self.projection.state()

    @endpoint(api.SEARCH)
    async def search(self, req: SearchRequest) -> api.SearchReply:
        """Full-text search over the units, best first (FTS5: stemming, phrases, prefixes)."""
        filters = search.Filters(labels=req.labels, media_type=req.media_type, source=req.source, since=req.since,
                                 until=req.until)

        def run(conn: sqlite3.Connection) -> api.SearchReply:
            hits, capped = search.search(conn, req.query, limit=req.limit, filters=filters)
            units, indexed = search.counts(conn)
            return api.SearchReply(
                hits=[api.SearchHit(**h.__dict__) for h in hits], indexed=indexed, units=units,
                ranked_newest=search.CANDIDATES if capped else None,
                facets=search.facets(conn, req.query, filters=filters) if req.facets else None, **self._fresh())

        return self._query(run)

    @endpoint(api.UNITS)
    async def list_units(self, req: UnitsRequest) -> api.UnitsReply:
        """The units the index knows, newest first, a page at a time (the hub's GET /v1/units),
        kept to the caller's reach (a hub token's patterns), each request a bounded walk
        (search.SCAN_ROWS). Run on the event loop as search is: its work is bounded."""
        filters = search.Filters(labels=req.labels, source=req.source)
        reach = search.Reach(sources=req.within_sources)

        def run(conn: sqlite3.Connection) -> api.UnitsReply:
            fresh = self._fresh()
            if fresh["as_of"] < req.min_as_of:
                # A cursor from an agent further on: this index lacks units below its position,
                # and a page from here would skip them. Refused at once (a wait would hold this
                # endpoint's queue): the caller asks again, and reaches an agent caught up.
                raise ProjectionUnavailable(
                    f"this pipeline agent's index covers the events up to #{fresh['as_of']}, and the listing goes on "
                    f"below #{req.min_as_of}; try again shortly (if the event stream was restored since, list "
                    "again from the start)")
            rows, resume = search.units(conn, filters=filters, before=req.before, limit=req.limit, reach=reach,
                                        scan=req.scan)
            return api.UnitsReply(units=[api.ListedUnit(**r.__dict__) for r in rows], more=resume is not None,
                                  resume=resume, **fresh)

        return self._query(run)

    @endpoint(api.RELATED)
    async def related(self, req: CidRequest) -> api.RelatedReply:
        """Units related to a unit (references, derived-from, same source) and similar ones."""

        def run(conn: sqlite3.Connection) -> api.RelatedReply:
            return api.RelatedReply(
                cid=req.cid, related=[api.Relation(**r) for r in graph.related(conn, req.cid)],
                similar=[api.SearchHit(**h.__dict__) for h in search.similar(conn, req.cid, limit=req.limit)],
                **self._fresh())

        return self._query(run)

    @endpoint(api.INDEX)
    async def index_state(self, req: Empty) -> api.IndexReply:
        """A digest of the search index and graph, to compare one rebuilt by replay with a live one."""

        def run(conn: sqlite3.Connection) -> api.IndexReply:
            rows = search.digest_rows(conn) + conn.execute("SELECT a, kind, b FROM edges ORDER BY a, kind, b").fetchall()
            units, indexed = search.counts(conn)
            return api.IndexReply(documents=indexed, units=units, replayed=self.projection.replayed,
                                  digest=hashlib.sha256(json.dumps(rows).encode()).hexdigest(), **self._fresh())

        return self._query(run)

    @endpoint(api.STATUS)
    async def status(self, req: Empty) -> dict:
        """Each pipeline's state, counters and consumer lag, and the plugins."""
        out = {}
        # Copies: a pause or a definition change may start or stop a runner while lag() awaits.
        for name, runner in list(self.runners.items()):
            s = runner.stats
            out[name] = {"state": "running", "processed": s.processed, "skipped": s.skipped,
                         "failed_attempts": s.failed_attempts, "dead_letters": s.dead_letters,
                         "last_error": s.last_error, **await runner.lag()}
        for name, why in list(self.errors.items()):
            out[name] = {"state": "error", "last_error": why}
        for name in list(self.paused):
            out[name] = {"state": "paused"}
        return {"pipelines": out, "plugins": {n: p.version for n, p in self.plugins.found.items()},
                "broken_plugins": self.plugins.broken}

    @endpoint(api.CHECK)
    async def check(self, req: CheckRequest) -> dict:
        """Problems of these pipelines against the plugins installed here (`cim pipelines apply`)."""
        try:
            check_plugins(req.pipelines, self.plugins, "pipelines")
        except ConfigError as err:
            return {"problems": [list(p) for p in err.errors]}
        return {"problems": []}

    @endpoint(api.RETRY)
    async def retry(self, req: RetryRequest) -> dict:
        """Process a dead letter again; on success remove it from CIM_DLQ."""
        letter = await get_letter(self.nc, req.seq)
        runner = self.runners.get(letter.pipeline)
        if runner is None:
            raise NotFound(f"pipeline {letter.pipeline!r} is not running here (paused, removed or broken)")
        msg = await self.nc.jetstream().get_msg(EVENTS_STREAM, letter.original_seq)
        event = StoredEvent.from_message(msg.subject or "", msg.seq or 0, dict(msg.headers or {}), msg.data or b"")
        await runner.process(event)
        await delete_letter(self.nc, req.seq)
        await self.events.append(Event.of(
            DlqRetried(pipeline=letter.pipeline, dlq_seq=req.seq, original_seq=letter.original_seq),
            f"{letter.pipeline}-{req.seq}", id=f"dlq-retried-{req.seq}", agent=self.config.agent_name,
        ))
        return {"retried": req.seq, "pipeline": letter.pipeline, "original_seq": letter.original_seq}
