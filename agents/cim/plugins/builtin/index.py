"""Retrieval: marks a unit's extracted text for the full-text search projection.

The index itself is a projection of the `steps.done` events that record this step
(cim.pipeline.search, on SQLite FTS5), so it can always be rebuilt by replaying the event
stream. `language` picks the stemming: `english` (Porter: "running" finds "run") or
`simple` (words as written, for any other language).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ... import __version__
from ...text import terms
from .. import Plugin, StepContext, StepOutput


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Literal["english", "simple"] = Field(
        default="english", description="english: Porter stemming; simple: no stemming (any other language)")


async def run(ctx: StepContext) -> StepOutput:
    settings: Settings = ctx.settings  # type: ignore[assignment]
    text_cid = ctx.earlier("text_cid")
    if not text_cid:
        return StepOutput({"text_cid": None, "terms": 0})
    text = (await ctx.read(text_cid)).decode("utf-8", "replace")
    return StepOutput({"text_cid": text_cid, "terms": len(set(terms(text))), "title": ctx.earlier("title") or ctx.unit.title,
                       "language": settings.language})


plugin = Plugin(name="index", version=__version__, kind="step", run=run, settings=Settings,
                provides={"search": "1.0.0"}, description="full-text search index entry")
