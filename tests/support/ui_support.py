"""A whole stack for the dashboard tests: nats-server, the store, hub and ui agents (and a
pipeline agent, for search, when a test asks for one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import nats

from cim.embedded.nats_server import NatsServer
from cim.embedded.procs import wait_until
from cim.ports import free_port
from cim.ui.auth import hash_password
from support.agentkit import AgentProcess
from support.hub_support import TOKEN, Hub

PASSWORD = "correct horse battery"


def Agent(capability: str, config: dict, tmp: Path) -> AgentProcess:
    """An agent process, started."""
    return AgentProcess(capability, config, tmp).start()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class Stack:
    def __init__(self, tmp: Path, *, webhook_url: str | None = None, ui_state: Path | None = None):
        self.tmp = tmp
        self.server = NatsServer(store_dir=tmp / "nats")
        self.agents: list[AgentProcess] = []
        self.hub: Hub | None = None
        self.webhook_url = webhook_url
        self.ui_state = ui_state  # None: the dashboard keeps its projection in memory

    def start(self) -> Stack:
        self.server.start()
        subprocess.run([sys.executable, "-m", "cim", "--server", self.server.url, "provision"], check=True, capture_output=True)
        nats = {"servers": [self.server.url]}
        self.store = Agent("store", {"nats": nats}, self.tmp)
        self.agents.append(self.store)
        (self.tmp / "users").write_text(f"admin:{hash_password(PASSWORD)}\n")
        self.ui_port = free_port()
        self.ui_url = f"http://127.0.0.1:{self.ui_port}"
        self.ui = self.start_ui(port=self.ui_port, state_dir=self.ui_state)
        hub_dir = self.tmp / "hub"
        hub_dir.mkdir()
        (hub_dir / "secret").write_text("webhook-secret\n")
        hooks = []
        if self.webhook_url:
            hooks = [{"name": "receiver", "url": self.webhook_url, "secret_file": str(hub_dir / "secret"),
                      "max_attempts": 2, "backoff": [0.2], "timeout": 2}]
        self.hub = Hub(self.server.url, hub_dir, webhooks=hooks).start()
        wait_until(lambda: http_ok(self.ui_url + "/healthz"), 30, what="the dashboard to answer")
        asyncio.run(self._store_serves_puts())  # in a thread of its own (to_thread) or none: never in a running loop
        return self

    async def _store_serves_puts(self) -> None:
        """Until our store agent answers $SRV.INFO (every endpoint is served by then): the
        dashboard's uploads go there, and a put sent earlier finds no responder."""
        nc = await nats.connect(self.server.url)
        try:
            await self.store.ready(nc)
        finally:
            await nc.close()

    def start_ui(self, *, port: int, state_dir: Path | None, name: str = "cim-ui") -> AgentProcess:
        """A dashboard agent (another one needs its own name, port and state directory)."""
        config: dict = {"name": name, "nats": {"servers": [self.server.url]}, "http": {"port": port},
                        "password_file": str(self.tmp / "users")}
        if state_dir is not None:
            config["state_dir"] = str(state_dir)
        agent = Agent("ui", config, self.tmp)
        self.agents.append(agent)
        return agent

    def start_pipeline(self) -> AgentProcess:
        """A pipeline agent with the default pipelines: what the dashboard's search asks."""
        agent = Agent("pipeline", {"nats": {"servers": [self.server.url]}}, self.tmp)
        self.agents.append(agent)
        return agent

    def stop(self) -> None:
        if self.hub:
            self.hub.stop()
        for a in self.agents:
            a.stop()
        self.server.stop()


# --- the browser: Debian's chromium, driven by Playwright --------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def log_in(page, stack: Stack, then: str = "/units") -> None:
    """Through the login form, as a person would; lands on `then`."""
    await page.goto(stack.ui_url + "/login?next=" + then)
    await page.get_by_label("User").fill("admin")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(stack.ui_url + then)


@contextlib.asynccontextmanager
async def running(stack: Stack) -> AsyncIterator[Stack]:
    """`stack` started for an async test (in a thread: starting it blocks), stopped after."""
    await asyncio.to_thread(stack.start)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


def ui_health(stack: Stack) -> dict:
    """The dashboard's /healthz: its unit list's size (`units`) and how far it reaches
    (`as_of`, `stale`)."""
    with urllib.request.urlopen(stack.ui_url + "/healthz", timeout=5) as r:
        return json.loads(r.read())


def hub_put(stack: Stack, content: bytes, **params: str) -> str:
    """A unit stored through the hub's HTTP API (title, label, parent, metadata...); its CID."""
    request = urllib.request.Request(f"{stack.hub.url}/v1/units?{urlencode(params)}", data=content,  # type: ignore[union-attr]
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())["cid"]
