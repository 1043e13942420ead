"""Running a real hub agent process for the hub and UI tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from cim.embedded.procs import free_port, wait_until

TOKEN = "test-token-0123456789abcdef"
LIMITED = "limited-token-0123456789abcdef"


def write_tokens(path: Path) -> Path:
    path.write_text(json.dumps({"tokens": [
        {"name": "ci", "token": TOKEN},
        {"name": "reports", "token": LIMITED, "sources": ["reports", "reports/*"], "labels": ["report", "q*"]},
    ]}))
    return path


class Hub:
    def __init__(self, nats_url: str, tmp: Path, *, nkey: Path | None = None, **settings):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp / "hub.json"
        nats = {"servers": [nats_url]}
        if nkey:
            nats["nkey_seed_file"] = str(nkey)
        config = {"capability": "hub", "nats": nats, "http": {"port": self.port},
                  "tokens_file": str(write_tokens(tmp / "tokens.json")), **settings}
        self.config_path.write_text(json.dumps(config))
        self.log_path = tmp / "hub.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Hub:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "hub", "--config", str(self.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_until(lambda: self.healthy() or self.proc.poll() is not None, 30, what="the hub to answer /healthz")
        assert self.proc.poll() is None, self.log()
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
