"""The Units page's search: asked of the pipeline agent, which keeps the one search index
(titles and extracted text, cim.pipeline.search), and its snippets marked up for the page.

The dashboard keeps no index of its own: a second one would answer differently. Without a
pipeline agent the page says that search needs one, and lists units as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from markupsafe import Markup, escape
from nats.aio.client import Client
from pydantic import ValidationError

from ..errors import CimError, InvalidInput
from ..nats.rpc import AgentUnavailable, call
from ..pipeline import api as pipeline_api
from .data import Missing
from .unit_list import UnitRow

TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Found:
    """A search hit as the Units page lists it: the pipeline's match, the unit list's details."""

    cid: str
    title: str
    labels: tuple[str, ...]
    size: int | None  # None: the unit list has not seen the unit yet
    created_at: str
    snippet: Markup


async def search(nc: Client, query: str, label: str, limit: int) -> pipeline_api.SearchReply | Missing:
    """The best `limit` matches of `query` (with `label`, if given), or one sentence why none."""
    try:
        request = pipeline_api.SearchRequest(query=query, labels=[label] if label else [], limit=limit)
    except ValidationError as err:
        return Missing(f"This cannot be searched for: {err.errors()[0]['msg']}")
    try:
        return await call(nc, pipeline_api.SEARCH, request, timeout=TIMEOUT)
    except AgentUnavailable as err:
        return Missing(f"Search needs the pipeline agent, and none answered: {err}", err)
    except InvalidInput as err:  # the query itself: the user can change it
        return Missing(f"The pipeline agent could not search for this: {err}", err)
    except CimError as err:
        return Missing(f"Search needs the pipeline agent, and it failed: {err}", err)


def highlight(snippet: str, spans: Iterable[tuple[int, int]]) -> Markup:
    """The snippet as HTML, each (start, end) span in <mark>. Everything is escaped; spans
    that overlap, run backwards or lie outside the snippet (another agent's answer is input
    like any other) are dropped or cut to fit."""
    out: list[Markup] = []
    at = 0
    for start, end in sorted(spans):
        start, end = max(start, at), min(end, len(snippet))
        if start >= end:
            continue
        out += [escape(snippet[at:start]), Markup("<mark>"), escape(snippet[start:end]), Markup("</mark>")]
        at = end
    out.append(escape(snippet[at:]))
    return Markup("").join(out)


def listed(hits: list[pipeline_api.SearchHit], known: dict[str, UnitRow]) -> list[Found]:
    """The hits, best first, with the labels and size the unit list knows of each."""
    out = []
    for h in hits:
        row = known.get(h.cid)
        out.append(Found(cid=h.cid, title=h.title or (row.title if row else ""), labels=row.labels if row else (),
                         size=row.size if row else None, created_at=h.created_at or (row.created_at if row else ""),
                         snippet=highlight(h.snippet, h.highlights)))
    return out
