"""The event store against a real nats-server: server-side concurrency, idempotency, reads."""

import asyncio
import json

import nats
import pytest

from cim import cid
from cim.errors import ConcurrencyConflict, InvalidInput, UnknownEventType
from cim.events import Event, EventStore
from cim.provision import ProvisionSpec, provision


@pytest.fixture
async def events(nc):
    await provision(nc, ProvisionSpec())
    return EventStore(nc)


def revised(aggregate: str, n: int, **kw) -> Event:
    return Event(type="unit.revised", aggregate_id=aggregate, data={"child": cid.compute(str(n).encode())}, **kw)


async def count(events: EventStore, subject: str = "cim.evt.>") -> int:
    return len([e async for e in events.read([subject])])


async def test_two_writers_with_the_same_expected_revision_exactly_one_wins(events):
    first = await events.append(revised("agg", 0), expected_revision=0)
    rev = await events.revision("unit", "agg")
    assert rev == first.seq
    results = await asyncio.gather(
        events.append(revised("agg", 1), expected_revision=rev),
        events.append(revised("agg", 2), expected_revision=rev),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, ConcurrencyConflict)]
    assert len(wins) == 1 and len(losses) == 1, results
    assert "read it again" in str(losses[0])
    assert await count(events, "cim.evt.unit.agg.*") == 2


async def test_expected_revision_zero_means_a_new_aggregate(events):
    await events.append(revised("fresh", 0), expected_revision=0)
    with pytest.raises(ConcurrencyConflict):
        await events.append(revised("fresh", 1), expected_revision=0)
    # Another aggregate is unaffected by the first one's history.
    await events.append(revised("other", 0), expected_revision=0)


async def test_resending_an_event_with_the_same_id_stores_it_once(events):
    e = revised("dup", 0, id="evt-1")
    a = await events.append(e)
    b = await events.append(e)
    assert not a.duplicate and b.duplicate and a.seq == b.seq
    assert await count(events) == 1


async def test_a_batch_is_stored_whole_or_not_at_all(events):
    await events.append_batch([revised("b1", i) for i in range(5)], expected_revision=0)
    assert await count(events, "cim.evt.unit.b1.*") == 5
    # The same aggregate again with revision 0: the server refuses the whole batch.
    with pytest.raises(ConcurrencyConflict):
        await events.append_batch([revised("b1", i) for i in range(5, 10)], expected_revision=0)
    assert await count(events, "cim.evt.unit.b1.*") == 5


async def test_a_batch_with_one_bad_event_stores_nothing(events):
    good = [revised("b2", i) for i in range(3)]
    bad = Event(type="unit.revised", aggregate_id="b2", data={"child": "garbage"})
    with pytest.raises(InvalidInput, match="data.child"):
        await events.append_batch([*good, bad])
    assert await count(events) == 0


async def test_a_resent_batch_is_recognised_as_a_duplicate(events):
    batch = [revised("b3", i, id=f"b3-{i}") for i in range(3)]
    first = await events.append_batch(batch)
    again = await events.append_batch(batch)
    assert not first.duplicate and again.duplicate
    assert await count(events) == 3


@pytest.mark.parametrize(
    "event, error",
    [
        (lambda: Event(type="unit.vanished", aggregate_id="x"), UnknownEventType),
        (lambda: Event(type="nodot", aggregate_id="x"), InvalidInput),
        (lambda: Event(type="unit.revised", aggregate_id="x", data={}), InvalidInput),
        (lambda: Event(type="unit.revised", aggregate_id="x", data={"child": 5}), InvalidInput),
    ],
)
async def test_malformed_events_are_refused_and_nothing_is_stored(events, event, error):
    with pytest.raises(error):
        await events.append(event())
    assert await count(events) == 0


async def test_foreign_messages_on_event_subjects_are_surfaced_not_dropped(events, nc):
    js = nc.jetstream()
    await js.publish("cim.evt.unit.raw.revised", b"this is not json")
    await js.publish("cim.evt.future.x.happened", json.dumps({"a": 1}).encode(), headers={"ce-type": "future.happened"})
    got = [e async for e in events.read()]
    assert [e.seq for e in got] == [1, 2]
    assert got[0].problem and "not JSON" in got[0].problem and got[0].data == "this is not json"
    assert not got[1].known and got[1].data == {"a": 1}


async def test_reads_of_one_aggregate_and_from_a_position(events):
    await events.append_many([revised("r1", i) for i in range(10)] + [revised("r2", i) for i in range(5)])
    assert len(await events.aggregate("unit", "r1")) == 10
    from_11 = [e.seq async for e in events.read(start_seq=11)]
    assert from_11 == [11, 12, 13, 14, 15]


async def test_catch_up_delivers_history_then_live_in_order_across_a_server_restart(nats_server, events):
    await events.append_many([revised("c", i) for i in range(50)])
    # A separate connection that rides out the restart, as an agent's would.
    reader_nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    seen: list[int] = []
    enough = asyncio.Event()
    target = asyncio.Event()
    want = [50]

    async def follow():
        async for e in EventStore(reader_nc, timeout=1.0).read(follow=True):
            seen.append(e.seq)
            if len(seen) >= want[0]:
                target.set()
            if len(seen) >= 120:
                enough.set()
                return

    task = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(target.wait(), 10)  # history first
        want[0] = 70
        await events.append_many([revised("c", i) for i in range(50, 70)])
        await asyncio.wait_for(target.wait(), 10)  # then live
        await asyncio.to_thread(nats_server.restart)
        writer = await nats.connect(nats_server.url)
        try:
            await EventStore(writer).append_many([revised("c", i) for i in range(70, 120)])
        finally:
            await writer.close()
        await asyncio.wait_for(enough.wait(), 30)
    finally:
        task.cancel()
        await reader_nc.close()
    assert seen == list(range(1, 121))
