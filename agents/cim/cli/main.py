"""The root `cim` app. Each command group lives in its own module, imported only when it is
run (or when `cim --help` lists them all), so `cim --version` and `cim units get` do not pay
for aiohttp, jinja2 or boto3."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from .. import __version__

# name -> (module under cim.cli, its attribute: a Typer group or a command function)
COMMANDS: dict[str, tuple[str, str]] = {
    "units": ("units", "app"),
    "events": ("events", "app"),
    "config": ("config", "app"),
    "agent": ("agent", "app"),
    "keys": ("keys", "app"),
    "tier": ("tier", "app"),
    "backup": ("backup", "app"),
    "restore": ("backup", "restore_cmd"),
    "agents": ("agents", "app"),
    "pipelines": ("pipelines", "app"),
    "dlq": ("pipelines", "dlq_app"),
    "search": ("pipelines", "search_cmd"),
    "provision": ("provision", "provision_cmd"),
    "status": ("status", "status_cmd"),
    "up": ("up", "up_cmd"),
    "ui": ("ui", "app"),
    "nats": ("nats_server", "app"),
}


def load(name: str) -> Any:
    """The click command for `cim <name>`, its module imported now: built the way Typer
    builds a group or command added to the root app, so `cim config check` stays a group
    and a command."""
    module, attribute = COMMANDS[name]
    obj = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    holder = typer.Typer(add_completion=False)
    holder.callback()(lambda: None)  # a group even with one member, so its commands keep their names
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name)
    else:
        holder.command(name)(obj)
    return typer.main.get_group(holder).commands[name]


class LazyGroup(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return load(cmd_name) if cmd_name in COMMANDS else None


app = typer.Typer(
    name="cim",
    cls=LazyGroup,
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
    # Here, not at the top: `--version` exits before this runs, without loading NATS.
    from .common import CURRENT, Globals

    servers = [u for s in server for u in s.split()]
    ctx.obj = Globals(
        servers=servers, creds=creds, nkey=nkey, user=user, password_file=password_file,
        tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, json=json_output, timeout=timeout,
    )
    CURRENT.set(ctx.obj)


def main() -> None:
    app()
