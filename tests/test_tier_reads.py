"""Reads drive tiering: the `idle` policy moves what nobody reads (reads are reported by
`cim units get`), and `promote_on_read` brings a unit that is read back to the hot tier."""

from __future__ import annotations

import asyncio
import json

import pytest

from cim.embedded.procs import wait_until
from cim.nats.rpc import call
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
        # Idle long enough that one slow `cim units get` (a few seconds on a loaded machine)
        # does not leave the unit that is read idle for a moment.
        "tiers": [warm],
        "policies": [{"name": "unread", "to": "warm", "idle": "15s"}], "migrate_interval": 0.3,
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
        # A hold longer than the `cim tier verify` and `cim tier migrate` that follow the read.
        "migrate_interval": 3600, "promote_on_read": True, "promote_hold": "20s",
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

        # Once the hold (20 s after the last read) is over, the policy moves it back to warm;
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


async def test_junk_access_reports_are_ignored_and_the_valid_reads_beside_them_are_recorded(nats_server, tmp_path):
    """Anyone who reads may report a read on `cim.tier.access`. A report that is not a CID
    (`b*`, `b>`, `b x` would each be a broken KV subject) is dropped, and the reads reported
    in the same batch are all written to CIM_TIER_ACCESS."""
    from cim import cid as cidlib
    from cim.nats.read import read_stream

    nc = await provisioned(nats_server.url)
    (tmp_path / "warm").mkdir()
    agent = TierAgent(tmp_path, nats_server.url, {"tiers": [{"name": "warm", "url": f"file://{tmp_path / 'warm'}"}],
                                                   "migrate_interval": 3600})
    try:
        agent.start()
        await agent.ready(nc)
        read = [cidlib.compute(f"read {i}".encode()) for i in range(5)]
        junk = [b"b*", b"b>", b"b x", b"b.y", b"bafkrei-not-a-cid", b"\xff\xfe", b"b" * 90]
        for report in [*junk[:4], *(c.encode() for c in read[:3]), *junk[4:], *(c.encode() for c in read[3:])]:
            await nc.publish("cim.tier.access", report)
        await nc.flush()

        async def recorded() -> set[str]:
            return {m.subject.rsplit(".", 1)[-1]
                    async for m in read_stream(nc, "KV_CIM_TIER_ACCESS", ["$KV.CIM_TIER_ACCESS.>"])}

        async def all_read_recorded() -> bool:
            return set(read) <= await recorded()

        await async_wait_until(all_read_recorded, 30, what="the five valid reads in CIM_TIER_ACCESS")
        assert await recorded() == set(read)  # and nothing else
    finally:
        agent.stop()
        await nc.close()


@pytest.mark.parametrize(("reply", "header"), [
    ("$KV.CIM_PIPELINES.x", "$KV.CIM_PIPELINES.x"),  # a subject the pipeline's credential may write
    ("_INBOX.tier.ack", "$KV.CIM_PIPELINES.x"),  # reply and header disagree
    ("_INBOX.*", None),  # a wildcard
    (None, "$JS.API.CONSUMER.DELETE.CIM_EVENTS.cim-hub-webhooks"),  # an old agent's header-only form
])
async def test_a_reader_acks_only_to_an_inbox_that_the_reply_and_the_header_agree_on(nc, reply, header):
    """A hostile answer on `cim.tier.fetch` (anyone with the tier agent's credential) names the
    subject the reader acks to: the reader refuses anything but one plain inbox, stops the
    read, and publishes nothing there."""
    from cim import cid as cidlib
    from cim.store.unit_fold import UnitState
    from cim.tier.errors import TierError
    from cim.tier.fetch import CHUNK, H_ACK, H_SEQ

    published: list[str] = []

    async def watch(m) -> None:
        published.append(m.subject)

    monitors = [await nc.subscribe(s, cb=watch) for s in ("$KV.>", "$JS.API.>", "_INBOX.tier.ack")]

    async def hostile_tier(m) -> None:
        for seq in range(1, 17):  # the reader acks every 16 chunks
            headers = {H_SEQ: str(seq), **({H_ACK: header} if header else {})}
            await nc.publish(m.reply, b"x" * CHUNK, reply=reply or "", headers=headers)

    tier = await nc.subscribe("cim.tier.fetch", cb=hostile_tier)
    try:
        unit = UnitState(cid=cidlib.compute(b"x" * CHUNK * 17), size=CHUNK * 17, tiers={"warm"})
        with pytest.raises(TierError, match="not one inbox: refused"):
            async for _ in fetch(nc, unit, timeout=10):
                pass
        await nc.flush()
        assert published == []
    finally:
        await tier.unsubscribe()
        for s in monitors:
            await s.unsubscribe()


async def test_a_tier_agent_with_every_read_slot_taken_still_answers_that_it_listens(nats_server, nc):
    """With its read slots all taken, a tier agent's fetch subscription waits for a free one;
    the question "does a tier agent listen?" (HEAD of a cold unit, a read's first silence) must
    not queue behind it, or a busy agent looks absent: HEAD answered 503, reads gave up."""
    import nats as nats_client

    from cim.tasks import Supervisor
    from cim.tier.fetch import FETCH_SUBJECT, FetchServer, agent_listens

    gate = asyncio.Event()  # the colder tier answers once this is set

    async def open_stream(cid, retrying):
        await gate.wait()

        async def chunks():
            yield b"from the colder tier"

        return chunks()

    supervisor = Supervisor()
    server = FetchServer(nc, open_stream, supervisor.bounded(1))
    await server.start()
    reader = await nats_client.connect(nats_server.url)
    try:
        assert await agent_listens(reader)
        cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
        waiting = [reader.new_inbox() for _ in range(2)]
        answered = [await reader.subscribe(inbox) for inbox in waiting]
        for inbox in waiting:  # one takes the only slot; the next holds the subscription's callback
            await reader.publish(FETCH_SUBJECT, json.dumps({"cid": cid}).encode(), reply=inbox)
        # The second is told it waits for a slot: the callback is now held by it.
        await answered[1].next_msg(timeout=10)
        assert await agent_listens(reader), "a busy tier agent looked absent"
    finally:
        gate.set()
        await supervisor.close(5)
        await server.stop()
        await reader.close()


async def test_a_plain_text_unit_moved_to_a_colder_tier_stays_searchable_by_its_words(nats_server, s3_server, tmp_path,
                                                                                     cli, agent_process):
    """Plain text is its own text: indexed while hot, no copy of it is stored. Once the tier
    agent moved the unit to warm, an index rebuilt from the events (a pipeline agent with no
    state directory, at every start) read the hot tier only, and found the unit by its title
    alone."""
    nc = await provisioned(nats_server.url)
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [s3_tier(s3_server, "warm", tmp_path)], "policies": [{"name": "cold", "to": "warm", "labels": ["cold"]}],
        "migrate_interval": 3600,
    })
    pipeline_config = {"nats": {"servers": [nats_server.url]}}

    def found() -> list:
        r = cli("--json", "search", "kingfishers", "minnows", check=False)
        return json.loads(r.stdout)["hits"] if r.returncode == 0 else []

    try:
        cid = (await UnitStore(nc).put_bytes(b"Kingfishers dive for minnows at dawn.", labels=["cold"], title="a note",
                                             media_type="text/plain")).unit.cid
        pipeline = await agent_process("pipeline", pipeline_config).ready(nc)
        await asyncio.to_thread(wait_until, found, 60, 0.2, "the search index to find the unit by its words")
        pipeline.stop()
        agent.start()
        await agent.ready(nc)
        cli("tier", "migrate")
        assert not await ContentStore(nc).has(cid), "the unit was not moved out of the hot tier"

        await agent_process("pipeline", pipeline_config).ready(nc)  # its index rebuilt from the events

        async def rebuilt() -> bool:
            index = await call(nc, "cim.pipeline.index")
            return index["documents"] == 1 and not index.get("stale")

        await async_wait_until(rebuilt, 60, what="the rebuilt index to hold the unit")
        assert [h["cid"] for h in found()] == [cid]
    finally:
        agent.stop()
        await nc.close()


async def test_an_expired_plain_text_unit_does_not_hold_up_a_rebuilt_index(nats_server, tmp_path, agent_process):
    """Its text was its own bytes, gone with its expiry: a rebuilt index leaves it out and goes
    on (reading it through the tier raised "expired", and the index retried that batch for ever)."""
    from cim.events import Event
    from cim.tier.events import UnitExpired

    nc = await provisioned(nats_server.url)
    try:
        units = UnitStore(nc)
        gone = (await units.put_bytes(b"Herons wait in the shallows.", media_type="text/plain", title="gone")).unit.cid
        kept = (await units.put_bytes(b"Herons fly at dusk.", media_type="text/plain", title="kept")).unit.cid
        pipeline_config = {"nats": {"servers": [nats_server.url]}}
        pipeline = await agent_process("pipeline", pipeline_config).ready(nc)

        async def indexed(n: int) -> bool:
            index = await call(nc, "cim.pipeline.index")
            return index["documents"] == n and not index.get("stale")

        await async_wait_until(lambda: indexed(2), 60, what="both units indexed")
        pipeline.stop()
        await units.events.append(Event.of(UnitExpired(policy="30-days", reason="older than 30 days"), gone,
                                           agent="cim-tier"))
        await ContentStore(nc).delete(gone)  # as the tier agent does after the event
        await agent_process("pipeline", pipeline_config).ready(nc)  # rebuilt from the events

        async def found_kept() -> bool:
            reply = await call(nc, "cim.pipeline.search", {"query": "herons"})
            return not reply.get("stale") and kept in [h["cid"] for h in reply["hits"]]

        await async_wait_until(found_kept, 60, what="the rebuilt index to find the unit that was kept")
    finally:
        await nc.close()
