"""Reads asked for in the same turn of the event loop, sent as one request.

The units of a fetched batch go through their steps concurrently, so their `extract` steps
ask for their contents at nearly the same moment; gathering those asks into one batched
read costs two requests for the batch instead of two per unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class CoalescedReads:
    def __init__(self, read_many: Callable[[list[str]], Awaitable[dict[str, bytes]]]):
        self._read_many = read_many
        # Each asker waits on a future of its own: one cancelled asker cancels only its
        # own (cheaper than shielding a shared one).
        self._pending: dict[str, list[asyncio.Future]] = {}
        self._running: set[asyncio.Task] = set()

    async def get(self, cid: str) -> bytes | None:
        """The content, or None when the batched read did not have it (read it singly)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self._pending:
            # After every task already runnable has had its turn (and maybe asked too).
            loop.call_soon(self._flush)
        self._pending.setdefault(cid, []).append(fut)
        return await fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        task = asyncio.create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: dict[str, list[asyncio.Future]]) -> None:
        try:
            found = await self._read_many(list(batch))
        except Exception:  # the single reads that follow report what is wrong
            found = {}
        for cid, futs in batch.items():
            for fut in futs:
                if not fut.done():
                    fut.set_result(found.get(cid))
