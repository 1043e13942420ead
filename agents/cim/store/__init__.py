"""Units: immutable, content-addressed information, and the store capability.

units.py       the unit model: metadata, labels, lineage
content.py     the content bucket: chunks verified against the CID, append-only for writers
unit_store.py  put (content, then unit.created), get, show, list: what every writer uses
unit_fold.py   the one fold of a unit's events: labels, location, expiry
events.py      unit.created, unit.labeled, unit.revised
config.py api.py agent.py   the store agent (cim.store.*) for clients without JetStream
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capability import Capability
from . import events as events  # registers the store event models
from .config import Config

if TYPE_CHECKING:
    from ..runtime import AgentBase


def _agent() -> type[AgentBase[Config]]:
    # Imported when the agent runs, not when the capability is listed.
    from .agent import Agent

    return Agent


CAPABILITY = Capability(name="store", config=Config, agent=_agent)
