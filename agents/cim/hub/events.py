"""Events the hub records: deliveries that ended in the dead-letter stream, and items a
connector could not import. Successful deliveries are not events (they would double the
event stream's load); they are counted in /metrics."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..events.types import event_type


@event_type("hub.dead_lettered")
class WebhookDeadLettered(BaseModel):
    """A webhook gave up on an event. Aggregate id: the webhook's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_id: str
    subject: str
    url: str
    attempts: int
    reason: str
    dlq_subject: str


@event_type("hub.redelivered")
class WebhookRedelivered(BaseModel):
    """A dead letter was retried by hand and the receiver accepted it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_id: str
    dlq_seq: int


@event_type("hub.import_failed")
class ImportFailed(BaseModel):
    """A connector could not turn an item into a unit. Aggregate id: the connector's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    item: str
    reason: str
