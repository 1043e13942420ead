"""Pytest twins of the `leaf` and `security` VM tests: a nats-server configured the way
modules/nats.nix renders it (an account, one nkey user per agent with exactly the
permissions capabilities.json declares, an unrestricted admin), the store agent running
under its own restricted identity, and the operator using `cim` with the admin seed."""

import json
import subprocess
import sys

import nats
import pytest

from cim.cli.keys import new_user_seed, public_key_of
from cim.embedded.procs import wait_until
from cim.nats.discovery import discover
from cim.permissions import inbox_prefix
from support.waiting import async_wait_until


def seed_file(dir, name):
    seed = new_user_seed()
    path = dir / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return path, public_key_of(seed)


@pytest.fixture
def secured(secured_nats, tmp_path):
    server, seeds = secured_nats("store")
    return server, seeds["admin"], seeds["store"], tmp_path


def run_store_agent(server, store_seed, tmp_path):
    config = tmp_path / "store.json"
    config.write_text(json.dumps({"capability": "store", "nats": {"servers": [server.url], "nkey_seed_file": str(store_seed)}}))
    log = (tmp_path / "store.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "store", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT), tmp_path / "store.log"


def test_leaf_twin_put_get_and_status_through_a_secured_server(secured, cli):
    server, admin_seed, store_seed, tmp_path = secured
    admin = {"CIM_NKEY": str(admin_seed)}
    cli("provision", env=admin, server=server.url)
    agent, log = run_store_agent(server, store_seed, tmp_path)
    try:

        def store_listed() -> bool:  # the one agent running, and nothing else
            r = cli("--json", "status", env=admin, server=server.url, check=False)
            return r.returncode == 0 and [a["capability"] for a in json.loads(r.stdout)["agents"]] == ["store"]

        wait_until(store_listed, 30, what="cim status to list the store agent")
        f = tmp_path / "hostname"
        f.write_text("leaf\n")
        c = cli("units", "put", f, env=admin, server=server.url).stdout.split()[0]
        assert cli("units", "get", c, env=admin, server=server.url).stdout == "leaf\n"
        assert agent.poll() is None, log.read_text()
    finally:
        agent.terminate()
        agent.wait(15)


async def test_the_store_agent_works_within_its_own_permissions(secured):
    server, admin_seed, store_seed, tmp_path = secured
    admin = await nats.connect(server.url, nkeys_seed=str(admin_seed))
    from cim.provision.apply import provision
    from cim.provision.spec import ProvisionSpec

    await provision(admin, ProvisionSpec())
    agent, log = run_store_agent(server, store_seed, tmp_path)
    try:
        async def up():
            return bool(await discover(admin, "cim-store", wait=0.3))
        await async_wait_until(up, 30, what="the store agent under its own identity")
        import base64

        body = {"content_b64": base64.b64encode(b"made by the store agent").decode(), "title": "t"}
        reply = await admin.request("cim.store.put", json.dumps(body).encode(), timeout=10)
        assert not reply.headers or "Nats-Service-Error" not in reply.headers, (reply.headers, log.read_text())
        c = json.loads(reply.data)["unit"]["cid"]
        got = await admin.request("cim.store.get", json.dumps({"cid": c}).encode(), timeout=10)
        assert got.data == b"made by the store agent"
        listed = json.loads((await admin.request("cim.store.list", b"{}", timeout=10)).data)
        assert [u["cid"] for u in listed["units"]] == [c]
    finally:
        agent.terminate()
        agent.wait(15)
        await admin.close()


async def test_security_twin_the_store_credential_cannot_purge_or_delete_the_event_stream(secured):
    server, admin_seed, store_seed, _ = secured
    admin = await nats.connect(server.url, nkeys_seed=str(admin_seed))
    violations: list[str] = []

    async def on_error(err):
        violations.append(str(err).lower())

    as_store = await nats.connect(server.url, nkeys_seed=str(store_seed), error_cb=on_error,
                                   inbox_prefix=inbox_prefix("store"))
    try:
        from cim.provision.apply import provision
        from cim.provision.spec import ProvisionSpec
        from cim.store.unit_store import UnitStore

        await provision(admin, ProvisionSpec())
        await UnitStore(admin).put_bytes(b"something to keep")
        before = (await admin.jetstream().stream_info("CIM_EVENTS")).state.messages
        assert before == 1
        for subject in ("$JS.API.STREAM.PURGE.CIM_EVENTS", "$JS.API.STREAM.DELETE.CIM_EVENTS",
                        "$JS.API.STREAM.DELETE.OBJ_CIM_CONTENT", "$JS.API.STREAM.UPDATE.CIM_EVENTS"):
            with pytest.raises(nats.errors.TimeoutError):  # refused by the server: no reply comes
                await as_store.request(subject, b"{}", timeout=1)
            assert any(f'permissions violation for publish to "{subject.lower()}"' in v for v in violations), violations
        # It may do its own work: read the stream info it needs.
        info = json.loads((await as_store.request("$JS.API.STREAM.INFO.CIM_EVENTS", b"", timeout=2)).data)
        assert info["state"]["messages"] == before
        assert (await admin.jetstream().stream_info("CIM_EVENTS")).state.messages == before
        assert (await admin.jetstream().stream_info("OBJ_CIM_CONTENT")).state.messages > 0
    finally:
        await as_store.close()
        await admin.close()
