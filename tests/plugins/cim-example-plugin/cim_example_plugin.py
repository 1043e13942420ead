"""`guard`: refuses units whose text matches a pattern, and labels the others `checked`.

A third-party step: it uses only the public plugin API (cim.plugins).
"""

import asyncio
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cim.events import Event
from cim.plugins import Plugin, StepContext, StepOutput


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reject: str | None = None  # a regular expression; matching units fail the step
    malformed: str | None = None  # a regular expression; matching units get an effect with bad data
    wedge_marker: str | None = None  # a file to create, after which the step never returns (a wedged call)


async def run(ctx: StepContext) -> StepOutput:
    text = (await ctx.content()).decode("utf-8", "replace")
    if ctx.settings.wedge_marker:
        Path(ctx.settings.wedge_marker).touch()
        await asyncio.Event().wait()  # never set: this step hangs until it is cancelled
    if ctx.settings.reject and re.search(ctx.settings.reject, text):
        raise ValueError(f"guard: the content matches {ctx.settings.reject!r}")
    labels = "not a list" if ctx.settings.malformed and re.search(ctx.settings.malformed, text) else ["checked"]
    return StepOutput({"checked": True},
                      [Event(type="unit.labeled", aggregate_id=ctx.unit.cid, data={"labels": labels, "by": "guard"})])


plugin = Plugin(name="guard", version="1.2.0", kind="step", run=run, settings=Settings,
                provides={"guarding": "1.2.0"}, description="refuses units that match a pattern")
