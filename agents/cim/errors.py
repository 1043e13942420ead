"""One root error, specific subclasses; every message says what failed and what to do.

nats and boto errors are mapped into these at the boundary, so a user never sees a raw
library traceback for a condition we can explain.
"""

from __future__ import annotations


class CimError(Exception):
    """Root of every error CIM raises on purpose. `str(err)` is meant for the user."""

    exit_code = 1


class InvalidInput(CimError, ValueError):
    """Input broke a rule. `field` names where, `rule` names which."""

    def __init__(self, field: str, rule: str):
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


class InvalidCid(InvalidInput):
    pass


class UnitTooLarge(InvalidInput):
    pass


class UnknownEventType(InvalidInput):
    pass


class CidMismatch(CimError):
    """Bytes read back do not hash to the CID they are stored under: corruption or tampering."""

    def __init__(self, expected: str, actual: str, where: str = "content store"):
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"content read from the {where} does not match its CID: expected {expected}, "
            f"got {actual}. The stored copy is corrupt; restore it from another tier "
            "or put the original file again."
        )


class NotFound(CimError):
    pass


class UnitExpiredError(NotFound):
    """Reading a unit a retention policy expired (the event is cim.tier.events.UnitExpired)."""

    def __init__(self, cid: str, policy: str, when: str):
        super().__init__(f"unit {cid} was expired by the retention policy {policy!r} at {when}; its bytes are gone by design")


class UnitNotFound(NotFound):
    def __init__(self, cid: str):
        self.cid = cid
        super().__init__(f"no unit {cid} is stored here (check the CID, or list units with `cim units ls`)")


class ConcurrencyConflict(CimError):
    """The server refused an append because the aggregate moved on since the caller read it."""

    def __init__(self, subject: str, expected: int, detail: str = ""):
        self.subject = subject
        self.expected = expected
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"append to {subject} expected revision {expected} but the aggregate has moved on"
            f"{extra}; read it again and retry with the current revision"
        )


class ConnectionFailed(CimError):
    pass


class JetStreamUnavailable(CimError):
    pass


class ProvisionError(CimError):
    pass


class ConfigError(CimError):
    """A config file failed validation. `errors` holds (field path, message) pairs."""

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{source} is not a valid configuration:\n{lines}")


class EmbeddedError(CimError):
    pass
