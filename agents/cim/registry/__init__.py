"""The component registry: what agents announce, and who provides which capability.

Every agent announces itself (`announce.Heartbeat`, run by the agent runtime) in the KV
bucket `CIM_REGISTRY`. These functions read that bucket directly, so they work while the
registry agent is down:

    views = await list_agents(nc)                         # [AgentView(record, state)]
    best = await find_providers(nc, "store", ">=0.1,<1")  # [(AgentView, "0.1.0"), ...]
    matches = await negotiate(nc, ["store>=0.1", "search"])  # [Match] or NoProvider

events.py is agent.appeared, .stale, .recovered, .gone; config.py api.py agent.py the
registry agent (cim.registry.*), which turns the heartbeats into those events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capability import Capability
from . import events as events  # registers the registry event models
from .client import (
    AgentNotFound,
    find_providers,
    list_agents,
    negotiate,
    read_records,
    show_agent,
)
from .config import Config
from .model import AgentRecord, AgentView, Match, Requirement, State, registry_key
from .query import NoProvider

__all__ = [
    "CAPABILITY",
    "AgentNotFound",
    "AgentRecord",
    "AgentView",
    "Match",
    "NoProvider",
    "Requirement",
    "State",
    "find_providers",
    "list_agents",
    "negotiate",
    "read_records",
    "registry_key",
    "show_agent",
]

if TYPE_CHECKING:
    from ..runtime import AgentBase


def _agent() -> type[AgentBase[Config]]:
    # Imported when the agent runs, not when the capability is listed.
    from .agent import Agent

    return Agent


CAPABILITY = Capability(name="registry", config=Config, agent=_agent)
