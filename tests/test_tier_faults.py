"""The tiers never lose a byte: the tier agent killed mid-migration, the S3 tier stopped
mid-migration, and bad settings that must say what to fix."""

from __future__ import annotations

import asyncio
import json
import random

from cim.ports import free_port
from cim.store.content import ContentStore
from cim.store.unit_store import UnitStore
from cim.tier.fetch import fetch
from support.tierkit import TierAgent, count_events, mixed_sizes, provisioned, s3_tier
from support.waiting import async_wait_until


async def read_all(store: UnitStore, cid: str) -> bytes:
    return b"".join([c async for c in store.get(cid)])


async def test_killing_the_agent_mid_migration_loses_nothing_and_leaves_no_orphans(nats_server, s3_server, tmp_path, cli):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [warm], "policies": [{"name": "all", "to": "warm"}], "migrate_interval": 0.2, "concurrency": 2,
    })
    try:
        store = UnitStore(nc, cold=fetch)
        payloads = mixed_sizes(60, big=3, seed=11)
        cids = [(await store.put_bytes(p)).unit.cid for p in payloads]
        rnd = random.Random()
        for _ in range(5):
            agent.start()
            # A random point of the migration: after some more moves were recorded, or at once.
            target = min(len(cids), await count_events(nc, "cim.evt.unit.*.moving") + rnd.randint(0, 12))
            await async_wait_until(
                lambda target=target: _at_least(nc, "cim.evt.unit.*.moving", target), 60, what=f"{target} moves started"
            )
            agent.kill()
        agent.start()
        await agent.ready(nc)
        await async_wait_until(lambda: _at_least(nc, "cim.evt.unit.*.located", len(cids)), 120,
                               what="every unit located in warm")
        status = json.loads(cli("--json", "tier", "status").stdout)
        assert status["pending"] == 0
        assert {t["name"]: t["units"] for t in status["tiers"]} == {"hot": 0, "warm": len(cids)}
        content = ContentStore(nc)
        await async_wait_until(lambda: _none_hot(content, cids), 30, what="the hot copies to be deleted")
        for cid, data in zip(cids, payloads, strict=True):
            assert await read_all(store, cid) == data
        verify = json.loads(cli("--json", "tier", "verify", check=False).stdout)
        assert verify["clean"], verify
        assert verify["checked"] == len(cids)
    finally:
        agent.stop()
        await nc.close()


async def _at_least(nc, subject: str, n: int) -> bool:
    return await count_events(nc, subject) >= n


async def _none_hot(content: ContentStore, cids: list[str]) -> bool:
    for c in cids:
        if await content.has(c):
            return False
    return True


async def test_an_s3_outage_mid_migration_deletes_nothing_and_migration_resumes(nats_server, s3_server, tmp_path, cli):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [warm], "policies": [{"name": "all", "to": "warm"}], "migrate_interval": 0.3, "concurrency": 1,
        "read_retry_for": 1,
    })
    try:
        store = UnitStore(nc, cold=fetch)
        payloads = [bytes([i]) * 200_000 for i in range(40)]
        cids = [(await store.put_bytes(p)).unit.cid for p in payloads]
        agent.start()
        await async_wait_until(lambda: _at_least(nc, "cim.evt.unit.*.located", 3), 60, what="some units moved")
        s3_server.stop()
        content = ContentStore(nc)
        # Every unit the index does not place in warm still has its hot copy.
        located = await count_events(nc, "cim.evt.unit.*.located")
        await async_wait_until(lambda: _errors_reported(cli), 30, what="the outage in `cim tier status`")
        assert await count_events(nc, "cim.evt.unit.*.located") < len(cids)
        for cid, data in zip(cids, payloads, strict=True):
            view = await store.show(cid)
            if not any(e.type == "unit.located" for e in view.events):
                assert await content.has(cid), f"{cid} lost its hot copy during the outage"
                assert await read_all(store, cid) == data
        in_warm = [c for c in cids if not await content.has(c)][0]  # noqa: RUF015 - an async comprehension
        r = cli("units", "get", in_warm, check=False)
        assert r.returncode == 1 and "cannot be read now" in r.stderr and "Nothing is lost" in r.stderr
        assert located >= 3
        s3_server.start()
        await async_wait_until(lambda: _at_least(nc, "cim.evt.unit.*.located", len(cids)), 120,
                               what="the migration to resume and finish")
        await async_wait_until(lambda: _none_hot(content, cids), 30, what="the hot copies to be deleted")
        assert cli("units", "get", in_warm).stdout.encode("latin-1") == payloads[cids.index(in_warm)]
        for cid, data in zip(cids, payloads, strict=True):
            assert await read_all(store, cid) == data
    finally:
        agent.stop()
        await nc.close()


async def test_a_restore_while_the_s3_tier_is_down_fails_cleanly_and_works_once_it_is_back(nats_server, s3_server,
                                                                                          tmp_path, cli):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [warm], "policies": [{"name": "all", "to": "warm"}], "migrate_interval": 3600, "read_retry_for": 1,
    })
    try:
        store, content = UnitStore(nc, cold=fetch), ContentStore(nc)
        data = b"bring me back to the hot tier " * 5000
        cid = (await store.put_bytes(data)).unit.cid
        agent.start()
        await agent.ready(nc)
        cli("tier", "migrate")
        assert not await content.has(cid)

        s3_server.stop()
        r = cli("tier", "restore", cid, check=False)
        assert r.returncode == 1, r.stdout
        assert "unreachable" in r.stderr and "the data is not lost" in r.stderr, r.stderr
        assert not await content.has(cid)
        status = json.loads(cli("--json", "tier", "status").stdout)
        assert {t["name"]: t["units"] for t in status["tiers"]} == {"hot": 0, "warm": 1}

        s3_server.start()

        def restored() -> bool:
            return cli("tier", "restore", cid, check=False).returncode == 0

        from cim.embedded.procs import wait_until
        await asyncio.to_thread(wait_until, restored, 60, 0.5, "the restore to work once S3 is back")
        assert await content.has(cid) and await read_all(store, cid) == data
        status = json.loads(cli("--json", "tier", "status").stdout)
        assert {t["name"]: t["units"] for t in status["tiers"]} == {"hot": 1, "warm": 1}
        assert status["pending"] == 0
        assert "clean" in cli("tier", "verify").stdout
    finally:
        agent.stop()
        await nc.close()


async def _errors_reported(cli) -> bool:
    status = json.loads(cli("--json", "tier", "status").stdout)
    return any("unreachable" in e["error"] for e in status["errors"])


def test_an_unknown_tier_url_scheme_is_refused_with_the_schemes_that_work(tmp_path, cli):
    config = tmp_path / "tier.json"
    config.write_text(json.dumps({"capability": "tier", "tiers": [{"name": "warm", "url": "ftp://host/x"}]}))
    r = cli("config", "check", config, check=False)
    assert r.returncode == 1
    assert "unknown scheme 'ftp'" in r.stderr and "s3://bucket/prefix" in r.stderr


def test_a_missing_credentials_file_stops_the_agent_and_names_the_file(nats_server, tmp_path, cli):
    tier = {"name": "warm", "url": "s3://cim-warm/units", "endpoint": "http://127.0.0.1:9", "credentials_file": str(tmp_path / "nope")}
    config = tmp_path / "tier.json"
    config.write_text(json.dumps({"capability": "tier", "nats": {"servers": [nats_server.url]}, "tiers": [tier]}))
    r = cli("agent", "run", "tier", "--config", config, check=False, timeout=30)
    assert r.returncode == 1
    assert f"{tmp_path / 'nope'} does not exist" in r.stderr and "AWS_ACCESS_KEY_ID" in r.stderr


def test_an_unreachable_endpoint_says_to_check_the_server(nats_server, tmp_path, cli):
    creds = tmp_path / "archive.creds"
    creds.write_text("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n")
    r = cli("restore", "--from", "s3://cim-archive/backup", "--endpoint", f"http://127.0.0.1:{free_port()}",
            "--credentials-file", creds, check=False, timeout=60)
    assert r.returncode == 1
    assert "is unreachable" in r.stderr and "check that the S3 server runs and the endpoint is right" in r.stderr
    r = cli("restore", "--from", "gopher://x/y", check=False)
    assert r.returncode == 1 and "unknown scheme 'gopher'" in r.stderr


async def test_a_unit_whose_only_copy_is_gone_is_not_said_to_be_safe(nats_server, tmp_path, cli):
    """An outage says "Nothing is lost"; a tier that answers and has no copy is a loss, and
    the error says so and what can still bring it back."""
    nc = await provisioned(nats_server.url)
    cold = tmp_path / "cold"
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [{"name": "cold", "url": f"file://{cold}"}], "policies": [{"name": "all", "to": "cold"}],
        "migrate_interval": 0.3, "read_retry_for": 1,
    })
    try:
        cid = (await UnitStore(nc, cold=fetch).put_bytes(b"the only copy, soon gone" * 100)).unit.cid
        agent.start()
        content = ContentStore(nc)
        await async_wait_until(lambda: _none_hot(content, [cid]), 60, what="the unit to move to the file tier")
        copies = [f for f in cold.rglob("*") if f.is_file() and cid in f.name]
        assert copies, f"no file of {cid} under {cold}"
        for f in copies:
            f.unlink()
        r = cli("units", "get", cid, check=False)
        assert r.returncode == 1
        assert "has no copy in any tier" in r.stderr and "cim tier verify" in r.stderr
        assert "Nothing is lost" not in r.stderr
    finally:
        agent.stop()
        await nc.close()
