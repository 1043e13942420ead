"""The event store against a real nats-server: server-side concurrency, idempotency, reads,
and pipelined appends (each outcome on its own, every event stored once with its headers)."""

import asyncio
import json

import nats
import pytest

from cim import cid
from cim.errors import ConcurrencyConflict, InvalidInput, JetStreamUnavailable, UnknownEventType
from cim.events import Event, EventStore
from cim.events.store import Appended
from cim.nats.publish import publisher_for
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from support.waiting import async_wait_until


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


# --- pipelined appends (append_each / append_many, through cim.nats.publish) ---------------


async def test_a_thousand_appends_are_stored_in_order_with_their_headers(events):
    sent = [revised(f"a{i % 7}", i, correlation_id=f"corr-{i}") for i in range(1000)]
    results = await events.append_many(sent)
    assert [r.seq for r in results] == list(range(1, 1001))
    stored = [e async for e in events.read()]
    assert [e.id for e in stored] == [e.id for e in sent]
    assert [e.correlation_id for e in stored] == [f"corr-{i}" for i in range(1000)]
    assert all(e.type == "unit.revised" and e.agent == "cim-cli" and not e.problem for e in stored)


async def test_each_outcome_is_its_own_a_conflict_does_not_stop_the_others(events):
    await events.append(revised("taken", 0), expected_revision=0)
    results = await events.append_each([revised("fresh1", 1), revised("taken", 2), revised("fresh2", 3)],
                                       expected_revision=0)
    assert isinstance(results[0], Appended) and isinstance(results[2], Appended)
    assert isinstance(results[1], ConcurrencyConflict)
    assert len(await events.aggregate("unit", "taken")) == 1
    assert len(await events.aggregate("unit", "fresh2")) == 1


async def test_the_same_event_sent_twice_is_stored_once_and_reported_duplicate(events):
    e = revised("dup", 1)
    first, again = await events.append_each([e, e])
    assert isinstance(first, Appended) and isinstance(again, Appended)
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    assert len(await events.aggregate("unit", "dup")) == 1


async def test_bad_input_stores_nothing_of_the_call(events):
    good = revised("g", 1)
    bad = Event(type="unit.revised", aggregate_id="b", data={"child": "not a cid"})
    with pytest.raises(InvalidInput):
        await events.append_many([good, bad])
    assert [e async for e in events.read()] == []
    # append_each sends the good one and reports the bad one.
    results = await events.append_each([good, bad])
    assert isinstance(results[0], Appended) and isinstance(results[1], InvalidInput)


async def test_a_header_value_the_binding_encodes_is_read_back_whole_and_a_line_break_is_refused(events):
    """CloudEvents' NATS binding percent-encodes what a header cannot carry (blanks, quotes,
    '%', non-ASCII), so such a correlation id arrives intact. A line break is refused up front:
    ids go on into HTTP headers (a webhook's), which cannot carry one."""
    odd = revised("odd", 1, correlation_id='line "one" at 50% – line two')
    (result,) = await events.append_many([odd])
    (stored,) = [e async for e in events.read()]
    assert stored.seq == result.seq and stored.correlation_id == 'line "one" at 50% – line two'
    with pytest.raises(InvalidInput) as err:
        revised("odd", 2, correlation_id="line one\nline two")
    assert err.value.field == "correlation_id"


async def test_a_source_that_is_not_an_absolute_uri_is_refused():
    with pytest.raises(InvalidInput) as err:
        revised("odd", 1, source="cim-cli")
    assert err.value.field == "source" and "absolute URI" in str(err.value)


async def test_without_a_stream_appends_fail_saying_so(nc):
    results = await EventStore(nc).append_each([revised("x", 1)])
    assert isinstance(results[0], JetStreamUnavailable) and "run `cim provision`" in str(results[0])


@pytest.mark.usefixtures("events")  # provisions the stream
async def test_appends_carry_on_after_a_server_restart(nats_server):
    # A connection that rides out the restart, as an agent's would: the fixture's gives up
    # after five attempts, which a slow restart can outlast.
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        events = EventStore(nc)
        await events.append_many([revised("r", i) for i in range(100)])
        await asyncio.to_thread(nats_server.restart)
        # One event, so one message id: a retry after a lost ack is deduplicated, not stored twice.
        first_after = revised("r", 100)

        async def appended() -> bool:
            try:
                await events.append_many([first_after])
                return True
            except JetStreamUnavailable:
                return False

        await async_wait_until(appended, 30, interval=0.2, what="appends after the restart")
        await events.append_many([revised("r", i) for i in range(101, 200)])
        stored = [e async for e in events.read()]
        assert len(stored) == 200 and len({e.id for e in stored}) == 200
        assert publisher_for(nc).fast  # the path measured in bench/core.py is the one tested
    finally:
        await nc.close()
