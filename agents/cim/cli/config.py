"""`cim config check`: validate an agent config file, as the NixOS build does."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import load_config
from ..errors import ConfigError
from .common import fail, globals_of

app = typer.Typer(help="Agent configuration files.", no_args_is_help=True)


@app.command("check")
def check(ctx: typer.Context, file: Path = typer.Argument(..., help="the agent config (JSON)")) -> None:
    """Validate FILE; on error print every field path and exit 1."""
    g = globals_of(ctx)
    try:
        cfg = load_config(file)
    except ConfigError as err:
        fail(err)
    typer.echo(cfg.model_dump_json(indent=None if g.json else 2) if g.json else f"{file}: valid {cfg.capability} agent config")
