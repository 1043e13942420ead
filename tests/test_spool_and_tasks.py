"""The one spool and the runtime's task supervisor (issue 15 items 6 and 7), on real files
and a real event loop."""

from __future__ import annotations

import asyncio
import io
import logging
import os

import pytest

from cim import cid
from cim.spool import Spool
from cim.tasks import Supervisor


async def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("size", [0, 10, 1024 * 1024, 3 * 1024 * 1024 + 7])
async def test_a_spool_gives_back_what_it_was_given_and_its_cid(size):
    data = os.urandom(size)
    spool = await Spool(hash=True).fill(_chunks(data))
    try:
        f = await spool.file()
        assert isinstance(f, io.BytesIO) == (size <= 1024 * 1024)  # small stays in memory, large goes to a file
        assert f.read() == data and spool.size == size and spool.cid() == cid.compute(data)
    finally:
        spool.close()


async def test_a_spool_refuses_a_stream_past_its_limit_as_it_arrives():
    seen = []
    spool = Spool(limit=100_000, too_large=lambda size: (seen.append(size), ValueError("too big"))[1])
    with pytest.raises(ValueError, match="too big"):
        await spool.fill(_chunks(b"x" * 1_000_000, 64 * 1024))
    assert seen == [131072]  # it stopped at the chunk that crossed the limit, not at the end
    spool.close()


async def test_a_spool_reads_a_pipe_off_the_event_loop():
    r, w = os.pipe()
    data = os.urandom(2 * 1024 * 1024 + 1)

    def writer() -> None:
        with os.fdopen(w, "wb") as out:
            out.write(data)

    writing = asyncio.get_running_loop().run_in_executor(None, writer)
    with os.fdopen(r, "rb") as reader:
        spool = await Spool(hash=True).fill_from(reader)
    await writing
    assert (await spool.file()).read() == data and spool.cid() == cid.compute(data)
    spool.close()


async def test_a_crashed_task_is_logged_by_name_and_close_stops_the_rest(caplog):
    tasks = Supervisor()

    async def crash() -> None:
        raise RuntimeError("boom")

    forever = asyncio.Event()
    tasks.spawn(crash(), name="crasher")
    sleeper = tasks.spawn(forever.wait(), name="sleeper")
    with caplog.at_level(logging.ERROR, logger="cim.tasks"):
        for _ in range(100):
            if len(tasks) == 1:
                break
            await asyncio.sleep(0)  # let the crash happen: a turn of the loop, not a wait for time
        assert "background task crasher failed" in caplog.text
    await tasks.close(timeout=5)
    assert sleeper.cancelled() and len(tasks) == 0
    with pytest.raises(RuntimeError, match="stopping"):
        tasks.spawn(forever.wait(), name="late")


async def test_a_bounded_fan_out_runs_at_most_its_limit_and_skips_what_may_be_skipped():
    tasks = Supervisor()
    fan = tasks.bounded(3)
    release = asyncio.Event()
    running, most = 0, 0

    async def work() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    starting = asyncio.ensure_future(asyncio.gather(*(fan.spawn(work(), name=f"w{i}") for i in range(10))))
    for _ in range(100):
        await asyncio.sleep(0)
    assert running == 3 and not starting.done()  # the other seven wait for a slot, not as tasks
    assert fan.try_spawn(work(), name="optional") is None
    release.set()
    await asyncio.wait_for(starting, 5)
    await tasks.close(timeout=5)
    assert most == 3
