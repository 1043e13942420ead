"""Agent configuration files: the JSON that `cim agent run` reads and `cim config check` validates.

Each capability's agent module (`cim.agents.<capability>`) defines `Config`, a subclass of
`AgentConfig` with its own keys. The file names its capability, so one checker serves all.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .capabilities import CAPABILITIES
from .errors import ConfigError
from .nats.connect import ConnectionSettings


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

    @property
    def agent_name(self) -> str:
        return self.name or f"cim-{self.capability}"


def agent_module(capability: str):
    """The module that implements a capability's agent, or a ConfigError saying why not."""
    if capability not in CAPABILITIES:
        raise ConfigError(
            "config", [("capability", f"unknown capability {capability!r}; choose one of {', '.join(CAPABILITIES)}")]
        )
    try:
        return importlib.import_module(f"cim.agents.{capability}")
    except ModuleNotFoundError as err:
        if err.name != f"cim.agents.{capability}":
            raise
        raise ConfigError(
            "config", [("capability", f"this version of cim has no {capability!r} agent yet")]
        ) from err


def _error_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validate_config(data: Any, source: str = "config") -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "expected a JSON object")])
    capability = data.get("capability")
    if not isinstance(capability, str):
        raise ConfigError(source, [("capability", f"required: one of {', '.join(CAPABILITIES)}")])
    try:
        model = agent_module(capability).Config
    except ConfigError as err:
        raise ConfigError(source, err.errors) from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, [(_error_path(e["loc"]), e["msg"]) for e in err.errors()]) from None


def load_config(path: Path) -> AgentConfig:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(str(path), [("(file)", f"cannot read it: {err.strerror}")]) from None
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [("(file)", f"not UTF-8 text (byte {err.start})")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(str(path), [(f"line {err.lineno} column {err.colno}", f"not JSON: {err.msg}")]) from None
    return validate_config(data, str(path))
