"""The pipeline agent's service API (cim.pipeline.*): its requests and replies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..nats.rpc import Endpoint
from .model import PipelineDef
from .search import SCAN_ROWS


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Req):
    query: str = Field(min_length=1, max_length=500, description='words (all must match), "a phrase", prefix*, OR, -excluded')
    limit: int = Field(default=10, gt=0, le=100)
    labels: list[str] = Field(default_factory=list, max_length=16, description="units with every one of these labels")
    media_type: str = Field(default="", max_length=200, description="exact, or a family: text/*")
    source: str = Field(default="", max_length=1000, description="exact, or a glob")
    since: str = Field(default="", max_length=40, description="created at or after (ISO 8601)")
    until: str = Field(default="", max_length=40, description="created before (ISO 8601)")
    facets: bool = Field(default=False, description="also count the matches by label, media type and source")

    @field_validator("since", "until")
    @classmethod
    def _moment(cls, v: str) -> str:
        """As created_at is kept (UTC to the second, as text), so text order is time order."""
        if not v:
            return v
        try:
            moment = datetime.fromisoformat(v)
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC).replace(tzinfo=None)
        except (ValueError, OverflowError):  # OverflowError: year 1 with a zone east of UTC
            raise ValueError("not an ISO 8601 date or time (2026-05-01, 2026-05-01T12:00:00Z); without a zone it is UTC") from None
        return moment.isoformat(timespec="seconds")

    @field_validator("media_type")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()  # media types are stored lower-case


_Pattern = Annotated[str, Field(max_length=1000)]


class UnitsRequest(_Req):
    """A page of the units the index knows, newest first (the hub's GET /v1/units)."""

    labels: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=16, description="units with every one of these labels")
    source: str = Field(default="", max_length=1000, description="exact, or a glob")
    before: tuple[Annotated[int, Field(ge=0, lt=2**63)], Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, description="(seq, cid) of the last unit of the page before: only older units; "
                                  "(seq, \"\") for a resume position: units below that sequence")
    limit: int = Field(default=50, gt=0, le=1000)
    within_sources: list[_Pattern] = Field(default_factory=lambda: ["*"], max_length=256, description=(
        "shell patterns (fnmatch): only units whose source matches one (a hub token's reach)"))
    scan: int = Field(default=SCAN_ROWS, gt=0, le=SCAN_ROWS, description="rows of the index to walk at most")
    min_as_of: int = Field(default=0, ge=0, lt=2**63, description=(
        "the index must cover the stream up to here (the hub sends a cursor's position, the `before` seq): "
        "one behind refuses rather than skip units"))


class CidRequest(_Req):
    cid: str
    limit: int = Field(default=10, gt=0, le=100, description="similar units at most")


class RetryRequest(_Req):
    seq: int = Field(gt=0)


class Empty(_Req):
    pass


class CheckRequest(_Req):
    pipelines: list[PipelineDef] = Field(max_length=256)


class Freshness(BaseModel):
    """How far a projection has caught up: the last event sequence it covers, and whether it
    knows it is behind (still catching up after a start, or cut off from the stream)."""

    as_of: int
    stale: bool


class SearchHit(BaseModel):
    cid: str
    score: float
    title: str
    snippet: str
    highlights: list[tuple[int, int]] = Field(
        description="(start, end) of each matched word in the snippet, in Unicode code points (not UTF-16 units)")
    media_type: str = ""
    source: str = ""
    created_at: str = ""


class SearchReply(Freshness):
    hits: list[SearchHit]
    indexed: int = Field(description="units with indexed text")
    units: int = Field(description="units known to the index (searchable by title)")
    facets: dict[str, list[tuple[str, int]]] | None = Field(default=None, description=(
        "matches by label, media type and source; past ranked_newest matches, of the newest ones"))
    ranked_newest: int | None = Field(default=None, description=(
        "set when more units matched than are ranked: only the newest this many matches were ranked; "
        "a filter, more words or a phrase reach older ones"))


class ListedUnit(BaseModel):
    cid: str
    seq: int = Field(description="the stream sequence of its unit.created: the listing's order")
    title: str
    media_type: str
    source: str
    created_at: str
    labels: list[str] = Field(description="its labels now: those it was stored with and those pipeline steps added")


class UnitsReply(Freshness):
    units: list[ListedUnit]
    more: bool = Field(description="older units may follow: ask again with before = (resume, \"\")")
    resume: int | None = Field(default=None, description=(
        "where the next page starts (units below this sequence): the last unit listed, or where a walk of "
        "`scan` rows stopped; None after the last"))


class Relation(BaseModel):
    type: str
    direction: str
    cid: str
    title: str


class RelatedReply(Freshness):
    cid: str
    related: list[Relation]
    similar: list[SearchHit] = Field(default_factory=list, description="more like this: units with similar text")


class IndexReply(Freshness):
    documents: int
    units: int
    digest: str
    replayed: int = Field(description="events this agent applied to its projection since it started")


# The endpoints (cim.pipeline.*): what each takes and answers, for the agent and its callers alike.
SEARCH: Endpoint[SearchReply] = Endpoint("cim.pipeline.search", SearchRequest, SearchReply)
UNITS: Endpoint[UnitsReply] = Endpoint("cim.pipeline.units", UnitsRequest, UnitsReply)
RELATED: Endpoint[RelatedReply] = Endpoint("cim.pipeline.related", CidRequest, RelatedReply)
INDEX: Endpoint[IndexReply] = Endpoint("cim.pipeline.index", Empty, IndexReply)
STATUS: Endpoint[dict] = Endpoint("cim.pipeline.status", Empty, dict)
CHECK: Endpoint[dict] = Endpoint("cim.pipeline.check", CheckRequest, dict)
RETRY: Endpoint[dict] = Endpoint("cim.pipeline.retry", RetryRequest, dict)
