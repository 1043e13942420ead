"""`cim status`: the server, JetStream, streams, buckets and the agents seen."""

from __future__ import annotations

from typing import Any

import typer

from ..status import gather_status
from .common import emit, globals_of, nats_connection, run


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
