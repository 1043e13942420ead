"""Two hub agents behind one address (issue 16 item 4): with http.reuse_port both bind the
same port (SO_REUSEPORT), the kernel spreads connections between them, and when one is
killed the other goes on serving the same address."""

from __future__ import annotations

import asyncio
import sys

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

from cim.ports import free_port  # noqa: E402
from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from support.agentkit import AgentProcess  # noqa: E402
from support.hub_support import TOKEN, Hub  # noqa: E402
from support.pipeline_support import events_on  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections on Linux")

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
BATCH = 200
# A request that was in flight on the killed hub (or sent on a kept-alive connection to it)
# fails with a connection error; the client sends it again, at most this many times in all.
# Safe to repeat: the same bytes are the same unit.
ATTEMPTS = 4


async def agent_behind(url: str) -> str:
    """The hub that answers a new connection to `url`."""
    async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:
        assert r.status == 200, await r.text()
        return (await r.json())["agent"]


async def put(s: aiohttp.ClientSession, url: str, data: bytes, retried: list[bytes]) -> tuple[int, str]:
    for attempt in range(ATTEMPTS):
        try:
            async with s.post(url + "/v1/units", data=data, headers=AUTH) as r:
                return r.status, (await r.json())["cid"]
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            if attempt == ATTEMPTS - 1:
                raise
            retried.append(data)
    raise AssertionError("unreachable")


async def test_two_hubs_share_one_port_and_one_killed_leaves_the_other_serving(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    port = free_port()
    # All made before any starts: each writes the test tokens file, which a running hub reads.
    a = Hub(nats_server.url, tmp_path, port=port, reuse_port=True, name="hub-a")
    b = Hub(nats_server.url, tmp_path, port=port, reuse_port=True, name="hub-b")
    alone = Hub(nats_server.url, tmp_path, port=port, name="hub-alone")  # without reuse_port
    url = a.url
    try:
        a.start()
        b.start()
        await a.ready(nc)
        await b.ready(nc)
        seen: set[str] = set()

        async def both_answer() -> bool:
            assert b.proc is not None and b.proc.poll() is None, b.log()  # a failed bind ends the second hub
            seen.add(await agent_behind(url))
            return seen == {"hub-a", "hub-b"}

        await async_wait_until(both_answer, 30, what="both hubs to answer /healthz on the one address")
        # A hub without reuse_port cannot join them, and says what to do.
        AgentProcess.start(alone)  # not Hub.start, which waits for /healthz (the others answer it)
        assert alone.proc is not None and alone.proc.wait(30) != 0
        assert "set http.reuse_port on every one of them" in alone.log(), alone.log()

        retried: list[bytes] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as s:
            first = [f"unit {i} through a shared port".encode() for i in range(BATCH)]
            before = await asyncio.gather(*(put(s, url, d, retried) for d in first))
            assert {status for status, _ in before} == {201} and not retried
            created = await events_on(nc, "cim.evt.unit.*.created")
            assert len(created) == BATCH and {e.agent for e in created} == {"hub-a", "hub-b"}, "both hubs stored units"

            # SIGKILL one hub while puts are on their way through the address.
            second = [f"unit {i} while a hub dies".encode() for i in range(BATCH)]
            done: list[tuple[int, str]] = []

            async def put_and_count(d: bytes) -> tuple[int, str]:
                answer = await put(s, url, d, retried)
                done.append(answer)
                return answer

            puts = asyncio.gather(*(put_and_count(d) for d in second))
            await async_wait_until(lambda: len(done) >= BATCH // 4, 60, what="a quarter of the puts answered")
            a.kill()
            after = await puts
        # 200: a retried put whose first attempt the killed hub had stored before it died.
        assert {status for status, _ in after} <= {200, 201}
        # Only requests on the killed hub's connections (at most the pool's 16) are retried.
        assert len(retried) <= 16, f"{len(retried)} puts retried"
        cids = {cid for _, cid in before + after}
        assert len(cids) == 2 * BATCH
        created = await events_on(nc, "cim.evt.unit.*.created")
        assert len(created) == 2 * BATCH and {e.aggregate_id for e in created} == cids, "every unit stored once"
        for _ in range(10):  # new connections reach only the hub still running
            assert await agent_behind(url) == "hub-b"
    finally:
        for hub in (a, b, alone):
            hub.stop()
    assert "Traceback" not in b.log()
