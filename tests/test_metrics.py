"""Metrics worth scraping (issue 17, item 3): a leaf of real agents, each with its own NATS
user and a known metrics port, does real work (units put with `cim units put` and over the
hub, two pipelines, a tier move and a restore, a webhook delivered and one dead-lettered);
then every agent's /metrics is read with prometheus_client's own parser and checked for
what an operator would look at. The Grafana dashboard is checked against the same scrapes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nats
import nats.js.errors
import pytest
from aiohttp import ClientSession, web
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cim.embedded.nats_server import NatsServer
from cim.ports import free_ports
from support.agentkit import AgentProcess
from support.hub_support import TOKEN, Hub
from support.pipeline_support import count, install_plugins
from support.waiting import async_wait_until

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "monitoring" / "grafana" / "cim.json"
CAPABILITIES = ("store", "registry", "tier", "pipeline", "hub")
# Every agent serves these (cim.runtime); everything else named cim_* is its capability's own.
SHARED = ("cim_requests", "cim_request_seconds", "cim_nats_connected", "cim_agent_start_time_seconds")
OWN = {
    "store": ("cim_units_", "cim_events_", "cim_event_stream_"),
    "registry": ("cim_registry_",),
    "tier": ("cim_tier_",),
    "pipeline": ("cim_pipeline_",),
    "hub": ("cim_hub_",),
}
CLI_UNITS = ["first note", "second note", "an old report", "POISON for the guard"]  # the report is archived
HUB_UNITS = ["posted over HTTP", "posted once more"]
PUT = len(CLI_UNITS) + len(HUB_UNITS)
SECRET = b"metrics-webhook-secret"

Families = dict[str, Metric]


@dataclass
class Leaf:
    ports: dict[str, int]
    scrapes: dict[str, Families] = field(default_factory=dict)
    hub_http_scrape: Families = field(default_factory=dict)
    appended: tuple[int, int] = (0, 0)  # CIM_EVENTS' last sequence just before and after the scrapes
    moved: tuple[str, int] = ("", 0)  # the archived unit's CID and size


def scrape(port: int) -> Families:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: Families, sample: str, **labels: str) -> float | None:
    """The sample of that name and those labels (None: not exported)."""
    for f in families.values():
        for s in f.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def total(families: Families, sample: str, **labels: str) -> float:
    """The sum over every series of `sample` with those labels (0 when there is none)."""
    return sum(s.value for f in families.values() for s in f.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def exported(families: Families) -> set[str]:
    """Every name a PromQL query can use: the samples, and a family declared with no sample yet
    (a labeled counter before its first increment) under its sample names."""
    names = {s.name for f in families.values() for s in f.samples}
    for f in families.values():
        names.add(f.name)
        if f.type == "counter":
            names.add(f.name + "_total")
        if f.type == "histogram":
            names |= {f.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


class Receiver:
    """Webhook receivers on 127.0.0.1: /ok accepts, /down answers 503."""

    def __init__(self, port: int):
        self.port = port
        self.ok: list[str] = []
        self.down = 0

    async def accept(self, request: web.Request) -> web.Response:
        await request.read()
        self.ok.append(request.headers["webhook-id"])
        return web.Response(status=204)

    async def refuse(self, request: web.Request) -> web.Response:
        await request.read()
        self.down += 1
        return web.Response(status=503)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/ok", self.accept)
        app.router.add_post("/down", self.refuse)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def secured_server(base: Path) -> tuple[NatsServer, dict[str, Path]]:
    """A nats-server with an admin user and one nkey user per capability, each allowed only what
    capabilities.json declares (as modules/nats.nix renders it): the metrics must be read with
    each agent's own rights."""
    from cim.cli.keys import new_user_seed, public_key_of
    from cim.permissions import nats_permissions

    seeds, users = {}, []
    for name in ("admin", *CAPABILITIES):
        seed = new_user_seed()
        seeds[name] = base / f"{name}.nk"
        seeds[name].write_bytes(seed + b"\n")
        seeds[name].chmod(0o600)
        user: dict = {"nkey": public_key_of(seed)}
        if name != "admin":
            user["permissions"] = nats_permissions(name)
        users.append(user)
    server = NatsServer(store_dir=base / "nats",
                        extra_config={"accounts": {"CIM": {"jetstream": "enabled", "users": users}}})
    server.start()
    return server, seeds


def cim(server: NatsServer, seeds: dict[str, Path], *args: str, input: str | None = None) -> str:
    """The real `cim` command, as the operator (admin key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
    env.update({"CIM_SERVER": server.url, "CIM_NKEY": str(seeds["admin"]), "NO_COLOR": "1", "TERM": "dumb"})
    r = subprocess.run([sys.executable, "-m", "cim", *args], input=input, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"cim {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


async def started(agent: AgentProcess, nc) -> None:
    """Answering $SRV.INFO, and past its own start (the log line after `start()`)."""
    await agent.ready(nc, timeout=60)  # five agents start at once on a small machine
    await async_wait_until(lambda: "ready (pid" in agent.log(), 60, what=f"{agent.name} to finish starting")


async def until_scraped(where: int | str, check, what: str, timeout: float = 30) -> Families:
    """Scrape (a metrics port, or a URL) until `check(families)` holds, and return that scrape;
    after `timeout`, the last one (the test's assertion then says what it holds)."""
    last: Families = {}

    async def holds() -> bool:
        nonlocal last
        try:
            last = await asyncio.to_thread(scrape_url, where if isinstance(where, str) else
                                           f"http://127.0.0.1:{where}/metrics")
        except OSError:  # a slow answer: scrape again
            return False
        return bool(check(last))

    try:
        await async_wait_until(holds, timeout, interval=0.2, what=what)
    except Exception:
        pass  # the test names what is wrong with `last`
    return last


async def run_leaf(base: Path, server: NatsServer, seeds: dict[str, Path], leaf: Leaf, agents: list[AgentProcess]) -> None:
    nc = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]), connect_timeout=5)
    try:
        await asyncio.to_thread(cim, server, seeds, "provision")
        site = await asyncio.to_thread(install_plugins, base / "site", "cim-example-plugin")
        ports = leaf.ports
        nats_of = {c: {"servers": [server.url], "nkey_seed_file": str(seeds[c])} for c in CAPABILITIES}
        (base / "warm").mkdir()
        (base / "secret").write_bytes(SECRET + b"\n")
        hook = {"url": f"http://127.0.0.1:{ports['receiver']}/ok", "secret_file": str(base / "secret"),
                "subjects": ["cim.evt.unit.*.created"]}
        settings: dict[str, dict] = {
            "store": {},
            "registry": {},
            "tier": {"tiers": [{"name": "warm", "url": f"file://{base / 'warm'}"}],
                     "policies": [{"name": "archive", "from": "hot", "to": "warm", "labels": ["archive"]}],
                     "migrate_interval": 3600, "state_dir": str(base / "tier-state")},
            "pipeline": {"state_dir": str(base / "pipeline-state"), "pipelines": [
                {"name": "docs", "steps": [{"name": "classify", "plugin": "classify"}]},
                {"name": "guarded", "steps": [{"name": "guard", "plugin": "guard", "settings": {"reject": "POISON"}}],
                 "max_attempts": 2, "backoff": [0.1]},
            ]},
        }
        for capability in ("store", "registry", "tier", "pipeline"):
            agent = AgentProcess(capability, {"nats": nats_of[capability], "metrics": {"port": ports[capability]},
                                              **settings[capability]}, base,
                                 env={"PYTHONPATH": site} if capability == "pipeline" else None)
            agents.append(agent.start())
        hub = Hub(server.url, base, nkey=seeds["hub"], port=ports["hub_http"], metrics={"port": ports["hub"]},
                  webhooks=[{"name": "ok", **hook},
                            {**hook, "name": "down", "url": f"http://127.0.0.1:{ports['receiver']}/down",
                             "max_attempts": 2, "backoff": [0.1]}])
        agents.append(hub)
        await asyncio.to_thread(hub.start)
        for agent in agents:
            await started(agent, nc)

        async with Receiver(ports["receiver"]) as rx:
            # Units from the CLI (no agent is asked: it writes to JetStream itself) and the hub.
            files = []
            for i, text in enumerate(CLI_UNITS):
                files.append(base / f"unit-{i}.txt")
                files[-1].write_text(text)
            await asyncio.to_thread(cim, server, seeds, "units", "put", *map(str, files[:2]), str(files[3]))
            archived = (await asyncio.to_thread(cim, server, seeds, "units", "put", str(files[2]), "--label",
                                                "archive")).split()[0]
            leaf.moved = (archived, len(CLI_UNITS[2]))
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with ClientSession() as http:
                for text in HUB_UNITS:
                    async with http.post(f"{hub.url}/v1/units", data=text.encode(), headers=auth) as r:
                        assert r.status == 201, await r.text()
                async with http.post(f"{hub.url}/v1/units", data=b"no token") as r:
                    assert r.status == 401

            # What the work did, as the server says it (not as the metrics do).
            async def settled() -> bool:
                return (await count(nc, "cim.evt.steps.*.done") == 2 * PUT - 1  # the poison unit fails `guarded`
                        and await count(nc, "cim.dlq.pipeline.>", stream="CIM_DLQ") == 1
                        and await count(nc, "cim.dlq.hub.>", stream="CIM_DLQ") == PUT
                        and len(set(rx.ok)) == PUT)

            await async_wait_until(settled, 90, what="both pipelines, the webhooks and their dead letters to settle")
            await asyncio.to_thread(cim, server, seeds, "tier", "migrate")
            await asyncio.to_thread(cim, server, seeds, "tier", "restore", archived)

        # What must not count twice, nor grow the series: every event delivered again to the
        # `docs` pipeline (its consumer deleted and made again: each unit recorded already), a
        # method no client of the hub sends, a client leaving mid-upload, and a registry
        # record whose body names a capability nobody has.
        await redeliver_all(nc, "pipeline-docs")
        await asyncio.to_thread(raw_request, ports["hub_http"], b"PROPFIND /v1/units HTTP/1.1\r\nHost: hub\r\n"
                                b"Content-Length: 0\r\n\r\n")
        await asyncio.to_thread(abandoned_upload, ports["hub_http"])
        await forged_record(nc)

        # Then what an operator scrapes: each check waits for counts that arrive a little
        # later (the store follows the stream) and gives up with the last scrape.
        checks = {
            "store": lambda f: value(f, "cim_units_stored_total") == PUT  # and the stream's, read at scrape time
            and value(f, "cim_events_appended_total") is not None and value(f, "cim_event_stream_messages") is not None,
            "pipeline": lambda f: value(f, "cim_pipeline_processed_total", pipeline="docs") == PUT
            and total(f, "cim_pipeline_lag_events") == 0 and value(f, "cim_pipeline_lag_events", pipeline="docs") == 0,
            "tier": lambda f: value(f, "cim_tier_moves_total", tier="hot", direction="hotter") == 1
            and value(f, "cim_tier_units", tier="hot") == PUT,  # the index has applied the restore
            "hub": lambda f: value(f, "cim_hub_webhook_dead_letters_total", webhook="down") == PUT
            and value(f, "cim_hub_webhook_lag_events") == 0 and total(f, "cim_hub_http_requests_total", status="499") == 1,
            "registry": lambda f: total(f, "cim_registry_agents", state="up") >= len(CAPABILITIES) + 1,
        }
        before = (await nc.jetstream().stream_info("CIM_EVENTS")).state.last_seq
        for capability, check in checks.items():
            leaf.scrapes[capability] = await until_scraped(ports[capability], check, f"the {capability} agent's metrics")
        leaf.hub_http_scrape = await until_scraped(f"{hub.url}/metrics", lambda f: set(f) == set(leaf.scrapes["hub"]),
                                                   "the hub's HTTP /metrics")
        leaf.appended = (before, (await nc.jetstream().stream_info("CIM_EVENTS")).state.last_seq)
    finally:
        await nc.close()


async def redeliver_all(nc, consumer: str) -> None:
    """Delete a pipeline's durable consumer and wait until the pipeline agent has made it again
    and it has delivered every event once more (all acknowledged)."""
    js = nc.jetstream()
    before = await js.consumer_info("CIM_EVENTS", consumer)
    await js.delete_consumer("CIM_EVENTS", consumer)

    async def delivered_again() -> bool:
        try:
            info = await js.consumer_info("CIM_EVENTS", consumer)
        except nats.js.errors.NotFoundError:
            return False
        return (info.created != before.created and info.delivered.consumer_seq >= before.delivered.consumer_seq
                and not info.num_ack_pending and not info.num_pending)

    await async_wait_until(delivered_again, 60, what=f"{consumer} to be made again and deliver everything")


def raw_request(port: int, request: bytes) -> bytes:
    """What a server answers to these bytes (its status line and headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def abandoned_upload(port: int) -> None:
    """A client that starts an upload (the hub has taken it: 100 Continue) and goes away."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/units HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: text/plain\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 100"), "the hub should take the upload"
        sock.sendall(b"the first bytes of a longer text")


async def forged_record(nc) -> None:
    """A registry record under the store's key whose body claims a capability nobody has."""
    now = datetime.now(UTC).isoformat()
    record = {"name": "forged", "id": "forged-1", "capability": f"made-up-{os.getpid()}", "version": "1.0.0",
              "capabilities": {}, "host": "nowhere", "pid": 1, "started_at": now, "last_seen": now, "heartbeat": 3600}
    await nc.jetstream().publish("$KV.CIM_REGISTRY.store.forged-1", json.dumps(record).encode())


def scrape_url(url: str) -> Families:
    with urllib.request.urlopen(url, timeout=10) as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


@pytest.fixture(scope="module")
def leaf(tmp_path_factory) -> Iterator[Leaf]:
    """The leaf, its work done and its agents scraped, once for the module (the tests that use
    it carry the `nats` marker: it starts its own secured nats-server)."""
    base = tmp_path_factory.mktemp("metrics-leaf")
    names = [*CAPABILITIES, "hub_http", "receiver"]
    leaf = Leaf(ports=dict(zip(names, free_ports(len(names)), strict=True)))
    server, seeds = secured_server(base)
    agents: list[AgentProcess] = []
    try:
        asyncio.run(run_leaf(base, server, seeds, leaf, agents))
        yield leaf
    finally:
        for agent in agents:
            agent.stop()
        server.stop()


# --- the counts an operator checks ----------------------------------------------------------


@pytest.mark.nats
def test_units_stored_counts_every_put_including_the_cli_ones(leaf):
    store = leaf.scrapes["store"]
    assert value(store, "cim_units_stored_total") == PUT
    assert value(store, "cim_units_stored_bytes_total") == sum(len(t) for t in CLI_UNITS + HUB_UNITS)
    # The store agent served none of those puts: the CLI and the hub write to JetStream themselves.
    assert total(store, "cim_requests_total", endpoint="put") == 0


@pytest.mark.nats
def test_events_appended_is_what_jetstream_counts(leaf):
    appended = value(leaf.scrapes["store"], "cim_events_appended_total")
    before, after = leaf.appended
    assert appended is not None and before <= appended <= after
    assert value(leaf.scrapes["store"], "cim_event_stream_messages") == appended  # nothing is ever deleted
    assert (value(leaf.scrapes["store"], "cim_event_stream_bytes") or 0) > 0


@pytest.mark.nats
def test_each_pipeline_counts_its_units_failures_and_dead_letters_and_its_lag_drops_to_zero(leaf):
    p = leaf.scrapes["pipeline"]
    assert value(p, "cim_pipeline_processed_total", pipeline="docs") == PUT
    assert value(p, "cim_pipeline_processed_total", pipeline="guarded") == PUT - 1
    assert value(p, "cim_pipeline_failed_total", pipeline="guarded") == 2  # max_attempts
    assert value(p, "cim_pipeline_dead_letters_total", pipeline="guarded") == 1
    assert value(p, "cim_pipeline_failed_total", pipeline="docs") is None
    assert value(p, "cim_pipeline_lag_events", pipeline="docs") == 0
    assert value(p, "cim_pipeline_lag_events", pipeline="guarded") == 0


@pytest.mark.nats
def test_a_tier_move_and_a_restore_are_counted_with_their_bytes_and_each_tier_says_what_it_holds(leaf):
    t = leaf.scrapes["tier"]
    _, size = leaf.moved
    assert value(t, "cim_tier_moves_total", tier="warm", direction="colder") == 1
    assert value(t, "cim_tier_moved_bytes_total", tier="warm", direction="colder") == size
    assert value(t, "cim_tier_moves_total", tier="hot", direction="hotter") == 1  # `cim tier restore`
    assert value(t, "cim_tier_moved_bytes_total", tier="hot", direction="hotter") == size
    assert value(t, "cim_tier_units", tier="hot") == PUT
    assert value(t, "cim_tier_units", tier="warm") == 1  # a restore copies: the warm copy stays
    # The units themselves, each once: the restored one is in two tiers.
    assert value(t, "cim_tier_live_units") == PUT
    assert value(t, "cim_tier_stored_bytes", tier="warm") == size
    assert value(t, "cim_tier_stored_bytes", tier="hot") == sum(len(x) for x in CLI_UNITS + HUB_UNITS)
    assert value(t, "cim_tier_pending_moves") == 0


@pytest.mark.nats
def test_webhook_deliveries_and_dead_letters_are_counted(leaf):
    h = leaf.scrapes["hub"]
    assert value(h, "cim_hub_webhook_deliveries_total", webhook="ok", outcome="ok") == PUT
    assert value(h, "cim_hub_webhook_deliveries_total", webhook="down", outcome="failed") == 2 * PUT
    assert value(h, "cim_hub_webhook_dead_letters_total", webhook="down") == PUT
    assert value(h, "cim_hub_webhook_dead_letters_total", webhook="ok") is None
    assert value(h, "cim_hub_webhook_lag_events") == 0


@pytest.mark.nats
def test_hub_requests_are_counted_by_status_and_route(leaf):
    h = leaf.scrapes["hub"]
    assert value(h, "cim_hub_http_requests_total", method="POST", route="/v1/units", status="201") == len(HUB_UNITS)
    assert value(h, "cim_hub_http_requests_total", method="POST", route="/v1/units", status="401") == 1
    assert value(h, "cim_hub_ingest_total", status="201") == len(HUB_UNITS)
    # A method the hub does not serve is "other" (a label per made-up method would grow
    # without bound); a client that left mid-upload is 499, not the hub's 500.
    methods = {s.labels["method"] for f in h.values() for s in f.samples if s.name == "cim_hub_http_requests_total"}
    assert "PROPFIND" not in methods and methods <= {"GET", "HEAD", "POST", "other"}, methods
    assert total(h, "cim_hub_http_requests_total", method="other") == 1
    assert value(h, "cim_hub_http_requests_total", method="POST", route="/v1/units", status="499") == 1
    assert total(h, "cim_hub_http_requests_total", status="500") == 0


@pytest.mark.nats
def test_the_registry_sees_every_agent_up(leaf):
    r = leaf.scrapes["registry"]
    for capability in CAPABILITIES:
        assert value(r, "cim_registry_agents", capability=capability, state="up") == 1, capability
    # A record's body names any capability it likes; the label is one this version knows.
    assert value(r, "cim_registry_agents", capability="other", state="up") == 1
    labels = {s.labels["capability"] for s in r["cim_registry_agents"].samples}
    assert labels <= {*CAPABILITIES, "ui", "other"}, labels


# --- each agent exports only its own ------------------------------------------------------


@pytest.mark.nats
def test_each_agent_exports_only_its_own_metrics(leaf):
    for capability, families in leaf.scrapes.items():
        foreign = sorted(name for name in families
                         if name.startswith("cim_") and not name.startswith(SHARED + OWN[capability]))
        assert foreign == [], f"the {capability} agent exports {foreign}"
        assert any(name.startswith(OWN[capability]) for name in families), capability
    # The pipeline agent imports the hub's connector plugins, and still serves none of the hub's series.
    assert not [n for n in leaf.scrapes["pipeline"] if n.startswith("cim_hub_")]
    assert not [n for n in leaf.scrapes["hub"] if n.startswith("cim_pipeline_")]


@pytest.mark.nats
def test_the_hub_serves_the_same_metrics_on_its_http_port(leaf):
    assert set(leaf.hub_http_scrape) == set(leaf.scrapes["hub"])


# --- the dashboard --------------------------------------------------------------------------


def _exprs(dashboard: dict) -> list[str]:
    def panels(items: list[dict]) -> Iterator[dict]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    return [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${" + variable["name"] + "}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for wanted in ("ingest", "events appended", "pipeline lag", "bytes per tier", "tier moves", "webhook",
                   "hub requests by status", "errors"):
        assert wanted in titles, wanted


@pytest.mark.nats
def test_every_metric_the_dashboard_queries_exists_on_a_running_leaf(leaf):
    names = set()
    for expr in _exprs(json.loads(DASHBOARD.read_text())):
        names |= set(re.findall(r"\b(?:cim|process)_[a-z0-9_]+\b", expr))
    assert len(names) > 15
    served = set().union(*(exported(f) for f in leaf.scrapes.values()))
    assert sorted(names - served) == []


# What several agents read from one place and report alike (the event stream, the location
# index, a consumer, the registry's view): summed, a second agent would double it.
READ_ALIKE = ("cim_units_stored_total", "cim_units_stored_bytes_total", "cim_events_appended_total",
              "cim_event_stream_messages", "cim_event_stream_bytes", "cim_tier_units", "cim_tier_live_units",
              "cim_tier_stored_bytes", "cim_tier_pending_moves", "cim_pipeline_lag_events", "cim_hub_webhook_lag_events",
              "cim_registry_agents")


def test_the_dashboard_takes_max_of_what_agents_report_alike_and_counts_each_unit_once():
    dashboard = json.loads(DASHBOARD.read_text())
    for expr in _exprs(dashboard):
        for name in READ_ALIKE:
            summed = rf"\bsum(?:\s+by\s*\([^)]*\))?\s*\(\s*(?:(?:rate|increase)\s*\(\s*)?{name}\b"
            assert not re.search(summed, expr), f"{expr} sums {name}, which every agent of its kind reports alike"
    [held] = [p for p in dashboard["panels"] if p.get("title") == "Units held"]
    # A unit in two tiers (the restored one here, any unit with a backup) is one unit.
    assert [t["expr"] for t in held["targets"]] == ["max(cim_tier_live_units)"]
    assert "summed" in dashboard["description"] and "max" in dashboard["description"]


async def test_units_stored_goes_on_counting_after_the_event_stream_is_made_again(nats_server, nc, agent_process, tmp_path):
    """`cim restore` on a wiped leaf makes CIM_EVENTS again, its sequences starting over: the
    store agent's count must follow the new stream, not wait past its old position."""
    from cim.provision.apply import provision
    from cim.provision.spec import ProvisionSpec
    from cim.store.unit_store import UnitStore

    await provision(nc, ProvisionSpec())
    units = UnitStore(nc)
    for i in range(3):  # before this store agent started: counted by another process, not this one
        await units.put_bytes(f"a unit of an earlier run, #{i}".encode())
    port = free_ports(1)[0]
    store = await agent_process("store", {"nats": {"servers": [nats_server.url]}, "metrics": {"port": port}}).ready(nc)
    for i in range(5):
        await units.put_bytes(f"a unit before the restore, #{i}".encode())
    stored = await until_scraped(port, lambda f: value(f, "cim_units_stored_total") == 5, "five units counted")
    assert value(stored, "cim_units_stored_total") == 5, store.log()

    await nc.jetstream().delete_stream("CIM_EVENTS")
    await provision(nc, ProvisionSpec())  # made again, empty: its next unit is sequence 1
    await units.put_bytes(b"the first unit after the restore")
    stored = await until_scraped(port, lambda f: value(f, "cim_units_stored_total") == 6, "the new unit counted")
    assert value(stored, "cim_units_stored_total") == 6, store.log()


async def test_units_stored_never_counts_the_whole_history_when_the_stream_does_not_answer_at_start(
        secured_nats, agent_process, tmp_path):
    """A store agent that cannot read CIM_EVENTS when it starts (a leader election, a slow
    server: here its permission is missing until an operator fixes it and reloads) waits to
    place its counter at the stream's end; counting from the first event would add every unit
    ever stored at once, a spike in every rate()."""
    import signal

    from cim.provision.apply import provision
    from cim.provision.spec import ProvisionSpec
    from cim.store.unit_store import UnitStore

    server, seeds = secured_nats("store")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    [store_user] = [u for u in server.extra_config["accounts"]["CIM"]["users"] if "permissions" in u]
    info = "$JS.API.STREAM.INFO.CIM_EVENTS"

    async def reload(what: str) -> None:
        reloads = server.log_path.read_text().count("Reloaded server configuration")
        server.prepare()  # writes the config again
        os.kill(server.pid, signal.SIGHUP)
        await async_wait_until(lambda: server.log_path.read_text().count("Reloaded server configuration") > reloads,
                               30, what=what)

    try:
        await provision(admin, ProvisionSpec())
        units = UnitStore(admin)
        for i in range(4):  # stored before this agent started
            await units.put_bytes(f"a unit of an earlier run, #{i}".encode())
        store_user["permissions"]["publish"]["deny"] = [info]
        await reload("the server to deny the store agent STREAM.INFO")
        port = free_ports(1)[0]
        store = await agent_process("store", {"nats": {"servers": [server.url], "nkey_seed_file": str(seeds["store"])},
                                              "metrics": {"port": port}}).ready(admin)
        await async_wait_until(lambda: "counting stored units once CIM_EVENTS answers" in store.log(), 30,
                               what="the store agent to find CIM_EVENTS unreadable")
        del store_user["permissions"]["publish"]["deny"]
        await reload("the server to allow STREAM.INFO again")
        await async_wait_until(lambda: "projection stored-units caught up" in store.log(), 60,
                               what="the counter to be placed at the stream's end")
        for i in range(2):
            await units.put_bytes(f"a unit after the fix, #{i}".encode())
        stored = await until_scraped(port, lambda f: value(f, "cim_units_stored_total") == 2, "the two new units counted")
        assert value(stored, "cim_units_stored_total") == 2, store.log()
    finally:
        await admin.close()


@pytest.mark.nats
def test_metric_names_follow_prometheus_conventions(leaf):
    for capability, families in leaf.scrapes.items():
        for f in families.values():
            if not f.name.startswith("cim_"):
                continue
            assert re.fullmatch(r"cim_[a-z0-9_]+", f.name), f.name
            assert f.documentation, f.name
            if f.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name
            else:
                assert not f.name.endswith("_total"), f"{capability}: {f.name} is a {f.type} named like a counter"


# --- metrics read at scrape time ----------------------------------------------------------


async def test_a_sample_is_read_on_the_agent_loop_and_left_out_when_it_fails_or_is_asked_from_the_loop():
    from prometheus_client.metrics_core import GaugeMetricFamily

    from cim.metrics import Sampled

    async def sample() -> list[Metric]:
        g = GaugeMetricFamily("cim_test_sampled", "a sampled value")
        g.add_metric([], 7)
        return [g]

    async def failing() -> list[Metric]:
        raise RuntimeError("the server is away")

    loop = asyncio.get_running_loop()
    # From the exporter's thread: run on the loop, answered.
    [family] = await asyncio.to_thread(lambda: list(Sampled("test", sample, loop).collect()))
    assert family.name == "cim_test_sampled" and family.samples[0].value == 7
    # A failing read is left out of the scrape; the scrape itself still answers.
    assert await asyncio.to_thread(lambda: list(Sampled("test", failing, loop).collect())) == []
    # Asked from the loop's own thread it cannot wait for the loop: left out, not a deadlock.
    assert list(Sampled("test", sample, loop).collect()) == []


async def test_concurrent_scrapes_share_one_reading_of_the_server(nc):
    """Fifty scrapes at once from fifty threads: NATS is asked once, and every scrape gets
    that one reading (a `$JS.API.STREAM.INFO` request counted on the server's subject)."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client.metrics_core import GaugeMetricFamily

    from cim.metrics import Sampled
    from cim.provision.apply import provision
    from cim.provision.spec import ProvisionSpec

    await provision(nc, ProvisionSpec())
    asked: list[str] = []

    async def count_request(m) -> None:
        asked.append(m.subject)

    monitor = await nc.subscribe("$JS.API.STREAM.INFO.CIM_EVENTS", cb=count_request)

    async def sample() -> list[Metric]:
        info = await nc.jetstream().stream_info("CIM_EVENTS")
        g = GaugeMetricFamily("cim_test_events", "events in the stream")
        g.add_metric([], info.state.messages)
        return [g]

    loop = asyncio.get_running_loop()
    sampled = Sampled("the event stream", sample, loop, cache_for=3600)  # one reading for the whole test
    with ThreadPoolExecutor(50) as threads:
        scrapes = await asyncio.gather(*(loop.run_in_executor(threads, lambda: list(sampled.collect()))
                                         for _ in range(50)))
    await nc.flush()
    await monitor.unsubscribe()
    assert len(asked) == 1
    assert all(len(s) == 1 and s[0].name == "cim_test_events" for s in scrapes)


async def test_a_flood_of_scrapes_on_the_hub_port_asks_nats_a_few_times_not_once_each(nats_server, nc, tmp_path):
    from cim.hub.config import CONSUMER
    from cim.ports import free_port
    from cim.provision.apply import provision
    from cim.provision.spec import ProvisionSpec

    await provision(nc, ProvisionSpec())
    (tmp_path / "secret").write_bytes(SECRET)
    hub = Hub(nats_server.url, tmp_path, webhooks=[{
        "name": "rx", "url": f"http://127.0.0.1:{free_port()}/hook", "secret_file": str(tmp_path / "secret")}])
    asked: list[str] = []

    async def count_request(m) -> None:
        asked.append(m.subject)

    monitor = await nc.subscribe(f"$JS.API.CONSUMER.INFO.CIM_EVENTS.{CONSUMER}", cb=count_request)
    try:
        await asyncio.to_thread(hub.start)

        async def scrape(http: ClientSession) -> str:
            async with http.get(f"{hub.url}/metrics") as r:
                assert r.status == 200
                return await r.text()

        async with ClientSession() as http:
            pages = await asyncio.gather(*(scrape(http) for _ in range(200)))
        await nc.flush()
        assert all("cim_hub_webhook_lag_events" in page for page in pages)
        # One reading serves the scrapes of the next few seconds; 200 of them take far less
        # than the dozens of such periods it would need to come near one request each.
        assert 1 <= len(asked) <= 5, len(asked)
    finally:
        await monitor.unsubscribe()
        hub.stop()


async def test_a_closed_hub_api_leaves_no_metrics_thread_behind(nc, tmp_path):
    """The thread /metrics scrapes run on ends when the hub stops (Agent.stop closes its API),
    so a process that runs hubs one after another does not gather them."""
    import threading

    from prometheus_client import CollectorRegistry

    from cim.hub.http_api import HubApi
    from cim.hub.tokens import Tokens
    from cim.store.unit_store import UnitStore
    from support.hub_support import write_tokens

    def metrics_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("hub-metrics")]

    assert metrics_threads() == []
    api = HubApi(UnitStore(nc), Tokens(write_tokens(tmp_path / "tokens.json")), max_body_size=1024,
                 metrics=CollectorRegistry())
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with ClientSession() as http, http.get(f"http://127.0.0.1:{runner.addresses[0][1]}/metrics") as r:
            assert r.status == 200
        assert len(metrics_threads()) == 1
    finally:
        await runner.cleanup()
        api.close()
    await async_wait_until(lambda: not metrics_threads(), timeout=10, what="the hub-metrics thread to end")
