"""The component registry: what agents announce, and who provides which capability.

Every agent announces itself (`announce.Heartbeat`, run by the agent runtime) in the KV
bucket `CIM_REGISTRY`. These functions read that bucket directly, so they work while the
registry agent is down:

    views = await list_agents(nc)                         # [AgentView(record, state)]
    best = await find_providers(nc, "store", ">=0.1,<1")  # [(AgentView, "0.1.0"), ...]
    matches = await negotiate(nc, ["store>=0.1", "search"])  # [Match] or NoProvider
"""

from .client import (
    AgentNotFound,
    find_providers,
    list_agents,
    negotiate,
    read_records,
    show_agent,
)
from .model import AgentRecord, AgentView, Match, Requirement, State, registry_key
from .query import NoProvider

__all__ = [
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
