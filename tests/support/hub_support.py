"""Running a real hub agent process for the hub and UI tests."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from cim.embedded.procs import wait_until
from cim.ports import free_port
from support.agentkit import AgentProcess

TOKEN = "test-token-0123456789abcdef"
LIMITED = "limited-token-0123456789abcdef"


def write_tokens(path: Path) -> Path:
    path.write_text(json.dumps({"tokens": [
        {"name": "ci", "token": TOKEN},
        {"name": "reports", "token": LIMITED, "sources": ["reports", "reports/*"], "labels": ["report", "q*"]},
    ]}))
    return path


class Hub(AgentProcess):
    """The hub agent on a free port, with the test tokens; `start()` waits for /healthz."""

    def __init__(self, nats_url: str, tmp: Path, *, nkey: Path | None = None, env: dict[str, str] | None = None,
                 **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        nats = {"servers": [nats_url]}
        if nkey:
            nats["nkey_seed_file"] = str(nkey)
        super().__init__("hub", {"nats": nats, "http": {"port": self.port},
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
