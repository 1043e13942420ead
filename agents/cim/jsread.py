"""Fast, resumable reads of a JetStream stream through an ephemeral pull consumer.

One primitive serves every read: an aggregate's events, everything from a position, a
catch-up subscription that turns live, and the chunks of an object. It talks to the
JetStream API directly, keeps a NEXT request in flight while the previous batch drains
(so the server never waits for us), and resumes after the last sequence it delivered when
the consumer vanishes (server restart, leader change).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg

from .errors import JetStreamUnavailable

log = logging.getLogger("cim.jsread")
NS = 1_000_000_000


@dataclass(slots=True)
class StreamMsg:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]
    timestamp_ns: int
    pending: int  # messages left in the stream behind this one, when it was delivered


def _parse_ack_subject(reply: str) -> tuple[int, int, int]:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (v1)
    # $JS.ACK.<domain>.<acchash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token> (v2)
    parts = reply.split(".")
    if len(parts) >= 12:
        parts = parts[:2] + parts[4:11]
    return int(parts[5]), int(parts[7]), int(parts[8])


async def last_seq(nc: Client, stream: str, subjects: list[str] | None, timeout: float = 5.0) -> int:
    """The sequence of the last message matching `subjects`, as the stream LEADER knows it.

    Replicas may lag (a node that just restarted); an R1 consumer placed on one would end a
    read early. The leader's answer is the bound a complete read must reach.
    """
    best = 0
    for subject in subjects or [">"]:
        resp = await _api(nc, f"STREAM.MSG.GET.{stream}", {"last_by_subj": subject}, timeout)
        err = resp.get("error")
        if err:
            if err.get("err_code") == 10059:
                raise JetStreamUnavailable(f"stream {stream} does not exist; run `cim provision` (or `cim up`) first")
            if err.get("code") == 404:
                continue
            raise _Gone(f"cannot read the end of {stream}: {err.get('description')}")
        best = max(best, int(resp["message"]["seq"]))
    return best


def status_of(msg: Msg) -> tuple[str, str]:
    """A status message's code and description ("" for a data message).

    nats-py keys the description by an enum that does not hash like its text, so a plain
    `headers.get("Description")` never finds it.
    """
    headers = msg.headers or {}
    return headers.get("Status", ""), next((v for k, v in headers.items() if k == "Description"), "")


class _Gone(Exception):
    """The consumer is gone; recreate it after the last delivered sequence."""


async def _api(nc: Client, subject: str, body: dict | None, timeout: float) -> dict:
    msg = await nc.request(f"$JS.API.{subject}", json.dumps(body or {}).encode(), timeout=timeout)
    return json.loads(msg.data)


async def read_stream(
    nc: Client,
    stream: str,
    subjects: list[str] | None = None,
    *,
    start_seq: int = 1,
    follow: bool = False,
    batch: int = 256,
    max_bytes: int = 0,
    timeout: float = 5.0,
    resume_wait: float = 0.5,
    resume_for: float = 60.0,
    count: int | None = None,
) -> AsyncIterator[StreamMsg]:
    """Yield the stream's messages from `start_seq` in order.

    Without `follow` it ends at the last message that existed when reading started (as the
    leader says), or after `count` messages when the caller knows how many there are (an
    object's chunks): that saves asking the leader, which answers with the whole last
    message. With `follow` it keeps going live and survives server restarts: it retries for
    `resume_for` seconds after a failure before giving up with JetStreamUnavailable.
    """
    next_seq = max(1, start_seq)
    failing_since: float | None = None
    loop = asyncio.get_running_loop()
    end_seq: int | None = None
    delivered = 0
    while True:
        try:
            if not follow and end_seq is None and count is None:
                end_seq = await last_seq(nc, stream, subjects, timeout)
            if (end_seq is not None and next_seq > end_seq) or (count is not None and delivered >= count):
                return
            async for m in _read_once(nc, stream, subjects, next_seq, follow, batch, max_bytes, timeout):
                failing_since = None
                next_seq = m.seq + 1
                delivered += 1
                yield m
                if (end_seq is not None and m.seq >= end_seq) or (count is not None and delivered >= count):
                    return
                if not follow and m.pending == 0:
                    raise _Gone(f"the consumer's replica ended at {m.seq}, before the leader's {end_seq or 'end'}")
            if end_seq is not None or count is not None:
                raise _Gone(f"the consumer's replica had nothing after {next_seq - 1}, the leader has up to "
                            f"{end_seq or 'more'}")
            return
        except _Gone as gone:
            reason = str(gone)
            if count is None and end_seq is not None:
                # Ask the leader again: the end it gave may be gone by now (a KV entry's TTL,
                # a delete), and a read cannot wait for messages that no longer exist.
                with contextlib.suppress(Exception):
                    end_seq = await last_seq(nc, stream, subjects, timeout)
                    if next_seq > end_seq:
                        return
            if count is not None and end_seq is None:
                # Fewer than `count` here: a lagging replica, or really fewer (a damaged
                # object). The leader's end tells which; the caller's checks say what is wrong.
                with contextlib.suppress(Exception):
                    end_seq = await last_seq(nc, stream, subjects, timeout)
                    if next_seq > end_seq:
                        return
        except (asyncio.TimeoutError, ConnectionError, OSError) as err:
            reason = f"{type(err).__name__}: {err}"
        except Exception as err:  # nats-py raises its own connection errors; all mean "try again"
            if isinstance(err, JetStreamUnavailable):
                raise
            reason = f"{type(err).__name__}: {err}"
        now = loop.time()
        failing_since = failing_since or now
        if now - failing_since > resume_for:
            raise JetStreamUnavailable(
                f"reading {stream} failed for {resume_for:.0f}s ({reason}); is the server up and JetStream enabled?"
            )
        log.info("read of %s interrupted (%s); resuming at sequence %d", stream, reason, next_seq)
        await asyncio.sleep(resume_wait)  # backoff between resume attempts, not a wait for a condition


async def _read_once(
    nc: Client,
    stream: str,
    subjects: list[str] | None,
    start_seq: int,
    follow: bool,
    batch: int,
    max_bytes: int,
    timeout: float,
) -> AsyncIterator[StreamMsg]:
    config: dict = {
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": start_seq,
        "ack_policy": "none",
        "replay_policy": "instant",
        "inactive_threshold": 30 * NS,
        "mem_storage": True,
        "num_replicas": 1,
    }
    if subjects and len(subjects) == 1:
        config["filter_subject"] = subjects[0]
    elif subjects:
        config["filter_subjects"] = subjects
    # Named in the subject (an ephemeral consumer still: no durable_name), so an agent's
    # permission `$JS.API.CONSUMER.CREATE.<stream>.>` covers it.
    config["name"] = f"cim_{uuid.uuid4().hex[:16]}"
    resp = await _api(nc, f"CONSUMER.CREATE.{stream}.{config['name']}", {"stream_name": stream, "config": config}, timeout)
    if "error" in resp:
        err = resp["error"]
        if err.get("err_code") == 10059:
            raise JetStreamUnavailable(f"stream {stream} does not exist; run `cim provision` (or `cim up`) first")
        raise _Gone(f"cannot create a consumer on {stream}: {err.get('description')}")
    consumer = resp["name"]
    if not follow and resp.get("num_pending", 0) == 0:
        await _delete(nc, stream, consumer)
        return  # the caller compares with the leader's end and retries if this replica lags
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        queue.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=on_msg)
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
    expires = int(timeout * NS)
    request: dict = {"batch": batch, "expires": expires, "idle_heartbeat": int(min(timeout / 2, 5) * NS)}
    if max_bytes:
        request["max_bytes"] = max_bytes
    body = json.dumps(request).encode()
    try:
        await nc.publish(next_subject, body, reply=inbox)
        outstanding = batch  # messages the server may still send us for open requests
        while True:
            # Refill before the window runs dry, so the server always has a request to fill.
            if outstanding <= batch // 2:
                await nc.publish(next_subject, body, reply=inbox)
                outstanding += batch
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the queue yields, and the agent never stops.
                async with asyncio.timeout(timeout * 2):
                    msg = await queue.get()
            except TimeoutError:
                # No data and no heartbeat for two request lifetimes: the consumer is gone.
                raise _Gone("no messages or heartbeats from the server") from None
            if msg.reply and msg.reply.startswith("$JS.ACK."):
                outstanding -= 1
                sseq, ts, pending = _parse_ack_subject(msg.reply)
                yield StreamMsg(msg.subject, sseq, msg.data, dict(msg.headers or {}), ts, pending)
                continue
            status, desc = status_of(msg)
            if status == "100":  # idle heartbeat (or flow control): the consumer is alive
                if msg.reply:
                    await nc.publish(msg.reply, b"")
                continue
            if status in ("404", "408"):  # this request ended (no messages / expired)
                pending_left = int((msg.headers or {}).get("Nats-Pending-Messages", batch) or 0)
                outstanding -= pending_left
                if outstanding <= 0:
                    outstanding = 0
                continue
            if status == "409" and not ("Deleted" in desc or "Leadership" in desc):
                outstanding = 0  # the request ended early (batch or byte limit): ask again
                continue
            raise _Gone(f"consumer status {status} {desc}".strip())
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await _delete(nc, stream, consumer)


async def _delete(nc: Client, stream: str, consumer: str) -> None:
    with contextlib.suppress(Exception):
        await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", b"")
