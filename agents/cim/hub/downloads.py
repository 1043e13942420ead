"""Streaming a unit's bytes over HTTP without ever sending wrong ones as a complete answer.

The store verifies the CID as it reads and holds its last chunk back until the bytes check
out (cim.store.content, cim.tier.fetch); here the last piece of what is sent is held back too,
until the store's iterator has finished, so the response is complete only if the whole unit
hashed to its CID. A range is cut from that same read: the CID covers the whole content and
the store keeps no digest per chunk, so a range costs a read of the unit (bytes outside it are
hashed, not sent). When a check fails after the headers went out, the connection is closed
short of the Content-Length it announced: a client sees a truncated body, never a 200 or
206 with wrong bytes in full.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..store.units import MEDIA_TYPE

log = logging.getLogger("cim.hub.http")


class Aborted(Exception):
    """The body was cut off after its headers were sent (the reason is logged)."""


def media_type_header(media_type: str) -> str:
    """The unit's media type as a Content-Type, or octet-stream for one that could not be a
    header (a hostile record may carry a line break after its `;`)."""
    if MEDIA_TYPE.match(media_type) and media_type.isascii() and media_type.isprintable():
        return media_type
    return "application/octet-stream"


async def send(request: web.Request, chunks: AsyncIterator[bytes], first: bytes | None, *, status: int,
               headers: dict[str, str], size: int, span: tuple[int, int]) -> web.StreamResponse:
    """Send bytes [start, end) of a unit of `size` bytes: `first` is the first chunk the
    store gave (read before the headers, so errors up to there are proper answers), `chunks`
    the rest. Closes `chunks` in every case."""
    start, end = span
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = end - start
    sent = pos = 0
    try:
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        pending: memoryview | None = None
        chunk = first
        while chunk is not None:
            lo, pos = pos, pos + len(chunk)
            a, b = max(lo, start), min(pos, end)
            if a < b:
                if pending is not None:
                    await resp.write(pending)
                    sent += len(pending)
                pending = memoryview(chunk)[a - lo:b - lo]
            chunk = await anext(chunks, None)
        # The store's iterator ended without an error: every byte hashed to the CID.
        if pos != size:
            raise Aborted(f"the content has {pos} bytes, its record says {size}")
        if pending is not None:
            await resp.write(pending)
        await resp.write_eof()
    except ConnectionError:  # the client went away: nothing to tell it
        pass
    except Exception as err:
        log.warning("unit %s: download cut off after %d of %d bytes, the client gets a truncated body: %s",
                    request.match_info.get("cid", "?"), sent, end - start, err)
        request.protocol.force_close()  # no keep-alive: the client must not read on into the next answer
        if request.transport is not None:
            request.transport.close()
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]  # an async generator: ends the store's read
    return resp
