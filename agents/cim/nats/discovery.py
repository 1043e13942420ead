"""Finding the agents that answer `$SRV.INFO`, the standard NATS micro discovery."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client


async def discover(nc: Client, name: str | None = None, *, wait: float = 0.5, quiet: float = 0.15) -> list[dict[str, Any]]:
    """Collect INFO replies from every service (or those named `name`).

    Replies arrive at once from each live agent; the collection ends after `quiet` seconds
    without a new one, or `wait` seconds in all, so a slow network costs a bounded wait.
    """
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def on_msg(msg) -> None:
        try:
            replies.append(json.loads(msg.data))
        except json.JSONDecodeError:
            return
        arrived.set()

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish("$SRV.INFO" + (f".{name}" if name else ""), b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), timeout=min(quiet if replies else left, left))
            except TimeoutError:
                if replies:
                    break
    finally:
        await sub.unsubscribe()
    return sorted(replies, key=lambda r: (r.get("name", ""), r.get("id", "")))
