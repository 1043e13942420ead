"""Lifecycle: retention labels (e.g. `retention:90d`, `tier:archive`) that tiering selects on."""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from ... import __version__
from ...events import Event
from ...store.events import UnitLabeled
from .. import Plugin, StepContext, StepOutput


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(description="the label to add, e.g. retention:90d or tier:archive")
    has_label: str | None = Field(default=None, description="apply only to units with this label (own or classified)")
    media_type: str | None = None
    min_size: int | None = Field(default=None, ge=0)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = Field(default_factory=list)


async def run(ctx: StepContext) -> StepOutput:
    settings: Settings = ctx.settings  # type: ignore[assignment]
    u = ctx.unit
    known = set(u.labels) | set(ctx.earlier("labels") or [])
    labels = sorted({
        r.label for r in settings.rules
        if (r.has_label is None or r.has_label in known)
        and (r.media_type is None or fnmatch.fnmatch(u.media_type, r.media_type))
        and (r.min_size is None or u.size >= r.min_size)
    })
    events = [Event.of(UnitLabeled(labels=labels, by=f"{ctx.pipeline}/{ctx.step}@retention-{__version__}"), u.cid)
              ] if labels else []
    return StepOutput({"labels": list[JsonValue](labels)}, events)


plugin = Plugin(name="retention", version=__version__, kind="step", run=run, settings=Settings,
                provides={"lifecycle": "1.0.0"}, description="retention and tier labels")
