"""Riding out a JetStream leader election.

When a stream's leader dies, its subjects have no responders (or requests time out) for a
few seconds until a new leader is elected (~5 s measured on a 3-node cluster). Operations
that are safe to repeat (appends carry Nats-Msg-Id, content is keyed by CID) retry through
that window instead of failing the user's command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

log = logging.getLogger("cim.retry")
T = TypeVar("T")

BACKOFF = (0.1, 0.2, 0.4, 0.8, 1.0)


def transient(err: BaseException) -> bool:
    """Errors a new leader will clear: no responders, timeouts, 503 'temporarily unavailable'."""
    if isinstance(err, NoStreamResponseError | ServiceUnavailableError | asyncio.TimeoutError | nats.errors.TimeoutError):
        return True
    if isinstance(err, nats.errors.NoRespondersError | nats.errors.ConnectionReconnectingError):
        return True
    return isinstance(err, APIError) and err.code == 503


async def through_elections(op: Callable[[], Awaitable[T]], *, within: float, what: str) -> T:
    """Run `op`, repeating it on transient errors for up to `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as err:
            if not transient(err) or loop.time() >= deadline:
                raise
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            attempt += 1
            if attempt == 1:
                log.info("%s: %s; retrying while a leader is elected", what, type(err).__name__)
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
