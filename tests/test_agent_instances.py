"""`cim agent run CAP --instances N` (issue 16, NixOS `instances`): N agents under one
service, each with its own name and state, sharing the work; a dead one is started again,
SIGTERM stops them all. Real nats-server, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from cim.nats.discovery import discover
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.pipeline_support import count, events_on
from support.waiting import async_wait_until


@pytest.fixture
async def supervisor(nc, nats_server, tmp_path):
    await provision(nc, ProvisionSpec())
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({"capability": "pipeline", "nats": {"servers": [nats_server.url]},
                                  "state_dir": str(tmp_path / "state"),
                                  "pipelines": [{"name": "p", "steps": [{"name": "extract", "plugin": "extract"}]}]}))
    log = (tmp_path / "instances.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "pipeline", "--config", str(config),
                             "--instances", "2"], stdout=log, stderr=subprocess.STDOUT)
    yield proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


async def pids(nc) -> dict[str, str]:
    return {s["name"]: s["metadata"]["pid"] for s in await discover(nc, wait=0.5) if s["name"].startswith("cim-pipeline")}


async def test_two_instances_share_the_work_and_a_dead_one_is_started_again(nc, supervisor, tmp_path):
    before = await async_wait_until(lambda: _both(nc), 60, what="cim-pipeline-1 and cim-pipeline-2 to answer")
    units = UnitStore(nc)
    for i in range(50):
        await units.put_bytes(f"note {i}".encode(), media_type="text/plain")
    await async_wait_until(lambda: _done(nc, 50), 60, what="50 units through the shared pipeline")
    assert (tmp_path / "state" / "1" / "pipeline.sqlite").exists() and (tmp_path / "state" / "2" / "pipeline.sqlite").exists()

    os.kill(int(before["cim-pipeline-1"]), signal.SIGKILL)

    async def restarted():
        now = await pids(nc)
        return now.get("cim-pipeline-1") not in (None, before["cim-pipeline-1"]) and now
    after = await async_wait_until(restarted, 60, what="the killed instance to be started again")
    assert after["cim-pipeline-2"] == before["cim-pipeline-2"]  # the other one ran on

    supervisor.terminate()
    assert supervisor.wait(60) == 0
    for pid in after.values():  # the children went with it
        assert not os.path.exists(f"/proc/{pid}")


async def _both(nc):
    found = await pids(nc)
    return set(found) == {"cim-pipeline-1", "cim-pipeline-2"} and found


async def _done(nc, n):
    return await count(nc, "cim.evt.steps.*.done") >= n


def test_an_agent_whose_work_is_not_shared_refuses_instances(cli, tmp_path):
    config = tmp_path / "registry.json"
    config.write_text(json.dumps({"capability": "registry"}))
    r = cli("agent", "run", "registry", "--config", str(config), "--instances", "2", check=False)
    assert r.returncode != 0 and "only pipeline and hub agents scale out" in r.stderr


async def test_hub_instances_share_one_port_and_only_the_first_runs_the_connectors(nc, nats_server, tmp_path):
    import urllib.request

    from cim.ports import free_port
    from support.hub_support import write_tokens

    await provision(nc, ProvisionSpec())
    port = free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = tmp_path / "hub.json"
    config.write_text(json.dumps({
        "capability": "hub", "nats": {"servers": [nats_server.url]}, "http": {"port": port},
        "tokens_file": str(write_tokens(tmp_path / "tokens.json")), "state_dir": str(tmp_path / "state"),
        "connectors": [{"plugin": "inbox", "name": "drop", "settings": {"path": str(inbox), "interval": 0.2}}]}))
    with (tmp_path / "hubs.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "hub", "--config", str(config),
                                 "--instances", "2"], stdout=log, stderr=subprocess.STDOUT)
    try:
        seen: set[str] = set()

        def healthz() -> bool:
            try:  # a fresh connection each time: the kernel spreads them between the two
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    seen.add(json.loads(r.read())["agent"])
            except OSError:
                pass
            return seen == {"cim-hub-1", "cim-hub-2"}

        await async_wait_until(healthz, 60, what="both hubs to answer on one port")

        async def both_registered() -> bool:  # /healthz answers before the NATS service is registered
            return {s["name"] for s in await discover(nc, wait=0.5)} >= {"cim-hub-1", "cim-hub-2"}

        await async_wait_until(both_registered, 30, what="both hubs to answer $SRV.INFO")
        for i in range(6):
            (inbox / f"note-{i}.txt").write_text(f"dropped {i}")
        await async_wait_until(lambda: _created(nc, 6), 60, what="the dropped files stored")
        # Stored by the first hub only: a second inbox reader would have taken some of them.
        assert {e.agent for e in await events_on(nc, "cim.evt.unit.*.created")} == {"cim-hub-1"}
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


async def _created(nc, n):
    return await count(nc, "cim.evt.unit.*.created") >= n


async def test_sigterm_while_the_instances_are_being_started_stops_every_one(nc, nats_server, tmp_path):
    await provision(nc, ProvisionSpec())
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({"capability": "pipeline", "nats": {"servers": [nats_server.url]},
                                  "state_dir": str(tmp_path / "state"), "pipelines": []}))
    with (tmp_path / "instances.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "pipeline", "--config", str(config),
                                 "--instances", "12"], stdout=log, stderr=subprocess.STDOUT)

    def children() -> list[int]:
        try:
            return [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        except OSError:
            return []

    await async_wait_until(lambda: children(), 30, interval=0.005, what="the first instance to be started")
    proc.send_signal(signal.SIGTERM)  # while the others are still being started
    started = set(children())
    assert proc.wait(60) == 0
    await async_wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in started), 30,
                           what="every instance to be gone")
