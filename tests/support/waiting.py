"""Bounded waits for async tests: poll a condition, never sleep for it."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from cim.errors import EmbeddedError


async def async_wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> object:
    """`wait_until` for the event loop; `predicate` may be a coroutine function or a plain one."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise EmbeddedError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
