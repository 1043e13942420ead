"""Synthesis: an extractive summary, the most representative sentences, no model needed."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from ... import __version__
from ...text import sentences, terms
from .. import Plugin, StepContext, StepOutput


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sentences: int = Field(default=3, gt=0, le=20)
    max_chars: int = Field(default=600, gt=40)


def summarize(text: str, n: int, max_chars: int) -> str:
    sents = sentences(text)
    if len(sents) <= n:
        return " ".join(sents)[:max_chars]
    freq = Counter(terms(text))
    top = max(freq.values(), default=1)

    def score(s: str) -> float:
        ts = terms(s)
        return sum(freq[t] / top for t in ts) / (len(ts) ** 0.5) if ts else 0.0

    # The best sentences, kept in their original order so the summary reads naturally.
    chosen = sorted(sorted(range(len(sents)), key=lambda i: score(sents[i]), reverse=True)[:n])
    return " ".join(sents[i] for i in chosen)[:max_chars]


async def run(ctx: StepContext) -> StepOutput:
    settings: Settings = ctx.settings  # type: ignore[assignment]
    text_cid = ctx.earlier("text_cid")
    if not text_cid:
        return StepOutput({"summary": ""})
    text = (await ctx.read(text_cid)).decode("utf-8", "replace")
    return StepOutput({"summary": summarize(text, settings.sentences, settings.max_chars)})


plugin = Plugin(name="summarize", version=__version__, kind="step", run=run, settings=Settings,
                provides={"summaries": "1.0.0"}, description="extractive summaries")
