"""One way to run a real agent process in a test: `cim agent run <capability>` with its own
config file and log, started, awaited, killed and stopped like a service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client


class AgentProcess:
    """A real `cim agent run <capability>` process with its own config file and log."""

    def __init__(self, capability: str, config: dict, workdir: Path, env: dict[str, str] | None = None):
        self.capability = capability
        self.name = config.get("name") or f"cim-{capability}"
        self.config_path = workdir / f"{self.name}.json"
        self.config_path.write_text(json.dumps({"capability": capability, **config}))
        self.log_path = workdir / f"{self.name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cim", "agent", "run", self.capability, "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
        )
        log.close()
        return self

    async def ready(self, nc: Client, timeout: float = 30) -> AgentProcess:
        """Until the agent answers $SRV.INFO (it has connected and registered)."""
        from cim.nats.discovery import discover
        from support.waiting import async_wait_until

        async def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            return any(s.get("metadata", {}).get("pid") == str(self.proc.pid) for s in await discover(nc, self.name, wait=0.3))

        await async_wait_until(answers, timeout, what=f"{self.name} to answer $SRV.INFO")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crash, as far as everything else can tell."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None
