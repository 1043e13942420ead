"""`cim pipelines`, `cim dlq` and `cim search`: the pipeline engine from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import ConfigError, printable
from ..nats.rpc import AgentUnavailable, call
from ..pipeline import api, definitions
from ..pipeline.dlq import get_letter, list_letters
from ..pipeline.model import check_plugins, load
from ..plugins import discover
from .common import emit, fail, globals_of, nats_connection, run

app = typer.Typer(help="Declarative pipelines of plugin steps.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: messages a pipeline gave up on.", no_args_is_help=True)


@app.command("ls")
def ls(ctx: typer.Context) -> None:
    """Pipelines, their state and counters."""
    g = globals_of(ctx)

    async def body() -> list[dict]:
        async with nats_connection(g) as nc:
            records = await definitions.list_all(nc)
            try:
                status = (await call(nc, api.STATUS, timeout=g.timeout))["pipelines"]
            except Exception:  # the agent may be down: definitions still list
                status = {}
        rows = []
        for r in records:
            s = status.get(r.definition.name, {})
            state = "paused" if r.paused else s.get("state", "not running")
            rows.append({"name": r.definition.name, "state": state, "steps": [st.name for st in r.definition.steps],
                         "source": r.source, "processed": s.get("processed"), "pending": s.get("pending"),
                         "dead_letters": s.get("dead_letters"), "last_error": s.get("last_error")})
        return rows

    emit(g, run(body), lambda rows: "\n".join(
        f"{r['name']:<16} {r['state']:<12} {' -> '.join(r['steps'])}"
        + (f"  processed {r['processed']}, pending {r['pending']}" if r["processed"] is not None else "")
        + (f"\n  last error: {r['last_error']}" if r["last_error"] else "")
        for r in rows) or "no pipelines")


@app.command("show")
def show(ctx: typer.Context, name: str) -> None:
    """A pipeline's definition and live state."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            record = await definitions.get(nc, name)
            try:
                state = (await call(nc, api.STATUS, timeout=g.timeout))["pipelines"].get(name)
            except Exception:
                state = None
        return {**record.model_dump(mode="json"), "state": state}

    emit(g, run(body))


@app.command("apply")
def apply(ctx: typer.Context, file: Path = typer.Argument(..., help="pipelines as JSON or YAML")) -> None:
    """Install or replace pipelines; the agent picks them up without a restart.

    Every step must name a step plugin installed where the pipeline agent runs (it is asked;
    without an agent, the plugins installed here), with settings that plugin accepts."""
    g = globals_of(ctx)
    try:
        pipelines = load(file)
    except ConfigError as err:
        fail(err)

    async def body() -> list[str]:
        async with nats_connection(g) as nc:
            try:
                answer = await call(nc, api.CHECK, api.CheckRequest(pipelines=pipelines),
                                    timeout=g.timeout)
                problems = [tuple(p) for p in answer["problems"]]
            except AgentUnavailable:
                try:
                    check_plugins(pipelines, discover(), str(file))
                    problems = []
                except ConfigError as err:
                    problems = err.errors
            if problems:
                raise ConfigError(str(file), problems)
            return [(await definitions.put(nc, p)).definition.name for p in pipelines]

    names = run(body)
    emit(g, names, lambda ns: "\n".join(f"applied {n}" for n in ns))


def _pause(ctx: typer.Context, name: str, paused: bool) -> None:
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            return (await definitions.set_paused(nc, name, paused)).model_dump(mode="json")

    run(body)
    typer.echo(f"{name} {'paused' if paused else 'resumed'}")


@app.command("pause")
def pause(ctx: typer.Context, name: str) -> None:
    """Stop taking new messages; they wait in the consumer."""
    _pause(ctx, name, True)


@app.command("resume")
def resume(ctx: typer.Context, name: str) -> None:
    """Take messages again, from where the pipeline stopped."""
    _pause(ctx, name, False)


@dlq_app.command("ls")
def dlq_ls(ctx: typer.Context, pipeline: str | None = typer.Option(None, help="only this pipeline's")) -> None:
    """Dead letters, oldest first."""
    g = globals_of(ctx)

    async def body() -> list[dict]:
        async with nats_connection(g) as nc:
            return [d.summary() for d in await list_letters(nc, pipeline)]

    emit(g, run(body), lambda rows: "\n".join(
        f"#{r['seq']:<6} {r['pipeline']:<14} event #{r['original_seq']} after {r['attempts']} tries: {r['reason']}"
        for r in rows) or "no dead letters")


@dlq_app.command("show")
def dlq_show(ctx: typer.Context, seq: int) -> None:
    """One dead letter with its original headers."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            d = await get_letter(nc, seq)
        return {**d.summary(), "headers": d.headers, "data": d.data.decode("utf-8", "replace")}

    emit(g, run(body))


@dlq_app.command("retry")
def dlq_retry(ctx: typer.Context, seq: int) -> None:
    """Process a dead letter again (after fixing its cause); removed on success."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            return await call(nc, api.RETRY, api.RetryRequest(seq=seq), timeout=max(g.timeout, 60))

    r = run(body)
    emit(g, r, lambda r: f"dead letter #{r['retried']} processed by {r['pipeline']} and removed")


def search_cmd(
    ctx: typer.Context,
    query: list[str] = typer.Argument(..., help='words (all must match), "a phrase", prefix*, OR, -excluded'),
    limit: int = typer.Option(10, help="at most this many"),
    label: list[str] = typer.Option([], "--label", help="only units with this label (repeatable: all of them)"),
    media_type: str = typer.Option("", "--type", help="only this media type, or a family: text/*"),
    source: str = typer.Option("", help="only this source (a glob allowed)"),
    since: str = typer.Option("", help="only units created at or after this date (ISO 8601)"),
    until: str = typer.Option("", help="only units created before this date (ISO 8601)"),
    facets: bool = typer.Option(False, "--facets", help="also count the matches by label, media type and source"),
) -> None:
    """Full-text search over the units, best first: stemmed (English by default), with
    phrases, prefixes and filters. Matched words are shown in bold on a terminal."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            request = api.SearchRequest(query=" ".join(query), limit=limit, labels=label, media_type=media_type,
                                        source=source, since=since, until=until, facets=facets)
            return (await call(nc, api.SEARCH, request, timeout=g.timeout)).model_dump(mode="json")

    bold = sys.stdout.isatty()

    def marked(h: dict) -> str:
        # Snippets and titles are what units contain: escape sequences in them never reach the terminal.
        text, out, pos = h["snippet"], [], 0
        for start, end in h["highlights"]:
            out += [printable(text[pos:start]), f"\033[1m{printable(text[start:end])}\033[0m" if bold else printable(text[start:end])]
            pos = end
        return "".join([*out, printable(text[pos:])])

    def human(r: dict) -> str:
        lines = [f"{h['score']:>7.3f}  {h['cid']}  {printable(h['title'])}" + (f"\n         {marked(h)}" if h["snippet"] else "")
                 for h in r["hits"]]
        if not lines:
            lines = [f"nothing found ({r['units']} units, {r['indexed']} with indexed text)"]
        for name, counts in (r.get("facets") or {}).items():
            if counts:
                lines.append(f"{name}: " + ", ".join(f"{printable(v) or '(none)'} {n}" for v, n in counts))
        if r.get("ranked_newest"):
            lines.append(f"(more units matched than are ranked: the newest {r['ranked_newest']:,} matches were; "
                         "a filter, more words or a phrase reach older ones)")
        if r["stale"]:
            lines.append(f"(the index is still catching up: it covers events up to #{r['as_of']})")
        return "\n".join(lines)

    emit(g, run(body), human)
