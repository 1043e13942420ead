"""The tier agent's location index kept on disk (issue 16 item 1): its rows fold the unit
events exactly as the index in memory does, a restart resumes from the checkpoint and folds
only what is newer, a lost or damaged file is rebuilt to the same answers, and a policy run
after a restart moves exactly what a run without one would (no unit twice, none missed)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cim import cid as cidlib
from cim.errors import CimError
from cim.events import Event, EventStore, StoredEvent
from cim.nats.rpc import call
from cim.pipeline.events import DlqRetried
from cim.projection_db import ProjectionDb
from cim.store.unit_store import UnitStore
from cim.tier import api
from cim.tier.location_db import LocationProjection, StoredLocations
from cim.tier.location_rows import SCHEMA, VERSION
from cim.tier.locations import LocationIndex
from cim.tier.policies import Policy, plan
from support.tierkit import TierAgent, count_events, provisioned
from support.waiting import async_wait_until

TIERS = ["hot", "warm", "cold"]
POLICIES = [
    Policy.model_validate({"name": "drop-temp", "action": "expire", "labels": ["temp"]}),
    Policy.model_validate({"name": "cold-to-warm", "to": "warm", "labels": ["cold"], "min_size": 10}),
    Policy.model_validate({"name": "old-copy", "from": "warm", "to": "cold", "action": "copy", "min_age": "30d"}),
]


# --- the rows mean what the fold in memory means ----------------------------------------------


def _stored(seq: int, event: Event) -> StoredEvent:
    return StoredEvent.from_message(event.subject, seq, event.headers(), event.payload())


def _random_unit_events(rnd: random.Random, units: int, n: int) -> list[StoredEvent]:
    """Every kind of unit event, in any order a hostile or racing writer may produce: events
    before a unit's `unit.created`, repeated creations, moves never announced, bodies that
    fail validation, times in other zones."""
    cids = [cidlib.compute(f"unit {i}".encode()) for i in range(units)]
    times = [None, "2020-01-01T00:00:00Z", "2031-05-06T07:08:09.123456+00:00", "2019-03-04T05:06:07+02:00"]
    out = []
    for seq in range(1, n + 1):
        c = rnd.choice(cids)
        kind = rnd.choices(["created", "labeled", "revised", "moving", "located", "expired", "broken"],
                           [4, 2, 1, 3, 3, 1, 1])[0]
        data: dict
        if kind == "created":
            data = {"cid": c, "size": rnd.randint(0, 5000), "labels": rnd.sample(["a", "cold", "temp"], rnd.randint(0, 2))}
            if (at := rnd.choice(times)) is not None:
                data["created_at"] = at
        elif kind == "labeled":
            data = {"labels": rnd.sample(["b", "cold", "temp"], rnd.randint(1, 2)), "by": "test"}
        elif kind == "revised":
            data = {"child": rnd.choice(cids)}
        elif kind == "moving":
            src, dst = rnd.sample(TIERS, 2)
            data = {"from_tier": src, "to_tier": dst, "action": rnd.choice(["move", "copy"]),
                    "policy": rnd.choice(["p", "restore"])}
        elif kind == "located":
            data = {"tier": rnd.choice(TIERS), "url": "x", "size": 1, "verified_by": "cid",
                    "dropped": rnd.sample(TIERS, rnd.randint(0, 2))}
        elif kind == "expired":
            data = {"policy": "p", "reason": "test"}
        else:
            kind, data = "created", {"cid": c, "size": -1}  # fails validation: a problem, folded by nobody
        out.append(_stored(seq, Event(type=f"unit.{kind}", aggregate_id=c, data=data)))
    return out


def _on_disk() -> tuple[ProjectionDb, StoredLocations]:
    db = ProjectionDb(None, "tier", schema=SCHEMA, version=VERSION)
    db.open()
    index = StoredLocations(db, damaged=lambda why: pytest.fail(f"the rows were found damaged: {why}"))
    index.opened = True
    return db, index


def _picks(jobs) -> list[tuple[str, str]]:
    return sorted((u.cid, p.name) for u, p in jobs)


@pytest.mark.parametrize("seed", range(8))
def test_the_rows_fold_every_unit_event_as_the_index_in_memory_does(seed):
    rnd = random.Random(seed)
    events = _random_unit_events(rnd, units=40, n=500)
    assert any(e.problem for e in events) and any(not e.problem for e in events)
    memory = LocationIndex().apply_all(events)
    db, stored = _on_disk()
    i = 0
    while i < len(events):  # batches of any size, as the feed forms them
        batch = events[i:i + rnd.randint(1, 60)]
        db.commit(stored.prepare(batch), "stream", batch[-1])
        i += len(batch)

    assert {c: stored.units.get(c) for c in memory.units} == memory.units
    assert all(stored.units.get(c).created_at.utcoffset() == u.created_at.utcoffset()  # type: ignore[union-attr]
               for c, u in memory.units.items() if u.created_at)
    assert stored.units.get(cidlib.compute(b"never stored")) is None
    assert stored.counts() == memory.counts()
    for tier in (None, *TIERS):
        assert sorted(u.cid for u in stored.live(tier)) == sorted(u.cid for u in memory.live(tier))
    assert sorted(u.cid for u in stored.pending()) == sorted(u.cid for u in memory.pending())
    assert len(stored.pending(limit=2)) == min(2, len(memory.pending()))
    now = datetime.now(UTC)
    picked = _picks(plan(POLICIES, memory.live(), {}, now=now))
    assert picked, "the events must give the policies something to pick"
    assert _picks(plan(POLICIES, stored.candidates(POLICIES, now), {}, now=now)) == picked
    db.close()


def test_a_created_time_in_another_zone_comes_back_as_the_same_datetime():
    db, stored = _on_disk()
    c = cidlib.compute(b"zoned")
    at = datetime(2019, 3, 4, 5, 6, 7, 891, tzinfo=timezone(timedelta(hours=-7, minutes=-30)))
    event = _stored(1, Event(type="unit.created", aggregate_id=c, data={"cid": c, "size": 3, "created_at": at.isoformat()}))
    db.commit(stored.prepare([event]), "stream", event)
    back = stored.units.get(c)
    assert back is not None and back.created_at == at and back.created_at.utcoffset() == at.utcoffset()
    db.close()


# --- waiting for the index ----------------------------------------------------------------------


async def test_the_index_is_current_only_once_its_feed_has_applied_every_unit_event(nats_server, tmp_path):
    nc = await provisioned(nats_server.url)
    try:
        store, events = UnitStore(nc), EventStore(nc)
        cids = [(await store.put_bytes(f"unit {i}".encode())).unit.cid for i in range(5)]
        end = (await nc.jetstream().stream_info("CIM_EVENTS")).state.last_seq
        projection = LocationProjection(events, tmp_path / "state")
        projection.open()
        assert not await projection.covers(end, 0.3)  # its feed is not running: nothing applied
        why = await projection.current(0.3)
        assert why is not None and "being built" in why and f"of #{end}" in why
        feed = asyncio.create_task(projection.run())
        try:
            assert await projection.current(10) is None
            assert await projection.covers(end, 0)
            await _label(events, cids[0], "late")
            # Other events after the last unit event: the index is current without them.
            await events.append(Event.of(DlqRetried(pipeline="p", dlq_seq=1, original_seq=1), "p-1"))
            later = (await nc.jetstream().stream_info("CIM_EVENTS")).state.last_seq - 1
            assert await projection.current(10) is None  # what a plan waits for: every unit event there is
            assert projection.follower.as_of == later
            assert projection.index.units.get(cids[0]).labels == ("late",)  # type: ignore[union-attr]
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            projection.close()

        resumed = LocationProjection(events, tmp_path / "state")
        resumed.open()
        feed = asyncio.create_task(resumed.run())
        try:
            assert await resumed.covers(later, 10)
            assert resumed.state(fresh=True) == {"as_of": later, "stale": False, "replayed": 0}
            assert resumed.index.counts().units == 5
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            resumed.close()
    finally:
        await nc.close()


# --- the agent: restart, rebuild, plan --------------------------------------------------------


async def _status(nc, what: str, until: Callable[[dict], bool] = lambda s: True) -> dict:
    """The agent's status once its index is fresh and `until` holds for it."""

    async def fresh() -> dict | None:
        try:
            s = await call(nc, api.STATUS, timeout=10)
        except CimError:
            return None
        return s if not s["stale"] and until(s) else None

    return await async_wait_until(fresh, 60, what=f"a fresh tier status with {what}")  # type: ignore[return-value]


def _held(status: dict) -> dict[str, int]:
    return {t["name"]: t["units"] for t in status["tiers"]}


def _settings(tmp_path) -> dict:
    return {"tiers": [{"name": "warm", "url": f"file://{tmp_path / 'warm'}"}],
            "policies": [p.model_dump(by_alias=True) for p in POLICIES[:2]], "migrate_interval": 3600}


async def _label(events: EventStore, cid: str, label: str) -> None:
    await events.append(Event(type="unit.labeled", aggregate_id=cid, data={"labels": [label], "by": "test"}))


def _answers(status: dict) -> dict:
    return {k: status[k] for k in ("tiers", "units", "expired", "pending", "pending_moves")}


async def test_a_restart_resumes_the_index_and_replays_only_the_unit_events_since(nats_server, tmp_path):
    nc = await provisioned(nats_server.url)
    agent = TierAgent(tmp_path, nats_server.url, _settings(tmp_path))
    try:
        store, events = UnitStore(nc), EventStore(nc)
        cids = [(await store.put_bytes(f"first {i}".encode())).unit.cid for i in range(30)]
        first_events = await count_events(nc, "cim.evt.unit.*.*")
        agent.start()
        await agent.ready(nc)
        first = await _status(nc, "30 units", lambda s: s["units"] == 30)
        assert first["replayed"] == first_events
        agent.stop()

        for i in range(7):
            await store.put_bytes(f"second {i}".encode())
        for c in cids[:3]:
            await _label(events, c, "b")
        since = await count_events(nc, "cim.evt.unit.*.*") - first_events
        assert since == 10
        agent.start()
        await agent.ready(nc)
        second = await _status(nc, "37 units", lambda s: s["units"] == 37)
        assert second["replayed"] == since
        assert second["as_of"] == (await nc.jetstream().stream_info("CIM_EVENTS")).state.last_seq
        assert second["tiers"][0] == {**first["tiers"][0], "units": 37, "bytes": first["tiers"][0]["bytes"] + 7 * 8}
    finally:
        agent.stop()
        await nc.close()


@pytest.mark.parametrize("damage", ["wiped", "corrupt"])
async def test_a_lost_or_damaged_index_is_rebuilt_to_the_same_answers(nats_server, tmp_path, cli, damage):
    nc = await provisioned(nats_server.url)
    agent = TierAgent(tmp_path, nats_server.url, _settings(tmp_path))
    try:
        store = UnitStore(nc)
        for i in range(24):
            await store.put_bytes(f"unit {i} ".encode() * 3, labels=[["cold"], ["temp"], ["keep"]][i % 3])
        agent.start()  # its first policy run starts at once: 8 expire, 8 move
        await agent.ready(nc)
        before = await _status(nc, "8 units moved, 8 expired",
                               lambda s: _held(s)["warm"] == 8 and s["expired"] == 8 and s["pending"] == 0)
        assert before["units"] == 16 and before["errors"] == []
        memory = (await LocationIndex.build(EventStore(nc))).counts()
        assert (before["units"], before["expired"], before["pending"]) == (memory.units, memory.expired, memory.pending)
        assert {t["name"]: [t["units"], t["bytes"]] for t in before["tiers"]} == {
            n: list(memory.held(n)) for n in ("hot", "warm")}
        agent.stop()

        db = agent.state_dir / "tier.sqlite"
        assert db.exists()
        if damage == "wiped":
            shutil.rmtree(agent.state_dir)
        else:
            db.write_bytes(b"not a database " * 1000)
        agent.start()
        await agent.ready(nc)
        after = await _status(nc, "16 units", lambda s: s["units"] == 16)
        assert _answers(after) == _answers(before)
        assert after["replayed"] == await count_events(nc, "cim.evt.unit.*.*")
    finally:
        agent.stop()
        await nc.close()


async def test_a_policy_run_after_a_restart_moves_exactly_what_a_run_without_one_would(nats_server, tmp_path, cli):
    nc = await provisioned(nats_server.url)
    agent = TierAgent(tmp_path, nats_server.url, _settings(tmp_path))
    try:
        store, events = UnitStore(nc), EventStore(nc)
        first = [(await store.put_bytes(f"early unit {i}".encode(), labels=["cold"] if i % 2 else [])).unit.cid
                 for i in range(20)]
        agent.start()  # its first policy run starts at once
        await agent.ready(nc)
        await _status(nc, "10 units moved", lambda s: _held(s)["warm"] == 10 and s["pending"] == 0)
        agent.kill()  # a crash: whatever the file holds is what the next start resumes from

        later = [(await store.put_bytes(f"later unit {i}".encode(), labels=["cold"] if i % 3 else [])).unit.cid
                 for i in range(9)]
        for c in first[0:6:2]:  # hot ones a pipeline labels cold meanwhile
            await _label(events, c, "cold")
        memory = await LocationIndex.build(events)
        expected = {u.cid for u, _ in plan(POLICIES[:2], memory.live(), {})}
        assert expected == {*first[0:6:2], *(c for i, c in enumerate(later) if i % 3)}

        agent.start()  # the run at start plans only once the index has caught up with the events above
        await agent.ready(nc)
        cold = {c for i, c in enumerate(first) if i % 2} | expected
        status = await _status(nc, "the run at start done", lambda s: s["last_migration"] is not None)
        assert _held(status) == {"hot": 29 - len(cold), "warm": len(cold)} and status["errors"] == []
        assert status["last_migration"]["done"] == len(expected) and not status["last_migration"]["failed"]
        again = json.loads(cli("--json", "tier", "migrate").stdout)
        assert again["planned"] == 0 and again["done"] == 0
        for c in [*first, *later]:
            moves = 1 if c in cold else 0
            assert await count_events(nc, f"cim.evt.unit.{c}.moving") == moves, c
            assert await count_events(nc, f"cim.evt.unit.{c}.located") == moves, c
            assert await store.content.has(c) is (c not in cold)
    finally:
        agent.stop()
        await nc.close()


def test_a_policy_with_an_infinite_min_age_matches_nothing_and_breaks_nothing():
    _, index = _on_disk()
    now = datetime.now(UTC)
    never = Policy(name="never", to="archive", min_age=float("inf"))
    assert list(index.candidates([never], now)) == []
