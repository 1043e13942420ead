"""CloudEvents 1.0 on the wire, checked with the official SDK (`cloudevents` 2.2), not with
CIM's own reader: every event of a real run converts in strict mode, keeps correlation and
causation as extension attributes and survives the SDK's round trip; events stored in the
old form still read, and still drive the agents; the webhook body is a structured CloudEvent.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary, from_http, from_structured, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from cim import cid as cidlib
from cim.events import Event, EventStore
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.content import ContentStore
from cim.store.events import UnitCreated, UnitLabeled
from support.pipeline_support import count
from support.waiting import async_wait_until

REVERSE_DNS_TYPE = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+){2,}\.[a-z][a-z0-9_-]*$")  # dev.cim.<aggregate>.<event>
JSON = JSONFormat()
CLASSIFY = {"name": "ce", "steps": [{"name": "classify", "plugin": "classify"}]}


def as_cloudevent(headers: dict[str, str], body: bytes) -> CloudEvent:
    """What a CloudEvents bridge does with a NATS message: the binding maps `ce-` headers to
    attributes as the HTTP binary mode does; the SDK's CloudEvent validates them strictly
    (required attributes, types, extension names) when it is built."""
    event = from_binary(HTTPMessage(headers=dict(headers), body=body), JSON, CloudEvent)
    assert isinstance(event, CloudEvent)
    return event


async def raw_messages(nc) -> list:
    """Every message of CIM_EVENTS, read with stock nats-py, one by one by sequence."""
    js = nc.jetstream()
    last = (await js.stream_info("CIM_EVENTS")).state.last_seq
    return [await js.get_msg("CIM_EVENTS", seq) for seq in range(1, last + 1)]


@pytest.fixture
async def servers(nc, nats_server):
    await provision(nc, ProvisionSpec())
    return {"servers": [nats_server.url]}


async def test_every_event_of_a_run_is_a_strict_cloudevent_with_correlation_and_causation_as_extensions(
        nc, servers, agent_process, cli, tmp_path):
    await agent_process("registry", {"nats": servers}).ready(nc)
    await agent_process("pipeline", {"nats": servers, "pipelines": [CLASSIFY]}).ready(nc)
    for name in ("a.md", "b.md", "c.md"):
        (tmp_path / name).write_text(f"# {name}\nsome notes\n")
    put = json.loads(cli("--json", "units", "put", tmp_path / "a.md", tmp_path / "b.md", "--label", "notes").stdout)
    a, b = (row["cid"] for row in put)
    cli("units", "put", tmp_path / "c.md", "--parent", a)  # a revision: `unit.revised` names its cause
    # An operator's event, with ids a header cannot carry as they are (blank, '%', '"', non-ASCII).
    cli("events", "append", "unit.labeled", b, "--data", json.dumps({"labels": ["reviewed"], "by": "operator"}),
        "--correlation-id", 'review "7" at 50% – done', "--causation-id", f"unit-created-{b}")

    async def settled() -> bool:
        return (await count(nc, "cim.evt.steps.*.done") == 3 and await count(nc, "cim.evt.unit.*.labeled") == 4
                and await count(nc, "cim.evt.agent.*.appeared") >= 2)

    await async_wait_until(settled, 60, what="three units classified and both agents recorded as appeared")

    messages = await raw_messages(nc)
    ours = {e.seq: e async for e in EventStore(nc).read()}
    assert len(messages) == len(ours) >= 12
    types, sources, with_correlation = set(), set(), 0
    for m in messages:
        ce = as_cloudevent(m.headers, m.data)
        stored = ours[m.seq]
        assert stored.problem is None, stored.problem
        assert REVERSE_DNS_TYPE.match(ce.get_type()) and ce.get_type() == f"dev.cim.{stored.type}"
        assert urlsplit(ce.get_source()).scheme == "urn", ce.get_source()
        assert (ce.get_id(), ce.get_subject(), ce.get_time()) == (stored.id, stored.aggregate_id, stored.time)
        assert ce.get_data() == stored.data
        # Correlation and causation are extension attributes, equal to what CIM reads.
        assert ce.get_extension("correlationid") == stored.correlation_id
        assert ce.get_extension("causationid") == stored.causation_id
        with_correlation += stored.correlation_id is not None
        # The SDK writes the same `ce-` headers back (the binding's percent-encoding
        # included), and its structured form reads back to the same event.
        again = to_binary(ce, JSON)
        assert {k: v for k, v in again.headers.items() if k.startswith("ce-")} == {
            k: v for k, v in m.headers.items() if k.startswith("ce-") and k != "ce-datacontenttype"}
        assert as_cloudevent(again.headers, again.body).get_attributes() == ce.get_attributes()
        assert from_structured(to_structured(ce, JSON), JSON, CloudEvent).get_attributes() == ce.get_attributes()
        types.add(stored.type)
        sources.add(ce.get_source())
    assert {"unit.created", "unit.revised", "unit.labeled", "steps.done", "agent.appeared"} <= types
    # One source per producing instance: the CLI (who, where), the pipeline and the registry agents.
    cli_sources = {s for s in sources if s.startswith("urn:cim:cli:")}
    assert len(cli_sources) == 1 and "@" in next(iter(cli_sources))
    assert {"urn:cim:agent:cim-pipeline", "urn:cim:agent:cim-registry"} <= sources
    assert with_correlation >= 7  # 3 records, 3 labels and the operator's event at least
    operator = next(e for e in ours.values() if e.type == "unit.labeled" and e.data["by"] == "operator")
    assert operator.correlation_id == 'review "7" at 50% – done'


# The headers of events as CIM wrote them before this envelope, copied from the old
# `Event.headers()`: a short `ce-type`, a relative `ce-source`, `cim-*` correlation headers.
def legacy_headers(event_id: str, type_name: str, aggregate_id: str, source: str, agent: str, **more: str) -> dict:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": type_name,
        "ce-subject": aggregate_id,
        "ce-time": "2025-11-03T09:30:00.123456Z",
        "ce-datacontenttype": "application/json",
        "cim-agent": agent,
        "cim-agent-version": "0.1.0",
        "Nats-Msg-Id": event_id,
        **more,
    }


async def test_events_stored_in_the_old_form_still_read_and_still_drive_the_pipeline(nc, servers, agent_process):
    text = b"# minutes\nwritten before the upgrade\n"
    unit_cid = await ContentStore(nc).put_bytes(text)
    unit = {"cid": unit_cid, "size": len(text), "media_type": "text/markdown", "title": "minutes.md", "labels": [],
            "source": "inbox:cim-hub/minutes.md", "author": "", "created_at": "2025-11-03T09:30:00Z",
            "metadata": {}, "parents": []}
    js = nc.jetstream()
    await js.publish(f"cim.evt.unit.{unit_cid}.created", json.dumps(unit).encode(), headers=legacy_headers(
        f"unit-created-{unit_cid}", "unit.created", unit_cid, "cim-cli", "cim-cli",
        **{"cim-correlation-id": "import-2025-11"}))
    await js.publish(f"cim.evt.unit.{unit_cid}.labeled", json.dumps({"labels": ["old"], "by": "p/s"}).encode(),
                     headers=legacy_headers("old-label-1", "unit.labeled", unit_cid, "cim/cim-registry", "cim-registry",
                                            **{"cim-correlation-id": "import-2025-11",
                                               "cim-causation-id": f"unit-created-{unit_cid}"}))

    created, labeled = [e async for e in EventStore(nc).read()]
    assert (created.problem, labeled.problem) == (None, None)
    assert (created.type, created.source, created.correlation_id, created.causation_id) == (
        "unit.created", "cim-cli", "import-2025-11", None)
    assert (labeled.type, labeled.source, labeled.correlation_id, labeled.causation_id) == (
        "unit.labeled", "cim/cim-registry", "import-2025-11", f"unit-created-{unit_cid}")
    assert created.typed().source == "inbox:cim-hub/minutes.md"  # the unit's own source: data, untouched
    assert (created.agent, created.agent_version) == ("cim-cli", "0.1.0")
    # The official SDK reads them too (a relative source is allowed; only new events must be absolute).
    for m in await raw_messages(nc):
        assert as_cloudevent(m.headers, m.data).get_type() in ("unit.created", "unit.labeled")

    # A consumer processes the old `unit.created` as any other, and carries its correlation on.
    await agent_process("pipeline", {"nats": servers, "pipelines": [CLASSIFY]}).ready(nc)
    await async_wait_until(lambda: count(nc, f"cim.evt.steps.ce--{unit_cid}.done"), 60,
                           what="the pipeline to process the old unit.created")
    (done,) = [e async for e in EventStore(nc).read([f"cim.evt.steps.ce--{unit_cid}.done"])]
    assert done.problem is None and done.correlation_id == "import-2025-11"
    assert done.causation_id == f"unit-created-{unit_cid}"
    (record,) = [m for m in await raw_messages(nc) if m.subject == done.subject]
    assert as_cloudevent(record.headers, record.data).get_extension("correlationid") == "import-2025-11"


async def test_a_stored_trigger_whose_ids_end_in_a_blank_is_still_processed(nc, servers, agent_process):
    """Ids today's rules refuse (a blank at an end) may be in a stream already, written with
    the encoded blank: the pipeline answers such a trigger with safe ids instead of failing
    its unit for good."""
    text = b"an import with a careless correlation id"
    unit_cid = await ContentStore(nc).put_bytes(text)
    unit = {"cid": unit_cid, "size": len(text), "media_type": "text/plain", "title": "careless.txt", "labels": [],
            "source": "import", "author": "", "created_at": "2026-01-03T09:30:00Z", "metadata": {}, "parents": []}
    headers = {**Event.of(UnitCreated.model_validate(unit), unit_cid, id="placeholder").headers(),
               "ce-id": "imported%20", "Nats-Msg-Id": "imported ", "ce-correlationid": "run%207%20"}
    await nc.jetstream().publish(f"cim.evt.unit.{unit_cid}.created", json.dumps(unit).encode(), headers=headers)
    (created,) = [e async for e in EventStore(nc).read()]
    assert (created.id, created.correlation_id, created.problem) == ("imported ", "run 7 ", None)

    await agent_process("pipeline", {"nats": servers, "pipelines": [CLASSIFY]}).ready(nc)
    await async_wait_until(lambda: count(nc, f"cim.evt.steps.ce--{unit_cid}.done"), 60,
                           what="the pipeline to process the trigger with blank-ended ids")
    (done,) = [e async for e in EventStore(nc).read([f"cim.evt.steps.ce--{unit_cid}.done"])]
    assert done.problem is None
    assert (done.correlation_id, done.causation_id) == ("run%207%20", "imported%20")


@pytest.mark.parametrize("claimed", ["unit.expired", "dev.cim.unit.expired"])
async def test_a_type_header_that_disagrees_with_the_subject_is_flagged_in_either_form(nc, servers, claimed):
    unit_cid = cidlib.compute(b"forged")
    honest = Event.of(UnitLabeled(labels=["x"], by="t"), unit_cid)
    js = nc.jetstream()
    await js.publish(honest.subject, honest.payload(), headers={**honest.headers(), "ce-type": claimed,
                                                                  "Nats-Msg-Id": "forged"})
    await js.publish(honest.subject, honest.payload(), headers={**honest.headers(), "ce-type": "unit.labeled",
                                                                  "Nats-Msg-Id": "old-form"})
    await EventStore(nc).append(honest)
    forged, old_form, current = [e async for e in EventStore(nc).read()]
    assert forged.type == "unit.labeled" and forged.typed() is None
    assert forged.problem and f"type header says {claimed!r}" in forged.problem
    assert (old_form.problem, current.problem) == (None, None)


async def test_the_webhook_body_is_a_structured_cloudevent_also_when_redelivered_from_the_dead_letters(
        nc, servers, nats_server, tmp_path):
    from cim.hub import api as hub_api
    from cim.nats.rpc import call
    from support.hub_support import HookReceiver, Hub

    (tmp_path / "secret").write_bytes(b"webhook-secret\n")
    # Refuses until told otherwise: the first delivery goes to the dead letters.
    async with HookReceiver(status=503) as rx:
        hub = Hub(nats_server.url, tmp_path, webhooks=[{
            "name": "ce", "url": rx.url, "secret_file": str(tmp_path / "secret"),
            "subjects": ["cim.evt.unit.*.labeled"], "max_attempts": 1}]).start()
        try:
            unit_cid = cidlib.compute(b"hooked")
            # An id with a blank: percent-encoded in its header, so only a reader that decodes it
            # gets it back for the redelivery.
            event = Event.of(UnitLabeled(labels=["urgent"], by="p/classify"), unit_cid, id=f"labeled {unit_cid}",
                             agent="cim-pipeline", agent_version="1", correlation_id="batch 9",
                             causation_id=f"unit-created-{unit_cid}")
            await EventStore(nc).append(event)
            await async_wait_until(lambda: count(nc, "cim.dlq.hub.webhook.ce", stream="CIM_DLQ"), 30,
                                   what="the refused delivery to be dead-lettered")
            rx.status = 204
            dlq_seq = (await nc.jetstream().stream_info("CIM_DLQ")).state.last_seq
            reply = await call(nc, hub_api.RETRY, hub_api.RetryRequest(seq=dlq_seq), timeout=30)
            assert reply.ok, reply.reason
        finally:
            hub.stop()

    assert len(rx.received) == 2
    for headers, body in rx.received:
        assert headers["Content-Type"].startswith("application/cloudevents+json")
        ce = from_http(HTTPMessage(headers=headers, body=body), JSON)  # no ce- headers: structured mode
        assert isinstance(ce, CloudEvent)
        assert (ce.get_specversion(), ce.get_id(), ce.get_type(), ce.get_source(), ce.get_subject()) == (
            "1.0", event.id, "dev.cim.unit.labeled", "urn:cim:agent:cim-pipeline", unit_cid)
        assert ce.get_time() == event.time and ce.get_datacontenttype() == "application/json"
        assert ce.get_data() == {"labels": ["urgent"], "by": "p/classify"}
        assert (ce.get_extension("correlationid"), ce.get_extension("causationid")) == (
            "batch 9", f"unit-created-{unit_cid}")
        # The delivery headers name the event by its own id and short type, the redelivery too.
        assert (headers["X-CIM-Event-Id"], headers["X-CIM-Event-Type"]) == (event.id, "unit.labeled")


async def test_a_dead_letter_stored_before_the_upgrade_is_redelivered_as_the_plain_json_it_holds(
        nc, servers, nats_server, tmp_path):
    """A letter dead-lettered by the hub before CloudEvents holds CIM's old JSON body (no
    `specversion`): sent again, it must not claim to be a structured CloudEvent."""
    from cim.hub import api as hub_api
    from cim.nats.rpc import call
    from support.hub_support import HookReceiver, Hub

    (tmp_path / "secret").write_bytes(b"webhook-secret\n")
    async with HookReceiver() as rx:
        hub = Hub(nats_server.url, tmp_path, webhooks=[{
            "name": "old", "url": rx.url, "secret_file": str(tmp_path / "secret"),
            "subjects": ["cim.evt.unit.*.labeled"]}]).start()
        try:
            unit_cid = cidlib.compute(b"dead before the upgrade")
            # The body and headers the hub wrote before (its old `body_of`, the event's old headers).
            old_body = json.dumps({"id": "old-label-9", "type": "unit.labeled", "subject": f"cim.evt.unit.{unit_cid}.labeled",
                                   "source": "cim/cim-registry", "time": "2025-11-03T09:30:00.123456+00:00",
                                   "agent": "cim-registry", "data": {"labels": ["old"], "by": "p/s"}},
                                  separators=(",", ":")).encode()
            headers = {**legacy_headers("old-label-9", "unit.labeled", unit_cid, "cim/cim-registry", "cim-registry"),
                       "Nats-Msg-Id": "hub-dlq-old-old-label-9", "cim-dlq-reason": "the receiver answered HTTP 503",
                       "cim-dlq-origin": f"cim.evt.unit.{unit_cid}.labeled", "cim-dlq-webhook": "old",
                       "cim-dlq-target": rx.url, "cim-dlq-attempts": "5"}
            ack = await nc.jetstream().publish("cim.dlq.hub.webhook.old", old_body, headers=headers, stream="CIM_DLQ")
            await hub.ready(nc)  # its NATS service, registered after /healthz answers
            reply = await call(nc, hub_api.RETRY, hub_api.RetryRequest(seq=ack.seq), timeout=30)
            assert reply.ok, reply.reason
        finally:
            hub.stop()

    [(headers, body)] = rx.received
    assert body == old_body
    assert headers["Content-Type"] == "application/json"
    assert (headers["webhook-id"], headers["X-CIM-Event-Type"]) == ("old-label-9", "unit.labeled")
