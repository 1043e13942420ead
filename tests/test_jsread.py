"""The one read primitive against a real server, where the stream changes under a read."""

from __future__ import annotations

from cim.nats.read import read_stream
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec, StreamSpec
from support.waiting import async_wait_until

STREAM = "READS"


async def test_a_bounded_read_whose_end_disappears_meanwhile_ends_at_what_is_left(nc):
    # What a registry bucket's TTL does: the messages the leader named as the end expire
    # while the read is under way. The read must end, not wait for them.
    await provision(nc, ProvisionSpec(streams=[StreamSpec(name=STREAM, subjects=["read.>"])]))
    js = nc.jetstream()
    for i in range(5):
        await js.publish("read.x", f"m{i}".encode())
    got = []
    async for m in read_stream(nc, STREAM, ["read.>"], batch=1, resume_wait=0.1, resume_for=5):
        got.append(m.data)
        if m.seq == 1:  # the read holds no open request while its caller has a message
            for seq in (4, 5):
                await js.delete_msg(STREAM, seq)
    assert got == [b"m0", b"m1", b"m2"]


async def test_a_filter_whose_replica_lags_holds_back_the_other_filters_later_messages(nc, monkeypatch):
    """Two filters merged by sequence; the replica answering for one of them lags (it has not
    stored #3 yet). The other filter's #4 must wait for #3, not go first and have #3 dropped
    as if it had been handed out."""
    import cim.nats.read as jsread

    await provision(nc, ProvisionSpec(streams=[StreamSpec(name=STREAM, subjects=["read.>"])]))
    js = nc.jetstream()
    for subject in ("read.a", "read.b", "read.b", "read.a"):
        await js.publish(subject, subject.encode())
    real = jsread._direct_batch
    lagging = {"left": 3}

    async def replica(nc_, stream, subject, seq, *args):
        got, more = await real(nc_, stream, subject, seq, *args)
        if subject == "read.b" and lagging["left"] > 0 and any(m.seq >= 3 for m in got):
            lagging["left"] -= 1
            return [m for m in got if m.seq < 3], False  # this replica has nothing after #2 yet
        return got, more

    monkeypatch.setattr(jsread, "_direct_batch", replica)
    got = [m.seq async for m in read_stream(nc, STREAM, ["read.a", "read.b"], resume_wait=0.1, resume_for=5)]
    assert got == [1, 2, 3, 4]
    assert lagging["left"] == 0  # the lag was there, and outlasted


async def test_a_follow_that_keeps_getting_answers_survives_a_second_blip_long_after_the_first(nc, monkeypatch):
    """A request that fails starts the clock of `resume_for`; the answers that follow stop it.
    So a second failure long after the first is a new one, not the end of the read."""
    import asyncio

    import cim.nats.read as jsread

    await provision(nc, ProvisionSpec(streams=[StreamSpec(name=STREAM, subjects=["read.>"])]))
    js = nc.jetstream()
    await js.publish("read.x", b"first")
    real = jsread._direct_batch
    blips = {"left": 0}

    async def flaky(*args):
        if blips["left"]:
            blips["left"] -= 1
            raise TimeoutError
        return await real(*args)

    monkeypatch.setattr(jsread, "_direct_batch", flaky)
    got: list[bytes] = []

    async def follow() -> None:
        async for m in read_stream(nc, STREAM, ["read.>"], follow=True, resume_wait=0.05, resume_for=1):
            got.append(m.data)

    task = asyncio.create_task(follow())
    try:
        await async_wait_until(lambda: got == [b"first"], 10, what="the first message")
        blips["left"] = 1
        await async_wait_until(lambda: blips["left"] == 0, 10, what="the first blip")
        await asyncio.sleep(1.5)  # the scenario: a quiet stream for longer than resume_for
        blips["left"] = 1
        await async_wait_until(lambda: blips["left"] == 0 or task.done(), 10, what="the second blip")
        await js.publish("read.x", b"second")
        await async_wait_until(lambda: got == [b"first", b"second"] or task.done(), 10, what="the second message")
        assert not task.done(), task.exception()
        assert got == [b"first", b"second"]
    finally:
        task.cancel()
