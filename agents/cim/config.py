"""Agent configuration files: the JSON that `cim agent run` reads and `cim config check` validates.

Each capability's `Config` (its `Capability.config`) is a subclass of `AgentConfig` with its
own keys. The file names its capability, so one checker serves all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import capabilities
from .capability import AgentConfig
from .errors import ConfigError, field_errors


def validate_config(data: Any, source: str = "config") -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "expected a JSON object")])
    capability = data.get("capability")
    if not isinstance(capability, str):
        raise ConfigError(source, [("capability", f"required: one of {', '.join(capabilities.NAMES)}")])
    try:
        model = capabilities.get(capability).config
    except ConfigError as err:
        raise ConfigError(source, err.errors) from None
    try:
        config = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, field_errors(err)) from None
    deeper = config.deeper_errors()
    if deeper:
        raise ConfigError(source, deeper)
    return config


def read_json(path: Path) -> Any:
    """The JSON in a config file (or a `cim up` settings file), or a ConfigError naming the
    file and where it went wrong."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(str(path), [("(file)", f"cannot read it: {err.strerror}")]) from None
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [("(file)", f"not UTF-8 text (byte {err.start})")]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(str(path), [(f"line {err.lineno} column {err.colno}", f"not JSON: {err.msg}")]) from None


def load_config(path: Path) -> AgentConfig:
    return validate_config(read_json(path), str(path))
