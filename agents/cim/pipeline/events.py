"""Events of the pipeline engine, registered in the event type registry."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, JsonValue

from ..cid import Cid
from ..events import StoredEvent
from ..events.types import event_type


class StepRecord(BaseModel):
    """One step's provenance and output, inside `steps.done`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    step: str
    plugin: str
    plugin_version: str
    output: dict[str, JsonValue]


@event_type("steps.done")
class StepsDone(BaseModel):
    """A unit through every step of a pipeline, exactly once (appended with expected
    revision 0 on the aggregate `<pipeline>--<cid>`): each step's provenance and output,
    in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pipeline: str
    cid: Cid
    trigger_seq: int
    steps: list[StepRecord]


def step_outputs(e: StoredEvent, plugin: str | None = None) -> Iterator[tuple[str, dict]]:
    """(unit CID, output) of each step a `steps.done` event records (of one plugin, if
    given); nothing for any other event or a damaged one."""
    done = e.typed() if e.type == "steps.done" else None
    if not isinstance(done, StepsDone):
        return
    for s in done.steps:
        if plugin is None or s.plugin == plugin:
            yield done.cid, dict(s.output)


@event_type("dlq.retried")
class DlqRetried(BaseModel):
    """A dead letter was processed again successfully and removed from CIM_DLQ."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pipeline: str
    dlq_seq: int
    original_seq: int
