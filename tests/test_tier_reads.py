"""Reads drive tiering: the `idle` policy moves what nobody reads (reads are reported by
`cim units get`), and `promote_on_read` brings a unit that is read back to the hot tier."""

from __future__ import annotations

import asyncio
import json

from cim.store.content import ContentStore
from cim.store.unit_store import UnitStore
from cim.tier.fetch import fetch
from support.tierkit import TierAgent, provisioned, s3_tier
from support.waiting import async_wait_until


def _units_per_tier(cli) -> dict[str, int]:
    status = json.loads(cli("--json", "tier", "status").stdout)
    return {t["name"]: t["units"] for t in status["tiers"]}


def _event_types(cli, cid: str) -> list[str]:
    return [e["type"] for e in json.loads(cli("--json", "units", "show", cid).stdout)["events"]]


async def test_an_idle_policy_moves_the_unit_nobody_reads_and_keeps_the_one_that_is_read(nats_server, s3_server, tmp_path, cli):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [warm], "policies": [{"name": "unread", "to": "warm", "idle": "6s"}], "migrate_interval": 0.3,
    })
    try:
        agent.start()
        await agent.ready(nc)  # it hears the reads from the start
        store = UnitStore(nc, cold=fetch)
        content = ContentStore(nc)
        read = (await store.put_bytes(b"read again and again", title="read")).unit.cid
        unread = (await store.put_bytes(b"nobody reads this", title="unread")).unit.cid

        async def unread_moved_while_the_other_is_read() -> bool:
            got = await asyncio.to_thread(cli, "units", "get", read)
            assert got.stdout == "read again and again"
            return not await content.has(unread)

        await async_wait_until(unread_moved_while_the_other_is_read, 90, interval=0.2, what="the unread unit to move")
        assert await content.has(read), "the unit that was read moved although it was not idle"
        assert _units_per_tier(cli) == {"hot": 1, "warm": 1}
        assert _event_types(cli, unread)[-2:] == ["unit.moving", "unit.located"]
        assert "unit.moving" not in _event_types(cli, read)
        assert cli("units", "get", unread).stdout == "nobody reads this"  # from warm, through the agent
    finally:
        agent.stop()
        await nc.close()


async def test_promote_on_read_brings_a_unit_read_from_s3_back_to_the_hot_tier(nats_server, s3_server, tmp_path, cli):
    nc = await provisioned(nats_server.url)
    warm = s3_tier(s3_server, "warm", tmp_path)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [warm], "policies": [{"name": "cold", "to": "warm", "labels": ["cold"]}],
        "migrate_interval": 3600, "promote_on_read": True, "promote_hold": "8s",
    })
    try:
        store = UnitStore(nc, cold=fetch)
        content = ContentStore(nc)
        big = b"".join(i.to_bytes(4, "big") for i in range(2 * 1024**2))  # 8 MiB: a multipart object in warm
        cid = (await store.put_bytes(big, labels=["cold"], title="big")).unit.cid
        other = (await store.put_bytes(b"a small cold unit", labels=["cold"])).unit.cid
        agent.start()
        await agent.ready(nc)
        cli("tier", "migrate")
        assert not await content.has(cid) and not await content.has(other)
        assert _units_per_tier(cli) == {"hot": 0, "warm": 2}

        out = tmp_path / "big.out"
        cli("units", "get", cid, "-o", out)  # from warm, through the agent; then promoted
        assert out.read_bytes() == big
        await async_wait_until(lambda: content.has(cid), 30, what="the unit read to be back in the hot tier")
        await async_wait_until(lambda: _units_per_tier(cli) == {"hot": 1, "warm": 2}, 30, what="the promotion recorded")
        assert _event_types(cli, cid)[-4:] == ["unit.moving", "unit.located", "unit.moving", "unit.located"]
        assert not await content.has(other), "a unit nobody read was promoted"
        out.unlink()
        cli("units", "get", cid, "-o", out)  # now straight from the hot tier
        assert out.read_bytes() == big
        assert "clean" in cli("tier", "verify").stdout

        # Just read, it stays hot: the policy that moved it once leaves it alone while it is held.
        cli("tier", "migrate")
        assert await content.has(cid), "a unit promoted on read was sent straight back"
        assert _units_per_tier(cli) == {"hot": 1, "warm": 2}

        # Once the hold (8 s after the last read) is over, the policy moves it back to warm;
        # the copy warm kept is reused, the index stays right.
        async def moved_back() -> bool:
            await asyncio.to_thread(cli, "tier", "migrate")
            return not await content.has(cid)

        await async_wait_until(moved_back, 60, interval=1, what="the policy to move the unit back after its hold")
        assert _units_per_tier(cli) == {"hot": 0, "warm": 2}
        assert "clean" in cli("tier", "verify").stdout
        assert cli("units", "get", other).stdout == "a small cold unit"
    finally:
        agent.stop()
        await nc.close()
