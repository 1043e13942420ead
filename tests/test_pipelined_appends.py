"""Pipelined appends (`EventStore.append_each` / `append_many`, through cim.jspublish) against a
real nats-server: every event stored once with its headers, each outcome reported on its own."""

import asyncio

import pytest

from cim import cid
from cim.errors import ConcurrencyConflict, InvalidInput, JetStreamUnavailable
from cim.events import Event, EventStore
from cim.events.store import Appended
from cim.jspublish import publisher_for
from cim.provision import ProvisionSpec, provision


@pytest.fixture
async def events(nc):
    await provision(nc, ProvisionSpec())
    return EventStore(nc)


def revised(aggregate: str, n: int, **kw) -> Event:
    return Event(type="unit.revised", aggregate_id=aggregate, data={"child": cid.compute(str(n).encode())}, **kw)


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


async def test_a_header_with_a_line_break_still_goes_through_the_client_as_usual(events):
    odd = revised("odd", 1, source="line one\nline two")
    (result,) = await events.append_many([odd])
    (stored,) = [e async for e in events.read()]
    assert stored.seq == result.seq and stored.source == "line one line two"  # nats-py's own handling


async def test_without_a_stream_appends_fail_saying_so(nc):
    results = await EventStore(nc).append_each([revised("x", 1)])
    assert isinstance(results[0], JetStreamUnavailable) and "run `cim provision`" in str(results[0])


async def test_appends_carry_on_after_a_server_restart(nats_server, events, nc):
    await events.append_many([revised("r", i) for i in range(100)])
    await asyncio.to_thread(nats_server.restart)

    async def appended() -> bool:
        try:
            await events.append_many([revised("r", 100)])
            return True
        except JetStreamUnavailable:
            return False

    from cim.embedded.procs import async_wait_until
    await async_wait_until(appended, 30, interval=0.2, what="appends after the restart")
    await events.append_many([revised("r", i) for i in range(101, 200)])
    stored = [e async for e in events.read()]
    assert len(stored) == 200 and len({e.id for e in stored}) == 200
    assert publisher_for(nc).fast  # the path measured in bench/core.py is the one tested
