"""Fast, resumable reads of a JetStream stream by batched direct gets, without a consumer.

One primitive serves every read: an aggregate's events, everything from a position, a
catch-up subscription that turns live, and the chunks of an object. It asks the stream
directly for the next batch of messages matching a filter (`$JS.API.DIRECT.GET`), keeps
the following batch in flight while one is handed out (so the server never waits for us),
and resumes after the last sequence it delivered when a request fails (server restart,
leader change).

Why no consumer: NATS permissions match whole subject tokens, and a consumer's name is one
token, so a right to create or delete ephemeral consumers on a stream is a right over every
consumer on it, the hub's and the pipelines' durable ones included. Readers that hold no
consumer right cannot touch those (issue 14), and leave no consumers behind either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from ..errors import JetStreamUnavailable
from .api import JsError, api, error_code
from .publish import publisher_for

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
            if error_code(resp) == JsError.STREAM_NOT_FOUND:
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


class TooMany(JetStreamUnavailable):
    """More subjects match than one `multi_last` may answer for."""


class _Gone(Exception):
    """The consumer is gone; recreate it after the last delivered sequence."""


async def _api(nc: Client, subject: str, body: dict | None, timeout: float) -> dict[str, Any]:
    return await api(nc, subject, body or {}, timeout=timeout)



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

    def answered() -> None:
        nonlocal failing_since
        failing_since = None

    end_seq: int | None = None
    delivered = 0
    while True:
        try:
            if not follow and end_seq is None and count is None:
                end_seq = await last_seq(nc, stream, subjects, timeout)
            if (end_seq is not None and next_seq > end_seq) or (count is not None and delivered >= count):
                return
            async with contextlib.aclosing(
                _read_once(nc, stream, subjects, next_seq, follow, batch, max_bytes, timeout, end_seq, answered)
            ) as messages:
                async for m in messages:
                    failing_since = None
                    next_seq = m.seq + 1
                    delivered += 1
                    yield m
                    if (end_seq is not None and m.seq >= end_seq) or (count is not None and delivered >= count):
                        return
            if end_seq is not None or count is not None:
                raise _Gone(f"the replica that answered had nothing after {next_seq - 1}, the leader has up to "
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
        except TimeoutError:
            reason = "no answer"
        except (ConnectionError, OSError) as err:
            reason = f"{type(err).__name__}: {err}"
        except Exception as err:  # nats-py raises its own connection errors; all mean "try again"
            if isinstance(err, JetStreamUnavailable):
                raise
            reason = f"{type(err).__name__}: {err}"
        now = loop.time()
        failing_since = failing_since or now
        if now - failing_since > resume_for:
            raise JetStreamUnavailable(
                f"reading {stream} failed for {resume_for:.0f}s ({reason}); is the server up with JetStream enabled, "
                f"and may this user publish to $JS.API.DIRECT.GET.{stream} (reads are direct gets)?"
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
    upto: int | None = None,
    answered: Callable[[], None] | None = None,
) -> AsyncGenerator[StreamMsg, None]:
    """The messages from `start_seq`, in stream order, by batched direct gets: no consumer,
    so a reader needs no right to create, pull from or delete consumers, and none can touch
    another agent's durable one. Ends when the answering replica has no more (the caller
    compares with the leader's end); with `follow`, looks again after a growing pause.

    Several subject filters are merged by sequence. A filter that had nothing more is only
    known complete up to the stream's last sequence at the time it was asked (`upto`, or the
    stream's last sequence asked before the round), and only once the stream leader agrees
    that it has nothing more of that filter (a replica may lag), so no message past what
    every filter has answered for is handed out before a slower filter's earlier one.
    `answered` is called after every round the server answered (a read that keeps getting
    answers is not failing).
    """
    cursors = [_Cursor(f, start_seq) for f in (subjects or [">"])]
    try:
        async for m in _merged(nc, stream, cursors, start_seq, follow, batch, max_bytes, timeout, upto, answered):
            yield m
    finally:
        for c in cursors:
            c.close()


async def _merged(nc: Client, stream: str, cursors: list[_Cursor], start_seq: int, follow: bool, batch: int,
                  max_bytes: int, timeout: float, upto: int | None,
                  answered: Callable[[], None] | None) -> AsyncIterator[StreamMsg]:
    single = len(cursors) == 1
    last = start_seq - 1
    idle = IDLE_POLL[0]
    while True:
        bound = upto if upto is not None else (None if single else await _stream_last(nc, stream, timeout))
        await asyncio.gather(*(c.refill(nc, stream, batch, max_bytes, timeout, bound, upto, single)
                               for c in cursors if c.wants_more(follow)))
        if answered is not None:
            answered()
        watermark = min(c.complete_to for c in cursors)
        progressed = False
        while True:
            ready = [c for c in cursors if c.buf and c.buf[0].seq <= watermark]
            if not ready:
                break
            c = min(ready, key=lambda c: c.buf[0].seq)
            m = c.buf.popleft()
            if m.seq <= last:
                continue  # matched by two filters: handed out once
            last = m.seq
            progressed = True
            yield m
            if single and not c.buf and c.more:
                break  # refill (a prefetch may already be under way)
        if progressed:
            idle = IDLE_POLL[0]
            continue
        if single and (cursors[0].more or cursors[0].buf):
            continue
        if not follow and not any(c.more or c.buf for c in cursors):
            return
        # Caught up and following, or a replica lagging behind the leader: look again, less
        # often while nothing comes.
        await asyncio.sleep(idle)
        idle = min(idle * 2, IDLE_POLL[1])
        if follow:
            for c in cursors:
                c.more = True


IDLE_POLL = (0.02, 0.5)  # seconds between looks for new messages of a caught-up follow
DIRECT_MAX_BYTES = 16 * 1024 * 1024  # one batch's bytes when the caller sets no limit
_DIRECT_HEADERS = frozenset(
    ("Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending", "Nats-Last-Sequence",
     "Nats-UpTo-Sequence"))


class _Cursor:
    """One subject filter: its next sequence, what was fetched and not yet handed out, and
    how far it is known complete."""

    __slots__ = ("_prefetch", "buf", "complete_to", "filter", "more", "next_seq")

    def __init__(self, subject: str, start_seq: int):
        self.filter = subject
        self.next_seq = start_seq
        self.buf: deque[StreamMsg] = deque()
        self.more = True
        self.complete_to = start_seq - 1
        self._prefetch: tuple[int, asyncio.Task] | None = None

    def wants_more(self, follow: bool) -> bool:
        return not self.buf and (self.more or follow)

    async def refill(self, nc: Client, stream: str, batch: int, max_bytes: int, timeout: float,
                     bound: int | None, upto: int | None, single: bool) -> None:
        ahead, self._prefetch = self._prefetch, None
        if ahead is not None and ahead[0] == self.next_seq:
            got, more = await ahead[1]
        else:
            got, more = await _direct_batch(nc, stream, self.filter, self.next_seq, batch, max_bytes, timeout)
        past_end = upto is not None and bool(got) and got[-1].seq > upto
        if past_end:
            got, more = [m for m in got if upto is not None and m.seq <= upto], False  # past this read's end
        self.buf.extend(got)
        self.more = more
        if got:
            self.next_seq = got[-1].seq + 1
        if more:
            self.complete_to = got[-1].seq if got else self.complete_to
            if single:  # more to come: fetch it while this batch is handed out
                task = asyncio.ensure_future(_direct_batch(nc, stream, self.filter, self.next_seq, batch, max_bytes, timeout))
                self._prefetch = (self.next_seq, task)
        elif single or past_end:
            # Alone, a filter is handed out in order whatever a replica lags; past the end,
            # the replica that answered had everything before it.
            self.complete_to = max(self.next_seq - 1, bound if bound is not None else 1 << 62)
        elif await last_seq(nc, stream, [self.filter], timeout) < self.next_seq:
            # Nothing more here, and the leader has nothing more either: this filter is
            # complete up to what the stream held when the round began.
            self.complete_to = max(self.next_seq - 1, bound or 0)
        else:
            # The leader has more of this filter than the replica gave (it lags, or they are
            # new): not complete past what is here, so no other filter's later message goes
            # out before them. Asked again next round.
            self.complete_to = self.next_seq - 1
            self.more = True

    def close(self) -> None:
        if self._prefetch is not None:
            task = self._prefetch[1]
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
            self._prefetch = None


async def _stream_last(nc: Client, stream: str, timeout: float) -> int:
    info = await _api(nc, f"STREAM.INFO.{stream}", None, timeout)
    if "error" in info:
        raise _missing_or_gone(stream, info["error"])
    return int(info["state"]["last_seq"])


def _missing_or_gone(stream: str, err: dict) -> Exception:
    if err.get("err_code") == JsError.STREAM_NOT_FOUND:
        return JetStreamUnavailable(f"stream {stream} does not exist; run `cim provision` (or `cim up`) first")
    return _Gone(f"cannot read {stream}: {err.get('description')}")


async def _direct_batch(nc: Client, stream: str, subject: str, seq: int, batch: int, max_bytes: int,
                        timeout: float) -> tuple[list[StreamMsg], bool]:
    """One batched direct get: the messages on `subject` from `seq`, and whether more match."""
    request = {"seq": seq, "batch": batch, "next_by_subj": subject, "max_bytes": max_bytes or DIRECT_MAX_BYTES}
    msgs, end = await publisher_for(nc).collect_until_status(
        f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), timeout)
    status, desc = status_of(end)
    if status == "404":
        return [], False
    if status == "503":  # no responders: no such stream, or it takes no direct gets
        info = await _api(nc, f"STREAM.INFO.{stream}", None, timeout)
        if "error" in info:
            raise _missing_or_gone(stream, info["error"])
        if not info["config"].get("allow_direct"):
            raise JetStreamUnavailable(f"stream {stream} does not allow direct gets; run `cim provision` to set allow_direct")
        raise _Gone("no server answered the direct get")
    if status != "204":
        raise _Gone(f"direct get answered {status} {desc}".strip())
    return [from_direct(m) for m in msgs], int((end.headers or {}).get("Nats-Num-Pending", 0)) > 0


async def last_per_subject(nc: Client, stream: str, subject: str, *, limit: int, what: str,
                           timeout: float = 5.0) -> list[StreamMsg]:
    """The last message of every subject matching `subject` (a KV bucket's current values),
    in one batched direct get (`multi_last`), without a consumer. `what` names the stream
    in errors ("the registry bucket CIM_REGISTRY")."""
    request = json.dumps({"multi_last": [subject], "batch": limit}).encode()
    try:
        msgs, end = await publisher_for(nc).collect_until_status(f"$JS.API.DIRECT.GET.{stream}", request, timeout)
    except Exception as err:
        raise JetStreamUnavailable(f"{what} did not answer within {timeout:g}s: {err or type(err).__name__}; "
                                   f"may this user publish to $JS.API.DIRECT.GET.{stream}?") from err
    status, desc = status_of(end)
    if status == "404":
        return []
    if status == "413":
        raise TooMany(f"{what} holds more than {limit} keys matching {subject}")
    if status == "503":
        raise JetStreamUnavailable(f"{what} does not exist (or takes no direct gets); run `cim provision` (or `cim up`)")
    if status != "204":
        raise JetStreamUnavailable(f"cannot read {what}: {status} {desc}".strip())
    if int((end.headers or {}).get("Nats-Num-Pending", 0) or 0):
        log.warning("%s holds more than %d entries; only the first %d are read", what, limit, limit)
    return [from_direct(m) for m in msgs]


def from_direct(m: Msg) -> StreamMsg:
    """A message of a direct get's answer, with the stream's own headers as it stored them."""
    h = m.headers or {}
    return StreamMsg(h["Nats-Subject"], int(h["Nats-Sequence"]), m.data,
                     {k: v for k, v in h.items() if k not in _DIRECT_HEADERS},
                     _timestamp_ns(h.get("Nats-Time-Stamp", "")), int(h.get("Nats-Num-Pending", 0) or 0))


def _timestamp_ns(stamp: str) -> int:
    """The server's RFC 3339 UTC time with nanoseconds, as nanoseconds since the epoch."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    try:
        seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    except ValueError:
        return 0
    digits = "".join(ch for ch in frac if ch.isdigit())[:9]
    return seconds * NS + int(digits.ljust(9, "0"))

