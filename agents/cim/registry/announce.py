"""Every agent's announcement: its record in the `CIM_REGISTRY` bucket, renewed each heartbeat.

The bucket's TTL (its max_age) is the safety net: an agent that dies without a word stops
renewing its key and the server drops it. A clean stop deletes the key at once. The key is
`<capability>.<instance id>`, so an agent's NATS user needs only
`$KV.CIM_REGISTRY.<capability>.>` to announce itself, and cannot forge another capability.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from ..names import REGISTRY_BUCKET
from ..tasks import cancel_and_wait
from .model import AgentRecord

log = logging.getLogger("cim.registry.announce")


def container_name() -> str | None:
    """The container the agent runs in: `CIM_CONTAINER` if the unit sets it, else the
    hostname when systemd-nspawn (a nixos-container) or another runtime says we are in one."""
    explicit = os.environ.get("CIM_CONTAINER")
    if explicit:
        return explicit
    # systemd-nspawn sets `container` in lower case (systemd's container interface).
    if os.environ.get("container") or Path("/run/systemd/container").exists() or Path("/.dockerenv").exists():  # noqa: SIM112
        return socket.gethostname()
    return None


class Heartbeat:
    """Puts `record()` under the agent's key every `interval` seconds until stopped.

    `capabilities` is called at every beat, so an agent that loads plugins later announces
    them from the next beat on.
    """

    def __init__(
        self,
        nc: Client,
        *,
        name: str,
        instance_id: str,
        capability: str,
        version: str,
        capabilities: Callable[[], dict[str, str]],
        endpoints: list[str],
        interval: float,
        bucket: str = REGISTRY_BUCKET,
    ):
        self.nc = nc
        self.js = nc.jetstream(timeout=max(interval, 2.0))
        self.interval = interval
        self.capabilities = capabilities
        self.subject = f"$KV.{bucket}.{capability}.{instance_id}"
        now = datetime.now(UTC)
        self._base: dict[str, Any] = {
            "name": name, "id": instance_id, "capability": capability, "version": version, "endpoints": endpoints,
            "host": socket.gethostname(), "container": container_name(), "pid": os.getpid(), "started_at": now,
            "heartbeat": interval,
        }
        self._task: asyncio.Task | None = None
        self.beats = 0
        self._warned = False

    def record(self) -> AgentRecord:
        return AgentRecord(**self._base, capabilities=self.capabilities(), last_seen=datetime.now(UTC))

    async def beat(self) -> None:
        await self.js.publish(self.subject, self.record().model_dump_json().encode())
        self.beats += 1

    async def start(self) -> None:
        """Announce once now (a failure is logged, not fatal), then keep beating."""
        await self._beat_logged()
        self._task = asyncio.create_task(self._run(), name="cim-heartbeat")

    async def _beat_logged(self) -> None:
        try:
            await self.beat()
            if self._warned:
                log.info("announcing in %s again", self.subject)
                self._warned = False
        except Exception as err:  # the registry is advisory: the agent keeps serving
            if not self._warned:
                log.warning(
                    "cannot announce in the registry (%s: %s); is the bucket provisioned (`cim provision`) and "
                    "may this user publish to %s? Retrying every %gs", type(err).__name__, err, self.subject,
                    self.interval,
                )
                self._warned = True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # the heartbeat period itself, not a wait for a condition
            await self._beat_logged()

    async def stop(self) -> None:
        """Stop beating and delete the key, so readers see the agent gone at once."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        try:
            await self.js.publish(self.subject, b"", headers={"KV-Operation": "DEL"})
        except Exception as err:
            log.info("could not remove the registry record (%s); it expires with the bucket's TTL", err)
