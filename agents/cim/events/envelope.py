"""The event envelope: a CloudEvents 1.0 event in the NATS binary content mode.

The attributes travel in `ce-` headers (the CloudEvents NATS binding), the JSON data in the
body, so a CloudEvents SDK reads an event straight off the stream. On the wire:

- `ce-type` is reverse-DNS, `dev.cim.unit.created`; the code, the type registry, the CLI and
  the subjects keep the short `unit.created`. `wire_type` and `short_type` are the one place
  that converts.
- `ce-source` is an absolute URI naming the producing instance (`source_for`).
- Correlation and causation are the extension attributes `ce-correlationid` and
  `ce-causationid`, so a CloudEvents bridge keeps them.
- The producing agent and its version stay NATS headers (`cim-agent`, `cim-agent-version`):
  transport metadata for CIM's own tools, like `Nats-Msg-Id`; the source names the agent
  for everyone else.

Events stored before this envelope (short `ce-type`, relative `ce-source`, correlation and
causation in `cim-correlation-id` / `cim-causation-id`) read as before: `read_headers`
takes both forms.

Ids travel on as HTTP headers (a webhook's `webhook-id`), in log lines and in the ids of
the events that answer them, so an id, a correlation id or a causation id holds no control
character and no blank at either end (`Event` refuses them). A stored event whose header
decodes to one anyway is read with the header as it was sent, and flagged (`problem`).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, ValidationError, field_validator

from ..errors import InvalidInput, invalid_input
from ..json_depth import MAX_DEPTH, deeper_than

SUBJECT_PREFIX = "cim.evt"
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")  # a NATS subject token we allow: no dots, no wildcards
SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
# The reverse-DNS prefix of every type on the wire (CloudEvents: a type SHOULD be prefixed
# with a reverse-DNS name of the organisation that defines it).
TYPE_PREFIX = "dev.cim."

H_ID = "ce-id"
H_SOURCE = "ce-source"
H_TYPE = "ce-type"
H_SUBJECT = "ce-subject"
H_TIME = "ce-time"
H_SPEC = "ce-specversion"
H_CONTENT = "ce-datacontenttype"
H_CORRELATION = "ce-correlationid"  # extension attributes: lower-case letters and digits, at most 20
H_CAUSATION = "ce-causationid"
H_AGENT = "cim-agent"
H_AGENT_VERSION = "cim-agent-version"
H_MSG_ID = "Nats-Msg-Id"
# Where events written before the extension attributes keep them; read, never written.
H_LEGACY_CORRELATION = "cim-correlation-id"
H_LEGACY_CAUSATION = "cim-causation-id"

CLI_AGENT = "cim-cli"  # the `agent` of events the `cim` command writes
# An absolute URI: a scheme, then no blanks and no control characters. Always `fullmatch`:
# `$` would let a trailing newline through.
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]+")
# What `structured()` names an event stored with no source and no agent: nothing says who
# wrote it, and the reading hub's own user and host would be a lie.
UNKNOWN_SOURCE = "urn:cim:unknown"
# C0 controls and DEL: HTTP refuses them in a header (aiohttp raises), and a log line would split.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Printable ASCII but space, '"' and '%' (the NATS binding's rule): a value with anything
# else is percent-encoded in its header.
_NEEDS_ENCODING = re.compile(r'[^\x21\x23\x24\x26-\x7e]')
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def wire_type(short: str) -> str:
    """`unit.created` -> `dev.cim.unit.created`, as `ce-type` carries it."""
    return TYPE_PREFIX + short


def short_type(wire: str) -> str:
    """`dev.cim.unit.created` -> `unit.created`; an old event's short `ce-type` stays as it is."""
    return wire[len(TYPE_PREFIX):] if wire.startswith(TYPE_PREFIX) else wire


@lru_cache(maxsize=64)  # bounded: `structured()` asks it with the agent header of any stored event
def source_for(agent: str) -> str:
    """The `ce-source` of events an agent writes: `urn:cim:agent:<name>`, unique per instance
    (`AgentConfig.for_instance` names each one); for the `cim` command, who ran it where,
    `urn:cim:cli:<user>@<host>`."""
    if agent == CLI_AGENT:
        return f"urn:cim:cli:{quote(_user(), safe='')}@{quote(socket.gethostname() or 'localhost', safe='')}"
    return f"urn:cim:agent:{quote(agent, safe='')}"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name and no passwd entry (a container's bare uid)
        return f"uid-{os.getuid()}"


def _encoded(value: str) -> str:
    return quote(value, safe=_HEADER_SAFE) if _NEEDS_ENCODING.search(value) else value


def id_problem(value: str) -> str | None:
    """Why `value` cannot be an event id, correlation id or causation id, or None if it can."""
    if bad := _CONTROL.search(value):
        return (f"holds the control character U+{ord(bad.group()):04X} at position {bad.start()}: "
                "ids travel in headers, where control characters are refused")
    if value != value.strip():
        return "starts or ends with a blank: give it without"
    try:
        value.encode()
    except UnicodeEncodeError as err:
        return (f"is not valid Unicode text (U+{ord(value[err.start]):04X} at position {err.start}, "
                "a lone surrogate: bytes that are not UTF-8?)")
    return None


def safe_id(value: str) -> str:
    """`value` as an id `Event` takes: as it is when it is one, else percent-encoded (a stored
    event's id with a blank at its end, say, in the id of the event that answers it)."""
    return value if id_problem(value) is None else quote(value, safe=_HEADER_SAFE, errors="backslashreplace")


def _without_controls(value: str) -> str:
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", value)


class WireHeaders(NamedTuple):  # a tuple: read for every event, and cheaper to make than a frozen dataclass
    """An event's envelope as its NATS headers carry it, in the current or the old form."""

    id: str | None
    type: str | None  # the short form
    source: str
    time: str | None
    correlation_id: str | None
    causation_id: str | None
    agent: str | None
    agent_version: str | None
    problem: str | None = None  # a header that held control characters once decoded: kept as sent


def read_headers(headers: Mapping[str, str]) -> WireHeaders:
    """The envelope of any event's headers. The current form percent-encodes its values (the
    NATS binding's rule) and prefixes its type; an old event's values are taken as they are,
    so an old id that happens to hold `%41` is not changed.

    A value that holds control characters once decoded (`ce-id: evil%0AX`) is kept as sent,
    encoded, and named in `problem`: a webhook would put it in an HTTP header, which refuses it."""
    claimed = headers.get(H_TYPE)
    get = headers.get
    if claimed is not None and claimed.startswith(TYPE_PREFIX):
        wire = WireHeaders(
            id=_decoded(get(H_ID)) or get(H_MSG_ID),
            type=short_type(claimed),
            source=_decoded(get(H_SOURCE)) or "",
            time=get(H_TIME),
            correlation_id=_decoded(get(H_CORRELATION)),
            causation_id=_decoded(get(H_CAUSATION)),
            agent=get(H_AGENT),
            agent_version=get(H_AGENT_VERSION),
        )
    else:
        correlation, causation = get(H_CORRELATION), get(H_CAUSATION)
        wire = WireHeaders(
            id=get(H_ID) or get(H_MSG_ID),
            type=claimed,
            source=get(H_SOURCE) or "",
            time=get(H_TIME),
            correlation_id=get(H_LEGACY_CORRELATION) if correlation is None else correlation,
            causation_id=get(H_LEGACY_CAUSATION) if causation is None else causation,
            agent=get(H_AGENT),
            agent_version=get(H_AGENT_VERSION),
        )
    # One search for the four values (the rule), the slow path only for the exception.
    if _CONTROL.search(f"{wire.id}{wire.source}{wire.correlation_id}{wire.causation_id}") is None:
        return wire
    return _kept_as_sent(wire, headers, decoded=claimed is not None and claimed.startswith(TYPE_PREFIX))


def _decoded(value: str | None) -> str | None:
    return unquote(value) if value is not None and "%" in value else value


def _kept_as_sent(wire: WireHeaders, headers: Mapping[str, str], *, decoded: bool) -> WireHeaders:
    """`wire` with each value that holds control characters replaced by its header as it was
    sent (with any control character the header itself holds percent-encoded: a client other
    than nats-py may send one), and the problem named."""
    get = headers.get
    sources = {  # the header each value was read from
        "id": H_ID if get(H_ID) else H_MSG_ID,
        "source": H_SOURCE,
        "correlation_id": H_CORRELATION if get(H_CORRELATION) is not None or decoded else H_LEGACY_CORRELATION,
        "causation_id": H_CAUSATION if get(H_CAUSATION) is not None or decoded else H_LEGACY_CAUSATION,
    }
    changes: dict[str, str] = {}
    problems = []
    for field, name in sources.items():
        value = getattr(wire, field)
        if value and _CONTROL.search(value):
            changes[field] = kept = _without_controls(headers[name])
            problems.append(f"its {name} header holds control characters{' once decoded' if decoded else ''}: "
                            f"kept as {kept[:80]!r}")
    return wire._replace(**changes, problem="; ".join(problems))


def subject_for(type_name: str, aggregate_id: str) -> str:
    aggregate, event = type_name.split(".", 1)
    return f"{SUBJECT_PREFIX}.{aggregate}.{aggregate_id}.{event}"


def aggregate_filter(aggregate: str, aggregate_id: str | None = None) -> str:
    return f"{SUBJECT_PREFIX}.{aggregate}.{aggregate_id or '*'}.*"


class Event(BaseModel):
    """An event to append. `data` is checked against the model registered for `type`.

    `source` is the CloudEvents source, an absolute URI; left out, it is the agent's
    (`source_for`). A field that breaks a rule is an InvalidInput naming it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    aggregate_id: str
    data: dict[str, JsonValue] = Field(default_factory=dict)
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    agent: str = CLI_AGENT
    agent_version: str = ""
    # After `agent`: its default is derived from the agent (validated fields come in order).
    source: str = Field(default_factory=lambda fields: source_for(fields.get("agent") or CLI_AGENT))
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None

    if not TYPE_CHECKING:  # hidden from mypy, which then still checks the fields of each call

        def __init__(self, **fields: Any) -> None:
            try:
                super().__init__(**fields)
            except ValidationError as err:
                raise invalid_input(err) from None

    @field_validator("aggregate_id")
    @classmethod
    def _token(cls, v: str) -> str:
        if not TOKEN.fullmatch(v):
            raise ValueError("must be letters, digits, '-' or '_' (it becomes a NATS subject token)")
        return v

    @field_validator("id", "agent")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("id", "correlation_id", "causation_id", "agent", "agent_version")
    @classmethod
    def _header_safe(cls, v: str | None) -> str | None:
        if v and (why := id_problem(v)):
            raise ValueError(why)
        return v

    @field_validator("source")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not SCHEME.fullmatch(v) or id_problem(v):
            raise ValueError(f"{v[:200]!r} is not an absolute URI (CloudEvents source): give one with a scheme "
                             "and no blanks or control characters, like 'urn:cim:agent:<name>', or leave it out "
                             "to use the agent's")
        return v

    @field_validator("time")
    @classmethod
    def _in_utc_range(cls, v: datetime) -> datetime:
        try:
            v.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError(f"{v.isoformat()} cannot be given in UTC (out of range)") from None
        return v

    @classmethod
    def of(cls, data: BaseModel, aggregate_id: str, **envelope: Any) -> Event:
        """An event whose data is a registered model: its type is the model's."""
        from .types import type_of

        return cls(type=type_of(type(data)), aggregate_id=aggregate_id, data=data.model_dump(mode="json"), **envelope)

    @property
    def subject(self) -> str:
        return subject_for(self.type, self.aggregate_id)

    def headers(self) -> dict[str, str]:
        """The event's NATS headers: CloudEvents binary content mode, values percent-encoded
        where the binding asks for it (an id or correlation id with a blank, say)."""
        h = {
            H_SPEC: SPECVERSION,
            H_ID: _encoded(self.id),
            H_SOURCE: _encoded(self.source),
            H_TYPE: wire_type(self.type),
            H_SUBJECT: self.aggregate_id,
            H_TIME: self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            H_CONTENT: CONTENT_TYPE,
            H_AGENT: self.agent,
            H_AGENT_VERSION: self.agent_version,
            H_MSG_ID: self.id,
        }
        if self.correlation_id:
            h[H_CORRELATION] = _encoded(self.correlation_id)
        if self.causation_id:
            h[H_CAUSATION] = _encoded(self.causation_id)
        return h

    def payload(self) -> bytes:
        return json.dumps(self.data, separators=(",", ":"), sort_keys=True).encode()


def decode_body(data: bytes) -> tuple[Any, str | None]:
    """An event body as JSON, or (its text, why not): never raises, whatever the bytes."""
    if not data:
        return {}, None
    too_deep = False
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return data.decode("utf-8", "replace"), f"body is not JSON: {err}"
    except RecursionError:
        too_deep = True
    if too_deep or deeper_than(body):
        text = data[:200].decode("utf-8", "replace")
        return text, f"body nests deeper than {MAX_DEPTH} levels ({len(data)} bytes): refused"
    return body, None


class StoredEvent(BaseModel):
    """An event read back, with its stream sequence. Unknown or undecodable ones are kept."""

    model_config = ConfigDict(frozen=True)

    seq: int
    subject: str
    type: str
    aggregate: str
    aggregate_id: str
    id: str
    source: str
    time: datetime | None
    correlation_id: str | None = None
    causation_id: str | None = None
    agent: str | None = None
    agent_version: str | None = None
    data: Any = None
    known: bool = True  # False: no model is registered for this type (a newer producer?)
    problem: str | None = None  # why the body could not be decoded or validated, if it could not
    _typed: BaseModel | None = PrivateAttr(default=None)  # the model `from_message` checked the body with

    def __eq__(self, other: object) -> bool:  # the cached model above is not part of the event
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = BaseModel.__hash__

    def typed(self) -> BaseModel | None:
        """The data as its registered model, or None for unknown or broken events."""
        from .types import model_for

        cached = (self.__pydantic_private__ or {}).get("_typed")  # not `self._typed`: pydantic's slow __getattr__
        if cached is not None:
            return cached
        model = model_for(self.type)
        if model is None or self.problem:
            return None
        return model.model_validate(self.data)

    @classmethod
    def from_message(cls, subject: str, seq: int, headers: dict[str, str], data: bytes) -> StoredEvent:
        from .types import model_for

        parts = subject.split(".")
        aggregate = parts[2] if len(parts) > 2 else ""
        aggregate_id = parts[3] if len(parts) > 3 else ""
        # The type is the subject's: publish permissions are per subject, so only a writer
        # allowed this type could have stored it. A header that says otherwise (in either
        # form, `dev.cim.unit.created` or the old `unit.created`) is a forgery (or a bug) and
        # is surfaced, never believed.
        wire = read_headers(headers)
        type_name = f"{aggregate}.{parts[4]}" if len(parts) == 5 else (wire.type or "")
        body, problem = decode_body(data)
        if wire.type and wire.type != type_name:
            problem = f"its type header says {headers[H_TYPE]!r} but its subject is that of {type_name!r}: not believed"
        model = model_for(type_name)
        typed = None
        if model is not None and problem is None:
            try:
                typed = model.model_validate(body)
            except Exception as err:
                problem = f"body does not match {type_name}: {err}"
        problem = problem or wire.problem
        try:
            when = datetime.fromisoformat(wire.time.replace("Z", "+00:00")) if wire.time is not None else None
        except ValueError:
            when, problem = None, problem or f"bad {H_TIME} header {wire.time!r}"
        if when is not None and (why := _time_problem(when)):
            problem = problem or f"its {H_TIME} header {wire.time!r} {why}"
        stored = cls(
            seq=seq,
            subject=subject,
            type=type_name,
            aggregate=aggregate,
            aggregate_id=aggregate_id,
            id=wire.id or f"seq-{seq}",
            source=wire.source,
            time=when,
            correlation_id=wire.correlation_id,
            causation_id=wire.causation_id,
            agent=wire.agent,
            agent_version=wire.agent_version,
            data=body,
            known=model is not None,
            problem=problem,
        )
        stored._typed = None if problem else typed
        return stored

    def structured(self) -> dict[str, Any]:
        """The event in the CloudEvents JSON format (structured content mode), as an
        outgoing webhook carries it: any CloudEvents SDK reads it. An old event's source
        is kept as it was stored (relative, which the format allows); one stored without
        any is named after its agent, or `urn:cim:unknown` with no agent either. Never
        raises: a time that cannot be given in UTC goes out as stored."""
        source = self.source or (_agent_source(self.agent) if self.agent else UNKNOWN_SOURCE)
        out: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": source,
            "type": wire_type(self.type),
            "datacontenttype": CONTENT_TYPE,
            "data": self.data,
        }
        if self.aggregate_id:
            out["subject"] = self.aggregate_id
        if self.time is not None:
            out["time"] = (self.time.isoformat() if _time_problem(self.time)
                           else self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"))
        if self.correlation_id:
            out["correlationid"] = self.correlation_id
        if self.causation_id:
            out["causationid"] = self.causation_id
        return out


def _time_problem(when: datetime) -> str | None:
    offset = when.utcoffset()
    if offset is None:
        return "has no UTC offset (RFC 3339 asks for one)"
    if not offset:  # UTC itself (every time CIM writes): nothing to convert
        return None
    try:
        when.astimezone(UTC)
    except (OverflowError, ValueError):
        return "cannot be given in UTC (out of range)"
    return None


def _agent_source(agent: str) -> str:
    """An old event's source, from its `cim-agent` header (any text a writer put there); the
    `cim` command's without who ran it where, which nothing stored says."""
    return source_for(agent) if agent != CLI_AGENT else "urn:cim:cli"


def validated(event: Event, *, as_built: bool = False) -> Event:
    """Check the event's type is registered and its data matches; return it normalised.

    `as_built`: the caller built the data in its stored form already (the engine's own
    records): it is checked, not normalised, which saves dumping it again.
    """
    from .types import TYPE_PATTERN, model_for

    if not TYPE_PATTERN.fullmatch(event.type):
        raise InvalidInput("type", f"{event.type!r} must look like 'aggregate.event'")
    if not SCHEME.fullmatch(event.source):  # a `model_copy` skips the field's own check
        raise InvalidInput("source", f"{event.source!r} is not an absolute URI (CloudEvents source)")
    model = model_for(event.type)
    if model is None:
        from ..errors import UnknownEventType
        from .types import known_types

        raise UnknownEventType("type", f"unknown event type {event.type!r}; known types: {', '.join(known_types())}")
    try:
        checked = model.model_validate(event.data)
        if as_built:
            return event
        data = checked.model_dump(mode="json")
    except Exception as err:
        if isinstance(err, ValidationError):
            raise invalid_input(err, prefix="data.") from None
        raise
    return event if data == event.data else event.model_copy(update={"data": data})
