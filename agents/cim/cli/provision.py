"""`cim provision`: create or update every stream, consumer and bucket a spec declares."""

from __future__ import annotations

from pathlib import Path

import typer

from ..capabilities import core_spec
from ..errors import ConfigError
from ..provision.apply import provision
from ..provision.spec import ProvisionSpec, load_spec
from .common import emit, fail, globals_of, nats_connection, run


def provision_cmd(
    ctx: typer.Context,
    spec: Path | None = typer.Option(None, "--spec", envvar="CIM_PROVISION_SPEC", help="the spec (JSON); default: the core resources"),
    replicas: int | None = typer.Option(None, help="override the spec's replicas"),
    check: bool = typer.Option(False, "--check", help="report what would change and exit 2 on drift; change nothing"),
    print_spec: bool = typer.Option(False, "--print", help="print the resolved spec and exit"),
) -> None:
    """Create or update, idempotently, what the spec declares; report drift."""
    g = globals_of(ctx)
    try:
        wanted = load_spec(spec) if spec else ProvisionSpec()
    except ConfigError as err:
        fail(err)
    if replicas is not None:
        wanted = wanted.model_copy(update={"replicas": replicas})
    if print_spec:
        typer.echo(wanted.resolved(core_spec()).model_dump_json(indent=2))
        return

    async def body() -> list[dict]:
        async with nats_connection(g) as nc:
            return [c.as_dict() for c in await provision(nc, wanted, dry_run=check)]

    changes = run(body)
    emit(g, changes, lambda cs: "\n".join(_describe(c) for c in cs))
    drift = [c for c in changes if c["action"] == "drift" or (check and c["action"] != "unchanged")]
    if drift:
        if not g.json:
            typer.echo(
                f"{len(drift)} resource(s) differ from the spec"
                + (" in fields the server cannot change in place: recreate them by hand" if not check else ""),
                err=True,
            )
        raise typer.Exit(2)


def _describe(c: dict) -> str:
    diffs = ", ".join(f"{k}: {v['current']!r} -> {v['wanted']!r}" for k, v in c["fields"].items())
    return f"{c['kind']:<8} {c['name']:<24} {c['action']}" + (f"  ({diffs})" if diffs else "")
