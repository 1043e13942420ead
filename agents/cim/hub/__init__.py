"""The integration hub: HTTP ingest, outbound webhooks, and connectors (inbox folder, S3 import).

http_api.py tokens.py     the ingest API and its bearer tokens
webhooks.py               outbound webhooks from a durable consumer, signed, with dead letters
connectors.py inbox.py s3_import.py   the connector plugins
events.py                 hub events
config.py api.py agent.py the hub agent (cim.hub.*)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capability import Capability
from . import events as events  # registers the hub event models
from .config import Config, embedded_settings, provision_spec

if TYPE_CHECKING:
    from ..runtime import AgentBase


def _agent() -> type[AgentBase[Config]]:
    # Imported when the agent runs, not when the capability is listed.
    from .agent import Agent

    return Agent


CAPABILITY = Capability(name="hub", config=Config, agent=_agent, provision=provision_spec(), embedded=embedded_settings)
