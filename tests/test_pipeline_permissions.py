"""The pipeline agent does all its work under its own restricted NATS user."""

import json

import nats

from cim.nats.rpc import call
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.pipeline_support import count
from support.waiting import async_wait_until


async def test_the_pipeline_agent_works_within_its_own_permissions(secured_nats, agent_process, cli, tmp_path):
    server, seeds = secured_nats("pipeline")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    try:
        await provision(admin, ProvisionSpec())
        agent = await agent_process("pipeline", {
            "nats": {"servers": [server.url], "nkey_seed_file": str(seeds["pipeline"])},
            "pipelines": [{"name": "p", "max_attempts": 2, "backoff": [0.1], "steps": [
                {"name": "classify", "plugin": "classify"}, {"name": "extract", "plugin": "extract"},
                {"name": "index", "plugin": "index"}]}],
        }).ready(admin)
        units = UnitStore(admin)
        good = (await units.put_bytes(b"kingfishers dive for fish", media_type="text/plain")).unit.cid
        # A PDF that is not one: extraction fails, and the agent dead-letters it itself.
        await units.put_bytes(b"%PDF-1.4 not really", media_type="application/pdf")

        async def searchable():
            hits = (await call(admin, "cim.pipeline.search", {"query": "kingfishers"}))["hits"]
            return [h["cid"] for h in hits] == [good]

        await async_wait_until(searchable, 30, what="the unit indexed by the restricted agent")
        await async_wait_until(lambda: _one_letter(admin), 30, what="the broken PDF dead-lettered")
        status = await call(admin, "cim.pipeline.status")
        assert status["pipelines"]["p"]["state"] == "running"
        env = {"CIM_NKEY": str(seeds["admin"])}
        assert json.loads(cli("--json", "pipelines", "ls", server=server.url, env=env).stdout)[0]["state"] == "running"
        assert "violation" not in agent.log().lower(), agent.log()
    finally:
        await admin.close()


async def _one_letter(nc) -> bool:
    return await count(nc, "cim.dlq.>", stream="CIM_DLQ") == 1
