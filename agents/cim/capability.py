"""What a capability is: its agent's config model, its agent, the streams and buckets it
needs, and what it adds to `cim up` on one machine.

Each capability package (cim.store, cim.tier, cim.registry, cim.pipeline, cim.hub, cim.ui)
exports one `CAPABILITY`; cim.capabilities lists them by explicit import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from . import permissions
from .nats.connect import ConnectionSettings
from .provision.spec import ProvisionSpec

if TYPE_CHECKING:
    from .runtime import AgentBase


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    # None turns the endpoint off; 0 picks a free port (printed in the log).
    port: int | None = Field(default=None, ge=0, le=65535)


class RegistrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Keep it well under the registry bucket's TTL (30 s): a record not renewed within the
    # TTL expires, and readers call an agent stale after three missed beats.
    heartbeat: float = Field(default=5.0, gt=0, le=300, description="seconds between announcements in CIM_REGISTRY")
    announce: bool = Field(default=True, description="announce this agent in the registry bucket")


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capability: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    nats: ConnectionSettings = Field(default_factory=ConnectionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    state_dir: Path | None = Field(default=None, description=(
        "where the agent keeps its projections (SQLite); default: $STATE_DIRECTORY (systemd's StateDirectory), "
        "else none: kept in memory and rebuilt by replay at every start"))

    @property
    def agent_name(self) -> str:
        return self.name or f"cim-{self.capability}"

    def deeper_errors(self) -> list[tuple[str, str]]:
        """Errors the model's own fields cannot see (settings checked against a plugin's
        model): (field path, what is wrong). `cim config check` and the agent's start run it."""
        return []

    def for_instance(self, i: int) -> Self:
        """Instance `i` (from 1) of several under one service (`cim agent run --instances`):
        its own name, its own state directory below this one, its own metrics port above
        this one's."""
        from .projection_db import state_dir

        changes: dict[str, Any] = {"name": f"{self.agent_name}-{i}"}
        base = state_dir(self.state_dir)
        if base is not None:
            changes["state_dir"] = base / str(i)
        if self.metrics.port:
            changes["metrics"] = self.metrics.model_copy(update={"port": self.metrics.port + i - 1})
        return self.model_copy(update=changes)


# For `cim up`: the settings a capability adds to its agent's config on one machine (a
# folder, a tier under the data dir), and how to write its line of the summary `cim up`
# prints: from the agent's config once merged with its settings file and validated (the
# settings may replace what was generated: a host, a tokens file, the connectors). It is
# called with the data dir and, for a capability that serves HTTP (hub, ui), the port `cim up`
# gives it (--hub-port, --ui-port; None for the others): a fixed one, never picked here.
EmbeddedSettings = Callable[[Path, int | None], tuple[dict[str, Any], Callable[[Any], str | None]]]


@dataclass(frozen=True)
class Capability:
    name: str
    config: type[AgentConfig]
    # The agent class, imported only when the agent runs (it may pull in aiohttp or boto3,
    # which `cim config check` and `cim --version` have no need of).
    agent: Callable[[], type[AgentBase[Any]]]
    provision: ProvisionSpec = field(default_factory=lambda: ProvisionSpec(include_core=False))
    embedded: EmbeddedSettings | None = None

    @property
    def scales(self) -> bool:
        """Whether several agents may share its work (`cim agent run --instances`, NixOS
        `instances`), as capabilities.json says (Nix reads the same): the pipeline's and the
        hub's work goes through durable consumers and idempotent puts; a second registry or
        tier agent would only do the same work twice."""
        return permissions.scales(self.name)
