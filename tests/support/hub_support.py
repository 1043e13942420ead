"""Running a real hub agent process for the hub and UI tests."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from aiohttp import web

from cim.embedded.procs import wait_until
from cim.ports import free_port
from support.agentkit import AgentProcess

TOKEN = "test-token-0123456789abcdef"
LIMITED = "limited-token-0123456789abcdef"
WRITE_ONLY = "write-only-token-0123456789abcdef"
READ_ONLY = "read-only-token-0123456789abcdef"
TEAM = "team-token-0123456789abcdef"  # reads and writes the sources team/*


def write_tokens(path: Path) -> Path:
    path.write_text(json.dumps({"tokens": [
        {"name": "ci", "token": TOKEN},
        {"name": "reports", "token": LIMITED, "sources": ["reports", "reports/*"], "labels": ["report", "q*"]},
        {"name": "writer", "token": WRITE_ONLY, "scopes": ["write"]},
        {"name": "reader", "token": READ_ONLY, "scopes": ["read"]},
        {"name": "team", "token": TEAM, "sources": ["team/*"]},
    ]}))
    return path


class Hub(AgentProcess):
    """The hub agent on a free port (or `port`, which several hubs with `reuse_port` may share),
    with the test tokens; `start()` waits for /healthz."""

    def __init__(self, nats_url: str, tmp: Path, *, nkey: Path | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, reuse_port: bool = False, **settings):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        nats = {"servers": [nats_url]}
        if nkey:
            nats["nkey_seed_file"] = str(nkey)
        super().__init__("hub", {"nats": nats, "http": {"port": self.port, "reuse_port": reuse_port},
                                 "tokens_file": str(write_tokens(tmp / "tokens.json")), **settings}, tmp, env)

    def start(self) -> Hub:
        super().start()
        wait_until(lambda: self.healthy() or self.proc.poll() is not None, 30, what="the hub to answer /healthz")
        assert self.proc.poll() is None, self.log()
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False


class HookReceiver:
    """A webhook receiver on 127.0.0.1:`port` (a free one unless given), POST /hook, served
    while in `async with`. As it is, it keeps each request's headers and body in `received`
    and answers `status`, which a test may change between deliveries; a subclass that answers
    otherwise overrides `handle`."""

    def __init__(self, port: int | None = None, *, status: int = 204):
        self.port = port or free_port()
        self.status = status
        self.received: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()
