"""The `hub` agent: HTTP ingest, outbound webhooks, and connectors (inbox folder, S3 import).

The HTTP server runs on the agent's own event loop (aiohttp beside nats-py); every unit it
stores goes through `cim.unit_store`, like the CLI's and the store agent's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..config import AgentConfig
from ..embedded.procs import free_port, port_is_free
from ..events import EventStore
from ..http_deadline import GuardedSite, HeadDeadline
from ..hub.connectors import STATE_BUCKET, ConnectorConfig, ConnectorContext, build, load
from ..hub.http_api import HubApi
from ..hub.tokens import Tokens
from ..hub.webhooks import CONSUMER, Dispatcher, Webhook, WebhookSettings
from ..names import EVENTS_STREAM
from ..provision import ConsumerSpec, KvSpec, ProvisionSpec
from ..runtime import AgentContext, endpoint
from ..tiering.fetch import fetch
from ..unit_store import UnitStore

log = logging.getLogger("cim.hub")
DEFAULT_PORT = 8471


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)


class Config(AgentConfig):
    capability: Literal["hub"] = "hub"
    http: HttpSettings = Field(default_factory=HttpSettings)
    tokens_file: Path = Field(description="JSON file of bearer tokens with their allowed sources and labels")
    max_body_size: int = Field(default=64 * 1024 * 1024, gt=0, description="largest upload accepted, in bytes (413 above)")
    idle_timeout: float = Field(default=30.0, gt=0, le=3600,
                                description="seconds a client may send nothing while its upload is read (408 past "
                                            "it), and may take to send a whole request head (closed past it)")
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    connectors: list[ConnectorConfig] = Field(default_factory=list)


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(gt=0, description="sequence of the dead letter in CIM_DLQ")


class RetryReply(BaseModel):
    ok: bool
    reason: str


class InfoReply(BaseModel):
    url: str
    webhooks: list[str]
    connectors: list[str]
    broken_plugins: dict[str, str] = Field(default_factory=dict, description="plugins that failed to load: name -> why")


class Agent:
    def __init__(self, ctx: AgentContext):
        self.ctx = ctx
        self.config: Config = ctx.config  # type: ignore[assignment]
        self.units = UnitStore(ctx.nc, max_unit_size=self.config.max_body_size, agent=self.config.agent_name, cold=fetch)
        self.api = HubApi(self.units, Tokens(self.config.tokens_file), max_body_size=self.config.max_body_size,
                          idle_timeout=self.config.idle_timeout)
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
        self._tasks: list[asyncio.Task] = []
        self.url = ""

    async def start(self) -> None:
        app = self.api.app()
        deadline = HeadDeadline(self.config.idle_timeout)  # slow request heads, as idle bodies get 408
        deadline.install(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = GuardedSite(self._runner, self.config.http.host, self.config.http.port, deadline)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.config.http.host}:{port}"
        log.info("ingest API on %s (OpenAPI at %s/openapi.yaml)", self.url, self.url)
        await self.webhooks.start()
        for c, connector in self.connectors:
            self._tasks.append(asyncio.create_task(self._supervise(c, connector), name=f"connector-{c.name}"))

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
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.webhooks.stop()
        if self._runner:
            await self._runner.cleanup()

    @endpoint("info")
    async def info(self) -> InfoReply:
        """Where the ingest API listens, the webhooks and connectors configured, and the plugins that failed to load."""
        return InfoReply(url=self.url, webhooks=[w.name for w in self.webhooks.webhooks],
                         connectors=[f"{c.name} ({c.plugin})" for c, _ in self.connectors],
                         broken_plugins=self.broken_plugins)

    @endpoint("retry")
    async def retry(self, req: RetryRequest) -> RetryReply:
        """Send a webhook dead letter (by its CIM_DLQ sequence) once more."""
        return RetryReply(**await self.webhooks.redeliver(req.seq))


def provision_spec() -> ProvisionSpec:
    return ProvisionSpec(
        include_core=False,
        consumers=[ConsumerSpec(
            stream=EVENTS_STREAM, name=CONSUMER, description="events for the hub's outbound webhooks",
            filter_subjects=["cim.evt.>"], deliver_policy="new", ack_wait=60, max_ack_pending=256,
        )],
        kv=[KvSpec(bucket=STATE_BUCKET, description="hub connector progress (S3 import ETags)")],
    )


def embedded_settings(data_dir: Path) -> tuple[dict, str | None]:
    """For `cim up`: a port, a token made once under the data dir, and an inbox folder."""
    hub_dir = data_dir / "hub"
    hub_dir.mkdir(parents=True, exist_ok=True)
    tokens = hub_dir / "tokens.json"
    if not tokens.exists():
        fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": [{"name": "local", "token": secrets.token_urlsafe(24)}]}, f, indent=2)
    token = json.loads(tokens.read_text())["tokens"][0].get("token", "(see the file)")
    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()
    inbox = data_dir / "inbox"
    settings = {
        "http": {"host": "127.0.0.1", "port": port},
        "tokens_file": str(tokens),
        "connectors": [{"plugin": "inbox", "name": "inbox", "settings": {"path": str(inbox), "interval": 1.0}}],
    }
    note = f"hub http://127.0.0.1:{port}/v1/units (token {token}, from {tokens}); inbox {inbox}"
    return settings, note
