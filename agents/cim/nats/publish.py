"""Pipelined JetStream publishes with headers: the write side of `cim.nats.read`.

nats-py's `publish_async` spends about 30 µs of CPU on each message that carries our dozen
CloudEvents headers (it re-validates and re-encodes every header, draws random bytes for
each reply token and wraps each wait in a task); appends are most of what the pipeline and
the hub do, so that cost was most of theirs. Here a message is encoded in one pass and
its acknowledgement matched by a counter on one reply subscription per connection: about
9 µs. This reaches into two internals of nats-py's client (its pending-write buffer and its
flusher, the same calls its own `publish` makes), so every message takes the public path
instead whenever those are missing, the connection is not up, or a message is unusual (a
header with a line break, a payload over the server's limit).

The same reply subscription serves requests answered by several messages that end in a
status message (batched direct gets), so those need no subscription of their own and no
`next_msg` (a task and a timer) per message either.
"""

from __future__ import annotations

import asyncio
import json
import re
import weakref
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

_NATS_HDR = b"NATS/1.0\r\n"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_publishers: weakref.WeakKeyDictionary[Client, Publisher] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Ack:
    stream: str
    seq: int
    duplicate: bool


@dataclass(slots=True)
class _Replies:
    """The messages of one multi-message answer, until its closing status message."""

    done: asyncio.Future
    msgs: list[Msg] = field(default_factory=list)
    end: Msg | None = None  # the closing status message


def publisher_for(nc: Client) -> Publisher:
    """The connection's one publisher (one reply subscription per connection)."""
    pub = _publishers.get(nc)
    if pub is None:
        pub = _publishers[nc] = Publisher(nc)
    return pub


def _fast_path_available(nc: Client) -> bool:
    return all(hasattr(nc, a) for a in ("_send_command", "_flush_pending", "_flush_queue", "stats"))


class Publisher:
    def __init__(self, nc: Client):
        self.nc = nc
        self.fast = _fast_path_available(nc)
        self._prefix: str | None = None
        self._waiting: dict[str, asyncio.Future | _Replies] = {}
        self._next = 0
        self._lock = asyncio.Lock()
        self._good_keys: set[str] = set()

    async def _reply_subject(self) -> str:
        if self._prefix is None:
            async with self._lock:
                if self._prefix is None:
                    prefix = self.nc.new_inbox()
                    await self.nc.subscribe(prefix + ".*", cb=self._on_ack)
                    self._prefix = prefix
        return self._prefix

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future:
        """Send one message to its stream; the future resolves to an `Ack`, or fails with
        nats-py's APIError (the stream refused it) or NoStreamResponseError (no stream)."""
        nc = self.nc
        if not self.fast or not nc.is_connected or len(payload) > nc.max_payload:
            return await nc.jetstream().publish_async(subject, payload, headers=headers)
        block = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if block.count("\n") != len(headers) or block.count("\r") != len(headers) or not self._plain_keys(headers):
            return await nc.jetstream().publish_async(subject, payload, headers=headers)
        hdr = _NATS_HDR + block.encode() + b"\r\n"
        prefix = await self._reply_subject()
        token, fut = self._expect(None)
        cmd = f"HPUB {subject} {prefix}.{token} {len(hdr)} {len(hdr) + len(payload)}\r\n".encode() + hdr + payload + b"\r\n"
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(payload)
        await nc._send_command(cmd)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
        return fut

    def _expect(self, replies: _Replies | None) -> tuple[str, asyncio.Future]:
        """A fresh reply token and the future its answer resolves."""
        self._next += 1
        token = str(self._next)
        fut = replies.done if replies else asyncio.get_running_loop().create_future()
        self._waiting[token] = replies or fut
        def forget(_f: asyncio.Future, t: str = token) -> None:
            self._waiting.pop(t, None)

        fut.add_done_callback(forget)
        return token, fut

    async def collect(self, subject: str, payload: bytes, timeout: float) -> list[Msg]:
        """Send a request answered by messages and then a status message (e.g. a batched
        direct get: its messages, then 204 EOB, or 404 when there are none); those
        messages. Raises asyncio.TimeoutError when the answer does not end in time."""
        return (await self.collect_until_status(subject, payload, timeout))[0]

    async def collect_until_status(self, subject: str, payload: bytes, timeout: float) -> tuple[list[Msg], Msg]:
        """`collect`, with the closing status message (its code and headers say why the
        answer ended: 204 EOB and how many more match, 404 none, 503 no responders)."""
        prefix = await self._reply_subject()
        replies = _Replies(asyncio.get_running_loop().create_future())
        token, fut = self._expect(replies)
        await self.nc.publish(subject, payload, reply=f"{prefix}.{token}")
        try:
            msgs = await asyncio.wait_for(fut, timeout)
        finally:
            fut.cancel()  # no-op once resolved; otherwise stops collecting
        assert replies.end is not None
        return msgs, replies.end

    def _plain_keys(self, headers: dict[str, str]) -> bool:
        """Header names are tokens (no space, no colon); the few names in use are remembered."""
        for k in headers:
            if k not in self._good_keys:
                if not _TOKEN.fullmatch(k):
                    return False
                self._good_keys.add(k)
        return True

    async def _on_ack(self, msg) -> None:
        assert self._prefix is not None
        fut = self._waiting.get(msg.subject[len(self._prefix) + 1:])
        if isinstance(fut, _Replies):
            if not fut.done.done():
                if msg.headers and "Status" in msg.headers:
                    fut.end = msg
                    fut.done.set_result(fut.msgs)
                else:
                    fut.msgs.append(msg)
            return
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(NoStreamResponseError())
            return
        try:
            resp = json.loads(msg.data)
        except ValueError:
            fut.set_exception(APIError(description=f"unreadable acknowledgement {msg.data[:80]!r}"))
            return
        err = resp.get("error")
        if err:
            try:
                APIError.from_error(err)  # raises the error class that fits the code
            except APIError as refused:
                fut.set_exception(refused)
        else:
            fut.set_result(Ack(resp.get("stream", ""), int(resp.get("seq", 0)), bool(resp.get("duplicate"))))
