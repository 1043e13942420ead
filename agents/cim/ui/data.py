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

from ..names import DLQ_STREAM
from ..nats.api import no_responders
from ..nats.discovery import discover
from ..nats.read import read_stream
from ..status import gather_status


@dataclass
class Missing:
    why: str


async def call(nc: Client, subject: str, body: dict | None = None, timeout: float = 5.0) -> dict[str, Any] | Missing:
    """A request to an agent endpoint; a Missing when nobody answers or it answers an error."""
    try:
        msg = await nc.request(subject, json.dumps(body or {}).encode(), timeout=timeout)
    except Exception as err:
        if no_responders(err):
            return Missing(f"no agent answers {subject}: it is not running")
        return Missing(f"{subject} did not answer ({type(err).__name__})")
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" in headers:
        return Missing(f"{headers.get('Nats-Service-Error', 'error')} (code {headers['Nats-Service-Error-Code']})")
    try:
        return json.loads(msg.data or b"{}")
    except json.JSONDecodeError:
        return Missing(f"{subject} answered something that is not JSON")


async def agents(nc: Client) -> list[dict[str, Any]]:
    """Agents and their health: the registry's view when it exists, else $SRV.INFO."""
    try:
        from ..registry import list_agents

        views = await list_agents(nc)
        if views:
            return [{"name": v.record.name, "capability": v.record.capability, "version": v.record.version,
                     "host": v.record.host, "pid": v.record.pid, "state": v.state,
                     "since": v.record.started_at.isoformat()[:19]} for v in views]
    except Exception:  # no registry library or bucket in this deployment: ask the services
        pass
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
    endpoint = "cim.hub.retry" if subject.startswith("cim.dlq.hub.") else "cim.pipeline.retry"
    answer = await call(nc, endpoint, {"seq": seq}, timeout=30)
    if isinstance(answer, Missing):
        return False, answer.why
    if answer.get("ok") is False:
        return False, answer.get("reason") or "the retry failed"
    return True, f"dead letter #{seq} was processed again"


async def pipelines(nc: Client) -> dict[str, Any] | Missing:
    status = await call(nc, "cim.pipeline.status")
    if isinstance(status, Missing):
        return status
    try:
        from ..pipeline import definitions

        defs = {r.definition.name: r.definition.model_dump(mode="json") for r in await definitions.list_all(nc)}
    except Exception:  # no definitions bucket or library: show the engine's status alone
        defs = {}
    status["definitions"] = defs
    return status

