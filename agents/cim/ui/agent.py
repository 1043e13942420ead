"""The `ui` agent: the web dashboard (server-rendered, live over Server-Sent Events).

It keeps a projection of the event stream (the unit list, labels, bytes per tier, the event
rate) in SQLite under its state directory, resumed from its checkpoint at start, and asks
the other agents over NATS for the rest (search, pipelines, storage); what is not running
shows as a "not running" panel, never as an error page.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..events import EventStore
from ..http_deadline import GuardedSite, HeadDeadline
from ..ports import authority
from ..projection_db import state_dir
from ..runtime import AgentBase, AgentContext, endpoint
from . import api
from .api import InfoReply
from .app import Dashboard
from .auth import Auth
from .config import Config
from .projections import Projection

log = logging.getLogger("cim.ui")
HEAD_DEADLINE = 30.0  # seconds a browser may take to send a request head (slowloris)


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        self.projection = Projection(EventStore(ctx.nc), state_dir(self.config.state_dir))
        auth = Auth(password_file=self.config.password_file, session_secret_file=self.config.session_secret_file,
                    trusted_header=self.config.trusted_header, trusted_proxies=self.config.trusted_proxies,
                    secure_cookies=self.config.secure_cookies)
        self.dashboard = Dashboard(ctx.nc, auth, self.projection, agent=self.config.agent_name,
                                   max_upload=self.config.max_upload, stopping=ctx.stopping,
                                   idle_timeout=self.config.idle_timeout)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self.projection.open()
        self.ctx.tasks.spawn(self.projection.run(), name="projection")
        app = self.dashboard.app()
        deadline = HeadDeadline(HEAD_DEADLINE)
        deadline.install(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        await GuardedSite(self._runner, self.config.http.host, self.config.http.port, deadline).start()
        self.url = f"http://{authority(self.config.http.host, self._runner.addresses[0][1])}"
        log.info("dashboard on %s", self.url)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        self.projection.close()  # the runtime has cancelled the feed already

    @endpoint(api.INFO)
    async def info(self) -> InfoReply:
        """Where the dashboard listens and how far its projection has read (and replayed since start)."""
        return InfoReply(url=self.url, units=self.projection.count(), caught_up=self.projection.caught_up.is_set(),
                         **self.projection.freshness())


