"""`cim backup status` and `cim restore --from URL`: the archive and disaster recovery."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from ..errors import field_errors
from ..nats.rpc import call
from ..tier import api
from .common import emit, globals_of, nats_connection, run

app = typer.Typer(help="Backups of the event stream and unit content in the archive tier.", no_args_is_help=True)


@app.command("status")
def status(ctx: typer.Context) -> None:
    """How far the export to the archive is: sequence, lag, chunks, archived units."""
    g = globals_of(ctx)

    async def body() -> dict:
        async with nats_connection(g) as nc:
            return await call(nc, api.BACKUP_STATUS, timeout=max(g.timeout, 30))

    def text(s: dict) -> str:
        if not s.get("configured"):
            return "no backup configured (set backup.tier in the tier agent's settings)"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["updated"])) if s.get("updated") else "never"
        lines = [
            f"archive:   tier {s['archive']} ({s['where']})",
            f"events:    exported up to #{s['exported_seq']} of #{s['stream_seq']} (lag {s['lag_events']}), "
            f"{s['chunks']} chunks, last export {when}",
            f"units:     {s.get('units_archived', '?')} of {s.get('units', '?')} in the archive",
        ]
        if s.get("last_error"):
            lines.append(f"last error: {s['last_error']}")
        return "\n".join(lines)

    emit(g, run(body), text)


def restore_cmd(
    ctx: typer.Context,
    source: str = typer.Option(..., "--from", help="the archive: s3://bucket/prefix or file:///path"),
    endpoint: str | None = typer.Option(None, envvar="CIM_ARCHIVE_ENDPOINT", help="S3 endpoint URL (MinIO, Wasabi)"),
    region: str = typer.Option("us-east-1", envvar="CIM_ARCHIVE_REGION", help="S3 region"),
    credentials_file: Path | None = typer.Option(
        None, envvar="CIM_ARCHIVE_CREDENTIALS_FILE", help="file with the S3 keys (AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=...)"
    ),
    addressing_style: str = typer.Option("path", help="S3 addressing: path, virtual or auto"),
) -> None:
    """Rebuild a fresh, empty leaf from the archive alone: events, units, projections."""
    g = globals_of(ctx)
    from pydantic import ValidationError

    # Here, not at the top: boto3 costs every agent process (they all start through this
    # CLI) some 20 MB, and only this command and the tier agent need it.
    from ..errors import InvalidInput
    from ..provision.apply import provision
    from ..provision.spec import ProvisionSpec
    from ..tier.backends import open_backend
    from ..tier.backup import restore as restore_leaf
    from ..tier.urls import TierSpec

    async def body() -> dict:
        try:
            spec = TierSpec(name="archive", url=source, endpoint=endpoint, region=region,
                            credentials_file=credentials_file,
                            addressing_style=addressing_style)  # type: ignore[arg-type]  # TierSpec validates it
        except ValidationError as err:
            raise InvalidInput("--from", field_errors(err)[0][1]) from None
        archive = open_backend(spec)
        await archive.check()
        show = not g.json and sys.stderr.isatty()

        def progress(what: str, done: int, total: int) -> None:
            if show:
                print(f"\r{what}: {done}/{total}", end="", file=sys.stderr, flush=True)

        async with nats_connection(g) as nc:
            report = await restore_leaf(nc, archive, provision=lambda nc: provision(nc, ProvisionSpec()),
                                        progress=progress, timeout=g.timeout)
        if show:
            print(file=sys.stderr)
        archive.close()
        return {"events": report.events, "units": report.units, "units_restored": report.units_restored,
                "chunks": report.chunks, "derived_restored": report.derived_restored}

    emit(g, run(body), lambda r: f"restored {r['events']} events from {r['chunks']} chunks; {r['units']} units, "
                                 f"{r['units_restored']} of them back in the hot tier")
