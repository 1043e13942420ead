"""Classification: labels from rules on media type, file name, source, metadata and content."""

from __future__ import annotations

import fnmatch
import re

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from ... import __version__
from ...events import Event
from ...store.events import UnitLabeled
from .. import Plugin, StepContext, StepOutput


class Rule(BaseModel):
    """Every condition given must hold for the label to apply."""

    model_config = ConfigDict(extra="forbid")
    label: str
    media_type: str | None = Field(default=None, description="glob, e.g. text/*")
    filename: str | None = Field(default=None, description="glob on the unit's title, e.g. *.md")
    source: str | None = Field(default=None, description="glob on the unit's source")
    content: str | None = Field(default=None, description="regular expression searched in the text")
    metadata: dict[str, str] = Field(default_factory=dict, description="metadata keys that must equal these")

    @field_validator("content")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from None
        return v


DEFAULT_RULES = [
    Rule(label="text", media_type="text/*"),
    Rule(label="document", media_type="text/markdown"),
    Rule(label="document", media_type="text/html"),
    Rule(label="document", media_type="application/pdf"),
    Rule(label="image", media_type="image/*"),
    Rule(label="data", media_type="application/json"),
    Rule(label="data", media_type="text/csv"),
]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    max_scan_bytes: int = Field(default=1024 * 1024, gt=0, description="how much content the regexes see")


def matches(rule: Rule, ctx: StepContext, text: str | None) -> bool:
    u = ctx.unit
    if rule.media_type and not fnmatch.fnmatch(u.media_type, rule.media_type):
        return False
    if rule.filename and not fnmatch.fnmatch(u.title, rule.filename):
        return False
    if rule.source and not fnmatch.fnmatch(u.source, rule.source):
        return False
    if any(str(u.metadata.get(k)) != v for k, v in rule.metadata.items()):
        return False
    return not rule.content or (text is not None and re.search(rule.content, text) is not None)


async def run(ctx: StepContext) -> StepOutput:
    settings: Settings = ctx.settings  # type: ignore[assignment]
    text = None
    if any(r.content for r in settings.rules):
        raw = (await ctx.content())[: settings.max_scan_bytes]
        text = raw.decode("utf-8", "replace")
    labels = sorted({r.label for r in settings.rules if matches(r, ctx, text)})
    events = []
    if labels:
        events.append(Event.of(UnitLabeled(labels=labels, by=f"{ctx.pipeline}/{ctx.step}@classify-{__version__}"), ctx.unit.cid))
    return StepOutput({"labels": list[JsonValue](labels)}, events)


plugin = Plugin(name="classify", version=__version__, kind="step", run=run, settings=Settings,
                provides={"classification": "1.0.0"}, description="rule-based labels")
