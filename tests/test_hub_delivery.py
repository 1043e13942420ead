"""Webhooks and the inbox folder, with a real hub process, NATS and HTTP receiver."""

import asyncio
import collections
import json

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp")
from aiohttp import web  # noqa: E402
from standardwebhooks.webhooks import Webhook, WebhookVerificationError  # noqa: E402

from cim.events import Event  # noqa: E402
from cim.hub.config import CONSUMER, MAX_DELIVER  # noqa: E402
from cim.nats.read import read_stream  # noqa: E402
from cim.ports import free_port  # noqa: E402
from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from cim.store.events import UnitLabeled  # noqa: E402
from cim.store.unit_store import UnitStore  # noqa: E402
from support.hub_support import HookReceiver, Hub  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

SECRET = b"shared-webhook-secret"


class Receiver(HookReceiver):
    """A webhook receiver on 127.0.0.1 that counts deliveries per event id."""

    def __init__(self, port: int, *, status: int = 204, delay: float = 0):
        self.port, self.status, self.delay = port, status, delay
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.bad_signatures = 0
        self.attempts: list[str] = []

    async def handle(self, request):
        body = await request.read()
        try:  # as any Standard Webhooks receiver checks it (a raw key secret is used as is)
            Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
        self.attempts.append(request.headers["X-CIM-Delivery-Attempt"])
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow receiver: keeps deliveries in flight for the kill
        if self.status < 300:
            self.deliveries[request.headers["webhook-id"]] += 1
            assert json.loads(body)["id"] == request.headers["webhook-id"]
        return web.Response(status=self.status)


def hub_with_webhook(nats_server, tmp_path, port, **extra) -> Hub:
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    hook = {"name": "rx", "url": f"http://127.0.0.1:{port}/hook", "secret_file": str(tmp_path / "secret"),
            "subjects": ["cim.evt.unit.*.created"], **extra}
    return Hub(nats_server.url, tmp_path, webhooks=[hook])


async def put_many(nc, n: int, tag: str) -> list[str]:
    units = UnitStore(nc)
    return [(await units.put_bytes(f"{tag} {i}".encode())).unit.cid for i in range(n)]


async def test_webhooks_carry_verifiable_signatures_for_each_created_unit(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    port = free_port()
    hub = hub_with_webhook(nats_server, tmp_path, port).start()
    try:
        async with Receiver(port) as rx:
            cids = await put_many(nc, 5, "signed")
            await async_wait_until(lambda: len(rx.deliveries) == 5, 30, what="five webhook deliveries")
            assert rx.bad_signatures == 0
            assert set(rx.deliveries) == {f"unit-created-{c}" for c in cids}
    finally:
        hub.stop()


async def test_a_receiver_that_is_down_gets_retries_then_a_dead_letter(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    port = free_port()
    hub = hub_with_webhook(nats_server, tmp_path, port, max_attempts=3, backoff=[0.1]).start()
    try:
        async with Receiver(port, status=503) as rx:
            [cid] = await put_many(nc, 1, "refused")

            async def letters():
                return [m async for m in read_stream(nc, "CIM_DLQ", ["cim.dlq.hub.webhook.rx"])]

            await async_wait_until(lambda: _nonempty(letters), 30, what="a dead letter for the refused delivery")
            assert rx.attempts == ["1", "2", "3"]
            [letter] = await letters()
            assert letter.headers["cim-dlq-attempts"] == "3" and "503" in letter.headers["cim-dlq-reason"]
            assert json.loads(letter.data)["id"] == f"unit-created-{cid}"

            async def recorded():  # appended just after the dead letter
                return [e async for e in UnitStore(nc).events.read(["cim.evt.hub.rx.dead_lettered"])]

            [event] = await async_wait_until(recorded, 30, what="the dead_lettered event")
            assert event.data["event_id"] == f"unit-created-{cid}"
    finally:
        hub.stop()


async def _nonempty(fn) -> bool:
    return bool(await fn())


async def test_hostile_events_are_delivered_with_a_safe_id_or_dead_lettered_and_never_stall_the_others(
        nats_server, nc, tmp_path):
    """Events anyone allowed to write `cim.evt.unit.>` could store, raw: an id that decodes to a
    newline (HTTP refuses it in `webhook-id`), a time in year 1 (no UTC form), a type with a
    control character (in `X-CIM-Event-Type`). None may hold a consumer slot for ever: a few
    hundred such events would stop every webhook."""
    await provision(nc, ProvisionSpec())
    port = free_port()
    hub = hub_with_webhook(nats_server, tmp_path, port, subjects=["cim.evt.unit.>"], max_attempts=2,
                           backoff=[0.1]).start()
    try:
        async with Receiver(port) as rx:
            js = nc.jetstream()
            honest = Event.of(UnitLabeled(labels=["x"], by="t"), "hostile")
            await js.publish(honest.subject, honest.payload(), headers={
                **honest.headers(), "ce-id": "evil%0AX-Injected:%20yes", "Nats-Msg-Id": "evil"})
            await js.publish(honest.subject, honest.payload(), headers={
                **honest.headers(), "ce-id": "year-one", "ce-time": "0001-01-01T00:00:00+01:00", "Nats-Msg-Id": "y1"})
            await js.publish("cim.evt.unit.hostile.bad\x01type", honest.payload(), headers={
                **honest.headers(), "ce-id": "control-type", "Nats-Msg-Id": "ctl"})
            [cid] = await put_many(nc, 1, "normal")

            async def letters():
                return [m async for m in read_stream(nc, "CIM_DLQ", ["cim.dlq.hub.webhook.rx"])]

            async def settled() -> bool:
                info = await js.consumer_info("CIM_EVENTS", CONSUMER)
                return info.num_pending == 0 and info.num_ack_pending == 0 and len(await letters()) == 1

            await async_wait_until(settled, 30, what="every event acknowledged, one of them dead-lettered")
            assert f"unit-created-{cid}" in rx.deliveries  # the normal event went out
            # Delivered with the id as it was stored (still encoded), and the time as stored.
            assert rx.deliveries["evil%0AX-Injected:%20yes"] == 1 and rx.deliveries["year-one"] == 1
            assert rx.bad_signatures == 0
            [letter] = await letters()
            assert letter.headers["ce-id"] == "control-type"
            assert "could not be made" in letter.headers["cim-dlq-reason"]
            info = await js.consumer_info("CIM_EVENTS", CONSUMER)
            assert info.num_redelivered == 0  # no nak loop, not even one round
            assert info.config.max_deliver == MAX_DELIVER  # and a bound, should anything else fail
            recorded = [e async for e in UnitStore(nc).events.read(["cim.evt.hub.rx.dead_lettered"])]
            assert [e.data["event_id"] for e in recorded] == ["control-type"]
    finally:
        hub.stop()


async def test_nothing_is_lost_when_the_hub_is_killed_mid_delivery(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    port = free_port()
    hub = hub_with_webhook(nats_server, tmp_path, port).start()
    try:
        async with Receiver(port, delay=0.3) as rx:
            cids = await put_many(nc, 40, "killed")
            await async_wait_until(lambda: rx.attempts, 30, what="the first delivery to be in flight")
            hub.kill()  # SIGKILL: no drain, no acks for what is in flight
            assert len(rx.deliveries) < 40
            hub.start()
            await async_wait_until(lambda: len(rx.deliveries) == 40, 90, what="every event delivered after the restart")
            assert set(rx.deliveries) == {f"unit-created-{c}" for c in cids}
            assert all(n >= 1 for n in rx.deliveries.values())  # at least once; repeats carry the same id
    finally:
        hub.stop()


async def test_five_hundred_files_dropped_while_the_hub_restarts_become_one_unit_each(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    inbox = tmp_path / "inbox"
    connectors = [{"plugin": "inbox", "name": "drop", "settings": {"path": str(inbox), "interval": 0.2, "labels": ["dropped"]}}]
    hub = Hub(nats_server.url, tmp_path, connectors=connectors, max_body_size=2000).start()
    try:
        (inbox / "done").mkdir(parents=True, exist_ok=True)
        for i in range(250):
            (inbox / f"file-{i:03}.txt").write_text(f"dropped file {i}\n")
        await async_wait_until(lambda: any((inbox / "done").iterdir()), 30, what="the inbox to take the first files")
        hub.kill()  # mid-batch: some files stored but not yet moved
        for i in range(250, 499):
            (inbox / f"file-{i:03}.txt").write_text(f"dropped file {i}\n")
        (inbox / "too-big.bin").write_bytes(b"x" * 5000)  # over max_body_size: refused, moved to failed/
        hub.start()

        def left() -> list:
            return [p for p in inbox.iterdir() if p.is_file()]

        await async_wait_until(lambda: not left(), 90, what="the inbox to empty")
        done = sorted(p.name for p in (inbox / "done").iterdir())
        assert done == sorted(f"file-{i:03}.txt" for i in range(499))
        assert sorted(p.name for p in (inbox / "failed").iterdir()) == ["too-big.bin", "too-big.bin.reason.txt"]
        assert "over the limit" in (inbox / "failed" / "too-big.bin.reason.txt").read_text()
        units = [u async for u in UnitStore(nc).list(label="dropped")]
        assert len(units) == 499 and len({u.cid for u in units}) == 499
        assert {u.title for u in units} == set(done)
    finally:
        hub.stop()
