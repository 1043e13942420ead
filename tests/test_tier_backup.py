"""Backup and disaster recovery: the event stream and every unit's bytes go to the archive
tier; a wiped leaf is rebuilt from the archive alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import nats
import pytest

from cim.embedded.nats_server import NatsServer
from cim.events import Event, EventStore
from cim.nats.rpc import call
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from cim.tier.backends import FileBackend
from cim.tier.backup import Exporter, restore
from cim.tier.errors import TierError
from cim.tier.fetch import fetch
from cim.tier.urls import TierSpec
from support.pipeline_support import count
from support.tierkit import TierAgent, mixed_sizes, provisioned, s3_tier
from support.waiting import async_wait_until

TEXTS = {  # indexed by the default pipeline; one of them moves to warm
    "solar.txt": (b"Solar panels turn sunlight into electricity.", "new"),
    "grid.txt": (b"The grid carries electricity, electricity and more electricity.", "old"),
    "wind.html": (b"<html><head><title>Wind</title></head><body><p>Turbines make electricity on windy days.</p></body></html>",
                  "new"),
}
MEDIA = {"txt": "text/plain", "html": "text/html"}


async def _drained(nc) -> bool:
    i = await nc.jetstream().consumer_info("CIM_EVENTS", "pipeline-default")
    return i.num_pending == 0 and i.num_ack_pending == 0


async def _indexed(nc, n: int) -> bool:
    return (await call(nc, "cim.pipeline.index"))["documents"] == n


async def test_a_wiped_leaf_is_rebuilt_from_the_archive_alone(nats_server, s3_server, s3_server_2, tmp_path, tmp_path_factory,
                                                              cli, agent_process):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    archive = s3_tier(s3_server_2, "archive", tmp_path, bucket="cim-archive")
    settings = {
        "tiers": [warm, archive],
        "policies": [{"name": "old-stuff", "to": "warm", "labels": ["old"]}],
        "migrate_interval": 0.5, "read_retry_for": 1,
        "backup": {"tier": "archive", "interval": 0.3, "chunk_events": 25},
    }
    agent = TierAgent(tmp_path, nats_server.url, settings)
    payloads = mixed_sizes(30, big=1, seed=3)
    try:
        store = UnitStore(nc, cold=fetch)
        cids = [(await store.put_bytes(p, labels=["old"] if i % 2 else ["new"], title=f"unit {i}")).unit.cid
                for i, p in enumerate(payloads)]
        await store.revise(cids[2], b"a revision of unit 2", title="unit 2, revised")
        texts = [(await store.put_bytes(data, labels=[label], title=name,
                                               media_type=MEDIA[name.rsplit(".", 1)[1]])).unit.cid
                 for name, (data, label) in TEXTS.items()]
        pipeline = await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}}).ready(nc)
        await async_wait_until(lambda: _indexed(nc, len(TEXTS)), 60, what="the text units indexed")
        await async_wait_until(lambda: _drained(nc), 60, what="every unit through the default pipeline")
        before_search = json.loads(cli("--json", "search", "electricity").stdout)["hits"]
        assert {h["cid"] for h in before_search} == set(texts)
        steps_done = await count(nc, "cim.evt.steps.*.done")
        labeled = await count(nc, "cim.evt.unit.*.labeled")
        pipeline.stop()
        agent.start()
        await agent.ready(nc)

        async def backed_up() -> bool:
            s = json.loads(cli("--json", "backup", "status").stdout)
            t = json.loads(cli("--json", "tier", "status").stdout)
            warm_units = {x["name"]: x["units"] for x in t["tiers"]}["warm"]
            return (s["units_archived"] == s["units"] == 34 and warm_units == 16 and t["pending"] == 0
                    and s["lag_events"] == 0)

        await async_wait_until(backed_up, 90, what="every unit and event in the archive")
        status_text = cli("backup", "status").stdout
        agent.stop()
        before_events = (await nc.jetstream().stream_info("CIM_EVENTS")).state.messages
        before_units = cli("--json", "units", "ls").stdout
        before_shows = {c: json.loads(cli("--json", "units", "show", c).stdout) for c in cids[:4]}
        await nc.close()
    finally:
        agent.stop()
    nats_server.stop()  # the leaf is gone: a fresh, empty server takes its place
    fresh = NatsServer(store_dir=tmp_path_factory.mktemp("fresh") / "store")
    fresh.start()
    try:
        out = json.loads(cli("--json", "restore", "--from", "s3://cim-archive/units", "--endpoint", s3_server_2.endpoint_url,
                             "--credentials-file", archive["credentials_file"], server=fresh.url).stdout)
        assert out["events"] == before_events and out["units"] == 34 and out["units_restored"] == 18
        # Texts the search index is built from: the one extracted from the HTML page, and that of
        # grid.txt (its own bytes, whose unit lives in warm) are back in the content bucket.
        assert out["derived_restored"] == 2
        nc = await provisioned(fresh.url)
        assert (await nc.jetstream().stream_info("CIM_EVENTS")).state.messages == before_events
        assert cli("--json", "units", "ls", server=fresh.url).stdout == before_units
        for c, shown in before_shows.items():
            assert json.loads(cli("--json", "units", "show", c, server=fresh.url).stdout) == shown
        # A hot unit reads straight from the rebuilt content bucket, with no agent at all.
        cli("units", "get", cids[0], "-o", tmp_path / "unit0", server=fresh.url)
        assert (tmp_path / "unit0").read_bytes() == payloads[0]
        # The same search results: the pipeline rebuilds its index by replaying the restored
        # events, and re-runs no step (its fresh consumer finds every unit recorded).
        await agent_process("pipeline", {"nats": {"servers": [fresh.url]}}).ready(nc)
        await async_wait_until(lambda: _indexed(nc, len(TEXTS)), 60, what="the index replayed on the fresh leaf")
        assert json.loads(cli("--json", "search", "electricity", server=fresh.url).stdout)["hits"] == before_search
        await async_wait_until(lambda: _drained(nc), 60, what="the fresh consumer to go through every unit")
        assert await count(nc, "cim.evt.steps.*.done") == steps_done
        assert await count(nc, "cim.evt.unit.*.labeled") == labeled
        assert (await nc.jetstream().stream_info("CIM_EVENTS")).state.messages == before_events
        # The warm tier is lost too: reads of the units that lived there fall back to the archive.
        s3_server.stop()
        agent = TierAgent(tmp_path_factory.mktemp("agent2"), fresh.url, settings)
        agent.start()
        await agent.ready(nc)
        store = UnitStore(nc, cold=fetch)
        for i, (c, p) in enumerate(zip(cids, payloads, strict=True)):
            assert b"".join([x async for x in store.get(c)]) == p, f"unit {i}"
        agent.stop()
        await nc.close()
        assert "exported up to" in status_text
        # Restoring onto a leaf that has events is refused: it would mix two histories.
        r = cli("restore", "--from", "s3://cim-archive/units", "--endpoint", s3_server_2.endpoint_url,
                "--credentials-file", archive["credentials_file"], server=fresh.url, check=False)
        assert r.returncode == 1 and "rebuilds an empty leaf only" in r.stderr
    finally:
        fresh.stop()


async def test_a_history_with_one_id_twice_is_restored_whole_and_at_the_same_sequences(nats_server, tmp_path,
                                                                                          tmp_path_factory):
    """Two events of a long history may share an id (a dead letter redelivered twice, minutes
    apart). Replayed within seconds, the server took the second for a duplicate and dropped it:
    every later event moved one sequence down, and the next backup skipped one for good."""
    nc = await provisioned(nats_server.url)
    archive = FileBackend(TierSpec(name="archive", url=f"file://{tmp_path / 'archive'}"))
    try:
        js = nc.jetstream()
        config = (await js.stream_info("CIM_EVENTS")).config
        config.duplicate_window = 0.5  # what minutes do in a real history, in half a second
        await js.update_stream(config)
        events = EventStore(nc)
        letter = {"event_id": "unit-created-x", "dlq_seq": 7}
        redelivered = Event(type="hub.redelivered", aggregate_id="rx", id="hub-redelivered-7", data=letter)
        await events.append(redelivered)

        async def appended_again() -> bool:  # once the server has forgotten the id
            return not (await events.append(redelivered)).duplicate

        await async_wait_until(appended_again, 30, interval=0.1, what="the same id stored a second time")
        last = await events.append(Event(type="hub.redelivered", aggregate_id="rx", data={**letter, "dlq_seq": 8}))
        assert await Exporter(nc, archive).export() == last.seq
        before = [(e.seq, e.id) async for e in events.read(["cim.evt.>"])]
    finally:
        await nc.close()

    async with fresh_leaf(tmp_path_factory) as (nc, _):
        report = await restore(nc, archive, provision=lambda c: provision(c, ProvisionSpec()))
        assert report.events == len(before)
        after = [(e.seq, e.id) async for e in EventStore(nc).read(["cim.evt.>"])]
        assert after == before, after


async def test_a_restore_that_something_else_appends_during_stops_and_says_so(nats_server, tmp_path, tmp_path_factory):
    """An agent or a client appending to the leaf while it is restored would interleave two
    histories: the restore stops, names what happened, and does not hang (nats-py leaves a
    refused async publish unanswered)."""
    nc = await provisioned(nats_server.url)
    archive = FileBackend(TierSpec(name="archive", url=f"file://{tmp_path / 'archive'}"))
    try:
        for i in range(40):
            await EventStore(nc).append(Event(type="hub.redelivered", aggregate_id="rx",
                                              data={"event_id": f"e{i}", "dlq_seq": i}))
        await Exporter(nc, archive, chunk_events=10).export()
    finally:
        await nc.close()

    async with fresh_leaf(tmp_path_factory) as (nc, url):
        intruder = await nats.connect(url)
        appended = []

        def progress(what: str, done: int, total: int) -> None:  # after the first chunk: someone appends
            if what == "events" and not appended:
                appended.append(asyncio.ensure_future(EventStore(intruder).append(Event(
                    type="hub.redelivered", aggregate_id="rx", data={"event_id": "intruder", "dlq_seq": 99}))))

        with pytest.raises(TierError, match="something else appended to CIM_EVENTS"):
            await restore(nc, archive, provision=lambda c: provision(c, ProvisionSpec()), progress=progress)
        await appended[0]
        await intruder.close()


@contextlib.asynccontextmanager
async def fresh_leaf(tmp_path_factory) -> AsyncIterator[tuple[nats.NATS, str]]:
    """An empty, provisioned server for a restore, and a connection to it; stopped after."""
    fresh = NatsServer(store_dir=tmp_path_factory.mktemp("fresh") / "store")
    fresh.start()
    try:
        nc = await provisioned(fresh.url)
        try:
            yield nc, fresh.url
        finally:
            await nc.close()
    finally:
        fresh.stop()
