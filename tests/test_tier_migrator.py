"""The migrator against real servers when the location index it plans from is behind the
events: each move starts from the index's view of the unit, and the expected revision of
its intent is what notices the view is stale."""

from __future__ import annotations

import asyncio

from cim.events import Event, EventStore
from cim.store.unit_store import UnitStore
from cim.tier.backends import FileBackend, JetStreamBackend, S3Backend
from cim.tier.fetch import fetch
from cim.tier.locations import LocationIndex
from cim.tier.migrate import Migrator
from cim.tier.policies import Policy
from cim.tier.urls import TierSpec
from support.tierkit import count_events, provisioned, s3_tier


async def test_a_move_planned_from_a_stale_index_is_redone_from_the_events_and_recorded_once(
        nats_server, s3_server, tmp_path):
    nc = await provisioned(nats_server.url)
    try:
        store, events = UnitStore(nc, cold=fetch), EventStore(nc)
        payloads = [b"stale view", b"fresh view", b"x" * 300_000]
        cids = [(await store.put_bytes(p)).unit.cid for p in payloads]
        index = await LocationIndex.build(events)
        # The unit changes after the index was built and before the move: its revision moves on.
        await events.append(Event(type="unit.labeled", aggregate_id=cids[0], data={"labels": ["late"], "by": "test"}))

        warm = S3Backend(TierSpec(**s3_tier(s3_server, "warm", tmp_path)))
        tiers = {"hot": JetStreamBackend(TierSpec(name="hot", url="jetstream://CIM_CONTENT"), nc), "warm": warm}
        report = await Migrator(events, tiers).run_policies(index, [Policy(name="all", to="warm")], {})

        assert sorted(m.cid for m in report.moved if m.ok) == sorted(cids), report.failed
        for c in cids:
            assert await count_events(nc, f"cim.evt.unit.{c}.moving") == 1
            assert await count_events(nc, f"cim.evt.unit.{c}.located") == 1
        # The index changes only by the events it is given, never by a move's own bookkeeping.
        assert all(index.units[c].tiers == {"hot"} for c in cids)
        fresh = await LocationIndex.build(events)
        assert all(fresh.units[c].tiers == {"warm"} for c in cids)
        for c, p in zip(cids, payloads, strict=True):
            assert await store.content.has(c) is False
            assert b"".join([chunk async for chunk in warm.get(c, len(p))]) == p
    finally:
        await nc.close()


async def test_a_sweep_from_a_stale_index_never_deletes_a_copy_the_events_record(nats_server, tmp_path):
    """`cim tier migrate` sweeps dropped copies after checking the index is fresh; a backup
    copy made between that check and the sweep is in the tier, recorded by its events, and
    not yet in the index. It must stay: the sweep once deleted it (CI saw the archive emptied)."""
    nc = await provisioned(nats_server.url)
    try:
        store, events = UnitStore(nc, cold=fetch), EventStore(nc)
        cid = (await store.put_bytes(b"backed up while the index looked away")).unit.cid
        stale = await LocationIndex.build(events)  # knows the unit in the hot tier only
        archive = FileBackend(TierSpec(name="archive", url=f"file://{tmp_path / 'archive'}"))
        tiers = {"hot": JetStreamBackend(TierSpec(name="hot", url="jetstream://CIM_CONTENT"), nc), "archive": archive}
        migrator = Migrator(events, tiers)
        copied = await migrator.move(cid, "backup", "hot", "archive", "copy")
        assert copied.ok, copied.error

        assert await migrator.sweep(stale) == []
        assert (tmp_path / "archive" / cid).read_bytes() == b"backed up while the index looked away"
        fresh = await LocationIndex.build(events)
        assert fresh.units[cid].tiers == {"hot", "archive"}

        # What the events do say is dropped still goes: a copy left behind in a tier that no
        # longer holds the unit (a crash between recording a move and deleting its source).
        # An object no unit.created names is a put in progress, and stays.
        (tmp_path / "archive" / "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy").write_bytes(b"")
        leftover = (await store.put_bytes(b"moved on, copy left")).unit.cid
        (tmp_path / "archive" / leftover).write_bytes(b"moved on, copy left")
        assert await migrator.sweep(await LocationIndex.build(events)) == [f"archive:{leftover}"]
        assert (tmp_path / "archive" / cid).exists()
    finally:
        await nc.close()


async def test_a_unit_read_after_its_page_was_planned_is_not_expired(nats_server):
    """A run plans a page of units, then works them one by one: a read that lands meanwhile
    must keep an idle unit (expiry deletes its bytes for good). The expiry checks the policy
    again against the unit as it is when its turn comes."""
    import time

    from cim.embedded.procs import wait_until

    nc = await provisioned(nats_server.url)
    try:
        store, events = UnitStore(nc, cold=fetch), EventStore(nc)
        first = (await store.put_bytes(b"nobody reads this")).unit.cid
        second = (await store.put_bytes(b"read just in time")).unit.cid
        idle = Policy.model_validate({"name": "idle", "action": "expire", "idle": "1s"})
        index = await LocationIndex.build(events)
        await asyncio.to_thread(wait_until, lambda: all(idle.matches(u, None) for u in index.units.values()), 10,
                                what="both units to be idle for a second")
        tiers = {"hot": JetStreamBackend(TierSpec(name="hot", url="jetstream://CIM_CONTENT"), nc)}
        access: dict[str, float] = {}
        worked: list[str] = []

        def progress(result) -> None:  # one expired: the other one is read at that moment
            worked.append(result.cid)
            if len(worked) == 1:
                access[second if result.cid == first else first] = time.time()

        report = await Migrator(events, tiers, concurrency=1).run_policies(index, [idle], access, progress=progress)
        gone, read = worked
        assert {m.cid: m.action for m in report.moved} == {gone: "expire", read: "none"}, report.moved
        assert not await store.content.has(gone) and await store.content.has(read)
    finally:
        await nc.close()
