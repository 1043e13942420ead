"""The web dashboard: server-rendered pages (jinja2), progressive enhancement, live events.

app.py auth.py            the pages and the login
projections.py unit_list.py
                          the projection of the event stream (SQLite, checkpointed), its rows
plots.py                  its plots
data.py search.py         what the pages ask the other agents (search: the pipeline agent)
config.py api.py agent.py the ui agent (cim.ui.*)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capability import Capability
from .config import Config, embedded_settings

if TYPE_CHECKING:
    from ..runtime import AgentBase


def _agent() -> type[AgentBase[Config]]:
    # Imported when the agent runs, not when the capability is listed.
    from .agent import Agent

    return Agent


CAPABILITY = Capability(name="ui", config=Config, agent=_agent, embedded=embedded_settings)
