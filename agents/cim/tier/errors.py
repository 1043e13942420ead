"""Errors of the tiering capability; each says what to fix."""

from __future__ import annotations

from ..errors import CimError, InvalidInput, NotFound
from ..errors import UnitExpiredError as UnitExpiredError  # where the tier's callers look for it


class TierError(CimError):
    code = "tier_error"


class TierConfigError(InvalidInput):
    """A tier setting that cannot work (scheme, credentials file, bucket)."""

    code = "invalid_tier_config"


class TierUnavailable(TierError):
    """A tier did not answer. The data there is not lost; the read or move is retried."""

    code = "tier_unavailable"


class ObjectMissing(NotFound):
    code = "object_missing"
    wire_fields = ("tier", "cid")

    def __init__(self, tier: str, cid: str):
        self.tier = tier
        self.cid = cid
        super().__init__(f"tier {tier!r} has no object for {cid}")


class TierAgentMissing(TierError):
    code = "tier_agent_missing"
