"""The ui agent's service API (cim.ui.*)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..nats.rpc import Endpoint


class InfoReply(BaseModel):
    url: str
    units: int
    caught_up: bool
    # Defaults: an agent from before the unit list was kept on disk does not send them.
    as_of: int = Field(default=0, description="the last event sequence the unit list covers")
    stale: bool = Field(default=False, description="behind the stream as far as it knows (catching up, or cut off)")
    replayed: int = Field(default=0, description="events applied since this agent started (few when it resumed)")


# The endpoints (cim.ui.*): what each takes and answers, for the agent and its callers alike.
INFO: Endpoint[InfoReply] = Endpoint("cim.ui.info", None, InfoReply)
