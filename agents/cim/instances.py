"""Several instances of one agent under one service: `cim agent run CAP --instances N`.

Why a process per instance, started here rather than by systemd: every instance needs the
same systemd credentials (its nkey, the hub's tokens), which systemd gives a service at a
path named after that one service. One service that starts N processes keeps that path,
one checked config and one StateDirectory (each instance takes a folder of it). Each child
is `cim agent run CAP --config FILE --instance i`: its own name, state and metrics port
(`AgentConfig.for_instance`). A child that dies is started again, after a pause that grows
while it keeps dying; SIGTERM stops them all, each draining as a single agent does.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("cim.instances")

BACKOFF = (1, 2, 5, 10, 30)  # seconds before starting a child again, by how often it just died
HEALTHY_AFTER = 60  # a child that ran this long starts from the first pause again


class Instances:
    def __init__(self, capability: str, config: Path, count: int):
        self.capability = capability
        self.config = config
        self.count = count
        self.children: dict[int, subprocess.Popen] = {}
        self.started: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.stopping = False
        self.failed = False

    def _start(self, i: int) -> None:
        child = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", self.capability,
                                  "--config", str(self.config), "--instance", str(i)])
        self.children[i] = child
        self.started[i] = time.monotonic()
        if self.stopping:  # SIGTERM came while it was being started: it stops with the others
            child.terminate()
            return
        log.info("%s instance %d started (pid %d)", self.capability, i, child.pid)

    def _stop(self, *_: object) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for i in range(1, self.count + 1):
            if self.stopping:
                break
            self._start(i)
        while self.children:
            try:
                pid, status = os.wait()  # any child; a signal's handler runs meanwhile
            except ChildProcessError:
                break
            found = [k for k, c in self.children.items() if c.pid == pid]
            if not found:
                continue
            i = found[0]
            code = os.waitstatus_to_exitcode(status)
            self.children[i].returncode = code
            del self.children[i]
            if self.stopping:
                # Stopped as asked: 0, or -SIGTERM if it had not yet set up its own handler.
                if code not in (0, -signal.SIGTERM):
                    self.failed = True
                    log.error("%s instance %d exited with %d while stopping", self.capability, i, code)
                continue
            ran = time.monotonic() - self.started[i]
            self.failures[i] = 0 if ran > HEALTHY_AFTER else self.failures.get(i, 0) + 1
            pause = BACKOFF[min(self.failures[i], len(BACKOFF)) - 1] if self.failures[i] else 0
            log.error("%s instance %d exited with %d after %.0f s; starting it again in %d s", self.capability, i, code,
                      ran, pause)
            deadline = time.monotonic() + pause
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.2)  # the restart pause, cut short by SIGTERM
            if not self.stopping:
                self._start(i)
        # Non-zero when an instance did not stop cleanly, so systemd's Restart= and an
        # operator's `systemctl status` see it.
        return 1 if self.failed else 0
