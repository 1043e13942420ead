"""Every dangerous action, tried with every agent credential on a real secured server. The
expectations are generated from capabilities.json (NATS subject matching over the allow
lists), so a permission added later is tried too; the policy assertions below say what no
credential may do whatever the list says."""

from __future__ import annotations

import nats
import pytest

from cim.hub.webhooks import subject_matches  # NATS subject matching: `*` one token, `>` the rest
from cim.permissions import NAMES, inbox_prefix, permissions
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from support.waiting import async_wait_until

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
HUB = "cim-hub-webhooks"  # the hub's durable consumer
PIPE = "pipeline-default"  # a pipeline's durable consumer


def dangerous_publishes(cap: str) -> list[str]:
    others = [c for c in NAMES if c != cap]
    return [
        "$JS.API.STREAM.PURGE.CIM_EVENTS", "$JS.API.STREAM.DELETE.CIM_EVENTS", "$JS.API.STREAM.UPDATE.CIM_EVENTS",
        "$JS.API.STREAM.DELETE.OBJ_CIM_CONTENT", "$JS.API.STREAM.PURGE.OBJ_CIM_CONTENT",
        "$JS.API.STREAM.CREATE.ROGUE", f"$O.CIM_CONTENT.M.{CID}",
        "$JS.API.DIRECT.GET.KV_CIM_HUB.state", "$JS.API.STREAM.MSG.GET.KV_CIM_HUB",
        *[f"$KV.CIM_REGISTRY.{o}.forged" for o in others],
        *[f"cim.evt.unit.{CID}.{e}" for e in ("expired", "located", "moving")],
        f"cim.evt.agent.{CID}.gone",
        "$JS.API.STREAM.MSG.DELETE.OBJ_CIM_CONTENT",
        # Consumers: the hub's durable, a pipeline's, and an unnamed create (which can name
        # and so alter any existing consumer in its body).
        f"$JS.API.CONSUMER.CREATE.CIM_EVENTS.{HUB}", f"$JS.API.CONSUMER.CREATE.CIM_EVENTS.{HUB}.cim.evt.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.CIM_EVENTS.{HUB}", f"$JS.API.CONSUMER.DELETE.CIM_EVENTS.{HUB}",
        f"$JS.API.CONSUMER.MSG.NEXT.CIM_EVENTS.{HUB}", f"$JS.ACK.CIM_EVENTS.{HUB}.1.9.1.1.0",
        f"$JS.API.CONSUMER.CREATE.CIM_EVENTS.{PIPE}", f"$JS.API.CONSUMER.DELETE.CIM_EVENTS.{PIPE}",
        f"$JS.API.CONSUMER.MSG.NEXT.CIM_EVENTS.{PIPE}", f"$JS.ACK.CIM_EVENTS.{PIPE}.1.9.1.1.0",
        "$JS.API.CONSUMER.CREATE.CIM_EVENTS", "$JS.API.CONSUMER.CREATE.OBJ_CIM_CONTENT.x",
    ]


def dangerous_subscribes(cap: str) -> list[str]:
    return ["_INBOX.>", "_INBOX.x", *[f"{inbox_prefix(o)}.x" for o in NAMES if o != cap], "cim.evt.>"]


# What no agent credential may do, whatever capabilities.json says; and what only one may.
NOBODY = {"$JS.API.STREAM.PURGE.CIM_EVENTS", "$JS.API.STREAM.DELETE.CIM_EVENTS", "$JS.API.STREAM.UPDATE.CIM_EVENTS",
          "$JS.API.STREAM.DELETE.OBJ_CIM_CONTENT", "$JS.API.STREAM.CREATE.ROGUE", "_INBOX.>", "_INBOX.x", "cim.evt.>",
          "$JS.API.STREAM.MSG.DELETE.OBJ_CIM_CONTENT", "$JS.API.CONSUMER.CREATE.CIM_EVENTS",
          "$JS.API.CONSUMER.CREATE.OBJ_CIM_CONTENT.x",
          f"$JS.API.CONSUMER.CREATE.CIM_EVENTS.{HUB}", f"$JS.API.CONSUMER.CREATE.CIM_EVENTS.{HUB}.cim.evt.>",
          f"$JS.API.CONSUMER.DURABLE.CREATE.CIM_EVENTS.{HUB}", f"$JS.API.CONSUMER.DELETE.CIM_EVENTS.{HUB}"}
ONLY = {f"$JS.API.CONSUMER.MSG.NEXT.CIM_EVENTS.{HUB}": "hub", f"$JS.ACK.CIM_EVENTS.{HUB}.1.9.1.1.0": "hub",
        **dict.fromkeys((f"$JS.API.CONSUMER.CREATE.CIM_EVENTS.{PIPE}", f"$JS.API.CONSUMER.DELETE.CIM_EVENTS.{PIPE}",
                         f"$JS.API.CONSUMER.MSG.NEXT.CIM_EVENTS.{PIPE}", f"$JS.ACK.CIM_EVENTS.{PIPE}.1.9.1.1.0"), "pipeline"),
        "$JS.API.DIRECT.GET.KV_CIM_HUB.state": "hub", "$JS.API.STREAM.PURGE.OBJ_CIM_CONTENT": "tier",
        "$JS.API.STREAM.MSG.GET.KV_CIM_HUB": "hub",
        **{f"cim.evt.unit.{CID}.{e}": "tier" for e in ("expired", "located", "moving")},
        f"cim.evt.agent.{CID}.gone": "registry"}


@pytest.mark.parametrize("cap", NAMES)
async def test_every_dangerous_action_is_decided_by_the_permission_list(secured_nats, cap):
    server, seeds = secured_nats(cap)
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    await provision(admin, ProvisionSpec())
    await admin.close()
    allow = permissions(cap)
    pubs, subs = dangerous_publishes(cap), dangerous_subscribes(cap)
    expected_refused = (
        [s for s in pubs if not any(subject_matches(p, s) for p in allow["publish"])
         or any(subject_matches(d, s) for d in allow["deny_publish"])]
        + [s for s in subs if not any(subject_matches(p, s) for p in allow["subscribe"])]
    )
    # The policy: the list may never grant these.
    assert {s for s in pubs + subs if s in NOBODY} <= set(expected_refused), cap
    assert {s for s, owner in ONLY.items() if owner != cap} <= set(expected_refused), cap
    assert {s for s in pubs if s.startswith("$KV.CIM_REGISTRY.")} <= set(expected_refused), cap  # others' records

    violations: list[str] = []

    async def on_error(err):
        violations.append(str(err).lower())

    nc = await nats.connect(server.url, nkeys_seed=str(seeds[cap]), error_cb=on_error, inbox_prefix=inbox_prefix(cap))
    try:
        for s in pubs:
            await nc.publish(s, b"{}")
        for s in subs:
            await nc.subscribe(s)
        await nc.flush()
        await async_wait_until(lambda: len(violations) >= len(expected_refused), 10,
                               what=f"the server to refuse {len(expected_refused)} actions of {cap}")
        refused = {s for s in pubs + subs if any(f'"{s.lower()}"' in v for v in violations)}
        assert refused == set(expected_refused), (cap, sorted(refused ^ set(expected_refused)))
    finally:
        await nc.close()
