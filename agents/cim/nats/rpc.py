"""Calling an agent's micro endpoint: JSON in, JSON out, errors as CimError.

A micro error reply carries `Nats-Service-Error-Code` and `Nats-Service-Error`; no
responders means no agent of that capability is running.
"""

from __future__ import annotations

import json
from typing import Any

import nats.errors
from nats.aio.client import Client

from ..errors import CimError, InvalidInput, NotFound


class AgentUnavailable(CimError):
    pass


async def call(nc: Client, subject: str, body: dict[str, Any] | None = None, *, timeout: float = 10.0) -> Any:
    capability = subject.split(".")[1] if subject.count(".") >= 2 else subject
    try:
        msg = await nc.request(subject, json.dumps(body or {}).encode(), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise AgentUnavailable(
            f"no {capability} agent answers {subject}; start it (`cim up`, or services.cim.{capability}.enable) "
            "and check `cim status`"
        ) from None
    except nats.errors.TimeoutError:
        raise AgentUnavailable(f"the {capability} agent did not answer {subject} within {timeout:g}s") from None
    headers = msg.headers or {}
    code = headers.get("Nats-Service-Error-Code")
    if code:
        text = headers.get("Nats-Service-Error", "error")
        if code == "404":
            raise NotFound(text)
        if code in ("400", "413"):
            raise InvalidInput("request", text)
        raise CimError(f"the {capability} agent failed: {text}")
    return json.loads(msg.data) if msg.data else None
