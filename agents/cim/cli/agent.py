"""`cim agent run`: how every container (and `cim up`) starts an agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from .. import capabilities
from ..config import load_config
from ..errors import CimError, ConfigError
from ..runtime import run_agent
from .common import fail

app = typer.Typer(help="Run agents.", no_args_is_help=True)


@app.command("run")
def run_cmd(
    capability: str = typer.Argument(..., help="which agent: store, tier, registry, pipeline, hub, ui"),
    config: Path = typer.Option(..., "--config", "-c", envvar="CIM_AGENT_CONFIG", help="the agent config (JSON)"),
    instances: int = typer.Option(1, "--instances", min=1, max=64, envvar="CIM_AGENT_INSTANCES",
                                  help="run this many agents sharing the work (pipeline and hub only)"),
    instance: int | None = typer.Option(None, "--instance", min=1, hidden=True, help="run as instance N of several"),
) -> None:
    """Validate the config, connect, register and serve until SIGTERM."""
    try:
        cfg = load_config(config)
        if cfg.capability != capability:
            raise ConfigError(str(config), [("capability", f"is {cfg.capability!r}, but the command runs {capability!r}")])
        cap = capabilities.get(capability)
        if (instances > 1 or instance is not None) and not cap.scales:
            raise CimError(f"the {capability} agent runs once: its work is not shared between instances "
                           "(only pipeline and hub agents scale out); drop --instances")
        if instances > 1:
            from .. import logs
            from ..instances import Instances

            logs.setup(cfg.log_level, f"{cfg.agent_name}-instances")
            raise typer.Exit(Instances(capability, config, instances).run())
        if instance is not None:
            cfg = cfg.for_instance(instance)
        asyncio.run(run_agent(cfg, cap.agent()))
    except ConfigError as err:
        fail(err)
    except CimError as err:
        fail(str(err))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
