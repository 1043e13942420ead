"""The pipeline's fetcher against a real server: batches, a trickle, hand-back on close,
a deleted consumer, a server restart."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from cim.errors import JetStreamUnavailable
from cim.nats.pull import PullFetcher
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec, StreamSpec
from support.waiting import async_wait_until

STREAM = "FETCHES"


@pytest.fixture
async def js(nc):
    await provision(nc, ProvisionSpec(streams=[StreamSpec(name=STREAM, subjects=["fetch.>"])]))
    js = nc.jetstream()
    # A long ack wait: a message handed back early must not be mistaken for a redelivery.
    await js.add_consumer(STREAM, durable_name="work", ack_policy="explicit", ack_wait=120)
    return js


async def publish(js, *bodies: bytes) -> None:
    for body in bodies:
        await js.publish("fetch.x", body)


async def fetched(fetcher: PullFetcher, n: int, batch: int = 10, rounds: int = 10) -> list[Msg]:
    """Fetches until `n` messages came (a fetch returns as soon as it has any), not acked."""
    got: list[Msg] = []
    for _ in range(rounds):  # bounded: each fetch returns within its timeout
        if len(got) >= n:
            break
        got.extend(await fetcher.fetch(batch, timeout=2))
    return got


async def fetch_all(fetcher: PullFetcher, n: int, batch: int = 10, rounds: int = 10) -> list[bytes]:
    got = await fetched(fetcher, n, batch, rounds)
    for m in got:
        await m.ack()
    return [m.data for m in got]


async def test_batches_are_bounded_and_in_order_and_an_empty_fetch_returns_nothing(js, nc):
    await publish(js, *(f"m{i}".encode() for i in range(5)))
    async with PullFetcher(nc, STREAM, "work") as fetcher:
        first = await fetched(fetcher, 3, batch=3)
        assert [m.data for m in first] == [b"m0", b"m1", b"m2"]
        rest = await fetch_all(fetcher, 2, batch=3)
        assert rest == [b"m3", b"m4"]
        for m in first:
            await m.ack()
        assert await fetcher.fetch(3, timeout=0.3) == []
        # A message published while a fetch waits is handed out by that fetch.
        waiting = asyncio.create_task(fetcher.fetch(3, timeout=5))
        await publish(js, b"late")
        (late,) = await waiting
        assert (late.data, late.metadata.sequence.stream) == (b"late", 6)


async def test_closing_hands_back_what_its_open_request_still_brings(js, nc):
    await publish(js, b"m0")
    fetcher = PullFetcher(nc, STREAM, "work")
    await fetcher.__aenter__()
    (first,) = await fetcher.fetch(5, timeout=3)  # its request stays open for four more
    await first.ack()
    closing = asyncio.create_task(fetcher.close())
    await asyncio.sleep(0)  # close is now waiting for the open request to end
    await publish(js, b"m1")  # delivered to that request, while nobody fetches
    await closing
    async with PullFetcher(nc, STREAM, "work") as again:
        # Well inside the 120 s ack wait: only a nak brings it back this soon.
        assert await fetch_all(again, 1, rounds=3) == [b"m1"]


async def test_messages_put_back_unread_are_handed_back_on_close_in_order(js, nc):
    await publish(js, b"m0", b"m1", b"m2")
    async with PullFetcher(nc, STREAM, "work") as fetcher:
        got = await fetched(fetcher, 3, batch=3)
        assert [m.data for m in got] == [b"m0", b"m1", b"m2"]
        fetcher.unread(got[1:])  # the caller ran m0, then learnt it was stopping
        await got[0].ack()
    async with PullFetcher(nc, STREAM, "work") as again:
        assert await fetch_all(again, 2, rounds=3) == [b"m1", b"m2"]


async def test_a_deleted_consumer_is_reported(js, nc):
    async with PullFetcher(nc, STREAM, "work") as fetcher:
        waiting = asyncio.create_task(fetcher.fetch(5, timeout=10))

        async def request_waiting() -> bool:
            return (await js.consumer_info(STREAM, "work")).num_waiting == 1

        await async_wait_until(request_waiting, 5, what="the fetch's request at the server")
        await js.delete_consumer(STREAM, "work")
        with pytest.raises(JetStreamUnavailable, match="was deleted"):
            await waiting


async def test_fetching_carries_on_after_a_server_restart(js, nats_server):
    agent = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        async with PullFetcher(agent, STREAM, "work") as fetcher:
            await publish(js, b"before")
            assert await fetch_all(fetcher, 1) == [b"before"]
            await asyncio.to_thread(nats_server.restart)
            publisher = await nats.connect(nats_server.url)
            try:
                await publish(publisher.jetstream(), b"after")
            finally:
                await publisher.close()
            assert await fetch_all(fetcher, 1) == [b"after"]
    finally:
        await agent.close()
