"""The tier agent under its own restricted nkey identity (the permissions capabilities.json
declares, as modules/nats.nix renders them): it migrates, serves reads, records access,
verifies and exports backups without a single permissions violation."""

from __future__ import annotations

import json

import nats

from cim.embedded.nats_server import NatsServer
from cim.nats.rpc import call
from cim.permissions import nats_permissions
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store import api as store_api
from cim.store.unit_store import UnitStore
from cim.tier.fetch import fetch
from support.tierkit import TierAgent, s3_tier
from support.waiting import async_wait_until
from test_secured_leaf import seed_file


async def test_the_tier_agent_works_within_its_own_permissions(s3_server, tmp_path, cli, agent_process):
    admin_seed, admin_pub = seed_file(tmp_path, "admin")
    tier_seed, tier_pub = seed_file(tmp_path, "tier")
    store_seed, store_pub = seed_file(tmp_path, "store")
    server = NatsServer(store_dir=tmp_path / "nats", extra_config={
        "accounts": {"CIM": {"jetstream": "enabled", "users": [
            {"nkey": tier_pub, "permissions": nats_permissions("tier")},
            {"nkey": store_pub, "permissions": nats_permissions("store")}, {"nkey": admin_pub}]}},
    })
    server.start()
    admin_env = {"CIM_NKEY": str(admin_seed)}
    agent = TierAgent(tmp_path, server.url, {
        "tiers": [s3_tier(s3_server, "warm", tmp_path), {"name": "archive", "url": f"file://{tmp_path / 'archive'}"}],
        "policies": [{"name": "all", "to": "warm"}], "migrate_interval": 3600,
        "backup": {"tier": "archive", "interval": 0.3},
    }, nkey=tier_seed)
    admin = await nats.connect(server.url, nkeys_seed=str(admin_seed))
    try:
        await provision(admin, ProvisionSpec())
        store = UnitStore(admin, cold=fetch)
        # One chunk each, and one of three chunks (read in one batched direct get).
        payloads = [bytes([i]) * (300_000 if i == 0 else 50_000) + b"x" for i in range(5)]
        cids = [(await store.put_bytes(p)).unit.cid for p in payloads]
        agent.start()
        await agent.ready(admin)
        cli("tier", "migrate", env=admin_env, server=server.url)
        for c, p in zip(cids, payloads, strict=True):
            assert b"".join([x async for x in store.get(c)]) == p
        # The store agent's own `get` reads a cold unit through the tier agent too, under its
        # own permissions (it could not ask cim.tier.fetch before).
        store_agent = agent_process("store", {"nats": {"servers": [server.url], "nkey_seed_file": str(store_seed)}})
        await store_agent.ready(admin)
        assert await call(admin, store_api.GET, store_api.CidRequest(cid=cids[1])) == payloads[1]
        assert "violation" not in store_agent.log().lower(), store_agent.log()
        cli("tier", "restore", cids[0], env=admin_env, server=server.url)

        async def backed_up() -> bool:
            s = json.loads(cli("--json", "backup", "status", env=admin_env, server=server.url).stdout)
            return s["lag_events"] == 0 and s["units_archived"] == 5

        await async_wait_until(backed_up, 60, what="the backup to catch up")
        assert json.loads(cli("--json", "tier", "verify", env=admin_env, server=server.url).stdout)["clean"]
        status = json.loads(cli("--json", "tier", "status", env=admin_env, server=server.url).stdout)
        assert status["errors"] == [], status["errors"]
        assert "violation" not in agent.log.read_text().lower(), agent.log.read_text()
    finally:
        agent.stop()
        await admin.close()
        server.stop()
