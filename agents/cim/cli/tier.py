"""`cim tier`: storage tiers (status, migrate, verify, restore), served by the tier agent."""

from __future__ import annotations

import sys

import typer

from ..nats.rpc import call
from ..tier import api
from .common import emit, globals_of, nats_connection, run

app = typer.Typer(help="Storage tiers: status, migrate by policy, verify, restore.", no_args_is_help=True)

LONG = 3600.0  # a migration or verify of many units takes a while; the agent answers when done


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
    if s.get("stale"):
        # The counts above come from the location index: say when they may miss recent units.
        lines.append(f"index: stale, it has applied events up to #{s.get('as_of', 0)}; the counts may miss "
                     "the newest units (it catches up by itself: ask again)")
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
            return await call(nc, api.STATUS, timeout=max(g.timeout, 10))

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
                return await call(nc, api.MIGRATE, api.MigrateRequest(dry_run=dry_run, progress=True), timeout=max(g.timeout, LONG),
                                  on_progress=on_progress)
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
            return await call(nc, api.VERIFY, api.VerifyRequest(tier=tier, sample=sample), timeout=max(g.timeout, LONG))

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
            return await call(nc, api.RESTORE, api.CidRequest(cid=cid), timeout=max(g.timeout, LONG))

    emit(g, run(body), lambda r: f"{r['cid']} is in the hot tier" + ("" if r["action"] != "copy" else f" (from {r['from_tier']})"))


