"""What `cim status` and the dashboard's overview show: the server, JetStream, streams,
buckets and the agents seen, gathered once for both."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from .errors import CimError, JetStreamUnavailable
from .nats.api import api
from .nats.discovery import discover
from .registry.client import list_agents


async def _api(nc: Client, subject: str, timeout: float) -> dict[str, Any]:
    return await api(nc, subject, timeout=timeout)


async def gather_status(nc: Client, timeout: float = 5.0) -> dict[str, Any]:
    info = nc._server_info
    status: dict[str, Any] = {
        "server": {
            "url": str(nc.connected_url.geturl()) if nc.connected_url else None,
            "name": info.get("server_name"),
            "version": info.get("version"),
            "cluster": info.get("cluster"),
            "jetstream": bool(info.get("jetstream")),
        }
    }
    try:
        account = await _api(nc, "INFO", timeout)
    except Exception as err:
        raise JetStreamUnavailable(f"JetStream does not answer on {status['server']['url']}: {err or type(err).__name__}") from err
    if "error" in account:
        raise JetStreamUnavailable(f"JetStream refused the account info: {account['error'].get('description')}")
    status["jetstream"] = {k: account.get(k) for k in ("memory", "storage", "streams", "consumers")}
    listing = await _api(nc, "STREAM.LIST", timeout)
    streams, buckets = [], []
    for s in listing.get("streams") or []:
        cfg, state = s["config"], s["state"]
        entry = {
            "name": cfg["name"],
            "messages": state.get("messages", 0),
            "bytes": state.get("bytes", 0),
            "replicas": cfg.get("num_replicas", 1),
            "leader": (s.get("cluster") or {}).get("leader"),
        }
        if cfg["name"].startswith(("KV_", "OBJ_")):
            kind, _, bucket = cfg["name"].partition("_")
            buckets.append({**entry, "kind": "kv" if kind == "KV" else "object", "name": bucket})
        else:
            streams.append(entry)
    status["streams"] = sorted(streams, key=lambda s: s["name"])
    status["buckets"] = sorted(buckets, key=lambda b: b["name"])
    agents = []
    for svc in await discover(nc):
        meta = svc.get("metadata") or {}
        agents.append({
            "name": svc.get("name"),
            "id": svc.get("id"),
            "version": svc.get("version"),
            "capability": meta.get("capability"),
            "host": meta.get("host"),
            "pid": int(meta["pid"]) if meta.get("pid", "").isdigit() else None,
            "started": meta.get("started"),
            "endpoints": [e.get("subject") for e in svc.get("endpoints") or []],
        })
    status["agents"] = agents
    try:
        announced = await list_agents(nc, timeout=timeout)
    except CimError:
        announced = None  # no registry bucket (not provisioned yet): nothing to add
    status["registry"] = None if announced is None else [
        {"name": v.record.name, "id": v.record.id, "state": v.state, "capabilities": v.record.capabilities,
         "last_seen": v.record.last_seen.isoformat()}
        for v in announced
    ]
    return status
