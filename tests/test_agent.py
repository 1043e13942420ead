"""`cim agent run store`: a real agent process, found and used over NATS."""

import base64
import json
import signal
import subprocess
import sys
import urllib.request

import nats
import pytest

from cim import cid
from cim.nats.discovery import discover
from cim.ports import free_port
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from support.waiting import async_wait_until


@pytest.fixture
async def store_agent(nats_server, tmp_path):
    admin = await nats.connect(nats_server.url)
    await provision(admin, ProvisionSpec())
    metrics_port = free_port()
    config = tmp_path / "store.json"
    config.write_text(json.dumps({
        "capability": "store", "name": "cim-store", "nats": {"servers": [nats_server.url]},
        "metrics": {"port": metrics_port}, "max_unit_size": 100_000,
    }))
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "store", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        await async_wait_until(lambda: _answers(admin), 60, what="the store agent to answer $SRV.PING")
        yield proc, admin, metrics_port, tmp_path / "agent.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        await admin.close()


async def _answers(nc) -> bool:
    return bool(await discover(nc, "cim-store", wait=0.3))


async def request(nc, endpoint, body):
    msg = await nc.request(f"cim.store.{endpoint}", json.dumps(body).encode(), timeout=5)
    return msg


async def test_the_agent_answers_the_standard_micro_verbs(store_agent):
    _, nc, _, _ = store_agent
    ping = json.loads((await nc.request("$SRV.PING.cim-store", b"", timeout=10)).data)
    assert ping["name"] == "cim-store"
    info = json.loads((await nc.request("$SRV.INFO.cim-store", b"", timeout=10)).data)
    assert info["metadata"]["capability"] == "store"
    assert {e["subject"] for e in info["endpoints"]} == {"cim.store.put", "cim.store.get", "cim.store.show", "cim.store.list"}
    await request(nc, "show", {"cid": "nope"})
    stats = json.loads((await nc.request("$SRV.STATS.cim-store", b"", timeout=10)).data)
    show = next(e for e in stats["endpoints"] if e["name"] == "show")
    assert show["num_requests"] == 1 and show["num_errors"] == 1


async def test_put_get_show_list_over_nats(store_agent):
    _, nc, _, _ = store_agent
    data = b"inline unit"
    reply = json.loads((await request(nc, "put", {"content_b64": base64.b64encode(data).decode(), "title": "t",
                                                   "labels": ["x"], "media_type": "text/plain"})).data)
    c = reply["unit"]["cid"]
    assert c == cid.compute(data) and reply["created"]
    assert (await request(nc, "get", {"cid": c})).data == data
    shown = json.loads((await request(nc, "show", {"cid": c})).data)
    assert shown["unit"]["title"] == "t" and shown["unit"]["labels"] == ["x"]
    listed = json.loads((await request(nc, "list", {"label": "x"})).data)
    assert [u["cid"] for u in listed["units"]] == [c]
    # The event names the agent that produced it (provenance).
    js = nc.jetstream()
    msg = await js.get_last_msg("CIM_EVENTS", f"cim.evt.unit.{c}.created")
    assert msg.headers["cim-agent"] == "cim-store" and msg.headers["cim-agent-version"]


@pytest.mark.parametrize(
    "endpoint, body, code, says",
    [
        ("put", {"content_b64": "***"}, "400", "base64"),
        ("put", {"content_b64": base64.b64encode(b"x" * 100_001).decode()}, "413", "max_unit_size"),
        ("put", {"title": "no content"}, "400", "content_b64"),
        ("show", {"cid": cid.compute(b"absent")}, "404", "no unit"),
        ("show", {"cid": "bafy"}, "400", "cid"),
    ],
)
async def test_bad_requests_get_error_replies_and_store_nothing(store_agent, endpoint, body, code, says):
    _, nc, _, _ = store_agent
    reply = await request(nc, endpoint, body)
    assert reply.headers["Nats-Service-Error-Code"] == code
    assert says in reply.headers["Nats-Service-Error"]
    info = await nc.jetstream().stream_info("CIM_EVENTS")
    assert info.state.messages == 0


async def test_metrics_are_served(store_agent):
    _, nc, port, _ = store_agent
    await request(nc, "list", {})
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'cim_requests_total{endpoint="list",outcome="ok"} 1.0' in text
    assert "cim_nats_connected 1.0" in text


async def test_sigterm_drains_and_exits_cleanly(store_agent):
    proc, nc, _, log = store_agent
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert "stopped" in log.read_text()
    assert not await discover(nc, "cim-store", wait=0.3)


def test_a_bad_config_stops_the_agent_before_it_connects(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"capability": "store", "max_unit_size": "big"}))
    r = subprocess.run([sys.executable, "-m", "cim", "agent", "run", "store", "--config", str(config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "max_unit_size" in r.stderr


async def test_an_error_crosses_the_agent_boundary_as_the_same_class_with_the_same_message(store_agent):
    """One typed call (cim.nats.rpc.call) over the store's declared endpoints: the reply is
    the declared model, and an error the agent raised arrives as its class, with its fields."""
    from cim.errors import InvalidInput, UnitNotFound, UnitTooLarge
    from cim.nats.rpc import call
    from cim.store import api

    _, nc, _, _ = store_agent
    data = b"typed call"
    put = await call(nc, api.PUT, api.PutRequest(content_b64=base64.b64encode(data).decode(), title="typed"))
    assert isinstance(put, api.PutReply) and put.unit.cid == cid.compute(data) and put.created
    assert await call(nc, api.GET, api.CidRequest(cid=put.unit.cid)) == data
    missing = cid.compute(b"never stored")
    with pytest.raises(UnitNotFound) as err:
        await call(nc, api.SHOW, api.CidRequest(cid=missing))
    assert err.value.cid == missing and str(err.value) == str(UnitNotFound(missing))
    with pytest.raises(UnitTooLarge, match="100000"):
        await call(nc, api.PUT, api.PutRequest(content_b64=base64.b64encode(b"x" * 100_001).decode()))
    # A bad request is refused before it leaves, with the field named, as the agent would.
    with pytest.raises(InvalidInput) as bad:
        await call(nc, api.LIST, {"limit": 0})
    assert bad.value.field == "limit"


async def test_an_agent_answers_ping_only_once_every_endpoint_is_served(nats_server):
    """`$SRV.PING` and `$SRV.INFO` answering is what `cim up`, `cim status` and the registry
    take for "ready": by then each endpoint must be subscribed, or the first request sent
    after the first PING answer finds no responder."""
    from cim.capability import AgentConfig
    from cim.runtime import EndpointSpec, serve

    nc = await nats.connect(nats_server.url)
    subscribed: list[str] = []
    subscribe = nc.subscribe

    async def recording(subject, *args, **kwargs):  # the real subscribe, in the order it is asked
        subscribed.append(subject)
        return await subscribe(subject, *args, **kwargs)

    nc.subscribe = recording

    async def echo(body: bytes) -> bytes:
        return body

    try:
        config = AgentConfig(capability="store", name="cim-store-order")
        specs = [EndpointSpec(name, echo, bytes, "echo") for name in ("put", "get")]
        service = await serve(nc, config, specs, {})
        first_control = next(i for i, s in enumerate(subscribed) if s.startswith("$SRV."))
        assert set(subscribed[:first_control]) == {"cim.store.put", "cim.store.get"}, subscribed
        assert (await nc.request("cim.store.get", b"hello", timeout=5)).data == b"hello"
        info = json.loads((await nc.request("$SRV.INFO.cim-store-order", b"", timeout=5)).data)
        assert [e["subject"] for e in info["endpoints"]] == ["cim.store.put", "cim.store.get"]
        await service.stop()
    finally:
        await nc.close()
