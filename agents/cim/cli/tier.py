"""`cim tier`: storage tiers (status, migrate, verify, restore), served by the tier agent."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import typer
from nats.aio.client import Client

from ..errors import InvalidInput, NotFound
from ..nats.api import no_responders
from ..runtime import H_PROGRESS
from ..tier.errors import TierAgentMissing, TierUnavailable
from .common import emit, globals_of, nats_connection, run

app = typer.Typer(help="Storage tiers: status, migrate by policy, verify, restore.", no_args_is_help=True)

LONG = 3600.0  # a migration or verify of many units takes a while; the agent answers when done


def _answer(msg, endpoint: str) -> dict:
    """The tier agent's answer, or the CimError its error reply stands for."""
    headers = msg.headers or {}
    if "Nats-Service-Error" in headers:
        code, text = headers.get("Nats-Service-Error-Code", "500"), headers["Nats-Service-Error"]
        if code == "400":
            err = InvalidInput("request", text)
            err.args = (text,)
            raise err
        if code == "404":
            raise NotFound(text)
        raise TierUnavailable(text)
    return json.loads(msg.data)


def _missing() -> TierAgentMissing:
    return TierAgentMissing(
        "no tier agent answers on cim.tier.*; start it (`cim up` runs one; on NixOS set "
        "services.cim.tier.enable = true) and check `cim status`"
    )


async def ask(nc: Client, endpoint: str, body: dict, timeout: float) -> dict:
    """A request to the tier agent; its error reply becomes the matching CimError."""
    try:
        msg = await nc.request(f"cim.tier.{endpoint}", json.dumps(body).encode(), timeout=timeout)
    except Exception as err:
        if no_responders(err):
            raise _missing() from None
        raise TierUnavailable(f"the tier agent did not answer {endpoint} within {timeout:g}s ({type(err).__name__})") from None
    return _answer(msg, endpoint)


async def ask_with_progress(nc: Client, endpoint: str, body: dict, timeout: float,
                            on_progress: Callable[[dict], None]) -> dict:
    """`ask`, with the progress the agent sends on the same reply subject ahead of the answer."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(f"cim.tier.{endpoint}", json.dumps({**body, "progress": True}).encode(), reply=inbox)
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except Exception as err:
                raise TierUnavailable(f"the tier agent did not answer {endpoint} within {timeout:g}s ({type(err).__name__})") from None
            headers = msg.headers or {}
            if headers.get("Status") == "503":
                raise _missing()
            if headers.get(H_PROGRESS):
                on_progress(json.loads(msg.data))
                continue
            return _answer(msg, endpoint)
    finally:
        await sub.unsubscribe()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _status_text(s: dict) -> str:
    lines = [f"{'tier':<10} {'units':>7} {'bytes':>11}  where"]
    lines += [f"{t['name']:<10} {t['units']:>7} {_size(t['bytes']):>11}  {t['url']}" for t in s["tiers"]]
    lines.append(f"units: {s['units']}  expired: {s['expired']}  pending moves: {s['pending']}")
    for p in s["pending_moves"]:
        lines.append(f"  pending {p['cid']} {p.get('from_tier')} -> {p.get('to_tier')} ({p.get('action')})")
    if s.get("last_migration"):
        m = s["last_migration"]
        lines.append(f"last migration: {m['done']} of {m['planned']} done, {len(m['failed'])} failed")
    if s["errors"]:
        lines.append("last errors:")
        lines += [f"  {e['what']}: {e['error']}" for e in s["errors"][-5:]]
    else:
        lines.append("last errors: none")
    return "\n".join(lines)


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Units and bytes per tier, pending moves, last errors."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            return await ask(nc, "status", {}, max(g.timeout, 10))

    emit(g, run(body), _status_text)


@app.command("migrate")
def migrate(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="only list what the policies would move"),
) -> None:
    """Run the tiering policies now, with a progress bar."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            show = not g.json and not dry_run and sys.stderr.isatty()
            bar = None

            def on_progress(item: dict) -> None:
                nonlocal bar
                if "planned" in item and show:
                    bar = typer.progressbar(length=max(item["bytes"], 1), label="migrating", file=sys.stderr)
                    bar.__enter__()
                elif bar is not None:
                    bar.update(item.get("size", 0))

            try:
                return await ask_with_progress(nc, "migrate", {"dry_run": dry_run}, LONG, on_progress)
            finally:
                if bar is not None:
                    bar.__exit__(None, None, None)

    def text(r: dict) -> str:
        if r["dry_run"]:
            lines = [f"would {m['action']} {m['cid']} {m['from_tier'] or ''} -> {m['to_tier'] or 'expired'}  "
                     f"({_size(m['size'])}, policy {m['policy']})" for m in r["results"]]
            return "\n".join([*lines, f"{r['planned']} units, {_size(r['bytes'])} (dry run: nothing moved)"])
        lines = [f"{r['done']} of {r['planned']} units done ({_size(r['bytes'])})"]
        lines += [f"failed: {f['cid']}: {f['error']}" for f in r["failed"]]
        return "\n".join(lines)

    result = run(body)
    emit(g, result, text)
    if result["failed"]:
        raise typer.Exit(1)


@app.command("verify")
def verify(
    ctx: typer.Context,
    tier: str | None = typer.Option(None, "--tier", help="only this tier"),
    sample: int | None = typer.Option(None, "--sample", min=1, help="re-hash only N random units per tier"),
) -> None:
    """Re-hash stored objects; report missing, corrupt and orphan ones (exit 2 if any)."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            body = {k: v for k, v in {"tier": tier, "sample": sample}.items() if v is not None}
            return await ask(nc, "verify", body, LONG)

    def text(r: dict) -> str:
        lines = [f"checked {r['checked']} objects"]
        for kind in ("missing", "corrupt", "orphans", "unreachable"):
            for item in r[kind]:
                lines.append(f"{kind[:-1] if kind.endswith('s') else kind}: {item.get('tier')} {item.get('cid', '')} "
                             f"{item.get('error', '')}".rstrip())
        lines.append("clean" if r["clean"] else "problems found")
        return "\n".join(lines)

    result = run(body)
    emit(g, result, text)
    if not result["clean"]:
        raise typer.Exit(2)


@app.command("restore")
def restore(ctx: typer.Context, cid: str = typer.Argument(..., help="the unit's CID")) -> None:
    """Bring a unit back to the hot tier (the colder copy stays)."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            return await ask(nc, "restore", {"cid": cid}, LONG)

    emit(g, run(body), lambda r: f"{r['cid']} is in the hot tier" + ("" if r["action"] != "copy" else f" (from {r['from_tier']})"))


