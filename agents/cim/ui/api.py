"""The ui agent's service API (cim.ui.*)."""

from __future__ import annotations

from pydantic import BaseModel

from ..nats.rpc import Endpoint


class InfoReply(BaseModel):
    url: str
    units: int
    caught_up: bool


# The endpoints (cim.ui.*): what each takes and answers, for the agent and its callers alike.
INFO: Endpoint[InfoReply] = Endpoint("cim.ui.info", None, InfoReply)
