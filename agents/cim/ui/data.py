"""What the pages show, gathered from NATS: agents, streams, pipelines, dead letters, units.

Each source may be missing (an agent not running, a capability not in this version): a
gatherer then returns a `Missing` with a sentence for a "not running" panel, never raises
into the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from pydantic import BaseModel

from ..errors import CimError
from ..hub import api as hub_api
from ..names import DLQ_STREAM
from ..nats.discovery import discover
from ..nats.read import read_stream
from ..nats.rpc import AgentUnavailable, Endpoint, Reply, call
from ..pipeline import api as pipeline_api
from ..pipeline import definitions
from ..registry import list_agents
from ..status import gather_status


@dataclass
class Missing:
    """What a panel shows instead of an agent's answer: why there is none."""

    why: str
    error: CimError | None = None  # what the agent or the call raised


async def ask(nc: Client, endpoint: Endpoint[Reply], request: BaseModel | dict[str, Any] | None = None,
              timeout: float = 5.0) -> Reply | Missing:
    """`cim.nats.rpc.call`, with a Missing instead of an error: a page shows what it has."""
    try:
        return await call(nc, endpoint, request, timeout=timeout)
    except AgentUnavailable as err:
        return Missing(f"not running: {err}", err)
    except CimError as err:
        return Missing(str(err), err)


async def agents(nc: Client) -> list[dict[str, Any]]:
    """Agents and their health: the registry bucket's view, else (no bucket yet, or agents
    that do not announce themselves) the micro services' $SRV.INFO."""
    try:
        views = await list_agents(nc)
    except CimError:  # the bucket cannot be read: ask the services
        views = []
    if views:
        return [{"name": v.record.name, "capability": v.record.capability, "version": v.record.version,
                 "host": v.record.host, "pid": v.record.pid, "state": v.state,
                 "since": v.record.started_at.isoformat()[:19]} for v in views]
    out = []
    for svc in await discover(nc):
        meta = svc.get("metadata") or {}
        out.append({"name": svc.get("name"), "capability": meta.get("capability"), "version": svc.get("version"),
                    "host": meta.get("host"), "pid": meta.get("pid"), "state": "up", "since": (meta.get("started") or "")[:19]})
    return out


async def storage(nc: Client) -> dict[str, Any] | Missing:
    try:
        return await gather_status(nc)
    except Exception as err:
        return Missing(f"JetStream did not answer: {err}")


async def dead_letters(nc: Client, limit: int = 200) -> list[dict[str, Any]] | Missing:
    out = []
    try:
        async for m in read_stream(nc, DLQ_STREAM, ["cim.dlq.>"], timeout=3, resume_for=3):
            h = m.headers or {}
            out.append({
                "seq": m.seq, "subject": m.subject,
                "owner": h.get("cim-dlq-pipeline") or (f"webhook {h['cim-dlq-webhook']}" if h.get("cim-dlq-webhook") else m.subject),
                "reason": h.get("cim-dlq-reason", ""), "attempts": h.get("cim-dlq-attempts", ""),
                "origin": h.get("cim-dlq-subject") or h.get("cim-dlq-origin", ""),
            })
    except Exception as err:
        return Missing(f"the dead-letter stream {DLQ_STREAM} cannot be read: {err}")
    return out[-limit:][::-1]


async def dead_letter_subject(nc: Client, seq: int) -> str | None:
    msg = await nc.request(f"$JS.API.STREAM.MSG.GET.{DLQ_STREAM}", json.dumps({"seq": seq}).encode(), timeout=5)
    resp = json.loads(msg.data)
    return None if "error" in resp else resp["message"]["subject"]


async def retry(nc: Client, seq: int) -> tuple[bool, str]:
    """Hand a dead letter back to whoever owns it: the hub for webhooks, else the pipeline engine."""
    subject = await dead_letter_subject(nc, seq)
    if subject is None:
        return False, f"dead letter #{seq} is gone (retried or removed already)"
    ok: object
    reason: object
    if subject.startswith("cim.dlq.hub."):
        hub = await ask(nc, hub_api.RETRY, hub_api.RetryRequest(seq=seq), timeout=30)
        if isinstance(hub, Missing):
            return False, hub.why
        ok, reason = hub.ok, hub.reason
    else:
        engine = await ask(nc, pipeline_api.RETRY, pipeline_api.RetryRequest(seq=seq), timeout=30)
        if isinstance(engine, Missing):
            return False, engine.why
        ok, reason = engine.get("ok"), engine.get("reason")
    if ok is False:
        return False, str(reason or "the retry failed")
    return True, f"dead letter #{seq} was processed again"


async def pipelines(nc: Client) -> dict[str, Any] | Missing:
    status = await ask(nc, pipeline_api.STATUS)
    if isinstance(status, Missing):
        return status
    try:
        defs = {r.definition.name: r.definition.model_dump(mode="json") for r in await definitions.list_all(nc)}
    except CimError:  # the definitions bucket cannot be read: show the engine's status alone
        defs = {}
    status["definitions"] = defs
    return status

