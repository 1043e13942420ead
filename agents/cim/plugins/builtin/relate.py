"""Knowledge representation: units a unit's text refers to (by CID)."""

from __future__ import annotations

from ... import __version__
from ...text import CID_REF
from .. import Plugin, StepContext, StepOutput


async def run(ctx: StepContext) -> StepOutput:
    text_cid = ctx.earlier("text_cid")
    refs: list[str] = []
    if text_cid:
        text = (await ctx.read(text_cid)).decode("utf-8", "replace")
        refs = sorted(set(CID_REF.findall(text)) - {ctx.unit.cid})
    return StepOutput({"relations": [{"type": "references", "target": r} for r in refs]})


plugin = Plugin(name="relate", version=__version__, kind="step", run=run,
                provides={"relations": "1.0.0"}, description="references between units")
