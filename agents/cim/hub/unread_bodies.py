"""Requests answered before their body was all read: answer, read no further, close.

aiohttp reads on after such an answer for up to 10 s (its lingering close), so a client that
sends without reading fills all of that: the hub read 125 MiB of one refused form field, and
a 404 or a 405 (no token needed) read as much. Here nothing more is read: the request's
buffer fills, TCP stops the client, and a client that reads while it sends (curl, a browser)
finds the answer and hangs up. Whoever has not hung up after LINGER_SECONDS is cut off;
closing at once instead would reset the connection before most clients had read the answer.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

LINGER_SECONDS = 2.0


@web.middleware
async def close_unread(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as raised:  # a 404 or a 405 from the router
        if not _unread(request):
            raise
        response = web.Response(status=raised.status, reason=raised.reason, text=raised.text, headers=raised.headers)
    if not _unread(request):
        return response
    try:
        if not response.prepared:
            response.force_close()  # says `Connection: close`
            await response.prepare(request)
            await response.write_eof()
        if request.content.exception() is None:  # a body already broken or gone has nothing to wait for
            # Wakes at the end of the body or when the client goes; it consumes nothing.
            await asyncio.wait_for(request.content.wait_eof(), LINGER_SECONDS)
    except Exception:  # a timeout, the client gone, a broken body: all end in the close below
        pass
    finally:
        request.protocol.force_close()
    return response


def _unread(request: web.Request) -> bool:
    return request.body_exists and not request.content.at_eof()
