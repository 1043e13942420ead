"""A deadline for each HTTP request head, for the hub's and the dashboard's aiohttp servers.

aiohttp waits for a request's headers for as long as the client keeps sending something, so
a client that trickles a header line every few seconds (slowloris) holds a connection, and
a few hundred of them hold the server. Here a connection must deliver a complete request
head (up to the blank line) within `seconds` of opening, and again within `seconds` of each
handler finishing (and its response leaving the buffer); otherwise it is closed. A body is not covered: the handlers' own idle
timeout (408) is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("cim.http")
HEAD_END = b"\r\n\r\n"


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the head deadline in front of it."""

    def __init__(self, inner: asyncio.Protocol, deadline: HeadDeadline):
        self.inner = inner
        self.deadline = deadline
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.waiting = False
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.waiting, self.tail = True, b""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.deadline.seconds, self._expired)

    def _expired(self) -> None:
        if not self.waiting or self.transport is None or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            self.arm()  # still sending the last response to a slow reader: not its head's fault
            return
        peer = self.transport.get_extra_info("peername")
        log.info("closing a connection from %s: no complete request head within %g s", peer, self.deadline.seconds)
        self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.deadline.open[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.waiting:
            seen = self.tail + data
            if HEAD_END in seen:
                self.waiting = False
                if self.timer is not None:
                    self.timer.cancel()
            else:
                self.tail = seen[-(len(HEAD_END) - 1):]
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
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
        """Re-arm a connection's deadline when a handler is done (before the app is frozen):
        the next request head is due within `seconds` of that. A streamed response (a
        download, live events) is still being written until its handler returns."""

        @web.middleware
        async def rearm(request: web.Request, handler):
            try:
                return await handler(request)
            finally:
                guarded = self.open.get(request.transport) if request.transport is not None else None
                if guarded is not None:
                    guarded.arm()

        app.middlewares.append(rearm)

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
