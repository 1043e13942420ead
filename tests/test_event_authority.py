"""Authority over events, generated from capabilities.json: every capability's credential
tries to append every registered event type; the server stores exactly those the
capability may write and refuses the rest, and a reader believes only the subject."""

from __future__ import annotations

import uuid

import nats

from cim import cid as cidlib
from cim.events import Event, StoredEvent
from cim.events.envelope import validated
from cim.events.types import known_types
from cim.permissions import NAMES, event_subject, inbox_prefix, may_write
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.units import Unit
from cim.tier.locations import LocationIndex
from support.waiting import async_wait_until


async def test_every_credential_may_append_exactly_its_own_event_types(secured_nats):
    server, seeds = secured_nats(*NAMES)
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    await provision(admin, ProvisionSpec())
    types = known_types()
    assert {"unit.created", "unit.located", "unit.expired", "agent.gone", "hub.dead_lettered"} <= set(types)
    stored, refused = {}, {}
    try:
        for cap in NAMES:
            violations: list[str] = []

            async def on_error(err, violations=violations):
                violations.append(str(err))

            nc = await nats.connect(server.url, nkeys_seed=str(seeds[cap]), error_cb=on_error,
                                     inbox_prefix=inbox_prefix(cap))
            try:
                allowed = set(may_write(cap))
                for t in types:
                    subject = event_subject(t).replace("*", f"t{uuid.uuid4().hex[:10]}")
                    if t in allowed:
                        await nc.jetstream().publish(subject, b"{}", headers={"ce-type": t}, timeout=5)
                        stored[(cap, t)] = subject
                    else:
                        await nc.publish(subject, b"{}", headers={"ce-type": t})
                        refused[(cap, t)] = subject
                await nc.flush()
                denied = [t for t in types if t not in allowed]
                await async_wait_until(lambda violations=violations, denied=denied: len(violations) >= len(denied), 10,
                                       what=f"the server to refuse {cap}'s {len(denied)} forbidden event types")
                assert all("ermissions" in v for v in violations), violations
            finally:
                await nc.close()
        # What the server kept: every allowed append, and nothing of a refused one.
        js = admin.jetstream()
        for (cap, t), subject in refused.items():
            try:
                await js.get_last_msg("CIM_EVENTS", subject)
            except nats.js.errors.NotFoundError:
                continue
            raise AssertionError(f"{cap} appended {t}, which it may not write")
        for subject in stored.values():
            await js.get_last_msg("CIM_EVENTS", subject)
        assert ("store", "unit.expired") in refused and ("hub", "unit.located") in refused
        assert ("pipeline", "agent.gone") in refused and ("tier", "unit.expired") in stored
    finally:
        await admin.close()


def test_a_located_event_without_the_tier_agents_move_intent_drops_nothing():
    """Even an allowed writer's `unit.located` drops a tier only when a `unit.moving` of
    action `move` from that tier announced it: no forged 'dropped: [hot, archive]'."""
    cid = cidlib.compute(b"abc")
    unit = Unit.create(cid=cid, size=3)
    made = validated(Event(type="unit.created", aggregate_id=cid, data=unit.model_dump(mode="json")))
    created = StoredEvent.from_message(made.subject, 1, made.headers(), made.payload())
    assert created.problem is None
    located = StoredEvent.from_message(f"cim.evt.unit.{cid}.located", 2, {}, (
        b'{"tier": "archive", "url": "s3://a", "size": 3, "verified_by": "cid", "dropped": ["hot", "archive"]}'))
    index = LocationIndex().apply_all([created, located])
    assert index.units[cid].tiers == {"hot", "archive"}

    moving = StoredEvent.from_message(f"cim.evt.unit.{cid}.moving", 3, {}, (
        b'{"from_tier": "hot", "to_tier": "warm", "action": "move", "policy": "p"}'))
    moved = StoredEvent.from_message(f"cim.evt.unit.{cid}.located", 4, {}, (
        b'{"tier": "warm", "url": "s3://w", "size": 3, "verified_by": "cid", "dropped": ["hot", "archive"]}'))
    index.apply_all([moving, moved])
    assert index.units[cid].tiers == {"archive", "warm"}


async def test_a_forged_type_header_is_not_believed(secured_nats):
    """The store may append `unit.created`; claiming `unit.expired` in the header does not
    make it an expiry for any reader."""
    server, seeds = secured_nats("store")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    try:
        await provision(admin, ProvisionSpec())
        store = await nats.connect(server.url, nkeys_seed=str(seeds["store"]), inbox_prefix=inbox_prefix("store"))
        try:
            await store.jetstream().publish("cim.evt.unit.bafkreiforged.created", b'{"policy": "p", "reason": "r"}',
                                            headers={"ce-type": "unit.expired"}, timeout=5)
        finally:
            await store.close()
        msg = await admin.jetstream().get_last_msg("CIM_EVENTS", "cim.evt.unit.bafkreiforged.created")
        e = StoredEvent.from_message(msg.subject, msg.seq, dict(msg.headers or {}), msg.data)
        assert e.type == "unit.created" and e.problem
        index = LocationIndex().apply_all([e])
        assert index.units.get("bafkreiforged") is None or not index.units["bafkreiforged"].expired
    finally:
        await admin.close()


async def test_a_caller_cannot_make_the_tier_agent_publish_where_it_names(secured_nats, tmp_path):
    """Progress goes back on the request's own reply subject: a body naming an event subject
    (which the tier's credential may write) is refused, and nothing is published there."""
    from support.tierkit import TierAgent

    server, seeds = secured_nats("tier", "ui")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    agent = TierAgent(tmp_path, server.url, {"tiers": [{"name": "cold", "url": f"file://{tmp_path / 'cold'}"}],
                                             "migrate_interval": 3600}, nkey=seeds["tier"])
    try:
        await provision(admin, ProvisionSpec())
        agent.start()
        await agent.ready(admin)
        ui = await nats.connect(server.url, nkeys_seed=str(seeds["ui"]), inbox_prefix=inbox_prefix("ui"))
        try:
            target = "cim.evt.unit.bafkreiforged.located"
            msg = await ui.request("cim.tier.migrate", b'{"dry_run": true, "progress": "' + target.encode() + b'"}', timeout=10)
            assert (msg.headers or {}).get("Nats-Service-Error-Code") == "400", msg.headers
        finally:
            await ui.close()
        try:
            await admin.jetstream().get_last_msg("CIM_EVENTS", target)
            raise AssertionError("the tier agent published on a subject a caller named")
        except nats.js.errors.NotFoundError:
            pass
    finally:
        agent.stop()
        await admin.close()
