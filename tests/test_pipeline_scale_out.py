"""Pipeline agents scale out (issue 16 item 4): several agents pull from each pipeline's one
durable consumer, so every unit is recorded exactly once even when one of them is killed,
and each agent answers searches completely from its own projection."""

from __future__ import annotations

import asyncio

from cim.nats.rpc import call
from cim.pipeline import api
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.pipeline_support import count, events_on
from support.waiting import async_wait_until

UNITS = 5000


async def test_two_pipeline_agents_record_5000_units_exactly_once_with_one_killed_midway(nc, nats_server, agent_process,
                                                                                          tmp_path):
    await provision(nc, ProvisionSpec())
    pipeline = {"name": "shared", "steps": [{"name": s, "plugin": s} for s in ("classify", "extract", "index")],
                "ack_wait": 3, "concurrency": 32}

    def config(name: str) -> dict:
        return {"name": name, "nats": {"servers": [nats_server.url]}, "state_dir": str(tmp_path / name),
                "pipelines": [pipeline]}

    a = await agent_process("pipeline", config("pipeline-a")).ready(nc)
    b = await agent_process("pipeline", config("pipeline-b")).ready(nc)
    units = UnitStore(nc)
    cids: list[str] = []
    for start in range(0, UNITS, 250):
        cids += [r.unit.cid for r in await asyncio.gather(*(
            units.put_bytes(f"unit {i} is about topic{i} and shared words".encode(), media_type="text/plain", title=f"u{i}")
            for i in range(start, start + 250)))]

    await async_wait_until(lambda: _at_least(nc, UNITS // 3), 180, what=f"{UNITS // 3} units recorded")
    a.kill()  # SIGKILL: its fetched, unacknowledged units come back to b after ack_wait
    await async_wait_until(lambda: _at_least(nc, UNITS), 300, what=f"all {UNITS} units recorded")

    async def drained():
        info = await nc.jetstream().consumer_info("CIM_EVENTS", "pipeline-shared")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await async_wait_until(drained, 60, what="the shared consumer to drain")
    done = await events_on(nc, "cim.evt.steps.*.done")
    assert len(done) == UNITS and {e.data["cid"] for e in done} == set(cids), "a unit was recorded twice or never"
    assert {e.agent for e in done} == {"pipeline-a", "pipeline-b"}, "both agents took a share of the work"
    labeled = await events_on(nc, "cim.evt.unit.*.labeled")
    assert len({e.aggregate_id for e in labeled}) == len(labeled) == UNITS, "a step's effect was applied twice"

    # Each agent answers from its own projection: ask one at a time.
    for stopped, name in ((b, "pipeline-a"), (None, "pipeline-b")):
        if stopped is not None:
            stopped.stop()
        alive = await agent_process("pipeline", config(name)).ready(nc)

        async def complete():
            r = await call(nc, api.INDEX, api.Empty())
            return not r.stale and r.documents == UNITS and r

        await async_wait_until(complete, 120, what=f"{name}'s projection to hold every unit")
        hits = (await call(nc, api.SEARCH, api.SearchRequest(query="topic4321"))).hits
        assert [h.title for h in hits] == ["u4321"], name
        alive.stop()


async def _at_least(nc, n: int) -> bool:
    return await count(nc, "cim.evt.steps.*.done") >= n
