"""`cim status`: the server, JetStream, streams, buckets and the agents seen."""

from __future__ import annotations

import json
from typing import Any

import typer
from nats.aio.client import Client

from ..discovery import discover
from ..errors import CimError, JetStreamUnavailable
from ..registry import list_agents
from .common import emit, globals_of, nats_connection, run


async def _api(nc: Client, subject: str, timeout: float) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.{subject}", b"", timeout=timeout)
    return json.loads(msg.data)


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


def _human(s: dict[str, Any]) -> str:
    srv = s["server"]
    js = s["jetstream"]
    lines = [
        f"server     {srv['url']}  {srv['name']}  nats-server {srv['version']}"
        + (f"  cluster {srv['cluster']}" if srv.get("cluster") else ""),
        f"jetstream  {js['streams']} streams, {js['consumers']} consumers, {js['storage']} bytes on disk",
        "streams:",
    ]
    lines += [f"  {x['name']:<20} {x['messages']:>9} msgs {x['bytes']:>12} bytes  R{x['replicas']}" for x in s["streams"]] or ["  none"]
    lines.append("buckets:")
    lines += [f"  {b['kind']:<6} {b['name']:<20} {b['messages']:>7} msgs {b['bytes']:>12} bytes  R{b['replicas']}"
              for b in s["buckets"]] or ["  none"]
    lines.append("agents:")
    lines += [f"  {a['name']:<16} {a['capability'] or '?':<9} v{a['version']}  pid {a['pid']} on {a['host']}  since {a['started']}"
              for a in s["agents"]] or ["  none answered $SRV.INFO"]
    if s.get("registry") is not None:
        lines.append("announced in the registry:")
        lines += [f"  {r['name']:<16} {r['state']:<6} {', '.join(f'{k} {v}' for k, v in sorted(r['capabilities'].items()))}  {r['id']}"
                  for r in s["registry"]] or ["  none"]
    return "\n".join(lines)


def status_cmd(ctx: typer.Context) -> None:
    """Show the server, JetStream, streams, buckets and agents."""
    g = globals_of(ctx)

    async def body() -> dict[str, Any]:
        async with nats_connection(g) as nc:
            return await gather_status(nc, g.timeout)

    emit(g, run(body), _human)
