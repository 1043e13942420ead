"""What every command shares: global options, output, running async code, error mapping."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from nats.aio.client import Client

from ..errors import CimError
from ..nats.connect import ConnectionSettings, connect

T = TypeVar("T")


@dataclass
class Globals:
    servers: list[str]
    creds: Path | None = None
    nkey: Path | None = None
    user: str | None = None
    password_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    json: bool = False
    timeout: float = 5.0

    def settings(self) -> ConnectionSettings:
        nkey = self.nkey
        if nkey is None and self.creds is None and self.user is None:
            # `cim up` made an admin key: use it, as a newcomer expects `cim` to just work.
            from ..embedded.paths import admin_key, default_data_dir

            found = admin_key(Path(os.environ.get("CIM_DATA_DIR") or default_data_dir()))
            nkey = found if found.is_file() else None
        return ConnectionSettings(
            servers=self.servers,
            name="cim-cli",
            creds_file=self.creds,
            nkey_seed_file=nkey,
            user=self.user,
            password_file=self.password_file,
            tls_ca_file=self.tls_ca,
            tls_cert_file=self.tls_cert,
            tls_key_file=self.tls_key,
            connect_timeout=self.timeout,
            # A command should fail, not hang, when the server goes away.
            max_reconnect_attempts=3,
        )


# The invocation's global options, for what has no context to ask (`fail`).
CURRENT: ContextVar[Globals | None] = ContextVar("cim_cli_globals", default=None)


def globals_of(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    if not isinstance(root.obj, Globals):
        root.obj = Globals(servers=["nats://127.0.0.1:4222"])
        CURRENT.set(root.obj)
    return root.obj


@asynccontextmanager
async def nats_connection(g: Globals) -> AsyncIterator[Client]:
    nc = await connect(g.settings())
    try:
        yield nc
    finally:
        await nc.close()


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's async body; a CimError becomes `fail`, with its exit code."""
    try:
        return asyncio.run(coro_fn())
    except CimError as err:
        fail(err)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def fail(problem: str | CimError, code: int | None = None) -> NoReturn:
    """Say why the command failed, on stderr, and exit: one line (`error: ...`), or under
    --json one JSON object, `{"error": {"codes": [...], "message": ..., "fields": {...}}}`
    (CimError.to_wire: the first code names the error for a script)."""
    err = problem if isinstance(problem, CimError) else CimError.with_message(problem)
    g = CURRENT.get()
    if g is not None and g.json:
        typer.echo(json.dumps({"error": err.to_wire()}, default=str), err=True)
    else:
        typer.echo(f"error: {err}", err=True)
    raise typer.Exit(err.exit_code if code is None else code)


def emit(g: Globals, data: Any, human: Callable[[Any], str] | None = None) -> None:
    """Print `data` as JSON with --json, else through `human` (or as indented JSON)."""
    if g.json or human is None:
        typer.echo(json.dumps(data, indent=None if g.json else 2, default=str))
    else:
        text = human(data)
        if text:
            typer.echo(text)

