"""Every step of an agent's stop is bounded: SIGTERM ends the process within a bound even
when work in flight never finishes, and the work is not lost (it is redelivered)."""

from __future__ import annotations

import signal
import subprocess
import time

from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.pipeline_support import install_plugins
from support.waiting import async_wait_until

STOP_BOUND = 60  # seconds: under systemd's default TimeoutStopSec of 90


def _exits_within(agent, bound: float) -> float:
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    try:
        agent.proc.wait(bound)
    except subprocess.TimeoutExpired:
        agent.kill()
        raise AssertionError(f"{agent.name} did not exit within {bound}s of SIGTERM:\n{agent.log()[-3000:]}") from None
    return time.monotonic() - started


def _wedged(name: str, marker) -> dict:
    return {"name": name, "ack_wait": 5, "steps": [{"name": "guard", "plugin": "guard", "settings": {"wedge_marker": str(marker)}}]}


async def test_a_pipeline_agent_with_wedged_steps_exits_on_sigterm_and_the_unit_is_redelivered(
    nc, nats_server, agent_process, tmp_path
):
    """Three pipelines each with a step that never returns: the stop is bounded as a whole,
    not once per pipeline."""
    await provision(nc, ProvisionSpec())
    site = install_plugins(tmp_path / "site", "cim-example-plugin")
    markers = [tmp_path / f"wedged-{i}" for i in range(3)]
    config = {"nats": {"servers": [nats_server.url]}, "pipelines": [_wedged(f"w{i}", m) for i, m in enumerate(markers)]}
    agent = await agent_process("pipeline", config, env={"PYTHONPATH": site}).ready(nc)
    cid = (await UnitStore(nc).put_bytes(b"a unit whose steps hang", media_type="text/plain")).unit.cid
    await async_wait_until(lambda: all(m.exists() for m in markers), 30, what="every pipeline's step to wedge")

    _exits_within(agent, STOP_BOUND)
    assert "did not finish in time" in agent.log()

    # Nothing acknowledged the unit: a new agent gets it again.
    for m in markers:
        m.unlink()
    await agent_process("pipeline", config, env={"PYTHONPATH": site}).ready(nc)
    await async_wait_until(lambda: all(m.exists() for m in markers), 30, what=f"the unit {cid} to be delivered again")


async def test_a_second_sigterm_exits_at_once(nc, nats_server, agent_process, tmp_path):
    await provision(nc, ProvisionSpec())
    site = install_plugins(tmp_path / "site", "cim-example-plugin")
    marker = tmp_path / "wedged"
    agent = await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}, "pipelines": [_wedged("w", marker)]},
                                env={"PYTHONPATH": site}).ready(nc)
    await UnitStore(nc).put_bytes(b"a unit whose step hangs", media_type="text/plain")
    await async_wait_until(marker.exists, 30, what="the step to wedge")
    agent.proc.send_signal(signal.SIGTERM)
    await async_wait_until(lambda: "stopping" in agent.log(), 10, what="the agent to start stopping")
    _exits_within(agent, 10)
    assert "exiting now" in agent.log()


async def test_every_agent_exits_promptly_on_sigterm_with_work_arriving(nc, nats_server, agent_process, tmp_path):
    await provision(nc, ProvisionSpec())
    servers = {"servers": [nats_server.url]}
    (tmp_path / "inbox").mkdir()
    agents = [
        await agent_process("store", {"nats": servers}).ready(nc),
        await agent_process("registry", {"nats": servers}).ready(nc),
        await agent_process("pipeline", {"nats": servers}).ready(nc),
    ]
    units = UnitStore(nc)
    for i in range(50):
        await units.put_bytes(f"unit {i} arriving while the agents stop".encode(), media_type="text/plain")
    for agent in agents:
        _exits_within(agent, STOP_BOUND)
