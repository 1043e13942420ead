"""When `cim up` may say it is up: every agent answers `$SRV.PING` (the standard NATS micro
ping, as `cim status` finds agents with `$SRV.INFO`), and each agent that serves HTTP (hub,
dashboard) accepts a connection on its port. Bounded; an error names who is missing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError

from ..capability import AgentConfig
from ..errors import EmbeddedError
from .addresses import dial_host
from .procs import ManagedProcess

POLL = 0.1


async def answers_ping(nc: Client, name: str, pid: int | None) -> bool:
    """Whether the agent `name` answers `$SRV.PING.<name>`, and it is the process we started
    (its pid is in the micro service's metadata), not one of an earlier run."""
    try:
        reply = await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
    except (NatsError, TimeoutError):
        return False
    try:
        meta = json.loads(reply.data).get("metadata") or {}
    except (json.JSONDecodeError, AttributeError):
        return False
    return meta.get("pid") == str(pid)


async def accepts(host: str, port: int) -> bool:
    """Whether something listens on host:port (a connection is accepted, then closed)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(dial_host(host), port), timeout=1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def wait_ready(nc: Client, agents: dict[str, tuple[ManagedProcess, AgentConfig]], timeout: float) -> None:
    """Poll until each agent is ready (see the module doc), at most `timeout` seconds. An agent
    that exits meanwhile fails at once, with the end of its log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = dict(agents)
    while pending:
        for cap, (proc, config) in list(pending.items()):
            if not proc.alive:
                raise EmbeddedError(
                    f"the {cap} agent exited (code {proc.returncode}) before it answered; nothing else is left running. "
                    f"Its log, {proc.log_path}, ends with:\n{proc.log_tail()}")
            if await _ready(nc, proc, config):
                del pending[cap]
        if not pending:
            return
        if loop.time() >= deadline:
            raise EmbeddedError(
                f"not up after {timeout:g} s (--ready-timeout): " + "; ".join(
                    f"the {cap} agent {_missing(config)} (log {proc.log_path})" for cap, (proc, config) in pending.items())
                + ". Look at the log; on a slow or busy machine, give it more time with --ready-timeout")
        await asyncio.sleep(POLL)


async def _ready(nc: Client, proc: ManagedProcess, config: AgentConfig) -> bool:
    if not await answers_ping(nc, config.agent_name, proc.pid):
        return False
    http: Any = getattr(config, "http", None)
    return http is None or await accepts(http.host, http.port)


def _missing(config: AgentConfig) -> str:
    http: Any = getattr(config, "http", None)
    what = f"did not answer $SRV.PING.{config.agent_name}"
    return what + (f" or accept connections on port {http.port}" if http is not None else "")
