"""`cim up`: run an embedded leaf (nats-server + every agent) until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import typer

from ..embedded import addresses
from ..embedded.leaf import Leaf, supervise
from ..embedded.paths import default_data_dir
from ..embedded.settings import SETTINGS_DIR
from ..errors import CimError, ConfigError
from ..tasks import cancel_and_wait
from .common import fail


def up_cmd(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="CIM_DATA_DIR", help="where data lives (default: ~/.local/share/cim)"),
    host: str = typer.Option("127.0.0.1", help="address NATS listens on"),
    port: int = typer.Option(addresses.NATS_PORT, "--port", envvar="CIM_PORT", min=1, max=65535, help="NATS client port"),
    http_port: int = typer.Option(addresses.MONITORING_PORT, "--http-port", envvar="CIM_HTTP_PORT", min=1, max=65535,
                                  help="NATS monitoring port"),
    ui_port: int = typer.Option(addresses.UI_PORT, "--ui-port", envvar="CIM_UI_PORT", min=1, max=65535,
                                help="the dashboard's port"),
    hub_port: int = typer.Option(addresses.HUB_PORT, "--hub-port", envvar="CIM_HUB_PORT", min=1, max=65535,
                                 help="the hub's HTTP port (ingest API)"),
    metrics_port_base: int = typer.Option(
        addresses.METRICS_PORT_BASE, "--metrics-port-base", envvar="CIM_METRICS_PORT_BASE",
        help="agents serve /metrics on BASE+0..BASE+5 (store, tier, registry, pipeline, hub, ui); "
             "see <data-dir>/prometheus-targets.json"),
    ready_timeout: float = typer.Option(120, "--ready-timeout", envvar="CIM_READY_TIMEOUT", min=1,
                                        help="seconds to wait for every agent to answer"),
    log_level: str = typer.Option("info", help="agents' log level"),
    archive_dir: Path | None = typer.Option(None, "--archive-dir", envvar="CIM_ARCHIVE_DIR",
                                            help="where backups go (default: under the data dir; better: another disk)"),
) -> None:
    """Start nats-server with JetStream, provision, and supervise every agent.

    Each agent's config is generated, then merged with <data-dir>/settings/<capability>.json
    if there is one (objects key by key; lists and values from the file replace)."""
    if archive_dir is not None:
        os.environ["CIM_ARCHIVE_DIR"] = str(archive_dir.resolve())  # the tier agent's settings read it
    leaf = Leaf(data_dir or default_data_dir(), host=host, port=port, http_port=http_port, ui_port=ui_port,
                hub_port=hub_port, metrics_port_base=metrics_port_base, log_level=log_level)

    # Settings and ports are checked first: a problem there starts nothing.
    try:
        leaf.prepare()
    except ConfigError as err:
        fail(settings_problem(err))
    except CimError as err:
        fail(err)

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # A closed terminal or a dropped SSH session: stop in order as for Ctrl-C. Unhandled, it
        # ended `cim up` at once and left nats-server and the agents (sessions of their own)
        # running over the data. Nobody reads the terminal any more, and a write to it fails.
        # Unless it is ignored already: `nohup cim up` asks to outlive the terminal.
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            loop.add_signal_handler(signal.SIGHUP, _hung_up, stop)
        await asyncio.to_thread(leaf.start_server)
        for line in await leaf.provision():
            typer.echo(f"provision: {line}")
        await asyncio.to_thread(leaf.start_agents)
        typer.echo(f"waiting for {len(leaf.agents)} agents to answer...")
        if await _until_ready(leaf, ready_timeout, stop):
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


def _hung_up(stop: asyncio.Event) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    stop.set()


async def _until_ready(leaf: Leaf, timeout: float, stop: asyncio.Event) -> bool:
    """Wait for the agents (see Leaf.wait_ready); False if Ctrl-C came first."""
    ready = asyncio.ensure_future(leaf.wait_ready(timeout))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not ready.done():
        await cancel_and_wait(ready)  # it closes its NATS connection
        return False
    ready.result()  # its error, if it failed
    return True


def settings_problem(err: ConfigError) -> str:
    """A settings file `cim up` cannot use: each problem as `FILE: FIELD: what`, then what to do."""
    lines = "\n".join(f"  {err.source}: {path}: {msg}" for path, msg in err.errors)
    return (f"a settings file is not valid; nothing was started:\n{lines}\n"
            f"Fix it (the files in <data-dir>/{SETTINGS_DIR}/ are merged into each agent's config: objects key by key, "
            "lists and values replace), or move it away to start with the defaults.")
