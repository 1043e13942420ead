"""Retrieval: marks a unit's extracted text for the full-text search projection.

The index itself is a projection of the `steps.done` events that record this step (cim.pipeline.search), so it
can always be rebuilt by replaying the event stream.
"""

from __future__ import annotations

from ... import __version__
from ...text import terms
from .. import Plugin, StepContext, StepOutput


async def run(ctx: StepContext) -> StepOutput:
    text_cid = ctx.earlier("text_cid")
    if not text_cid:
        return StepOutput({"text_cid": None, "terms": 0})
    text = (await ctx.read(text_cid)).decode("utf-8", "replace")
    return StepOutput({"text_cid": text_cid, "terms": len(set(terms(text))), "title": ctx.earlier("title") or ctx.unit.title})


plugin = Plugin(name="index", version=__version__, kind="step", run=run,
                provides={"search": "1.0.0"}, description="full-text search index entry")
