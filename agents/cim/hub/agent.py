"""The `hub` agent: HTTP ingest and search, outbound webhooks, and connectors (inbox folder,
S3 import).

The HTTP server runs on the agent's own event loop (aiohttp beside nats-py); every unit it
stores goes through `cim.store.unit_store`, like the CLI's and the store agent's.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from aiohttp import web

from ..errors import CimError
from ..events import EventStore
from ..http_deadline import GuardedSite, HeadDeadline
from ..metrics import Sampled
from ..ports import authority
from ..runtime import AgentBase, AgentContext, endpoint
from ..store.unit_store import UnitStore
from ..tier.fetch import fetch
from . import api
from .api import InfoReply, RetryReply, RetryRequest
from .config import CONSUMER, Config
from .connectors import ConnectorConfig, ConnectorContext, build, load
from .http_api import HubApi
from .metrics import webhook_lag
from .tokens import Tokens
from .webhooks import Dispatcher, Webhook

log = logging.getLogger("cim.hub")


class _Site(GuardedSite):
    """GuardedSite with aiohttp's own `reuse_port` (SO_REUSEPORT, see HttpSettings.reuse_port),
    which GuardedSite's constructor does not pass on; its `start` binds with it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, deadline: HeadDeadline, *, reuse_port: bool):
        web.TCPSite.__init__(self, runner, host, port, reuse_port=reuse_port)
        self.deadline = deadline


class Agent(AgentBase[Config]):
    def __init__(self, ctx: AgentContext):
        super().__init__(ctx)
        # A download is a read for the tier's `idle` policies, as `cim units get` is.
        self.units = UnitStore(ctx.nc, max_unit_size=self.config.max_body_size, agent=self.config.agent_name, cold=fetch,
                               report_access=True)
        self.api = HubApi(self.units, Tokens(self.config.tokens_file), max_body_size=self.config.max_body_size,
                          idle_timeout=self.config.idle_timeout, max_downloads=self.config.max_downloads,
                          max_cold_downloads=self.config.max_cold_downloads,
                          max_downloads_per_token=self.config.max_downloads_per_token,
                          max_cold_downloads_per_token=self.config.max_cold_downloads_per_token, metrics=ctx.metrics)
        self.webhooks = Dispatcher(ctx.nc, [Webhook(w) for w in self.config.webhooks], agent=self.config.agent_name)
        events = EventStore(ctx.nc)
        plugins, self.broken_plugins = load()  # a third party's broken plugin is reported and skipped
        for name, why in self.broken_plugins.items():
            log.error("plugin %s is not available: %s", name, why)
        self.connectors = build(self.config.connectors, lambda name: ConnectorContext(
            name=name, units=self.units, events=events, agent=self.config.agent_name, stopping=ctx.stopping,
            log=logging.getLogger(f"cim.hub.{name}"),
        ), loaded=(plugins, self.broken_plugins))
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = self.api.app()
        deadline = HeadDeadline(self.config.idle_timeout)  # slow request heads, as idle bodies get 408
        deadline.install(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        http = self.config.http
        site = _Site(self._runner, http.host, http.port, deadline, reuse_port=http.reuse_port)
        try:
            await site.start()
        except OSError as err:
            shared = ("; to share it between hubs, set http.reuse_port on every one of them"
                      if err.errno == errno.EADDRINUSE else "")
            raise CimError(f"the hub cannot listen on {http.host}:{http.port}: {err.strerror or err}{shared}; "
                           "or choose another http.port") from None
        port = self._runner.addresses[0][1]
        self.url = f"http://{authority(self.config.http.host, port)}"
        log.info("ingest API on %s (OpenAPI at %s/openapi.yaml)", self.url, self.url)
        await self.webhooks.start()
        if self.webhooks.webhooks:
            self.ctx.metrics.register(Sampled("the webhook consumer", lambda: webhook_lag(self.nc, CONSUMER),
                                              asyncio.get_running_loop()))
        for c, connector in self.connectors:
            self.ctx.tasks.spawn(self._supervise(c, connector), name=f"connector-{c.name}")

    async def _supervise(self, c: ConnectorConfig, connector) -> None:
        """A connector that crashes is logged and started again; it never takes the hub down."""
        while not self.ctx.stopping.is_set():
            try:
                await connector.run()
                return  # a one-shot connector finished
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("connector %s (%s) failed; restarting it in 5s", c.name, c.plugin)
                try:
                    await asyncio.wait_for(self.ctx.stopping.wait(), 5)
                except TimeoutError:
                    pass

    async def stop(self) -> None:
        await self.webhooks.stop()
        if self._runner:
            await self._runner.cleanup()
        self.api.close()

    @endpoint(api.INFO)
    async def info(self) -> InfoReply:
        """Where the ingest API listens, the webhooks and connectors configured, and the plugins that failed to load."""
        return InfoReply(url=self.url, webhooks=[w.name for w in self.webhooks.webhooks],
                         connectors=[f"{c.name} ({c.plugin})" for c, _ in self.connectors],
                         broken_plugins=self.broken_plugins)

    @endpoint(api.RETRY)
    async def retry(self, req: RetryRequest) -> RetryReply:
        """Send a webhook dead letter (by its CIM_DLQ sequence) once more."""
        return RetryReply(**await self.webhooks.redeliver(req.seq))


