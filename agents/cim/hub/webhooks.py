"""Outbound webhooks: events on chosen subjects POSTed to receivers, signed, retried, and
dead-lettered when the receiver keeps refusing.

Delivery is at least once. The hub reads a durable consumer and acknowledges an event only
after every matching webhook accepted it or gave up on it (dead letter), so a hub killed
mid-delivery delivers again after a restart. Receivers de-duplicate on `webhook-id`.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com), made by its
reference library `standardwebhooks`: `webhook-id` (the event's id, the same on every
attempt), `webhook-timestamp` (unix seconds of this attempt) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`), so any Standard Webhooks verifier
checks origin and freshness; see `verify`. The secret file holds either a `whsec_<base64>`
secret, decoded as the spec defines it, or anything else: the raw key bytes themselves
(what it held before), which a receiver's library takes as `whsec_` + their base64
(`signing_key`).

`X-CIM-Signature: t=<unix time>,v1=<hex>` (HMAC-SHA256 over `<t>.<body>`) is still sent beside
them for receivers written before; it goes in CIM 0.3 (`verify_legacy`). Its key is the secret
file's contents as they are, `whsec_` prefix and all, as before Standard Webhooks: a receiver
of the old header keeps working whatever the file holds.

One event can never stall the others: whatever fails while building or sending a request
(a header value HTTP refuses, say) is a failed attempt, so the event ends in the dead letters
after `max_attempts`; and the consumer redelivers an event at most `MAX_DELIVER` times
(hub/config.py), the last time ending it with `term()` and an error in the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client
from nats.aio.msg import Msg
from standardwebhooks.webhooks import EmptyWebhookSecretError, WebhookVerificationError
from standardwebhooks.webhooks import Webhook as StandardWebhook

from ..errors import ConfigError
from ..events import Event, EventStore, StoredEvent
from ..events.envelope import read_headers, safe_id
from ..names import DLQ_STREAM, EVENTS_STREAM
from ..tasks import cancel_and_wait
from .config import CONSUMER, MAX_DELIVER, WebhookSettings
from .events import WebhookDeadLettered, WebhookRedelivered
from .metrics import DEAD_LETTERS, DELIVERIES

log = logging.getLogger("cim.hub.webhooks")

LEGACY_SIGNATURE = "X-CIM-Signature"  # before Standard Webhooks; sent until CIM 0.3
SECRET_PREFIX = "whsec_"


def signing_key(secret: bytes) -> bytes:
    """The HMAC key of a secret file's contents: `whsec_<base64>` is decoded as the spec
    says; anything else is the key itself (raw bytes, as secret files held before)."""
    if not secret.startswith(SECRET_PREFIX.encode()):
        return secret
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)  # padding is optional
    except (binascii.Error, ValueError):
        raise ValueError(f"a secret starting with {SECRET_PREFIX} must go on in base64 (the Standard Webhooks "
                         "form); write the raw key without the prefix, or encode it") from None
    if not key:
        raise ValueError(f"the secret after {SECRET_PREFIX} is empty")
    return key


def sign(secret: bytes, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The signature headers of one attempt: Standard Webhooks' three (signed by its
    library) and the legacy X-CIM-Signature. `secret` is the secret file's contents: the
    legacy header is keyed with them as they are (as it always was), the others with
    `signing_key(secret)`."""
    t = int(time.time()) if timestamp is None else timestamp
    signature = StandardWebhook(signing_key(secret)).sign(msg_id, datetime.fromtimestamp(t, tz=UTC), body.decode())
    legacy = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(t), "webhook-signature": signature,
            LEGACY_SIGNATURE: f"t={t},v1={legacy}"}


def verify(secret: bytes, body: bytes, headers: Mapping[str, str]) -> bool:
    """What a receiver runs (any Standard Webhooks verifier does the same): the signature
    matches and its timestamp is within five minutes of now."""
    try:
        StandardWebhook(signing_key(secret)).verify(body, dict(headers), json_parse=False)
    except (WebhookVerificationError, EmptyWebhookSecretError, ValueError):
        return False
    return True


def verify_legacy(secret: bytes, body: bytes, header: str, *, tolerance: float = 300) -> bool:
    """The X-CIM-Signature check receivers ran before Standard Webhooks (gone in CIM 0.3):
    `secret` is the secret file's contents as they are, a `whsec_` one too."""
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


# The body is one CloudEvent in the JSON event format (HTTP structured content mode), so a
# receiver can read it with any CloudEvents SDK; this media type tells it the mode.
BODY_TYPE = "application/cloudevents+json; charset=utf-8"
# A dead letter stored before CloudEvents holds CIM's old JSON body: redelivered, it says so.
LEGACY_BODY_TYPE = "application/json"


def body_of(event: StoredEvent) -> bytes:
    return json.dumps(event.structured(), separators=(",", ":")).encode()


def body_type(body: bytes) -> str:
    """The media type of a stored body: a CloudEvent's, or plain JSON for one from before."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return LEGACY_BODY_TYPE
    return BODY_TYPE if isinstance(parsed, dict) and "specversion" in parsed else LEGACY_BODY_TYPE


class Webhook:
    def __init__(self, settings: WebhookSettings):
        self.settings = settings
        self.name = settings.name
        self.secret = Path(settings.secret_file).read_bytes().strip()
        try:
            signing_key(self.secret)  # a malformed whsec_ secret stops the hub at start, not each delivery
        except ValueError as err:
            raise ConfigError(str(settings.secret_file), [(f"webhooks.{self.name}.secret_file", str(err))]) from None
        if not self.secret:
            raise ConfigError(str(settings.secret_file), [(f"webhooks.{self.name}.secret_file", "the secret file is empty")])

    def wants(self, subject: str) -> bool:
        # The hub's own events never go out: a dead letter about a dead receiver would loop.
        if subject.startswith("cim.evt.hub."):
            return False
        return any(subject_matches(p, subject) for p in self.settings.subjects)

    def delay(self, attempt: int) -> float:
        b = self.settings.backoff or [1]
        return b[min(attempt - 1, len(b) - 1)]

    async def attempt(self, http: aiohttp.ClientSession, event_id: str, event_type: str, body: bytes, n: int,
                      content_type: str = BODY_TYPE) -> str | None:
        """One POST; None when the receiver accepted it, else why not. Never raises (but
        when cancelled): a request that cannot even be built is a failed attempt too."""
        try:
            headers = {
                "Content-Type": content_type, "X-CIM-Event-Id": event_id, "X-CIM-Event-Type": event_type,
                "X-CIM-Webhook": self.name, "X-CIM-Delivery-Attempt": str(n),
                # Signed anew for each attempt (a fresh timestamp), under the same webhook-id.
                **sign(self.secret, event_id, body),
            }
            async with http.post(str(self.settings.url), data=body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=self.settings.timeout)) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    DELIVERIES.labels(self.name, "ok").inc()
                    return None
                reason = f"the receiver answered HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            reason = f"the receiver could not be reached ({type(err).__name__}: {err})"
        except Exception as err:  # a header HTTP refuses (aiohttp's ValueError), a body that is not text, ...
            reason = f"the request could not be made ({type(err).__name__}: {err})"
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
        if self._task is not None:
            await cancel_and_wait(self._task)
        # Then the deliveries, those the fetch loop started while it was being stopped too.
        while self._running and not await cancel_and_wait(*self._running):
            pass
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
            # Not the receiver (attempts never raise): the dead letter or its record could not
            # be written. Tried again a bounded number of times, never for ever: an event that
            # keeps failing would hold one of the consumer's max_ack_pending slots.
            if msg.metadata.num_delivered >= MAX_DELIVER:
                log.exception("delivering event %s (stream seq %d) failed %d times; given up on it",
                              event.id, event.seq, MAX_DELIVER)
                await msg.term()
                return
            log.exception("delivering %s failed; it will be redelivered", event.id)
            await msg.nak(delay=5)
            return
        await msg.ack()

    async def _deliver(self, hook: Webhook, event: StoredEvent, msg: Msg) -> None:
        assert self._http is not None
        try:
            body = body_of(event)
        except Exception as err:  # nothing to send: straight to the dead letters, with the stored bytes
            DELIVERIES.labels(hook.name, "failed").inc()
            await self._dead_letter(hook, event, msg, msg.data or b"",
                                    f"the event could not be made a webhook body ({type(err).__name__}: {err})")
            return
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
        log.warning("webhook %s: event %r dead-lettered after %d attempts: %s", hook.name, event.id, hook.settings.max_attempts, reason)
        DEAD_LETTERS.labels(hook.name).inc()
        cause = safe_id(event.id)  # a stored id with a blank at its end, say, as an id an Event takes
        await self.events.append(Event.of(
            WebhookDeadLettered(event_id=event.id, subject=msg.subject, url=str(hook.settings.url),
                                attempts=hook.settings.max_attempts, reason=reason[:500], dlq_subject=subject),
            hook.name, id=f"hub-dead-lettered-{hook.name}-{cause}", agent=self.agent,
            causation_id=cause,
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
        original = read_headers(headers)  # the dead event's envelope, in either form
        event_id = original.id or f"dlq-{dlq_seq}"
        body = raw.data or b""
        # A letter stored before CloudEvents holds the old JSON body: sent as what it is.
        reason = await hook.attempt(self._http, event_id, original.type or "", body, 0, content_type=body_type(body))
        if reason is not None:
            return {"ok": False, "reason": reason}
        await self.events.append(Event.of(
            WebhookRedelivered(event_id=event_id, dlq_seq=dlq_seq), hook.name, id=f"hub-redelivered-{dlq_seq}",
            agent=self.agent, causation_id=safe_id(event_id),
        ))
        return {"ok": True, "reason": ""}
