"""`cim agents`: the agents announced in the registry, and who provides what.

Asks the registry agent (its live view knows `gone` agents and when states began); when no
registry agent answers, reads the `CIM_REGISTRY` bucket directly, where an agent is `up`
or `stale` by the age of its last heartbeat.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from nats.aio.client import Client

from ..errors import ProjectionUnavailable
from ..nats.rpc import AgentUnavailable, Endpoint, call
from ..registry import AgentView, Requirement, api
from ..registry import client as registry
from ..registry.api import Agents, LsRequest, ShowRequest
from ..registry.query import negotiate as negotiate_views
from ..registry.query import providers as providers_of
from .common import emit, globals_of, nats_connection, run

NO_AGENT = "registry bucket (no registry agent answered, or it is still reading the bucket)"

app = typer.Typer(help="Agents announced in the registry: list, show, providers, negotiation.", no_args_is_help=True)


async def _ask(nc: Client, endpoint: Endpoint[Agents], request: LsRequest | ShowRequest, timeout: float) -> Agents | None:
    """The registry agent's answer, None when no registry agent answers or it has not read the
    bucket yet (the caller reads the bucket instead); its other errors (an unknown agent, a
    bad request) raised as it raised them."""
    try:
        return await call(nc, endpoint, request, timeout=min(timeout, 3.0))
    except (AgentUnavailable, ProjectionUnavailable):
        return None


async def _views(nc: Client, timeout: float, include_gone: bool = False) -> tuple[list[AgentView], str]:
    reply = await _ask(nc, api.LS, LsRequest(all=include_gone), timeout)
    if reply is not None:
        return reply.agents, "registry agent"
    return await registry.list_agents(nc, timeout=timeout), NO_AGENT


def _ago(t: datetime | str | None) -> str:
    if t is None:
        return "-"
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    s = max(0, int((datetime.now(UTC) - t).total_seconds()))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _caps(caps: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(caps.items()))


def _where(r: dict[str, Any]) -> str:
    return r["host"] + (f" ({r['container']})" if r.get("container") and r["container"] != r["host"] else "")


def _table(data: dict[str, Any]) -> str:
    rows = data["agents"]
    if not rows:
        return f"no agents announced (source: {data['source']})"
    head = f"{'NAME':<18} {'STATE':<6} {'CAPABILITIES':<28} {'HOST':<22} {'PID':>7}  {'LAST SEEN':<9}  ID"
    lines = [head]
    for v in rows:
        r = v["record"]
        lines.append(
            f"{r['name']:<18} {v['state']:<6} {_caps(r['capabilities']):<28} {_where(r):<22} {r['pid']:>7}  "
            f"{_ago(r['last_seen']):<9}  {r['id']}"
        )
    lines.append(f"(source: {data['source']})")
    return "\n".join(lines)


@app.command("ls")
def ls(
    ctx: typer.Context,
    capability: str | None = typer.Option(None, "--capability", "-c", help="only agents providing this capability"),
    all_: bool = typer.Option(False, "--all", "-a", help="include agents that are gone (registry agent only)"),
) -> None:
    """List announced agents: name, state (up, stale, gone), capabilities, where, since when."""
    g = globals_of(ctx)

    async def body() -> dict[str, Any]:
        async with nats_connection(g) as nc:
            views, source = await _views(nc, g.timeout, all_)
        if capability:
            views = [v for v in views if capability in v.record.capabilities]
        return {"source": source, "agents": [v.model_dump(mode="json") for v in views]}

    emit(g, run(body), _table)


def _detail(data: dict[str, Any]) -> str:
    out = []
    for v in data["agents"]:
        r = v["record"]
        out += [
            f"{r['name']}  {v['state']}" + (f" since {v['since']}" if v.get("since") else ""),
            f"  id            {r['id']}",
            f"  capability    {r['capability']}  (agent version {r['version']})",
            f"  provides      {_caps(r['capabilities'])}",
            f"  host          {r['host']}" + (f"  container {r['container']}" if r.get("container") else ""),
            f"  pid           {r['pid']}",
            f"  started       {r['started_at']}",
            f"  last seen     {r['last_seen']} ({_ago(r['last_seen'])}, heartbeat every {r['heartbeat']:g}s)",
            "  endpoints     " + (", ".join(r["endpoints"]) or "none"),
        ]
    out.append(f"(source: {data['source']})")
    return "\n".join(out)


@app.command("show")
def show(ctx: typer.Context, name: str = typer.Argument(..., help="agent name, instance id (or its start)")) -> None:
    """Everything an agent announced, per running instance."""
    g = globals_of(ctx)

    async def body() -> dict[str, Any]:
        async with nats_connection(g) as nc:
            reply = await _ask(nc, api.SHOW, ShowRequest(name=name), g.timeout)
            if reply is not None:
                views, source = reply.agents, "registry agent"
            else:
                views = registry.select(await registry.list_agents(nc, timeout=g.timeout), name)
                source = NO_AGENT
        return {"source": source, "agents": [v.model_dump(mode="json") for v in views]}

    emit(g, run(body), _detail)


@app.command("providers")
def providers(
    ctx: typer.Context,
    capability: str = typer.Argument(..., help="capability name"),
    spec: str = typer.Argument("", help="PEP 440 version range, e.g. '>=1.2,<2'"),
) -> None:
    """Live agents providing a capability within a version range, best first."""
    g = globals_of(ctx)

    async def body() -> dict[str, Any]:
        req = Requirement.parse(capability + spec)
        async with nats_connection(g) as nc:
            views, source = await _views(nc, g.timeout)
        found = providers_of(views, req)
        return {"source": source, "requirement": str(req),
                "providers": [{"version": ver, **v.model_dump(mode="json")} for v, ver in found]}

    def human(d: dict[str, Any]) -> str:
        if not d["providers"]:
            return f"nothing provides {d['requirement']}"
        return "\n".join(f"{p['record']['name']:<18} {p['version']:<10} {p['record']['id']}" for p in d["providers"])

    emit(g, run(body), human)


@app.command("negotiate")
def negotiate(
    ctx: typer.Context,
    requirements: list[str] = typer.Argument(..., help="capabilities with ranges: 'search>=2' 'store'"),
) -> None:
    """A provider for every requirement, or exit 1 naming each one nothing provides."""
    g = globals_of(ctx)

    async def body() -> dict[str, Any]:
        reqs = [Requirement.parse(r) for r in requirements]
        async with nats_connection(g) as nc:
            views, source = await _views(nc, g.timeout)
        matches = negotiate_views(views, reqs)
        return {"source": source, "matches": [m.model_dump(mode="json") for m in matches]}

    def human(d: dict[str, Any]) -> str:
        return "\n".join(
            f"{Requirement.model_validate(m['requirement'])!s:<24} -> {m['provider']['name']} "
            f"({m['requirement']['capability']} {m['version']}, {m['provider']['id']})"
            for m in d["matches"]
        )

    emit(g, run(body), human)
