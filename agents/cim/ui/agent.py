"""The `ui` agent: the web dashboard (server-rendered, live over Server-Sent Events).

It keeps an in-memory projection of the event stream (units, labels, event rate, recent
errors) fed by one catch-up subscription, and asks the other agents over NATS for the
rest; what is not running shows as a "not running" panel, never as an error page.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..events import EventStore
from ..http_deadline import GuardedSite, HeadDeadline
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
        self.projection = Projection(EventStore(ctx.nc))
        auth = Auth(password_file=self.config.password_file, session_secret_file=self.config.session_secret_file,
                    trusted_header=self.config.trusted_header, trusted_proxies=self.config.trusted_proxies,
                    secure_cookies=self.config.secure_cookies)
        self.dashboard = Dashboard(ctx.nc, auth, self.projection, agent=self.config.agent_name,
                                   max_upload=self.config.max_upload, stopping=ctx.stopping)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        await self.projection.start()
        app = self.dashboard.app()
        deadline = HeadDeadline(HEAD_DEADLINE)
        deadline.install(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        await GuardedSite(self._runner, self.config.http.host, self.config.http.port, deadline).start()
        self.url = f"http://{self.config.http.host}:{self._runner.addresses[0][1]}"
        log.info("dashboard on %s", self.url)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        await self.projection.stop()

    @endpoint(api.INFO)
    async def info(self) -> InfoReply:
        """Where the dashboard listens and how far its projection has read."""
        return InfoReply(url=self.url, units=len(self.projection.rows), caught_up=self.projection.caught_up.is_set())


