"""The ui agent's service API (cim.ui.*)."""

from __future__ import annotations

from pydantic import BaseModel


class InfoReply(BaseModel):
    url: str
    units: int
    caught_up: bool
