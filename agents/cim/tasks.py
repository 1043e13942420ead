"""An agent's background work, owned by the runtime (issue 15 item 7).

Every task is named and held (an unreferenced task may vanish mid-flight), a crash is logged
with its name rather than lost, and on stop the runtime cancels them all and waits a bounded
time. `Supervisor.bounded` caps a fan-out: at most `limit` run at once, and the next one
waits for a free slot, so a burst of requests queues in NATS instead of in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("cim.tasks")

F = TypeVar("F", bound=asyncio.Future[Any])  # a Task, or a future ensure_future made


class Supervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._closing:
            coro.close()
            raise RuntimeError(f"the agent is stopping: {name} is not started")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def bounded(self, limit: int) -> Bounded:
        return Bounded(self, limit)

    async def close(self, timeout: float) -> None:
        """Cancel every task and wait for them, at most `timeout` seconds in all."""
        self._closing = True
        await cancel_and_wait(*self._tasks, timeout=timeout)  # says which did not stop


async def cancel_and_wait(*tasks: F, timeout: float = 30.0) -> set[F]:
    """Cancel `tasks` and wait for them to end; returns those still running after `timeout`.

    They are cancelled again on every round: Python 3.11's wait_for (under every nats-py
    request) can swallow a cancellation that races with the answer it was waiting for, and a
    plain `task.cancel(); await task` then waits for ever. That stopped a projection for good
    (applied to #161, then nothing until the agent stopped). The caller's own cancellation is
    never swallowed here."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    for task in pending:  # at least once, however little time is left
        task.cancel()
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.25, max(0.0, deadline - loop.time())))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an ending task's error is the caller's to read, never a warning
    if pending:
        log.warning("%s did not end within %g s of being cancelled; going on without waiting for them",
                    ", ".join(sorted(_name(t) for t in pending)), timeout)
    return pending


async def until_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Until one of `events` is set (a stop among them, so the wait never outlives it), or
    `timeout` seconds pass."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*waits)


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


class Bounded:
    """A fan-out of at most `limit` supervised tasks at once."""

    def __init__(self, supervisor: Supervisor, limit: int):
        self.supervisor = supervisor
        self.limit = limit
        self.running = 0
        self._freed = asyncio.Event()

    async def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start `coro` once a slot is free, waiting here for one."""
        try:
            while self.running >= self.limit:
                self._freed.clear()
                await self._freed.wait()
        except BaseException:
            coro.close()
            raise
        return self._start(coro, name)

    def try_spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        """Start `coro` if a slot is free now; otherwise close it and return None (for work
        that may be skipped, such as promoting a unit that will be read again)."""
        if self.running >= self.limit:
            coro.close()
            return None
        return self._start(coro, name)

    def _start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = self.supervisor.spawn(coro, name)
        self.running += 1
        task.add_done_callback(self._release)
        return task

    def _release(self, _task: asyncio.Task[Any]) -> None:
        self.running -= 1
        self._freed.set()
