"""The root `cim` app. Each command group lives in its own module and is added here."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import __version__
from .common import Globals

app = typer.Typer(
    name="cim",
    help="CIM, the Composable Information Machine: store, find and move information over NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cim {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    server: list[str] = typer.Option(
        ["nats://127.0.0.1:4222"], "--server", "-s", envvar="CIM_SERVER",
        help="NATS server URL; repeat for several (env: CIM_SERVER, space-separated).",
    ),
    creds: Path | None = typer.Option(None, envvar="CIM_CREDS", help="NATS .creds file."),
    nkey: Path | None = typer.Option(None, envvar="CIM_NKEY", help="nkey seed file."),
    user: str | None = typer.Option(None, envvar="CIM_USER", help="user name (with --password-file)."),
    password_file: Path | None = typer.Option(None, envvar="CIM_PASSWORD_FILE", help="file holding the password."),
    tls_ca: Path | None = typer.Option(None, envvar="CIM_TLS_CA", help="CA certificate file."),
    tls_cert: Path | None = typer.Option(None, envvar="CIM_TLS_CERT", help="client certificate file."),
    tls_key: Path | None = typer.Option(None, envvar="CIM_TLS_KEY", help="client key file."),
    json_output: bool = typer.Option(False, "--json", envvar="CIM_JSON", help="print JSON for scripts."),
    timeout: float = typer.Option(5.0, envvar="CIM_TIMEOUT", help="seconds to wait for the server."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version."),
) -> None:
    servers = [u for s in server for u in s.split()]
    ctx.obj = Globals(
        servers=servers, creds=creds, nkey=nkey, user=user, password_file=password_file,
        tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, json=json_output, timeout=timeout,
    )


def _register() -> None:
    # Imported here so each group module can import `app`-free helpers without cycles.
    from . import agent, config, events, keys, provision, status, units, up

    app.add_typer(units.app, name="units")
    app.add_typer(events.app, name="events")
    app.add_typer(config.app, name="config")
    app.add_typer(agent.app, name="agent")
    app.add_typer(keys.app, name="keys")
    from . import backup, tier
    app.add_typer(tier.app, name="tier")
    app.add_typer(backup.app, name="backup")
    app.command("restore")(backup.restore_cmd)
    from . import agents as agents_group
    app.add_typer(agents_group.app, name="agents")
    from . import pipelines

    app.add_typer(pipelines.app, name="pipelines")
    app.add_typer(pipelines.dlq_app, name="dlq")
    app.command("search")(pipelines.search_cmd)
    app.command("provision")(provision.provision_cmd)
    app.command("status")(status.status_cmd)
    app.command("up")(up.up_cmd)
    from . import ui

    app.add_typer(ui.app, name="ui")
    from . import nats_server

    app.add_typer(nats_server.app, name="nats")


_register()


def main() -> None:
    app()
