"""Errors of the tiering capability; each says what to fix."""

from __future__ import annotations

from ..errors import CimError, InvalidInput, NotFound


class TierError(CimError):
    pass


class TierConfigError(InvalidInput):
    """A tier setting that cannot work (scheme, credentials file, bucket)."""


class TierUnavailable(TierError):
    """A tier did not answer. The data there is not lost; the read or move is retried."""


class ObjectMissing(NotFound):
    def __init__(self, tier: str, cid: str):
        self.tier = tier
        self.cid = cid
        super().__init__(f"tier {tier!r} has no object for {cid}")


class UnitExpired(NotFound):
    def __init__(self, cid: str, policy: str, when: str):
        super().__init__(f"unit {cid} was expired by the retention policy {policy!r} at {when}; its bytes are gone by design")


class TierAgentMissing(TierError):
    pass
