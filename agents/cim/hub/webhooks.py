"""Outbound webhooks: events on chosen subjects POSTed to receivers, signed, retried, and
dead-lettered when the receiver keeps refusing.

Delivery is at least once. The hub reads a durable consumer and acknowledges an event only
after every matching webhook accepted it or gave up on it (dead letter), so a hub killed
mid-delivery delivers again after a restart. Receivers de-duplicate on `X-CIM-Event-Id`.

Signature (`X-CIM-Signature: t=<unix time>,v1=<hex>`): HMAC-SHA256 with the webhook's
secret over `<t>.<body>`, so a receiver can check both origin and freshness; see `verify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import Counter

from ..events import Event, EventStore, StoredEvent
from ..names import DLQ_STREAM, EVENTS_STREAM
from .config import CONSUMER, WebhookSettings
from .events import WebhookDeadLettered, WebhookRedelivered

log = logging.getLogger("cim.hub.webhooks")

SIGNATURE = "X-CIM-Signature"
DELIVERIES = Counter("cim_hub_webhook_deliveries_total", "Webhook attempts by webhook and outcome", ["webhook", "outcome"])


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance: float = 300) -> bool:
    """What a receiver runs: the signature matches and is at most `tolerance` seconds old."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", "")) and abs(time.time() - t) <= tolerance


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def body_of(event: StoredEvent) -> bytes:
    return json.dumps({
        "id": event.id, "type": event.type, "subject": event.subject, "source": event.source,
        "time": event.time.isoformat() if event.time else None, "agent": event.agent, "data": event.data,
    }, separators=(",", ":")).encode()


class Webhook:
    def __init__(self, settings: WebhookSettings):
        self.settings = settings
        self.name = settings.name
        self.secret = Path(settings.secret_file).read_bytes().strip()

    def wants(self, subject: str) -> bool:
        # The hub's own events never go out: a dead letter about a dead receiver would loop.
        if subject.startswith("cim.evt.hub."):
            return False
        return any(subject_matches(p, subject) for p in self.settings.subjects)

    def delay(self, attempt: int) -> float:
        b = self.settings.backoff or [1]
        return b[min(attempt - 1, len(b) - 1)]

    async def attempt(self, http: aiohttp.ClientSession, event_id: str, event_type: str, body: bytes, n: int) -> str | None:
        """One POST; None when the receiver accepted it, else why not."""
        headers = {
            "Content-Type": "application/json", "X-CIM-Event-Id": event_id, "X-CIM-Event-Type": event_type,
            "X-CIM-Webhook": self.name, "X-CIM-Delivery-Attempt": str(n), SIGNATURE: sign(self.secret, body),
        }
        try:
            async with http.post(str(self.settings.url), data=body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=self.settings.timeout)) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    DELIVERIES.labels(self.name, "ok").inc()
                    return None
                reason = f"the receiver answered HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            reason = f"the receiver could not be reached ({type(err).__name__}: {err})"
        DELIVERIES.labels(self.name, "failed").inc()
        return reason


class Dispatcher:
    """Reads the durable consumer and runs each event through every matching webhook."""

    def __init__(self, nc: Client, webhooks: list[Webhook], *, agent: str, concurrency: int = 32):
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.webhooks = webhooks
        self.events = EventStore(nc)
        self.agent = agent
        self.concurrency = concurrency
        self._task: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        self._running: set[asyncio.Task] = set()
        self._sub: Any = None  # the durable's pull subscription, while running

    async def start(self) -> None:
        if not self.webhooks:
            return
        self._http = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        """Stop fetching and abandon what is in flight: unacknowledged, it is delivered again
        after the restart. Everything is finished here, before the runtime drains NATS."""
        if self._task:
            self._task.cancel()
        for t in self._running:
            t.cancel()
        await asyncio.gather(*(t for t in (self._task, *self._running) if t), return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._http:
            await self._http.close()

    async def _run(self) -> None:
        running = self._running
        while True:
            try:
                if self._sub is None:
                    self._sub = await self.js.pull_subscribe_bind(CONSUMER, stream=EVENTS_STREAM)
                sub = self._sub
                room = self.concurrency - len(running)
                if room <= 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(room, timeout=5)
                except TimeoutError:
                    continue
                for m in msgs:
                    t = asyncio.create_task(self._handle(m))
                    running.add(t)
                    t.add_done_callback(running.discard)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the consumer vanished or the server restarted: bind again
                log.warning("webhook consumer: %s: %s; binding again", type(err).__name__, err)
                self._sub = None
                await asyncio.sleep(1)  # backoff between reconnect attempts, not a wait for a condition

    async def _handle(self, msg: Msg) -> None:
        event = StoredEvent.from_message(msg.subject, msg.metadata.sequence.stream, dict(msg.headers or {}), msg.data)
        targets = [w for w in self.webhooks if w.wants(msg.subject)]
        try:
            await asyncio.gather(*(self._deliver(w, event, msg) for w in targets))
        except Exception:
            log.exception("delivering %s failed; it will be redelivered", event.id)
            await msg.nak(delay=5)
            return
        await msg.ack()

    async def _deliver(self, hook: Webhook, event: StoredEvent, msg: Msg) -> None:
        assert self._http is not None
        body = body_of(event)
        reason: str | None = "no attempt made"
        for n in range(1, hook.settings.max_attempts + 1):
            await msg.in_progress()  # still working on it: keep the ack deadline away
            reason = await hook.attempt(self._http, event.id, event.type, body, n)
            if reason is None:
                return
            if n < hook.settings.max_attempts:
                log.info("webhook %s: event %s attempt %d failed (%s)", hook.name, event.id, n, reason)
                await msg.in_progress()
                await asyncio.sleep(hook.delay(n))  # the retry backoff itself
        await self._dead_letter(hook, event, msg, body, reason or "no attempt made")

    async def _dead_letter(self, hook: Webhook, event: StoredEvent, msg: Msg, body: bytes, reason: str) -> None:
        subject = f"cim.dlq.hub.webhook.{hook.name}"
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        headers.update({
            "Nats-Msg-Id": f"hub-dlq-{hook.name}-{event.id}",
            "cim-dlq-reason": reason[:500], "cim-dlq-origin": msg.subject, "cim-dlq-target": str(hook.settings.url),
            "cim-dlq-attempts": str(hook.settings.max_attempts), "cim-dlq-webhook": hook.name, "cim-agent": self.agent,
        })
        await self.js.publish(subject, body, headers=headers, stream=DLQ_STREAM)
        log.warning("webhook %s: event %s dead-lettered after %d attempts: %s", hook.name, event.id, hook.settings.max_attempts, reason)
        DELIVERIES.labels(hook.name, "dead_letter").inc()
        await self.events.append(Event.of(
            WebhookDeadLettered(event_id=event.id, subject=msg.subject, url=str(hook.settings.url),
                                attempts=hook.settings.max_attempts, reason=reason[:500], dlq_subject=subject),
            hook.name, id=f"hub-dead-lettered-{hook.name}-{event.id}", source=self.agent, agent=self.agent,
            causation_id=event.id,
        ))

    async def redeliver(self, dlq_seq: int) -> dict[str, Any]:
        """Send one dead letter again, once; on success record it, so the UI can show it done."""
        assert self._http is not None or not self.webhooks
        raw = await self.js.get_msg(DLQ_STREAM, dlq_seq)
        headers = dict(raw.headers or {})
        name = headers.get("cim-dlq-webhook")
        hook = next((w for w in self.webhooks if w.name == name), None)
        if hook is None:
            return {"ok": False, "reason": f"no webhook named {name!r} is configured on this hub"}
        if self._http is None:
            self._http = aiohttp.ClientSession()
        event_id = headers.get("ce-id", f"dlq-{dlq_seq}")
        reason = await hook.attempt(self._http, event_id, headers.get("ce-type", ""), raw.data or b"", 0)
        if reason is not None:
            return {"ok": False, "reason": reason}
        await self.events.append(Event.of(
            WebhookRedelivered(event_id=event_id, dlq_seq=dlq_seq), hook.name, id=f"hub-redelivered-{dlq_seq}",
            source=self.agent, agent=self.agent, causation_id=event_id,
        ))
        return {"ok": True, "reason": ""}
