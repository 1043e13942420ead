"""The pipeline engine: declarative pipelines of plugin steps over durable consumers.

model.py definitions.py   pipeline definitions (the KV bucket) and their checks
engine.py                 running steps for a unit, coalesced, with records and dead letters
search.py graph.py        projections the steps' outputs feed: search, relations
events.py                 pipeline.steps_done (the step records)
config.py api.py agent.py the pipeline agent (cim.pipeline.*)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capability import Capability
from . import events as events  # registers the pipeline event models
from .config import Config, provision_spec

if TYPE_CHECKING:
    from ..runtime import AgentBase


def _agent() -> type[AgentBase[Config]]:
    # Imported when the agent runs, not when the capability is listed.
    from .agent import Agent

    return Agent


CAPABILITY = Capability(name="pipeline", config=Config, agent=_agent, provision=provision_spec())
