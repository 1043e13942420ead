"""Concurrent small puts stored together: group commit for the hub's HTTP ingest.

Each HTTP put alone costs a content lookup, a chunk, an index entry and an event, each a
round trip and a socket write of its own. Puts that arrive while a batch is on its way to
the server wait for the next batch and go out with it (`UnitStore.put_small_many`): one
lookup, and every chunk, index entry and event in a pipelined wave. Nothing waits for a
timer: a lone put goes out at once, and batches grow only with the load.

Every guarantee of a single put holds per request: it is answered only after its
`unit.created` is stored, a retry is idempotent (the same CID answers created=False), and a
failure fails that request alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import CimError, JetStreamUnavailable
from .unit_store import PutResult, UnitStore

MAX_BATCH = 128
IN_FLIGHT = 2  # batches on their way at once: while one waits for acks, the next is sent


class PutBatcher:
    def __init__(self, units: UnitStore, *, max_batch: int = MAX_BATCH, in_flight: int = IN_FLIGHT):
        self.units = units
        self.max_batch = max_batch
        self.in_flight = in_flight
        self._queue: list[tuple[bytes, dict[str, Any], asyncio.Future[PutResult]]] = []
        self._drains: set[asyncio.Task] = set()  # references, so a running drain is not collected
        # Drains still taking from the queue. Counted down in the same step in which a drain
        # finds the queue empty: a task's done-callback runs a turn later, and a put that came
        # in between would wait with nobody to take it.
        self._active = 0

    async def put(self, data: bytes, **meta: Any) -> PutResult:
        fut: asyncio.Future[PutResult] = asyncio.get_running_loop().create_future()
        self._queue.append((data, meta, fut))
        if self._active < self.in_flight:
            self._active += 1
            task = asyncio.create_task(self._drain(), name="put-batch")
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        # A request that goes away (the client hung up) leaves its put to finish: it is
        # idempotent, and the client's retry will find it.
        return await fut

    async def _drain(self) -> None:
        try:
            await self._take()
        finally:
            self._active -= 1

    async def _take(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            try:
                results: list[PutResult | BaseException] = list(
                    await self.units.put_small_many([(data, meta) for data, meta, _ in batch]))
            except CimError as err:  # no answer for the batch at all: each of its puts hears it
                results = [err] * len(batch)
            except Exception as err:
                results = [JetStreamUnavailable(f"storing failed: {err or type(err).__name__}; put it again")] * len(batch)
            for (_, _, fut), result in zip(batch, results, strict=True):
                if fut.done():  # its request was cancelled
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
