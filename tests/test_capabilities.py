"""The one list of capabilities (issue 15): every capability is a package exporting one
`Capability`, listed by explicit import, and agreeing with capabilities.json, the
permissions contract the NixOS modules read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cim import capabilities, permissions
from cim.capability import AgentConfig
from cim.config import validate_config
from cim.errors import ConfigError
from cim.events import known_types
from cim.runtime import AgentBase

PACKAGE = Path(__file__).resolve().parents[1] / "agents" / "cim"


def test_the_python_list_and_the_permissions_contract_name_the_same_capabilities_in_order():
    assert capabilities.NAMES == permissions.NAMES == ("store", "tier", "registry", "pipeline", "hub", "ui")


@pytest.mark.parametrize("cap", capabilities.ALL, ids=lambda c: c.name)
def test_each_capability_is_one_folder_with_its_config_agent_and_events(cap):
    folder = PACKAGE / cap.name
    assert (folder / "__init__.py").is_file() and (folder / "agent.py").is_file() and (folder / "config.py").is_file()
    assert issubclass(cap.config, AgentConfig) and cap.config.__module__ == f"cim.{cap.name}.config"
    agent = cap.agent()
    assert issubclass(agent, AgentBase) and agent.__module__ == f"cim.{cap.name}.agent"
    # The event types the contract lets it write are registered, by its own package or the store's.
    for event_type in permissions.may_write(cap.name):
        assert event_type in known_types(), f"{cap.name} may write {event_type}, which no model registers"


def test_an_unknown_capability_is_a_config_error_that_names_the_ones_there_are():
    with pytest.raises(ConfigError) as err:
        validate_config({"capability": "search"})
    assert "unknown capability 'search'; choose one of store, tier, registry, pipeline, hub, ui" in str(err.value)


def test_the_event_types_are_known_without_walking_the_package():
    """A fresh interpreter that only reads an event finds every capability's types: the
    registry loads the capability list, not every module named *_events."""
    code = "from cim.events import known_types; print(' '.join(known_types()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"unit.created", "unit.labeled", "unit.located", "steps.done", "agent.appeared", "hub.dead_lettered"} <= set(out)
    assert not list(PACKAGE.rglob("*_events.py")), "event models live in each capability's events.py"
