"""Storage tiering: JetStream (hot) -> S3 or files (warm, cold), read-through, backup, restore.

urls.py           tier settings and the URL schemes (jetstream://, s3://, file://)
backends.py       one interface over the three kinds of store, every read verified by CID
locations.py      the location index: a projection of the unit events (in memory, and what any index answers)
location_rows.py  the index as SQLite rows, folded by the one unit fold
location_db.py    the agent's index on disk: checkpointed, resumed at start, waited for before a plan
policies.py       which units move where, by age, size, labels and last access
migrate.py        the copy -> verify -> record -> delete protocol, resumable from the events
fetch.py          read-through: the agent streams a unit's bytes to `cim units get`
backup.py         event export to the archive tier, and rebuilding a leaf from it
events.py         unit.moving, unit.located, unit.expired
config.py api.py agent.py   the tier agent (cim.tier.*)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capability import Capability
from . import events as events  # registers the tier event models
from .config import Config, embedded_settings, provision_spec

if TYPE_CHECKING:
    from ..runtime import AgentBase


def _agent() -> type[AgentBase[Config]]:
    # Imported when the agent runs, not when the capability is listed.
    from .agent import Agent

    return Agent


CAPABILITY = Capability(name="tier", config=Config, agent=_agent, provision=provision_spec(), embedded=embedded_settings)
