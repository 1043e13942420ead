"""The component registry: every agent announces itself, the registry agent keeps the live
view (up, stale, gone) and its history as events, and negotiation picks providers or says
clearly what nothing provides. Real nats-server, real agent processes."""

import asyncio
import itertools
import json
import signal
import subprocess
import sys

import nats
import pytest

from cim import __version__
from cim.embedded.procs import wait_until
from cim.events import EventStore
from cim.permissions import inbox_prefix
from cim.provision.apply import provision
from cim.provision.spec import KvSpec, ProvisionSpec
from cim.registry import NoProvider, Requirement, find_providers, list_agents, negotiate
from cim.registry.announce import Heartbeat
from support.waiting import async_wait_until

TTL = 3.0  # the test bucket's TTL: a SIGKILLed agent's record expires after this
BEAT = 0.3


class Agents:
    """Agent processes started by a test, each with its config and log; all stopped at the end."""

    def __init__(self, url, tmp_path):
        self.url, self.tmp_path, self.procs = url, tmp_path, {}

    def start(self, capability, name=None, nkey=None, **settings):
        name = name or f"cim-{capability}"
        config = self.tmp_path / f"{name}.json"
        nats_cfg = {"servers": [self.url]} | ({"nkey_seed_file": str(nkey)} if nkey else {})
        if capability == "registry":
            # Stale after the bucket's TTL unless a test is about staleness: three missed 0.3 s
            # beats are one second's stall on a loaded machine, and add events a test did not expect.
            settings.setdefault("stale_after", TTL)
        config.write_text(json.dumps({"capability": capability, "name": name, "nats": nats_cfg,
                                      "registry": {"heartbeat": BEAT}, **settings}))
        log = self.tmp_path / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", capability, "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = (proc, log)
        return proc

    def log(self, name):
        return self.procs[name][1].read_text()

    def stop_all(self):
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
async def admin(nats_server):
    nc = await nats.connect(nats_server.url)
    await provision(nc, ProvisionSpec(kv=[KvSpec(bucket="CIM_REGISTRY", ttl=TTL)]))
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def agents(nats_server, tmp_path):
    a = Agents(nats_server.url, tmp_path)
    try:
        yield a
    finally:
        a.stop_all()


async def _records(nc, name):
    return [v for v in await list_agents(nc) if v.record.name == name]


class NotReady(Exception):
    """The registry agent answered that it cannot answer yet (503: it is still reading the bucket)."""


async def registry_ls(nc, **body):
    msg = await nc.request("cim.registry.ls", json.dumps({"all": True, **body}).encode(), timeout=5)
    if (msg.headers or {}).get("Nats-Service-Error-Code") == "503":
        raise NotReady(msg.headers.get("Nats-Service-Error"))
    return json.loads(msg.data)["agents"]


async def state_of(nc, instance_id):
    return next((v["state"] for v in await registry_ls(nc) if v["record"]["id"] == instance_id), None)


async def agent_events(nc, instance_id):
    return [e.type for e in await EventStore(nc).aggregate("agent", instance_id)]


async def test_every_agent_announces_itself_with_capabilities_endpoints_and_where(admin, agents):
    proc = agents.start("store")
    views = await async_wait_until(lambda: _records(admin, "cim-store"), 20, what="the store agent's record")
    (view,) = views
    r = view.record
    assert view.state == "up"
    assert r.capability == "store" and r.capabilities == {"store": __version__} and r.version == __version__
    assert set(r.endpoints) == {"cim.store.put", "cim.store.get", "cim.store.show", "cim.store.list"}
    assert r.pid == proc.pid and r.host and r.started_at <= r.last_seen
    # The record's id is the micro service's: $SRV.INFO and the registry name one instance.
    info = json.loads((await admin.request("$SRV.INFO.cim-store", b"", timeout=2)).data)
    assert info["id"] == r.id
    # It heartbeats: last_seen moves on.
    first = r.last_seen
    await async_wait_until(lambda: _moved(admin, first), 10, what="a second heartbeat")


async def _moved(nc, since):
    return any(v.record.last_seen > since for v in await _records(nc, "cim-store"))


async def test_a_clean_stop_removes_the_record_and_the_registry_says_gone(admin, agents):
    agents.start("registry", sweep_interval=0.1)
    proc = agents.start("store")
    (view,) = await async_wait_until(lambda: _records(admin, "cim-store"), 20, what="the store agent's record")
    await async_wait_until(lambda: _state_is(admin, view.record.id, "up"), 20, what="the registry to see the store up")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert await _records(admin, "cim-store") == []
    await async_wait_until(lambda: _state_is(admin, view.record.id, "gone"), 10, what="the registry to see it gone")
    events = await EventStore(admin).aggregate("agent", view.record.id)
    assert [e.type for e in events] == ["agent.appeared", "agent.gone"]
    assert events[0].data["capabilities"] == {"store": __version__}
    assert events[1].data["reason"] == "stopped" and events[1].agent == "cim-registry"


async def _state_is(nc, instance_id, state):
    try:
        return await state_of(nc, instance_id) == state
    except (nats.errors.NoRespondersError, NotReady):
        return False


async def test_a_killed_agent_turns_stale_then_gone_within_its_ttl_and_a_restarted_one_comes_back(admin, agents):
    agents.start("registry", sweep_interval=0.1, stale_after=None)  # three missed beats
    proc = agents.start("store")
    (view,) = await async_wait_until(lambda: _records(admin, "cim-store"), 20, what="the store agent's record")
    old = view.record.id
    await async_wait_until(lambda: _state_is(admin, old, "up"), 20, what="the registry to see the store up")

    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    await async_wait_until(lambda: _state_is(admin, old, "stale"), TTL, what="the killed agent to turn stale")
    # Gone within its TTL (plus sweeps): the registry says so and the record has expired.
    await async_wait_until(lambda: _state_is(admin, old, "gone"), TTL + 2, what="the killed agent to be gone")
    await async_wait_until(lambda: _no_record(admin, "cim-store"), TTL + 2, what="the record to expire")
    history = await agent_events(admin, old)  # a stall before the kill may add stale, recovered
    assert history[0] == "agent.appeared" and history[-2:] == ["agent.stale", "agent.gone"], history
    assert history.count("agent.appeared") == 1 and all(a != b for a, b in itertools.pairwise(history)), history
    gone = (await EventStore(admin).aggregate("agent", old))[-1]
    assert gone.data["reason"] == "expired"
    ls = [v for v in await registry_ls(admin, all=False) if v["record"]["id"] == old]
    assert ls == []  # gone agents are listed only with `all`

    agents.start("store")
    (back,) = await async_wait_until(lambda: _records(admin, "cim-store"), 20, what="the restarted agent's record")
    assert back.record.id != old and back.state == "up"
    await async_wait_until(lambda: _state_is(admin, back.record.id, "up"), 10, what="the registry to see it back")
    history = await agent_events(admin, back.record.id)
    assert history[0] == "agent.appeared" and history.count("agent.appeared") == 1, history


async def _no_record(nc, name):
    return not await _records(nc, name)


async def test_a_restarted_registry_does_not_record_an_agent_twice(admin, agents):
    agents.start("store")
    (view,) = await async_wait_until(lambda: _records(admin, "cim-store"), 20, what="the store agent's record")
    registry = agents.start("registry")
    await async_wait_until(lambda: _state_is(admin, view.record.id, "up"), 20, what="the registry to see the store")
    registry.send_signal(signal.SIGTERM)
    assert registry.wait(15) == 0
    agents.procs.pop("cim-registry")
    agents.start("registry")
    await async_wait_until(lambda: _state_is(admin, view.record.id, "up"), 20, what="the new registry to see the store")
    assert await agent_events(admin, view.record.id) == ["agent.appeared"]


async def test_agents_that_left_while_the_registry_was_down_are_recorded_gone_once_it_is_back(nats_server, agents):
    admin = await nats.connect(nats_server.url)
    ttl = 8.0  # long enough for a clean stop's removal marker to outlive a registry's start
    await provision(admin, ProvisionSpec(kv=[KvSpec(bucket="CIM_REGISTRY", ttl=ttl)]))
    try:
        registry = agents.start("registry", sweep_interval=0.1)
        stopped = agents.start("store", name="cim-store-a")
        killed = agents.start("store", name="cim-store-b")
        (a,) = await async_wait_until(lambda: _records(admin, "cim-store-a"), 20, what="the first store's record")
        (b,) = await async_wait_until(lambda: _records(admin, "cim-store-b"), 20, what="the second store's record")
        for view in (a, b):
            await async_wait_until(lambda v=view: _state_is(admin, v.record.id, "up"), 20, what="the registry to see both")
        registry.send_signal(signal.SIGTERM)
        assert registry.wait(15) == 0
        agents.procs.pop("cim-registry")

        # While no registry runs: one store is killed and its record expires; the other
        # stops cleanly just before a registry starts again (its removal marker is fresh).
        killed.send_signal(signal.SIGKILL)
        killed.wait(5)
        await async_wait_until(lambda: _no_record(admin, "cim-store-b"), ttl + 5, what="the killed store's record to expire")
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(15) == 0
        agents.start("registry", sweep_interval=0.1)

        def checked(times: int) -> bool:
            return agents.log("cim-registry").count("history checked:") >= times

        await asyncio.to_thread(wait_until, lambda: checked(2), 20, 0.1, "the returning registry to check the history")
        for v in (a, b):
            assert await agent_events(admin, v.record.id) == ["agent.appeared", "agent.gone"]
        reasons = {v.record.id: (await EventStore(admin).aggregate("agent", v.record.id))[-1].data["reason"] for v in (a, b)}
        assert reasons == {a.record.id: "stopped", b.record.id: "unseen"}

        # A registry started again records nothing twice.
        agents.procs["cim-registry"][0].send_signal(signal.SIGTERM)
        assert agents.procs.pop("cim-registry")[0].wait(15) == 0
        agents.start("registry", sweep_interval=0.1)
        await asyncio.to_thread(wait_until, lambda: checked(3), 20, 0.1, "the third registry to check the history")
        for v in (a, b):
            assert await agent_events(admin, v.record.id) == ["agent.appeared", "agent.gone"]
    finally:
        await admin.close()


@pytest.fixture
async def announced(admin):
    """Two providers of `search` (1.0.0 and 2.1.0) announced through the library, as agents do."""
    beats = [
        Heartbeat(admin, name="cim-pipeline", instance_id="P1", capability="pipeline", version="0.1.0",
                  capabilities=lambda: {"pipeline": "0.1.0", "search": "1.0.0", "classify": "1.2.0"},
                  endpoints=["cim.pipeline.run"], interval=BEAT),
        Heartbeat(admin, name="cim-search", instance_id="S2", capability="hub", version="0.1.0",
                  capabilities=lambda: {"search": "2.1.0"}, endpoints=[], interval=BEAT),
    ]
    for b in beats:
        await b.start()
    try:
        yield beats
    finally:
        for b in beats:
            await b.stop()


async def test_negotiation_picks_the_matching_provider(announced, admin):
    matches = await negotiate(admin, ["search>=2", Requirement(capability="classify", spec="~=1.0"), "search<2"])
    assert [(m.requirement.capability, m.provider.name, m.version) for m in matches] == [
        ("search", "cim-search", "2.1.0"), ("classify", "cim-pipeline", "1.2.0"), ("search", "cim-pipeline", "1.0.0"),
    ]
    found = await find_providers(admin, "search", ">=1")
    assert [(v.record.name, ver) for v, ver in found] == [("cim-search", "2.1.0"), ("cim-pipeline", "1.0.0")]


async def test_negotiation_refuses_with_a_clear_message_naming_every_unmet_requirement(announced, admin):
    with pytest.raises(NoProvider) as err:
        await negotiate(admin, ["search>=3", "classify", "ocr"])
    assert err.value.unmet == [
        "nothing provides search >= 3 (available: search 1.0.0 from cim-pipeline, search 2.1.0 from cim-search)",
        "nothing provides ocr (no agent announces it)",
    ]


async def test_the_registry_agent_negotiates_over_nats(announced, admin, agents):
    agents.start("registry")
    async def both_seen():
        try:
            return len(await registry_ls(admin, capability="search")) == 2
        except (nats.errors.NoRespondersError, NotReady):
            return False
    await async_wait_until(both_seen, 20, what="the registry to see both search providers")
    ok = json.loads((await admin.request("cim.registry.negotiate", json.dumps(
        {"requirements": ["search>=2,<3"]}).encode(), timeout=5)).data)
    assert [m["provider"]["name"] for m in ok["matches"]] == ["cim-search"]
    refused = await admin.request("cim.registry.negotiate", json.dumps({"requirements": ["search>=3"]}).encode(), timeout=5)
    assert refused.headers["Nats-Service-Error-Code"] == "404"
    assert refused.headers["Nats-Service-Error"].startswith("nothing provides search >= 3 (available: search 1.0.0")
    bad = await admin.request("cim.registry.providers", json.dumps({"capability": "search", "spec": "=>2"}).encode(), timeout=5)
    assert bad.headers["Nats-Service-Error-Code"] == "400" and "version range" in bad.headers["Nats-Service-Error"]


async def test_a_starting_registry_answers_only_once_it_has_read_every_announced_agent(nats_server, agents):
    # A registry that served before reading the bucket's history answered "no agents
    # announced" (or a few of them) to the first `cim agents ls` after it started.
    admin = await nats.connect(nats_server.url)
    await provision(admin, ProvisionSpec(kv=[KvSpec(bucket="CIM_REGISTRY", ttl=120)]))
    try:
        for i in range(300):
            await Heartbeat(admin, name=f"cim-store-{i}", instance_id=f"S{i:04d}", capability="store", version="0.1.0",
                            capabilities=lambda: {"store": "0.1.0"}, endpoints=[], interval=60).beat()
        agents.start("registry", stale_after=600)  # none turns stale meanwhile

        async def first_answer():  # the list, even an empty one, is an answer
            try:
                return ("answered", await registry_ls(admin, capability="store"))
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError, NotReady):
                return None
        _, listed = await async_wait_until(first_answer, 30, what="the registry agent to answer")
        assert len(listed) == 300
    finally:
        await admin.close()


async def test_a_registry_stopped_while_it_waits_for_its_bucket_stops_without_ever_serving(nats_server, agents):
    """No bucket yet (nothing provisioned): the registry waits for it before serving. A stop
    asked meanwhile ends it there; it never answers nor announces itself on the way out."""
    proc = agents.start("registry")
    await async_wait_until(lambda: "following the registry bucket failed" in agents.log("cim-registry"), 30,
                           what="the registry to find no bucket")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, agents.log("cim-registry")
    log = agents.log("cim-registry")
    assert "ready (pid" not in log and "stopped" in log, log


def test_a_registry_that_cannot_read_its_bucket_says_why_and_cim_agents_reads_it_instead(nats_server, agents, cli):
    """Past its wait for the bucket, the registry serves, answering 503 with the reason until it
    can read it; `cim agents ls` then reads the bucket itself (here there is none: it says so)."""
    agents.start("registry")
    wait_until(lambda: "answering 'not ready'" in agents.log("cim-registry"), 60, what="the registry to serve unready")

    async def ask():
        nc = await nats.connect(nats_server.url)
        try:
            return await nc.request("cim.registry.ls", b"{}", timeout=10)
        finally:
            await nc.close()

    reply = asyncio.run(ask())
    assert reply.headers["Nats-Service-Error-Code"] == "503"
    assert "has not read the CIM_REGISTRY bucket yet (reading it failed:" in reply.headers["Nats-Service-Error"]
    listed = cli("agents", "ls", check=False)  # read from the bucket itself, which says what is wrong
    assert listed.returncode == 1 and "CIM_REGISTRY (store) does not exist" in listed.stderr, listed
    assert "run `cim provision`" in listed.stderr, listed


def test_cim_agents_ls_show_and_negotiate(admin, agents, cli):
    agents.start("store")

    def listed_store():
        out = cli("agents", "ls").stdout
        return out if "cim-store" in out else None

    out = wait_until(listed_store, 20, what="cim agents ls to list the store")
    assert "up" in out and f"store {__version__}" in out and "no registry agent answered" in out
    status = json.loads(cli("--json", "status").stdout)
    assert [(r["name"], r["state"]) for r in status["registry"]] == [("cim-store", "up")]
    listed = json.loads(cli("--json", "agents", "ls", "--capability", "store").stdout)
    (view,) = listed["agents"]
    assert json.loads(cli("--json", "agents", "ls", "--capability", "search").stdout)["agents"] == []
    shown = cli("agents", "show", "cim-store").stdout
    assert view["record"]["id"] in shown and "cim.store.put" in shown and f"pid           {view['record']['pid']}" in shown
    missing = cli("agents", "show", "nobody", check=False)
    assert missing.returncode == 1 and "no agent 'nobody'" in missing.stderr
    assert "cim-store" in cli("agents", "negotiate", f"store>={__version__}").stdout
    refused = cli("agents", "negotiate", "store>=99", "ocr", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: nothing provides store >= 99 (available: store {__version__} from cim-store); "
        "nothing provides ocr (no agent announces it)"
    )
    # With the registry agent running, the same commands ask it (and it knows the states).
    agents.start("registry")

    def listed_registry():
        out = cli("agents", "ls").stdout  # from the registry agent, which lists itself once it beats
        return out if "cim-registry" in out and "source: registry agent)" in out else None

    out = wait_until(listed_registry, 20, what="the registry agent to list itself")
    assert "cim-store" in out


async def test_agents_announce_and_the_registry_works_under_their_own_restricted_identities(secured_nats, tmp_path):
    """The NATS users capabilities.json declares suffice, and one agent cannot announce as another capability."""
    server, seeds = secured_nats("store", "registry", "pipeline")
    a = Agents(server.url, tmp_path)
    try:
        admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
        await provision(admin, ProvisionSpec(kv=[KvSpec(bucket="CIM_REGISTRY", ttl=TTL)]))
        a.start("registry", nkey=seeds["registry"], sweep_interval=0.1)
        store = a.start("store", nkey=seeds["store"])
        (view,) = await async_wait_until(lambda: _records(admin, "cim-store"), 20, what="the store's record")
        await async_wait_until(lambda: _state_is(admin, view.record.id, "up"), 20, what="the registry to see it")
        # The pipeline engine negotiates by reading the bucket under its own identity.
        as_pipeline = await nats.connect(server.url, nkeys_seed=str(seeds["pipeline"]), inbox_prefix=inbox_prefix("pipeline"))
        try:
            (match,) = await negotiate(as_pipeline, ["store"], timeout=3)
            assert match.provider.id == view.record.id
        finally:
            await as_pipeline.close()
        store.send_signal(signal.SIGTERM)
        assert store.wait(15) == 0
        await async_wait_until(lambda: _state_is(admin, view.record.id, "gone"), 10, what="the registry to see it gone")
        assert await agent_events(admin, view.record.id) == ["agent.appeared", "agent.gone"]
        assert "cannot announce" not in a.log("cim-store") and "could not record" not in a.log("cim-registry")
        assert "history checked:" in a.log("cim-registry")  # it may read the agents' history too

        violations = []

        async def on_error(err):
            violations.append(str(err).lower())

        as_store = await nats.connect(server.url, nkeys_seed=str(seeds["store"]), error_cb=on_error,
                                   inbox_prefix=inbox_prefix("store"))
        try:
            forged = Heartbeat(as_store, name="fake", instance_id="X", capability="pipeline", version="9",
                               capabilities=lambda: {"search": "9"}, endpoints=[], interval=BEAT)
            with pytest.raises(nats.errors.TimeoutError):  # refused by the server: no ack comes
                await forged.beat()
            assert any('permissions violation for publish to "$kv.cim_registry.pipeline.x"' in v for v in violations)
        finally:
            await as_store.close()
        assert await _records(admin, "fake") == []
        await admin.close()
    finally:
        a.stop_all()


async def test_no_agent_can_empty_the_registry_or_hide_other_capabilities_agents(secured_nats):
    """A rollup from a credential that may write one key would purge the whole bucket: the
    bucket refuses rollups. And an agent that writes more keys than one listing may return
    spoils only its own capability's listing."""
    import nats as nats_client
    from nats.js.errors import APIError

    from cim.permissions import inbox_prefix
    from cim.provision.apply import provision
    from cim.provision.spec import ProvisionSpec
    from cim.registry.client import snapshot

    server, seeds = secured_nats("store", "ui")
    admin = await nats_client.connect(server.url, nkeys_seed=str(seeds["admin"]))
    store = await nats_client.connect(server.url, nkeys_seed=str(seeds["store"]), inbox_prefix=inbox_prefix("store"))
    ui = await nats_client.connect(server.url, nkeys_seed=str(seeds["ui"]), inbox_prefix=inbox_prefix("ui"))
    try:
        await provision(admin, ProvisionSpec())
        await store.jetstream().publish("$KV.CIM_REGISTRY.store.s1", b'{"name": "s1"}')
        with pytest.raises(APIError, match="rollup not permitted"):
            await ui.jetstream().publish("$KV.CIM_REGISTRY.ui.u1", b"{}", headers={"Nats-Rollup": "all"})
        assert "$KV.CIM_REGISTRY.store.s1" in {m.subject for m in await snapshot(admin)}
        for i in range(1025):
            await ui.jetstream().publish_async(f"$KV.CIM_REGISTRY.ui.u{i}", b"{}")
        await ui.jetstream().publish_async_completed()
        assert "$KV.CIM_REGISTRY.store.s1" in {m.subject for m in await snapshot(admin)}
    finally:
        for nc in (ui, store, admin):
            await nc.close()
