"""`cim ui`: open the dashboard of `cim up`, and make password hashes for its login file."""

from __future__ import annotations

import getpass
import json
import sys
import webbrowser
from pathlib import Path

import typer

from ..embedded.paths import default_data_dir
from ..ports import authority, dial_host
from ..ui.auth import hash_password
from .common import fail

app = typer.Typer(help="The web dashboard.", no_args_is_help=True)


def dashboard_url(data_dir: Path) -> str:
    config = data_dir / "agents" / "ui.json"
    try:
        http = json.loads(config.read_text()).get("http", {})
    except (OSError, json.JSONDecodeError):
        fail(f"no dashboard configured under {data_dir}: start one with `cim up` (or pass --data-dir)")
    return f"http://{authority(dial_host(str(http.get('host', '127.0.0.1'))), http.get('port', 8470))}/"


@app.command("open")
def open_cmd(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="CIM_DATA_DIR", help="the data dir of `cim up`"),
    print_only: bool = typer.Option(False, "--print", help="print the address instead of opening a browser"),
) -> None:
    """Open the dashboard that `cim up` started, in the default browser."""
    url = dashboard_url(data_dir or default_data_dir())
    typer.echo(url)
    if not print_only and not webbrowser.open(url):
        typer.echo("no browser could be started here: open the address above yourself", err=True)


@app.command("hash-password")
def hash_password_cmd(user: str = typer.Argument("admin", help="the user name to put before the hash")) -> None:
    """Read a password (twice, or once from a pipe) and print a `user:hash` line for the UI's password file."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            fail("the two passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < 8:
        fail("use at least 8 characters")
    typer.echo(f"{user}:{hash_password(first)}")
