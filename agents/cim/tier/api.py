"""The tier agent's service API (cim.tier.*): its requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..nats.rpc import Endpoint


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


# The endpoints (cim.tier.*): what each takes and answers, for the agent and its callers alike.
STATUS: Endpoint[dict] = Endpoint("cim.tier.status", Empty, dict)
MIGRATE: Endpoint[dict] = Endpoint("cim.tier.migrate", MigrateRequest, dict)
VERIFY: Endpoint[dict] = Endpoint("cim.tier.verify", VerifyRequest, dict)
RESTORE: Endpoint[dict] = Endpoint("cim.tier.restore", CidRequest, dict)
BACKUP_STATUS: Endpoint[dict] = Endpoint("cim.tier.backup_status", Empty, dict)
