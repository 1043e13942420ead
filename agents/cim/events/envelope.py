"""The event envelope: CloudEvents attributes in NATS headers, JSON data in the body.

Header names follow the CloudEvents NATS binding (`ce-` prefix). Correlation, causation
and provenance (producing agent and version) travel as `cim-` headers, so a consumer can
route on them without parsing the body.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, field_validator

from ..errors import InvalidInput, invalid_input
from ..json_depth import MAX_DEPTH, deeper_than

SUBJECT_PREFIX = "cim.evt"
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")  # a NATS subject token we allow: no dots, no wildcards
SPECVERSION = "1.0"

H_ID = "ce-id"
H_SOURCE = "ce-source"
H_TYPE = "ce-type"
H_SUBJECT = "ce-subject"
H_TIME = "ce-time"
H_SPEC = "ce-specversion"
H_CONTENT = "ce-datacontenttype"
H_CORRELATION = "cim-correlation-id"
H_CAUSATION = "cim-causation-id"
H_AGENT = "cim-agent"
H_AGENT_VERSION = "cim-agent-version"
H_MSG_ID = "Nats-Msg-Id"


def subject_for(type_name: str, aggregate_id: str) -> str:
    aggregate, event = type_name.split(".", 1)
    return f"{SUBJECT_PREFIX}.{aggregate}.{aggregate_id}.{event}"


def aggregate_filter(aggregate: str, aggregate_id: str | None = None) -> str:
    return f"{SUBJECT_PREFIX}.{aggregate}.{aggregate_id or '*'}.*"


class Event(BaseModel):
    """An event to append. `data` is checked against the model registered for `type`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    aggregate_id: str
    data: dict[str, JsonValue] = Field(default_factory=dict)
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str = "cim"
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None
    agent: str = "cim-cli"
    agent_version: str = ""

    @field_validator("aggregate_id")
    @classmethod
    def _token(cls, v: str) -> str:
        if not TOKEN.match(v):
            raise ValueError("must be letters, digits, '-' or '_' (it becomes a NATS subject token)")
        return v

    @field_validator("id", "source", "agent")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
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
        h = {
            H_SPEC: SPECVERSION,
            H_ID: self.id,
            H_SOURCE: self.source,
            H_TYPE: self.type,
            H_SUBJECT: self.aggregate_id,
            H_TIME: self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            H_CONTENT: "application/json",
            H_AGENT: self.agent,
            H_AGENT_VERSION: self.agent_version,
            H_MSG_ID: self.id,
        }
        if self.correlation_id:
            h[H_CORRELATION] = self.correlation_id
        if self.causation_id:
            h[H_CAUSATION] = self.causation_id
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
        # allowed this type could have stored it. A header that says otherwise is a forgery
        # (or a bug) and is surfaced, never believed.
        type_name = f"{aggregate}.{parts[4]}" if len(parts) == 5 else headers.get(H_TYPE, "")
        body, problem = decode_body(data)
        claimed = headers.get(H_TYPE)
        if claimed and claimed != type_name:
            problem = f"its type header says {claimed!r} but its subject is that of {type_name!r}: not believed"
        model = model_for(type_name)
        typed = None
        if model is not None and problem is None:
            try:
                typed = model.model_validate(body)
            except Exception as err:
                problem = f"body does not match {type_name}: {err}"
        try:
            when = datetime.fromisoformat(headers[H_TIME].replace("Z", "+00:00")) if H_TIME in headers else None
        except ValueError:
            when, problem = None, problem or f"bad {H_TIME} header {headers[H_TIME]!r}"
        stored = cls(
            seq=seq,
            subject=subject,
            type=type_name,
            aggregate=aggregate,
            aggregate_id=aggregate_id,
            id=headers.get(H_ID) or headers.get(H_MSG_ID) or f"seq-{seq}",
            source=headers.get(H_SOURCE, ""),
            time=when,
            correlation_id=headers.get(H_CORRELATION),
            causation_id=headers.get(H_CAUSATION),
            agent=headers.get(H_AGENT),
            agent_version=headers.get(H_AGENT_VERSION),
            data=body,
            known=model is not None,
            problem=problem,
        )
        stored._typed = None if problem else typed
        return stored


def validated(event: Event, *, as_built: bool = False) -> Event:
    """Check the event's type is registered and its data matches; return it normalised.

    `as_built`: the caller built the data in its stored form already (the engine's own
    records): it is checked, not normalised, which saves dumping it again.
    """
    from .types import TYPE_PATTERN, model_for

    if not TYPE_PATTERN.match(event.type):
        raise InvalidInput("type", f"{event.type!r} must look like 'aggregate.event'")
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
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise invalid_input(err, prefix="data.") from None
        raise
    return event if data == event.data else event.model_copy(update={"data": data})
