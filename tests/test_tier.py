"""The tier capability against real servers: nats-server and two `weed mini` S3 endpoints
standing in for MinIO (warm) and Wasabi (archive). The agent runs as a real process; the
operator's view is the `cim` command."""

from __future__ import annotations

import json

from cim.store.content import ContentStore
from cim.store.unit_store import UnitStore
from cim.tier.fetch import fetch
from support.tierkit import TierAgent, count_events, mixed_sizes, provisioned, s3_tier


async def read_all(store: UnitStore, cid: str) -> bytes:
    return b"".join([c async for c in store.get(cid)])

async def test_units_migrate_by_policy_and_read_back_by_cid(nats_server, s3_server, s3_server_2, tmp_path, cli):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    archive = s3_tier(s3_server_2, "archive", tmp_path)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [warm, archive],
        "policies": [
            {"name": "cold-labelled", "from": "hot", "to": "warm", "action": "move", "labels": ["cold"]},
            {"name": "big-to-archive", "from": "warm", "to": "archive", "action": "copy", "min_size": "5MiB"},
        ],
        "migrate_interval": 3600,
    })
    try:
        store = UnitStore(nc, cold=fetch)
        payloads = mixed_sizes(200, big=4)
        cids = []
        for i, data in enumerate(payloads):
            cids.append((await store.put_bytes(data, labels=["cold"] if i % 4 else ["hot"])).unit.cid)
        moved = [c for i, c in enumerate(cids) if i % 4]
        agent.start()
        await agent.ready(nc)
        out = json.loads(cli("--json", "tier", "migrate").stdout)
        assert not out["failed"]
        cli("tier", "migrate")  # the second policy sees what the first moved
        content = ContentStore(nc)
        for i, c in enumerate(cids):
            assert await content.has(c) == (i % 4 == 0), f"unit {i} in the hot tier: {await content.has(c)}"
            assert await read_all(store, c) == payloads[i]
        status = json.loads(cli("--json", "tier", "status").stdout)
        by_name = {t["name"]: t for t in status["tiers"]}
        assert by_name["warm"]["units"] == len(moved) and by_name["hot"]["units"] == 50
        assert by_name["archive"]["units"] == sum(1 for i in range(4) if i % 4)
        assert status["pending"] == 0 and status["errors"] == []
        big = cids[1]  # above the multipart threshold, read through the command like a user
        got = tmp_path / "big.out"
        cli("units", "get", big, "-o", got)
        assert got.read_bytes() == payloads[1]
        assert await count_events(nc, "cim.evt.unit.*.located") == len(moved) + 3
        assert "clean" in cli("tier", "verify").stdout
    finally:
        agent.stop()
        await nc.close()

async def test_a_corrupt_object_is_reported_and_never_read_as_wrong_bytes(nats_server, s3_server, tmp_path, cli):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [warm], "policies": [{"name": "all", "to": "warm"}], "migrate_interval": 3600, "read_retry_for": 1,
    })
    try:
        store = UnitStore(nc, cold=fetch)
        good = (await store.put_bytes(b"the original bytes " * 100)).unit.cid
        other = (await store.put_bytes(b"an untouched unit")).unit.cid
        agent.start()
        await agent.ready(nc)
        cli("tier", "migrate")
        s3_server.boto3_client().put_object(Bucket="cim-warm", Key=f"units/{good}", Body=b"THE original bytes " * 100)
        r = cli("tier", "verify", check=False)
        assert r.returncode == 2
        assert f"corrupt: warm {good}" in r.stdout and other not in r.stdout
        out = tmp_path / "copy"
        r = cli("units", "get", good, "-o", out, check=False)
        assert r.returncode == 1 and "does not match its CID" in r.stderr
        assert not out.exists()
        r = cli("units", "get", good, check=False)
        assert r.returncode == 1 and r.stdout.encode() != b"THE original bytes " * 100
        assert cli("units", "get", other).stdout == "an untouched unit"
    finally:
        agent.stop()
        await nc.close()
