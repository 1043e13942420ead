"""An R3 event stream keeps every acknowledged event when its leader is SIGKILLed mid-append."""

import asyncio
import json

import nats

from cim import cid
from cim.embedded.procs import wait_until
from cim.errors import CimError, EmbeddedError
from cim.events import Event, EventStore
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec

TOTAL = 1500
KILL_AT = 300


async def test_no_acknowledged_event_is_lost_when_the_stream_leader_is_killed(nats_cluster):
    nc = await nats.connect(nats_cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2)
    try:
        await provision(nc, ProvisionSpec(replicas=3))
        leader = await asyncio.to_thread(nats_cluster.wait_for_leader, "CIM_EVENTS")
        events = EventStore(nc, timeout=2.0)
        acked: dict[str, int] = {}
        killed = None
        for i in range(TOTAL):
            if i == KILL_AT:
                nats_cluster.kill(leader)
                killed = leader
            e = Event(type="unit.revised", aggregate_id="failover", id=f"ev-{i}",
                      data={"child": cid.compute(i.to_bytes(4, "big"))})
            # Retry the same event (same id) until acknowledged: the server de-duplicates.
            for _attempt in range(60):
                try:
                    acked[e.id] = (await events.append(e)).seq
                    break
                except (TimeoutError, CimError, nats.errors.Error) as err:
                    last = err
                    await asyncio.sleep(0.2)  # back off while a new leader is elected
            else:
                raise AssertionError(f"event {i} was never acknowledged: {last}")
        assert killed is not None
        # Appends ride out the election themselves (cim.nats.retry), so what shows the kill is a
        # new leader, not failed appends.
        new = await asyncio.to_thread(nats_cluster.wait_for_leader, "CIM_EVENTS", timeout=30, exclude=killed)
        assert new != killed
        await asyncio.to_thread(nats_cluster.restart, killed)
        await asyncio.to_thread(nats_cluster.wait_healthy, 30)

        stored = [e async for e in events.read(["cim.evt.unit.failover.*"])]
        ids = [e.id for e in stored]
        assert len(acked) == TOTAL
        assert sorted(ids) == sorted(acked), "acknowledged and stored events differ"
        assert len(set(ids)) == len(ids), "an event was stored twice"
        assert {e.id: e.seq for e in stored} == acked

        # The restarted node caught up: its own replica, as its /jsz reports it (stream info
        # would be the leader's answer), holds every event.
        def caught_up() -> bool:
            try:
                accounts = nats_cluster.node(killed).jsz("streams=true").get("account_details") or []
            except (OSError, EmbeddedError):
                return False
            return any(s["name"] == "CIM_EVENTS" and s["state"]["messages"] == TOTAL
                       for acc in accounts for s in acc.get("stream_detail") or [])

        await asyncio.to_thread(wait_until, caught_up, 30, 0.1, "the restarted node to catch up on CIM_EVENTS")
    finally:
        await nc.close()


def test_cluster_twin_units_put_with_cim_while_the_leader_crashes(nats_cluster, cli, tmp_path):
    """The `cluster` VM test's scenario with the same commands: `cim units put` against all
    three servers while the stream leader dies; every acknowledged put is still there."""
    cli("provision", "--replicas", "3")
    leader = nats_cluster.wait_for_leader("CIM_EVENTS")
    acked = []
    for i in range(30):
        if i == 10:
            nats_cluster.kill(leader)
        f = tmp_path / f"unit-{i}"
        f.write_text(f"unit {i}")
        r = cli("--json", "units", "put", f, check=False, timeout=120)
        if r.returncode == 0:
            acked.append(json.loads(r.stdout)[0]["cid"])
    assert len(acked) > 10
    nats_cluster.restart(leader)
    nats_cluster.wait_healthy(30)
    listed = {u["cid"] for u in json.loads(cli("--json", "units", "ls").stdout)}
    assert set(acked) <= listed
