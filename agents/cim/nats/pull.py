"""Batches of messages from a durable pull consumer, for work that acks each one.

nats-py's `fetch` waits for every message of a batch with its own `next_msg` (a task, a
timer and a random task name each), which on the pipeline's path cost more than the
messages' own parsing. Here the replies land in a buffer through a callback, and one
pull request stays open across fetches: a fetch hands out what has arrived, asks again
only when the request is used up or has expired, and returns as soon as anything is
there, so a slow trickle is not held back to fill a batch.

Messages are nats-py's own (`ack`, `nak`, `term` and `metadata` work as usual). Closing
naks what is still in the buffer and, until the open request expires (at most one fetch
timeout), whatever else it brings: those go out again at once instead of after their
ack wait, which they would sit out delivered to an inbox nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from ..errors import ConsumerGone
from .read import status_of

NS = 1_000_000_000


class PullFetcher:
    def __init__(self, nc: Client, stream: str, consumer: str):
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._sub: Any = None  # the subscription, while running
        self._buffer: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        self._open = 0  # messages the open request may still bring; 0: no request open
        self._failure: str | None = None  # why the open request ended badly, for the next fetch
        self._request_ends = 0.0  # loop time the open request expires at
        self._closing = False

    async def __aenter__(self) -> PullFetcher:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        while self._buffer:
            with contextlib.suppress(Exception):
                await self._buffer.popleft().nak()
        if self._sub is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):  # bounded by the request's own expiry
            async with asyncio.timeout(max(0.0, self._request_ends - loop.time()) + 0.5):
                while self._open:
                    self._arrived.clear()
                    await self._arrived.wait()
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        self._sub = None

    def unread(self, msgs: list[Msg]) -> None:
        """Put fetched messages back in front of the buffer, unprocessed: a caller that
        learns it is stopping after a fetch returned leaves them for `close` to nak."""
        self._buffer.extendleft(reversed(msgs))

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            self._open = max(0, self._open - 1)
            if self._closing:
                with contextlib.suppress(Exception):
                    await msg.nak()
            else:
                self._buffer.append(msg)
        else:
            status, description = status_of(msg)
            if status == "100":  # a heartbeat: nothing ended
                return
            self._open = 0  # 404 no messages, 408 expired, 409 ended early: ask again
            if status == "409" and "Deleted" in description:
                self._failure = f"the consumer {self.consumer} on {self.stream} was deleted"
        self._arrived.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages, as soon as there is one; [] when none came within
        `timeout` seconds. Raises JetStreamUnavailable when the consumer is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._buffer:
            if self._failure:
                failure, self._failure = self._failure, None
                raise ConsumerGone(failure)
            left = deadline - loop.time()
            if left <= 0 or (not self._open and left < 0.1):
                return []
            if not self._open:
                # Expiring a little before our own deadline, so a request never outlives
                # the fetch that made it by much (its messages would wait in the buffer).
                request = {"batch": batch, "expires": int((left - 0.05) * NS)}
                self._open = batch
                self._request_ends = loop.time() + left
                self._arrived.clear()
                await self.nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)
            try:
                async with asyncio.timeout(left + 0.5):  # the server's 408 normally comes first
                    await self._arrived.wait()
            except TimeoutError:
                self._open = 0  # the request was lost (a reconnect): make a new one
            self._arrived.clear()
        out: list[Msg] = []
        while self._buffer and len(out) < batch:
            out.append(self._buffer.popleft())
        return out
