"""The web dashboard: server-rendered pages (jinja2), progressive enhancement, live events.

app.py auth.py            the pages and the login
projections.py plots.py   the live projection of the event stream, and its plots
data.py                   what the pages ask the other agents
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
