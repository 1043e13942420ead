"""One root error, specific subclasses; every message says what failed and what to do.

nats and boto errors are mapped into these at the boundary, so a user never sees a raw
library traceback for a condition we can explain.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self


class CimError(Exception):
    """Root of every error CIM raises on purpose. `str(err)` is meant for the user.

    Each class names itself on the wire with `code`, so an error raised in an agent arrives
    at its caller as the same class with the same message (`to_wire`, `from_wire`); `status`
    is the HTTP-like status of the micro error reply, for NATS tools that show it.
    """

    code: ClassVar[str] = "error"
    status: ClassVar[str] = "503"
    # Attributes that travel with the message (plain JSON values).
    wire_fields: ClassVar[tuple[str, ...]] = ()
    exit_code = 1
    _by_code: ClassVar[dict[str, type[CimError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            existing = CimError._by_code.get(cls.code)
            if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
                raise TypeError(f"error code {cls.code!r} is taken by {existing.__qualname__}")
            CimError._by_code[cls.code] = cls

    def to_wire(self) -> dict[str, Any]:
        """The error as JSON: its codes from the most specific to `error` (a caller that does
        not know the first takes the next it knows), its message and its fields."""
        codes = [c.code for c in type(self).__mro__ if isinstance(c, type) and issubclass(c, CimError) and "code" in c.__dict__]
        return {"codes": codes, "message": str(self)[:MAX_MESSAGE],
                "fields": {f: getattr(self, f, None) for f in self.wire_fields}}

    @classmethod
    def from_wire(cls, data: Any, fallback: str = "the agent failed") -> CimError:
        """The error `to_wire` described, as the first of its classes known here. Hostile or
        foreign input gives a plain CimError with what text there is, never an exception."""
        if not isinstance(data, dict):
            return CimError(fallback)
        message = data.get("message")
        message = printable(message[:MAX_MESSAGE]) if isinstance(message, str) and message.strip() else fallback
        codes = data.get("codes")
        kind: type[CimError] = CimError
        for code in codes if isinstance(codes, list) else []:
            if isinstance(code, str) and code in CimError._by_code:
                kind = CimError._by_code[code]
                break
        err = kind.with_message(message)
        fields = data.get("fields")
        for name in kind.wire_fields:  # each one set (None if missing): callers may read it
            value = fields.get(name) if isinstance(fields, dict) else None
            setattr(err, name, printable(value) if isinstance(value, str) else value)
        return err

    @classmethod
    def with_message(cls, message: str) -> Self:
        """This class with a given message, whatever its own constructor takes."""
        err = cls.__new__(cls)
        Exception.__init__(err, message)
        return err


CimError._by_code["error"] = CimError

# An error's message on the wire: long enough for any of ours, short enough for one message.
MAX_MESSAGE = 4000
# C0 (but tabs and newlines), DEL and C1: a C1 CSI (0x9b) starts an escape sequence too.
_CONTROL = dict.fromkeys([c for c in range(32) if c not in (9, 10)] + [127] + list(range(0x80, 0xA0)))


def printable(text: str) -> str:
    """Text from another process or a stored unit, without terminal control characters
    (escape sequences that could retitle, recolour or write the clipboard of a terminal)."""
    return text.translate(_CONTROL)



class InvalidInput(CimError, ValueError):
    """Input broke a rule. `field` names where, `rule` names which."""

    code = "invalid_input"
    status = "400"
    wire_fields = ("field", "rule")

    def __init__(self, field: str, rule: str):
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}")


def field_errors(err: Any, prefix: str = "", top: str = "(top level)") -> list[tuple[str, str]]:
    """A pydantic ValidationError's problems as (dotted field path, message): the one
    translation every caller uses. `prefix` places the fields (`settings.`), `top` names a
    problem of the whole object. Pydantic's "Value error, " is dropped, and so is a field
    name our own validators already put in front of their text (InvalidInput's "field: rule")."""
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        path = ".".join(loc)
        msg = str(e["msg"]).removeprefix("Value error, ")
        for name in (path, loc[-1] if loc else ""):
            if name and msg.startswith(f"{name}: "):
                msg = msg[len(name) + 2:]
                break
        out.append((f"{prefix}{path}" if path else (prefix.rstrip(".") or top), msg))
    return out


def invalid_input(err: Any, prefix: str = "", top: str = "(request)") -> InvalidInput:
    """The first problem of a pydantic ValidationError, as an InvalidInput naming its field."""
    field, rule = field_errors(err, prefix, top)[0]
    return InvalidInput(field, rule)


class InvalidCid(InvalidInput):
    code = "invalid_cid"


class UnitTooLarge(InvalidInput):
    code = "unit_too_large"
    status = "413"


class UnknownEventType(InvalidInput):
    code = "unknown_event_type"


class CidMismatch(CimError):
    """Bytes read back do not hash to the CID they are stored under: corruption or tampering."""

    code = "cid_mismatch"
    wire_fields = ("expected", "actual")

    def __init__(self, expected: str, actual: str, where: str = "content store"):
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"content read from the {where} does not match its CID: expected {expected}, "
            f"got {actual}. The stored copy is corrupt; restore it from another tier "
            "or put the original file again."
        )


class NotFound(CimError):
    code = "not_found"
    status = "404"


class UnitExpiredError(NotFound):
    """Reading a unit a retention policy expired (the event is cim.tier.events.UnitExpired)."""

    code = "unit_expired"

    def __init__(self, cid: str, policy: str, when: str, *, put: bool = False):
        again = ("; putting the same bytes again does not bring it back (a unit's history ends with its expiry): "
                 "change them (a title inside, a byte) to store them as a new unit") if put else ""
        super().__init__(f"unit {cid} was expired by the retention policy {policy!r} at {when}; its bytes are gone by "
                         f"design{again}")


class UnitNotFound(NotFound):
    code = "unit_not_found"
    wire_fields = ("cid",)

    def __init__(self, cid: str):
        self.cid = cid
        super().__init__(f"no unit {cid} is stored here (check the CID, or list units with `cim units ls`)")


class ConcurrencyConflict(CimError):
    """The server refused an append because the aggregate moved on since the caller read it."""

    code = "concurrency_conflict"
    status = "409"
    wire_fields = ("subject", "expected")

    def __init__(self, subject: str, expected: int, detail: str = ""):
        self.subject = subject
        self.expected = expected
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"append to {subject} expected revision {expected} but the aggregate has moved on"
            f"{extra}; read it again and retry with the current revision"
        )


class ConnectionFailed(CimError):
    code = "connection_failed"


class JetStreamUnavailable(CimError):
    code = "jetstream_unavailable"


class ConsumerGone(JetStreamUnavailable):
    """A durable consumer was deleted under its reader (its stream deleted and made again)."""

    code = "consumer_gone"


class ProvisionError(CimError):
    code = "provision_failed"


class ProjectionUnavailable(CimError):
    """A read model cannot answer: its feed failed, or it is being rebuilt."""

    code = "projection_unavailable"
    status = "503"


class Busy(CimError):
    """A reader is at its limit of this work at once (the hub's max_cold_downloads): the
    request is refused at once rather than queued; try again shortly."""

    code = "busy"
    status = "503"


class ConfigError(CimError):
    """A config file failed validation. `errors` holds (field path, message) pairs."""

    code = "invalid_config"
    status = "400"
    wire_fields = ("source", "errors")

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{source} is not a valid configuration:\n{lines}")


class EmbeddedError(CimError):
    code = "embedded_failed"
