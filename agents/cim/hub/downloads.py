"""Streaming a unit's bytes over HTTP without ever sending wrong ones as a complete answer.

The store verifies the CID as it reads and holds its last chunk back until the bytes check
out (cim.store.content, cim.tier.fetch); here the last piece of what is sent is held back too,
until the store's iterator has finished, so the response is complete only if the whole unit
hashed to its CID. A range is cut from that same read: the CID covers the whole content and
the store keeps no digest per chunk, so a range costs a read of the unit (bytes outside it are
hashed, not sent). When a check fails after the headers went out, the connection is closed
short of the Content-Length it announced: a client sees a truncated body, never a 200 or
206 with wrong bytes in full.

A download holds buffers (up to 4 MiB read whole to check, 16 MiB in flight from the tier
agent) and, for a unit in a colder tier, one of the tier agent's fetch slots. So a hub
serves so many at once (`Slots`; past them 503 with Retry-After), and a client that takes
nothing for `idle_timeout` is cut off: slow readers cannot pile up and starve the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..store.units import MEDIA_TYPE

log = logging.getLogger("cim.hub.http")


# A write waits for the client at most idle_timeout per this many bytes: a client must take
# 64 KiB per idle_timeout (2 KiB/s at 30 s) to keep its download.
WRITE_SLICE = 64 * 1024


class Aborted(Exception):
    """The body was cut off after its headers were sent (the reason is logged)."""


class Stalled(Exception):
    """The client took nothing for idle_timeout."""


class Slots:
    """At most `size` of something at once, and at most `per_key` of them for one key (a
    token: one slow reader must not hold every place), taken without waiting: a request that
    finds them taken is answered 503 at once rather than queued (a queue would hold its
    connection)."""

    def __init__(self, size: int, per_key: int | None = None):
        self.size = size
        self.per_key = min(per_key or size, size)
        self.taken = 0
        self._by_key: dict[str, int] = {}

    def held_by(self, key: str) -> int:
        return self._by_key.get(key, 0)

    def take(self, key: str = "") -> bool:
        if self.taken >= self.size or self.held_by(key) >= self.per_key:
            return False
        self.taken += 1
        self._by_key[key] = self.held_by(key) + 1
        return True

    def give_back(self, key: str = "") -> None:
        self.taken -= 1
        left = self.held_by(key) - 1
        if left > 0:
            self._by_key[key] = left
        else:
            self._by_key.pop(key, None)  # a key that holds nothing takes no memory


def media_type_header(media_type: str) -> str:
    """The unit's media type as a Content-Type, or octet-stream for one that could not be a
    header (a hostile record may carry a line break after its `;`)."""
    if MEDIA_TYPE.fullmatch(media_type) and media_type.isascii() and media_type.isprintable():
        return media_type
    return "application/octet-stream"


async def send(request: web.Request, chunks: AsyncIterator[bytes] | None, first: bytes | None, *, status: int,
               headers: dict[str, str], size: int, span: tuple[int, int], idle_timeout: float) -> web.StreamResponse:
    """Send bytes [start, end) of a unit of `size` bytes: `first` is the first chunk the
    store gave (read before the headers, so errors up to there are proper answers), `chunks`
    the rest (None for HEAD: the headers only). Each write waits for the client at most
    `idle_timeout`. Closes `chunks` in every case."""
    start, end = span
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = end - start
    sent = pos = 0

    async def write(data: memoryview | None) -> None:
        if data is None:
            return await _within(resp.write_eof(), idle_timeout)
        for i in range(0, len(data), WRITE_SLICE):
            await _within(resp.write(data[i:i + WRITE_SLICE]), idle_timeout)

    try:
        await _within(resp.prepare(request), idle_timeout)
        if chunks is None:
            await write(None)
            return resp
        pending: memoryview | None = None
        chunk = first
        while chunk is not None:
            lo, pos = pos, pos + len(chunk)
            a, b = max(lo, start), min(pos, end)
            if a < b:
                if pending is not None:
                    await write(pending)
                    sent += len(pending)
                pending = memoryview(chunk)[a - lo:b - lo]
            chunk = await anext(chunks, None)
        # The store's iterator ended without an error: every byte hashed to the CID.
        if pos != size:
            raise Aborted(f"the content has {pos} bytes, its record says {size}")
        if pending is not None:
            await write(pending)
        await write(None)
    except ConnectionError:  # the client went away: nothing to tell it
        pass
    except Stalled:
        log.info("unit %s: download cut off after %d of %d bytes: the client took nothing for %g s (idle_timeout)",
                 request.match_info.get("cid", "?"), sent, end - start, idle_timeout)
        _cut(request, drop=True)
    except Exception as err:
        log.warning("unit %s: download cut off after %d of %d bytes, the client gets a truncated body: %s",
                    request.match_info.get("cid", "?"), sent, end - start, err)
        _cut(request)
    finally:
        if chunks is not None:
            await chunks.aclose()  # type: ignore[attr-defined]  # an async generator: ends the store's read
    return resp


async def _within(step, idle_timeout: float) -> None:
    """One write to the client, or Stalled when it takes nothing for `idle_timeout`."""
    try:
        await asyncio.wait_for(step, idle_timeout)
    except TimeoutError:
        raise Stalled from None


def _cut(request: web.Request, *, drop: bool = False) -> None:
    """End the connection short of the Content-Length. `drop`: at once, with what it still
    buffers (a client that reads nothing would hold a plain close open for ever)."""
    transport = request.transport
    if drop and transport is not None:
        transport.abort()
    request.protocol.force_close()  # no keep-alive: the client must not read on into the next answer
