"""A deadline for each HTTP request head, for the hub's and the dashboard's aiohttp servers.

aiohttp waits for a request's headers for as long as the client keeps sending something, so
a client that trickles a header line every few seconds (slowloris) holds a connection, and
a few hundred of them hold the server. Here a connection must bring a request whose head
aiohttp has parsed within `seconds` of opening, and again within `seconds` of each answer
(its handler done and its response out of the buffer); otherwise it is closed. The clock
stops while a request is handled: a slow upload is the handlers' own idle timeout (408),
and a long download or a live event stream is not cut off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("cim.http")


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the head deadline in front of it."""

    def __init__(self, inner: asyncio.Protocol, deadline: HeadDeadline):
        self.inner = inner
        self.deadline = deadline
        self.transport: asyncio.Transport | None = None
        self.handling = 0  # requests of this connection inside the app now
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.disarm()
        if not self.handling:
            self.timer = asyncio.get_running_loop().call_later(self.deadline.seconds, self._expired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.handling or self.transport is None or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            self.arm()  # still sending the last answer to a slow reader: not its next head's fault
            return
        peer = self.transport.get_extra_info("peername")
        log.info("closing a connection from %s: no complete request head within %g s", peer, self.deadline.seconds)
        self.transport.close()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.deadline.open[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is not None:
            self.deadline.open.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class HeadDeadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.open: dict[asyncio.BaseTransport, _Guarded] = {}

    def install(self, app: web.Application) -> None:
        """The outermost middleware (before the app is frozen): a parsed request stops its
        connection's clock, its answer starts it again, whatever the inner middlewares do."""

        @web.middleware
        async def clock(request: web.Request, handler):
            guarded = self.open.get(request.transport) if request.transport is not None else None
            if guarded is None:
                return await handler(request)
            guarded.handling += 1
            guarded.disarm()
            try:
                return await handler(request)
            finally:
                guarded.handling -= 1
                guarded.arm()

        app.middlewares.insert(0, clock)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(factory(), self)


class GuardedSite(web.TCPSite):
    """`web.TCPSite` whose connections have a head deadline (see the module doc)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, deadline: HeadDeadline):
        super().__init__(runner, host, port)
        self.deadline = deadline

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.deadline.wrap(server), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
