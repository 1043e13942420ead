"""`cim events`: tail and append events."""

from __future__ import annotations

import json
from typing import Any

import typer
from pydantic import ValidationError

from ..errors import InvalidInput, invalid_input
from ..events import Event, EventStore, StoredEvent
from ..events.envelope import SUBJECT_PREFIX
from .common import globals_of, nats_connection, run

app = typer.Typer(help="Watch and append events.", no_args_is_help=True)


def _line(e: StoredEvent) -> str:
    flag = "" if e.known and not e.problem else f"  !! {e.problem or 'unknown type'}"
    data = e.data if isinstance(e.data, str) else json.dumps(e.data, separators=(",", ":"))
    if len(data) > 160:
        data = data[:157] + "..."
    when = e.time.isoformat(timespec="seconds") if e.time else "-"
    return f"#{e.seq} {when} {e.type} {e.aggregate_id} {data}{flag}"


@app.command("tail")
def tail(
    ctx: typer.Context,
    subject: str = typer.Option(f"{SUBJECT_PREFIX}.>", "--subject", help="subject filter, e.g. cim.evt.unit.>"),
    from_seq: int = typer.Option(1, "--from", help="start at this stream sequence"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new events"),
    limit: int | None = typer.Option(None, help="stop after this many"),
) -> None:
    """Print events in order; with --follow, history and then live ones."""
    g = globals_of(ctx)

    async def body() -> None:
        count = 0
        async with nats_connection(g) as nc:
            async for e in EventStore(nc, timeout=g.timeout).read([subject], start_seq=from_seq, follow=follow):
                typer.echo(e.model_dump_json() if g.json else _line(e))
                count += 1
                if limit is not None and count >= limit:
                    return

    run(body)


@app.command("append")
def append(
    ctx: typer.Context,
    type_: str = typer.Argument(..., metavar="TYPE", help="event type, e.g. unit.revised"),
    aggregate_id: str = typer.Argument(..., help="the aggregate's id (becomes a subject token)"),
    data: str = typer.Option("{}", "--data", "-d", help="the event data as a JSON object"),
    expect: int | None = typer.Option(None, "--expect", help="expected revision of the aggregate (0: new)"),
    event_id: str | None = typer.Option(None, "--id", help="event id (also the de-duplication id)"),
    correlation_id: str | None = typer.Option(None, "--correlation-id"),
    causation_id: str | None = typer.Option(None, "--causation-id"),
) -> None:
    """Append one event; the server checks --expect."""
    g = globals_of(ctx)

    async def body() -> dict:
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as err:
            raise InvalidInput("--data", f"not JSON: {err.msg} at column {err.colno}") from None
        if not isinstance(payload, dict):
            raise InvalidInput("--data", "must be a JSON object")
        fields: dict[str, Any] = {"type": type_, "aggregate_id": aggregate_id, "data": payload,
                  "correlation_id": correlation_id, "causation_id": causation_id}
        if event_id:
            fields["id"] = event_id
        try:
            event = Event(**fields)
        except ValidationError as err:
            raise invalid_input(err) from None
        async with nats_connection(g) as nc:
            res = await EventStore(nc, timeout=g.timeout).append(event, expected_revision=expect)
        return {"seq": res.seq, "duplicate": res.duplicate, "subject": event.subject, "id": event.id}

    result = run(body)
    if g.json:
        typer.echo(json.dumps(result))
    else:
        note = " (duplicate: already stored)" if result["duplicate"] else ""
        typer.echo(f"#{result['seq']} {result['subject']}{note}")
