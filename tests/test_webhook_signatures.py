"""Webhook signatures per Standard Webhooks, checked with its reference library
(`standardwebhooks`), as a receiver nobody here wrote would check them: a real hub delivers
to a receiver on 127.0.0.1."""

import base64
import hashlib
import hmac
import time

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp")
from aiohttp import web  # noqa: E402
from standardwebhooks.webhooks import Webhook, WebhookVerificationError  # noqa: E402

from cim.errors import ConfigError  # noqa: E402
from cim.hub.config import WebhookSettings  # noqa: E402
from cim.hub.webhooks import Webhook as HubWebhook  # noqa: E402
from cim.hub.webhooks import sign, verify, verify_legacy  # noqa: E402
from cim.ports import free_port  # noqa: E402
from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from cim.store.unit_store import UnitStore  # noqa: E402
from support.hub_support import HookReceiver, Hub  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

RAW_SECRET = b"a raw shared secret, as secret files held before"
KEY = bytes(range(32))
WHSEC = "whsec_" + base64.b64encode(KEY).decode()


class Receiver(HookReceiver):
    """Answers 500 to the first attempt of each event, then 204; keeps every request."""

    def __init__(self, port: int):
        self.port = port
        self.requests: list[tuple[bytes, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((body, dict(request.headers)))
        first = sum(h["webhook-id"] == request.headers["webhook-id"] for _, h in self.requests) == 1
        return web.Response(status=500 if first else 204)

    def accepted(self) -> list[tuple[bytes, dict[str, str]]]:
        return [r for r in self.requests if r[1]["X-CIM-Delivery-Attempt"] != "1"]


async def deliveries(nats_server, nc, tmp_path, secret_file: bytes, n: int) -> tuple[list[str], Receiver]:
    """`n` units put while a hub delivers their events to a Receiver; every event retried once."""
    await provision(nc, ProvisionSpec())
    (tmp_path / "secret").write_bytes(secret_file)
    port = free_port()
    hook = {"name": "rx", "url": f"http://127.0.0.1:{port}/hook", "secret_file": str(tmp_path / "secret"),
            "subjects": ["cim.evt.unit.*.created"], "max_attempts": 3, "backoff": [0.1]}
    hub = Hub(nats_server.url, tmp_path, webhooks=[hook]).start()
    try:
        async with Receiver(port) as rx:
            units = UnitStore(nc)
            cids = [(await units.put_bytes(f"signed {i}".encode())).unit.cid for i in range(n)]
            await async_wait_until(lambda: len(rx.accepted()) == n, 30, what=f"{n} deliveries accepted on retry")
    finally:
        hub.stop()
    return cids, rx


async def test_every_delivery_verifies_with_the_standard_webhooks_library_and_keeps_its_id_across_a_retry(
        nats_server, nc, tmp_path):
    cids, rx = await deliveries(nats_server, nc, tmp_path, RAW_SECRET + b"\n", 3)
    receiver = Webhook(RAW_SECRET)  # a raw key is the key itself: bytes to the library
    for body, headers in rx.requests:
        receiver.verify(body, headers)  # raises if anything is off
        assert headers["webhook-signature"].startswith("v1,")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300
    by_id: dict[str, list[str]] = {}
    for _, headers in rx.requests:
        by_id.setdefault(headers["webhook-id"], []).append(headers["X-CIM-Delivery-Attempt"])
    # One id per event, the same on the refused attempt and its retry: receivers dedupe on it.
    assert by_id == {f"unit-created-{c}": ["1", "2"] for c in cids}
    # The legacy header still checks out for receivers written before (until CIM 0.3).
    body, headers = rx.requests[0]
    assert verify_legacy(RAW_SECRET, body, headers["X-CIM-Signature"])


async def test_the_library_rejects_a_tampered_body_a_wrong_secret_and_a_stale_timestamp(nats_server, nc, tmp_path):
    _, rx = await deliveries(nats_server, nc, tmp_path, WHSEC.encode(), 1)
    body, headers = rx.accepted()[0]
    receiver = Webhook(WHSEC)  # a whsec_ secret file is the spec's form, used as it is
    receiver.verify(body, headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        receiver.verify(body[:-1] + b',"extra":true}', headers)  # one field added on the way
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook("whsec_" + base64.b64encode(b"another key entirely").decode()).verify(body, headers)
    # The same event signed by the hub's own code ten minutes ago: right key, too old.
    stale = sign(WHSEC.encode(), headers["webhook-id"], body, timestamp=int(time.time()) - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        receiver.verify(body, stale)
    assert not verify(WHSEC.encode(), body, stale)
    assert verify(WHSEC.encode(), body, sign(WHSEC.encode(), headers["webhook-id"], body))


async def test_the_legacy_header_is_keyed_with_the_secret_file_as_it_is_also_a_whsec_one(nats_server, nc, tmp_path):
    """A receiver of X-CIM-Signature, written before Standard Webhooks, keyed its HMAC with
    the secret file's contents: it must keep accepting deliveries whatever the file holds."""
    _, rx = await deliveries(nats_server, nc, tmp_path, WHSEC.encode() + b"\n", 1)
    body, headers = rx.accepted()[0]
    parts = dict(p.split("=", 1) for p in headers["X-CIM-Signature"].split(","))
    # What that receiver runs, written out: the file's bytes (stripped) are the key.
    expected = hmac.new(WHSEC.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert verify_legacy(WHSEC.encode(), body, headers["X-CIM-Signature"])
    Webhook(WHSEC).verify(body, headers)  # and the Standard Webhooks signature uses the decoded key


def test_a_raw_secret_file_is_the_key_that_whsec_and_its_base64_name():
    # What to give a receiver's library when the hub's secret file holds raw bytes.
    headers = sign(RAW_SECRET, "evt-1", b"{}")
    assert Webhook(RAW_SECRET).verify(b"{}", headers) == {}
    assert Webhook("whsec_" + base64.b64encode(RAW_SECRET).decode()).verify(b"{}", headers) == {}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(RAW_SECRET + b"x").decode()).verify(b"{}", headers)


def test_a_whsec_secret_that_is_not_base64_or_is_empty_stops_the_hub_with_the_file_named(tmp_path):
    for content, why in ((b"whsec_not*base64!", "base64"), (b"whsec_", "empty"), (b"\n", "empty")):
        (tmp_path / "secret").write_bytes(content)
        settings = WebhookSettings(name="rx", url="http://127.0.0.1:1/", secret_file=tmp_path / "secret")
        with pytest.raises(ConfigError, match=why) as err:
            HubWebhook(settings)
        assert str(tmp_path / "secret") in str(err.value)
