"""`cim up`: run an embedded leaf (nats-server + every agent) until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import typer

from ..embedded.leaf import Leaf, supervise
from ..embedded.paths import default_data_dir
from ..errors import CimError
from .common import fail


def up_cmd(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="CIM_DATA_DIR", help="where data lives (default: ~/.local/share/cim)"),
    host: str = typer.Option("127.0.0.1", help="address NATS listens on"),
    port: int = typer.Option(4222, "--port", envvar="CIM_PORT", help="NATS client port"),
    http_port: int = typer.Option(8222, "--http-port", envvar="CIM_HTTP_PORT", help="NATS monitoring port"),
    log_level: str = typer.Option("info", help="agents' log level"),
    archive_dir: Path | None = typer.Option(None, "--archive-dir", envvar="CIM_ARCHIVE_DIR",
                                            help="where backups go (default: under the data dir; better: another disk)"),
) -> None:
    """Start nats-server with JetStream, provision, and supervise every agent."""
    if archive_dir is not None:
        os.environ["CIM_ARCHIVE_DIR"] = str(archive_dir.resolve())  # the tier agent's settings read it
    leaf = Leaf(data_dir or default_data_dir(), host=host, port=port, http_port=http_port, log_level=log_level)

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.to_thread(leaf.start_server)
        for line in await leaf.provision():
            typer.echo(f"provision: {line}")
        await asyncio.to_thread(leaf.start_agents)
        typer.echo(leaf.summary())
        await supervise(leaf, stop, typer.echo)
        typer.echo("stopping...")

    try:
        asyncio.run(body())
    except CimError as err:
        leaf.stop()
        fail(str(err))
    finally:
        leaf.stop()
    typer.echo("stopped; data kept in " + str(leaf.data_dir))
