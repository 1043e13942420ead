"""`cim up` as a test runs it: every port picked free and passed on the command line, the
output kept in a file, and Ctrl-C at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from cim.embedded.paths import admin_key
from cim.ports import free_port_block, free_ports


class Ports:
    """Every port a `cim up` listens on, picked free, so tests run beside each other and beside
    a `cim up` on the default ports; `cim up` never picks one by itself."""

    def __init__(self):
        self.nats, self.http, self.ui, self.hub = free_ports(4)
        self.metrics_base = free_port_block(6)
        while {self.nats, self.http, self.ui, self.hub} & set(range(self.metrics_base, self.metrics_base + 6)):
            self.metrics_base = free_port_block(6)

    def args(self) -> list[str]:
        return ["--port", str(self.nats), "--http-port", str(self.http), "--ui-port", str(self.ui),
                "--hub-port", str(self.hub), "--metrics-port-base", str(self.metrics_base)]


class Up:
    def __init__(self, data_dir, tmp_path, ports: Ports | None = None):
        self.ports = ports or Ports()
        self.port, self.http_port = self.ports.nats, self.ports.http
        self.url = f"nats://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        # `cim up` is secured: the CLI logs in with the admin key it made in the data dir.
        self.env = {"CIM_NKEY": str(admin_key(data_dir))}
        self.out = tmp_path / f"up-{self.port}.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cim", "up", "--data-dir", str(data_dir), *self.ports.args()],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )

    def output(self) -> str:
        return self.out.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
