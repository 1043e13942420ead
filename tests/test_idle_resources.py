"""An idle leaf leaves no server resources behind (issue 17 item 4): the agents poll and
follow by direct gets, so the server's consumer count stays flat while nothing happens."""

from __future__ import annotations

import json
import time

import nats.js.errors

from cim.embedded.procs import wait_until
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from support.waiting import async_wait_until

WINDOW = 7.0  # seconds watched: over three of the pipeline agent's 2 s polls of its definitions


async def consumers(nc) -> int:
    info = json.loads((await nc.request("$JS.API.INFO", b"", timeout=5)).data)
    return int(info["consumers"])


async def test_an_idle_pipeline_agent_leaves_no_consumers_behind(nc, nats_server, agent_process, tmp_path):
    await provision(nc, ProvisionSpec())
    servers = {"servers": [nats_server.url]}
    await agent_process("pipeline", {"nats": servers, "state_dir": str(tmp_path / "p")}).ready(nc)

    async def durable_made() -> bool:  # made just after the agent answers: part of the baseline
        try:
            await nc.jetstream().consumer_info("CIM_EVENTS", "pipeline-default")
            return True
        except nats.js.errors.NotFoundError:
            return False

    await async_wait_until(durable_made, 30, what="the default pipeline's durable consumer")
    baseline = await consumers(nc)  # the pipelines' own durables
    seen: list[int] = []
    started = time.monotonic()

    async def watched_long_enough() -> bool:
        seen.append(await consumers(nc))
        return time.monotonic() - started >= WINDOW

    await async_wait_until(watched_long_enough, WINDOW + 30, interval=0.5, what="the watch window to pass")
    assert max(seen) <= baseline, f"consumers grew while idle: {baseline} -> {seen}"


def test_an_idle_leaf_keeps_its_consumer_count_flat(up, cli, tmp_path):
    """What the operator saw in `cim status` (156 consumers on an idle leaf, one more each
    poll), watched the same way: every agent of `cim up` running, nothing happening."""
    u = up()

    def status() -> dict:
        return json.loads(cli("--json", "status", server=u.url, env=u.env).stdout)

    wait_until(lambda: len(status()["agents"]) == 6, 60, what="all six agents to answer cim status")

    def durables_made() -> bool:  # the pipelines' consumers, made just after the agent answers
        rows = json.loads(cli("--json", "pipelines", "ls", server=u.url, env=u.env).stdout)
        return bool(rows) and all(r["pending"] is not None for r in rows)

    wait_until(durables_made, 60, what="every pipeline's durable consumer")
    baseline = status()["jetstream"]["consumers"]
    seen: list[int] = []
    started = time.monotonic()

    def watched_long_enough() -> bool:
        seen.append(status()["jetstream"]["consumers"])
        return time.monotonic() - started >= WINDOW

    wait_until(watched_long_enough, WINDOW + 60, interval=0.5, what="the watch window to pass")
    assert max(seen) <= baseline, f"consumers grew on an idle leaf: {baseline} -> {seen}"
