"""The tier agent's service API (cim.tier.*): its requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Empty(_Req):
    pass


class MigrateRequest(_Req):
    dry_run: bool = False
    progress: bool = Field(default=False, description="one message per unit on the reply subject, ahead of the answer")


class VerifyRequest(_Req):
    tier: str | None = None
    sample: int | None = Field(default=None, gt=0)


class CidRequest(_Req):
    cid: str
