"""Events of the pipeline engine, registered in the event type registry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, JsonValue

from .cid import Cid
from .events.types import event_type


@event_type("step.done")
class StepDone(BaseModel):
    """One step applied to one unit, exactly once (appended with expected revision 0 on
    the aggregate `<pipeline>--<step>--<cid>`). Its provenance and its output."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pipeline: str
    step: str
    plugin: str
    plugin_version: str
    cid: Cid
    output: dict[str, JsonValue]
    trigger_seq: int


@event_type("dlq.retried")
class DlqRetried(BaseModel):
    """A dead letter was processed again successfully and removed from CIM_DLQ."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pipeline: str
    dlq_seq: int
    original_seq: int
