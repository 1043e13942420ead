"""The ingest API over HTTP: `POST /v1/units` (multipart or a raw body), unit metadata, a
unit's bytes (`GET /v1/units/{cid}/content`: streamed, CID-verified, with ranges; see
cim.hub.downloads), the units page by page (`GET /v1/units`) and full-text search
(`GET /v1/search`), both answered by a pipeline agent over NATS, the OpenAPI document it is
tested against, health and Prometheus metrics.

Checks run cheapest first: the token (401), what the token allows (403), the metadata
(400), and only then the body, counted as it arrives (413 past the limit), so a refused
request costs no storage and a big one never sits whole in memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import fnmatch
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import Any, TypeVar

import nats.errors
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from .. import cid as cidlib
from ..errors import (
    Busy,
    CidMismatch,
    CimError,
    InvalidInput,
    NotFound,
    ProjectionUnavailable,
    UnitExpiredError,
    UnitNotFound,
    UnitTooLarge,
    field_errors,
)
from ..events.envelope import decode_body
from ..nats.rpc import AgentUnavailable, Endpoint, call
from ..pipeline.api import SEARCH, UNITS, SearchRequest, UnitsRequest
from ..spool import Spool
from ..store.content import CHUNK_SIZE
from ..store.put_batcher import PutBatcher
from ..store.unit_fold import HOT, UnitFold, UnitState
from ..store.unit_store import ColdReader, UnitStore, guess_media_type
from ..store.units import Unit
from ..tier.fetch import agent_listens
from . import byte_ranges, downloads, unit_pages
from .metrics import INGEST_BYTES, INGESTS, count_requests
from .metrics import REGISTRY as HUB_METRICS
from .tokens import Token, Tokens
from .unread_bodies import close_unread

log = logging.getLogger("cim.hub.http")

R = TypeVar("R")
_PLACEHOLDER_CID = cidlib.compute(b"")
_META_FIELDS = ("title", "source", "author", "media_type")


# A form field other than the file: metadata, a title, a label.
MAX_FIELD_BYTES = 64 * 1024


class Problem(Exception):
    """An HTTP error answer with the field errors that caused it."""

    def __init__(self, status: int, errors: list[tuple[str, str]], headers: dict[str, str] | None = None):
        self.status = status
        self.errors = errors
        self.headers = headers or {}


def _answer(problem: Problem) -> web.Response:
    body = {"errors": [{"field": f, "message": m} for f, m in problem.errors]}
    return web.json_response(body, status=problem.status, headers=problem.headers)


def _unexpected(cid: str, doing: str, err: Exception) -> Problem:
    """The answer to an error no rule expected while reading a unit (a hostile event its fold
    trips on, a hostile header from the tier agent): logged, and a 503 that holds nothing."""
    log.error("unit %s: %s it failed unexpectedly: %s: %s", cid, doing, type(err).__name__, err)
    return Problem(503, [("(server)", f"unit {cid} could not be read ({type(err).__name__}): its events or a colder "
                                      "tier's answer may be damaged; the hub's log says more")], {"Retry-After": "5"})


def _over_limit(limit: int) -> Problem:
    return Problem(413, [("content", f"the body is over the limit of {limit} bytes (raise max_body_size in the hub settings)")])


def _token_of(request: web.Request, tokens: Tokens) -> Token:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="cim-hub"'}
    if scheme.lower() != "bearer" or not presented.strip():
        raise Problem(401, [("Authorization", "send `Authorization: Bearer <token>`; tokens are in the hub's tokens_file")], challenge)
    token = tokens.lookup(presented.strip())
    if token is None:
        raise Problem(401, [("Authorization", "this token is not known to the hub")], challenge)
    return token


def _meta_from(values: dict[str, list[str]]) -> dict[str, Any]:
    """Unit metadata from form fields or query parameters (repeated `label`, `parent`)."""
    meta: dict[str, Any] = {}
    for key in _META_FIELDS:
        if values.get(key):
            meta[key] = values[key][-1]
    labels = [x for v in values.get("label", []) + values.get("labels", []) for x in v.split(",") if x.strip()]
    meta["labels"] = [x.strip() for x in labels]
    meta["parents"] = values.get("parent", [])
    if values.get("metadata"):
        parsed, problem = decode_body(values["metadata"][-1].encode())
        if problem:
            raise Problem(400, [("metadata", problem.replace("body", "it", 1))])
        if not isinstance(parsed, dict):
            raise Problem(400, [("metadata", "must be a JSON object")])
        meta["metadata"] = parsed
    unknown = sorted(set(values) - {*_META_FIELDS, "label", "labels", "parent", "metadata", "file"})
    if unknown:
        raise Problem(400, [(k, "is not a unit field (use title, label, source, author, media_type, parent, metadata)") for k in unknown])
    return meta


def _check_meta(token: Token, meta: dict[str, Any]) -> None:
    meta["source"] = token.source_for(meta.get("source"))
    forbidden = token.forbidden(meta["source"], meta["labels"])
    if forbidden:
        raise Problem(403, forbidden)
    # Validate every field now (with a placeholder CID), so a bad label costs no upload.
    probe = {k: v for k, v in meta.items() if v not in (None, [])}
    try:
        Unit.model_validate({"cid": _PLACEHOLDER_CID, "size": 0, **probe})
    except ValidationError as err:
        raise Problem(400, field_errors(err, top="(unit)")) from None


# The token a download is for, read where its cold read takes a place: the store's cold
# reader is called deep inside UnitStore, which knows nothing of tokens.
DOWNLOADER: contextvars.ContextVar[Token | None] = contextvars.ContextVar("cim_hub_downloader", default=None)


def _slot_key(token: Token | None) -> str:
    """Places are counted by the token's secret, not its name: names need not be unique, and
    two tokens that share one must not share a cap (one could lock the other out)."""
    return token.digest.hex() if token is not None else ""


def _take(slots: downloads.Slots, token: Token | None, what: str, setting: str) -> str | None:
    """Takes one of `slots` for `token`: None when taken, else why not, naming the setting
    that refused (the token's own cap, or the hub's)."""
    key = _slot_key(token)
    if slots.take(key):
        return None
    if slots.held_by(key) >= slots.per_key:
        return (f"token {token.name if token else '(none)'!r} has {slots.per_key} {what} under way, the hub's "
                f"{setting}_per_token; try again once one is done")
    return f"this hub has {slots.size} {what} under way, its {setting}; try again shortly"


# Every route the hub serves, written once: (method, path, the HubApi handler's name).
# HubApi.app registers these, and the tests check each /v1 one against openapi.yaml.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/v1/units", "ingest"),
    ("GET", "/v1/units", "list_units"),
    ("GET", "/v1/units/{cid}", "show"),
    ("GET", "/v1/units/{cid}/content", "content"),
    ("GET", "/v1/search", "search"),
    ("GET", "/openapi.yaml", "openapi"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/metrics", "metrics"),
)


class HubApi:
    def __init__(self, units: UnitStore, tokens: Tokens, *, max_body_size: int, idle_timeout: float = 30.0,
                 max_downloads: int = 32, max_cold_downloads: int = 8, max_downloads_per_token: int = 8,
                 max_cold_downloads_per_token: int = 2, metrics: CollectorRegistry = HUB_METRICS):
        self.exported = metrics  # what /metrics serves: the agent's (the runtime's and the hub's)
        # Places are counted per token too: one token that reads slowly (or on purpose not at
        # all) must not hold every place and lock the other tokens out.
        self.downloads = downloads.Slots(max_downloads, max_downloads_per_token)
        self.cold_downloads = downloads.Slots(max_cold_downloads, max_cold_downloads_per_token)
        # A view of the store of its own: the same connection and buckets, but cold reads
        # through the HTTP downloads' slots. The store reads a unit through its cold reader
        # only once the hot copy is found missing: the one place that knows a download is a
        # cold one. The store itself (the connectors') keeps its unlimited reader.
        self.units = copy.copy(units)
        if units.cold is not None:
            self.units.cold = self._limit_cold(units.cold)
        self.batcher = PutBatcher(units)
        self.tokens = tokens
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.spec_yaml = files("cim.hub").joinpath("openapi.yaml").read_text()
        # /metrics scrapes run on one thread of their own: anyone may ask this public port, and
        # a flood of scrapes queues there, never in the default executor the uploads' spool
        # writes use. The thread starts with the first scrape.
        self._metrics_thread = ThreadPoolExecutor(1, thread_name_prefix="hub-metrics")

    def app(self) -> web.Application:
        # aiohttp's own cap must not cut in before ours: we answer 413 with a reason.
        app = web.Application(client_max_size=self.max_body_size + 1024 * 1024, middlewares=[close_unread, count_requests])
        # web.route("GET", ...) registers through add_get: a GET also answers HEAD.
        app.add_routes(web.route(method, path, getattr(self, handler)) for method, path, handler in ROUTES)
        return app

    def close(self) -> None:
        """Let the metrics thread end once the server is stopped. Without waiting: a scrape in
        it may wait for this event loop (cim.metrics.Sampled)."""
        self._metrics_thread.shutdown(wait=False, cancel_futures=True)

    async def ingest(self, request: web.Request) -> web.StreamResponse:
        # The upload, hashed as it arrives: in memory while small, else a temporary file
        # written off the event loop (cim.spool).
        body = Spool(hash=True, limit=self.max_body_size, too_large=lambda _size: _over_limit(self.max_body_size))
        try:
            token = _token_of(request, self.tokens)
            declared = request.content_length
            slack = 64 * 1024 if request.content_type.startswith("multipart/") else 0  # the form's own fields
            if declared is not None and declared > self.max_body_size + slack:
                raise Problem(413, [("content", f"the body ({declared} bytes) is over the limit of {self.max_body_size} bytes "
                                                "(raise max_body_size in the hub settings)")])
            if request.content_type.startswith("multipart/"):
                try:
                    meta, filename = await self._read_multipart(request, token, body)
                except (HttpProcessingError, ValueError, AssertionError, UnicodeError) as err:
                    # aiohttp's parser refuses malformed parts with these: the client's fault
                    raise Problem(400, [("(body)", f"not a valid multipart/form-data body: {str(err)[:200]}")]) from None
            else:
                meta = _meta_from({k: request.query.getall(k) for k in request.query})
                _check_meta(token, meta)
                while chunk := await self._arrives(request.content.read(256 * 1024)):
                    await body.write(chunk)
                filename = None
                if "media_type" not in meta and request.content_type not in ("", "application/octet-stream"):
                    meta["media_type"] = request.content_type
            meta.setdefault("media_type", guess_media_type(filename))
            if filename:
                meta.setdefault("title", filename)
            try:
                fields = {k: v for k, v in meta.items() if v not in (None, [])}
                small = body.held() if body.size <= CHUNK_SIZE else None
                # Small bodies go out with the other puts arriving now (cim.store.put_batcher);
                # a big one streams from its spool on its own.
                result = await (self.batcher.put(small, **fields) if small is not None else self.units.put_spool(body, **fields))
            except UnitTooLarge as err:
                raise Problem(413, [(err.field, err.rule)]) from None
            except InvalidInput as err:
                raise Problem(400, [(err.field, err.rule)]) from None
            except UnitExpiredError as err:  # the unit these bytes make, not a parent
                raise Problem(410, [("(body)", str(err))]) from None
            except NotFound as err:
                raise Problem(400, [("parent", str(err))]) from None
            except CimError as err:
                raise Problem(503, [("(server)", str(err))], {"Retry-After": "5"}) from None
        except Problem as problem:
            INGESTS.labels(str(problem.status)).inc()
            return _answer(problem)  # what is left of the body is not read (cim.hub.unread_bodies)
        finally:
            body.close()
        INGEST_BYTES.inc(body.size)
        status = 201 if result.created else 200
        INGESTS.labels(str(status)).inc()
        unit = result.unit
        return web.json_response(
            {"cid": unit.cid, "created": result.created, "unit": unit.model_dump(mode="json")},
            status=status, headers={"Location": f"/v1/units/{unit.cid}"},
        )

    async def _arrives(self, read: Any) -> Any:
        """One read of the request body, or 408 when the client sends nothing for
        idle_timeout seconds: a client that stalls must not hold a connection and a spool."""
        try:
            return await asyncio.wait_for(read, self.idle_timeout)
        except TimeoutError:
            raise Problem(408, [("(body)", f"nothing arrived for {self.idle_timeout:g} s; send the request again")],
                          {"Connection": "close"}) from None

    async def _read_multipart(self, request: web.Request, token: Token, body: Spool) -> tuple[dict[str, Any], str | None]:
        reader = await request.multipart()
        fields: dict[str, list[str]] = {}
        filename: str | None = None
        media_type: str | None = None
        seen_file = False
        while (part := await self._arrives(reader.next())) is not None:
            if part.name == "file":
                if seen_file:
                    raise Problem(400, [("file", "send one file per request")])
                seen_file = True
                # Fields before the file are checked before its bytes are stored anywhere.
                meta = _meta_from(fields)
                _check_meta(token, meta)
                filename = part.filename
                ctype = part.headers.get("Content-Type")
                media_type = ctype if ctype and ctype != "application/octet-stream" else None
                while chunk := await self._arrives(part.read_chunk(256 * 1024)):
                    await body.write(chunk)
            else:
                # Read in chunks and stop at the bound: a field is never buffered past it.
                raw = bytearray()
                while chunk := await self._arrives(part.read_chunk(16 * 1024)):
                    raw += chunk
                    if len(raw) > MAX_FIELD_BYTES:
                        raise Problem(400, [(part.name or "(field)", "a metadata field is over 64 KiB")])
                value = part.decode(bytes(raw)).decode("utf-8", "replace")
                fields.setdefault(part.name or "", []).append(value)
        if not seen_file:
            raise Problem(400, [("file", "a multipart upload needs a part named `file`")])
        meta = _meta_from(fields)  # again, with fields sent after the file too
        _check_meta(token, meta)
        if media_type and "media_type" not in meta:
            meta["media_type"] = media_type
        return meta, filename

    async def show(self, request: web.Request) -> web.Response:
        try:
            token = _token_of(request, self.tokens)
            if refused := token.refused("read"):
                raise Problem(403, refused)
            cid = request.match_info["cid"]
            try:
                view = await self.units.show(cid)
            except InvalidInput as err:
                raise Problem(400, [("cid", err.rule)]) from None
            except NotFound as err:
                raise Problem(404, [("cid", str(err))]) from None
            except CimError as err:
                raise Problem(503, [("(server)", str(err))]) from None
            except Exception as err:  # a hostile event the fold trips on: a reason, never a 500
                raise _unexpected(cid, "showing", err) from None
            if not token.may_see(view.unit.source, view.unit.labels):  # as created: what it could have written
                # Answered as an unknown CID is: that the unit exists is not this token's to learn.
                raise Problem(404, [("cid", str(UnitNotFound(cid)))])
        except Problem as problem:
            return _answer(problem)
        return web.json_response({"unit": view.unit.model_dump(mode="json"), "children": view.children})

    async def search(self, request: web.Request) -> web.Response:
        """Full-text search, answered by a pipeline agent (cim.pipeline.search) and kept to the
        units the token may see."""
        try:
            token = _token_of(request, self.tokens)
            if refused := token.refused("read"):
                raise Problem(403, refused)
            pattern = _source_reach(token)
            query = _within(token, pattern, _search_request(request.query))
            try:
                reply = await call(self.units.nc, SEARCH, query, timeout=SEARCH_TIMEOUT)
            except InvalidInput as err:
                raise Problem(400, [(_param(err.field) if err.field else "q", err.rule or str(err))]) from None
            except AgentUnavailable as err:
                raise Problem(503, [("(server)", f"search needs a running pipeline agent: {err}")],
                              {"Retry-After": "5"}) from None
            except CimError as err:  # e.g. the index is being rebuilt
                raise Problem(503, [("(server)", str(err))], {"Retry-After": "5"}) from None
            except nats.errors.Error as err:
                raise Problem(503, [("(server)", f"NATS is not reachable from the hub ({type(err).__name__}); "
                                                 "retry, and check the hub's log")], {"Retry-After": "5"}) from None
        except Problem as problem:
            return _answer(problem)
        return web.json_response(reply.model_dump(mode="json"))

    async def content(self, request: web.Request) -> web.StreamResponse:
        """A unit's bytes, streamed and verified by CID (cim.hub.downloads), with ETag,
        If-None-Match and one byte range (cim.hub.byte_ranges). HEAD answers what GET would,
        without reading the bytes (`_available`)."""
        cid = request.match_info["cid"]
        head = request.method == "HEAD"
        try:
            token = _token_of(request, self.tokens)
            if refused := token.refused("read"):
                raise Problem(403, refused)
            unit, state = await self._visible(token, cid, fold=head)
            etag = f'"{cid}"'
            headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000, immutable"}
            if byte_ranges.none_match(request.headers.get("If-None-Match"), etag):
                return web.Response(status=304, headers=headers)
            try:
                span = byte_ranges.requested(request.headers.get("Range"), request.headers.get("If-Range"), etag, unit.size)
            except byte_ranges.Unsatisfiable:
                raise Problem(416, [("Range", f"the unit has {unit.size} bytes; ask for a range inside them")],
                              {"Accept-Ranges": "bytes", "Content-Range": f"bytes */{unit.size}"}) from None
            headers.update({
                "Content-Type": downloads.media_type_header(unit.media_type),
                # A unit is anyone's upload: a browser must not sniff it into a page of ours.
                "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
            })
            if span is not None:
                headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{unit.size}"
            if head:
                await self._available(cid, state)
            elif busy := _take(self.downloads, token, "downloads", "max_downloads"):
                raise Problem(503, [("(server)", busy)], {"Retry-After": "1"})
        except Problem as problem:
            return _answer(problem)
        status = 200 if span is None else 206
        if head:
            return await downloads.send(request, None, None, status=status, headers=headers, size=unit.size,
                                        span=span or (0, unit.size), idle_timeout=self.idle_timeout)
        # From here the download holds a slot: whatever happens (an error no rule expected, the
        # client going away), it is given back.
        try:
            DOWNLOADER.set(token)  # whose cold-read place this download takes (_limit_cold)
            chunks = aiter(self.units.get(cid))
            try:
                # The first chunk before the headers: a unit whose bytes cannot be read (or, up to
                # 4 MiB, do not match: the store checks those whole first) gets an answer that says why.
                first = await self._first(chunks, cid)
            except Problem as problem:
                return _answer(problem)
            return await downloads.send(request, chunks, first, status=status, headers=headers, size=unit.size,
                                        span=span or (0, unit.size), idle_timeout=self.idle_timeout)
        finally:
            self.downloads.give_back(_slot_key(token))

    async def _visible(self, token: Token, cid: str, *, fold: bool = False) -> tuple[Unit, UnitState | None]:
        """The unit's record, with its folded state when `fold`, or the Problem a client gets:
        400 for a malformed CID, 404 for an unknown one and for one outside the token's sources
        and labels alike. A token sees what it could have written: the unit's source and its
        labels as created (its `unit.created` record), not those pipeline steps added later
        (a classifier's `text` must not take a token's own uploads from it)."""
        try:
            if fold:
                view = await self.units.show(cid)
                unit, state = view.unit, UnitFold().apply_all(view.events).units.get(cid)
            else:
                unit, state = await self.units.unit(cid), None
        except InvalidInput as err:
            raise Problem(400, [("cid", err.rule)]) from None
        except NotFound as err:
            raise Problem(404, [("cid", str(err))]) from None
        except ValidationError:  # a record that is not a unit's: hostile input, no unit to show
            raise Problem(404, [("cid", str(UnitNotFound(cid)))]) from None
        except (CimError, nats.errors.Error) as err:
            raise Problem(503, [("(server)", str(err) or type(err).__name__)], {"Retry-After": "5"}) from None
        except Exception as err:  # a hostile event the fold trips on
            raise _unexpected(cid, "showing", err) from None
        if not token.may_see(unit.source, unit.labels):
            # Answered as an unknown CID is: that the unit exists is not this token's to learn.
            raise Problem(404, [("cid", str(UnitNotFound(cid)))])
        return unit, state

    async def _available(self, cid: str, state: UnitState | None) -> None:
        """For HEAD: the Problem a GET would answer, found as a GET finds it but without reading
        the bytes (cim.store.unit_store.get): a hot copy's index entry is enough; else 410 for
        an expired unit, 503 when no tier holds it, or only colder tiers and no tier agent
        answers (a tier's own server is not asked: a GET may still find it down)."""
        if state is None or not state.known:
            raise Problem(404, [("cid", str(UnitNotFound(cid)))])
        try:
            if await self.units.content.locate(cid) is not None:
                return
            if state.expired:
                err = UnitExpiredError(cid, state.expired.get("policy", "?"), state.expired.get("time", "?"))
                raise Problem(410, [("cid", str(err))])
            colder = sorted(state.tiers - {HOT})
            if colder and await agent_listens(self.units.nc):
                return
        except (CimError, nats.errors.Error) as err:
            raise Problem(503, [("(server)", str(err) or type(err).__name__)], {"Retry-After": "5"}) from None
        why = (f"unit {cid} is in tier {', '.join(colder)}, which only the tier agent reads, and no tier agent answers"
               if colder else f"unit {cid} has no copy in any tier: its content is lost unless a backup holds it "
                              "(`cim tier verify` lists such units, `cim backup restore` brings back what the archive has)")
        raise Problem(503, [("(server)", why)], {"Retry-After": "5"})

    def _limit_cold(self, read: ColdReader) -> ColdReader:
        """`read` (a unit from a colder tier, through the tier agent) at most max_cold_downloads
        at once: each holds one of the tier agent's fetch slots, which `cim units get` and the
        pipelines share. A range counts as much as the whole unit: it reads the whole unit."""
        slots = self.cold_downloads

        async def limited(*args: Any, **kwargs: Any) -> AsyncGenerator[bytes, None]:
            who = DOWNLOADER.get()
            if refused := _take(slots, who, "reads from colder tiers", "max_cold_downloads"):
                raise Busy(refused)
            key = _slot_key(who)
            try:
                async for chunk in read(*args, **kwargs):
                    yield chunk
            finally:
                slots.give_back(key)

        return limited

    async def _first(self, chunks: AsyncIterator[bytes], cid: str) -> bytes | None:
        try:
            return await anext(chunks, None)
        except UnitExpiredError as err:
            raise Problem(410, [("cid", str(err))]) from None
        except NotFound as err:
            raise Problem(404, [("cid", str(err))]) from None
        except CidMismatch as err:
            log.error("unit %s: %s", cid, err)
            raise Problem(503, [("(server)", str(err))]) from None
        except (CimError, nats.errors.Error) as err:  # busy, a colder tier or its agent is down, NATS is away
            raise Problem(503, [("(server)", str(err) or type(err).__name__)], {"Retry-After": "5"}) from None
        except Exception as err:  # e.g. a hostile event the cold path folds, a hostile header from the tier agent
            raise _unexpected(cid, "reading", err) from None

    async def list_units(self, request: web.Request) -> web.Response:
        """Units newest first, a page at a time, from a pipeline agent's search index
        (cim.pipeline.units), kept to those the token may see (there by source, here by
        labels); the cursor is sealed (cim.hub.unit_pages) and good for this token and these
        filters only."""
        try:
            token = _token_of(request, self.tokens)
            if refused := token.refused("read"):
                raise Problem(403, refused)
            ask, cursor = _units_request(token, request.query)
            bound = unit_pages.binding(token.digest, ask.labels, ask.source)
            position = None
            if cursor is not None:
                try:
                    # The as_of a cursor carries is for hubs of the version before (they ask for an
                    # index at least that far on); this one needs only the position (see _page).
                    position, _ = unit_pages.decode(self.tokens.cursor_key, bound, cursor)
                except InvalidInput as err:
                    raise Problem(400, [("cursor", err.rule)]) from None
            page, after, fresh = await self._page(token, ask, position)
        except Problem as problem:
            return _answer(problem)
        following = (unit_pages.encode(self.tokens.cursor_key, bound, after, fresh["as_of"])
                     if after is not None else None)
        return web.json_response({"units": page, "next": following, **fresh})

    async def _page(self, token: Token, ask: UnitsRequest, position: int | None,
                    ) -> tuple[list[dict[str, Any]], int | None, dict[str, Any]]:
        """Up to `ask.limit` units the token may see, the position the next page starts below
        (None at the end), and the index's freshness.

        A token sees what it could have written: its sources, and its labels as the unit was
        created. The pipeline keeps the rows to the token's source patterns (`within_sources`:
        a unit's source never changes), so no row from another source reaches the hub. Labels
        it cannot keep to: its index holds a unit's labels now, pipeline steps' among them. So
        each row's record is read here (its size too) and checked against the token; a row it
        may not see is left out, and the sealed cursor tells the client nothing of it. A walk
        of the index is bounded per request (a filter or a token that matches little answers
        a short page and where it stopped), so a page may take a few requests to fill, and
        comes back short, even empty, with a cursor, after LIST_ROUNDS.

        The index must have applied the stream up to the position (the units below it were
        all created before it): an index behind it would skip some, and refuses (503). One
        further on than the index that answered the page before is not needed."""
        page: list[dict[str, Any]] = []
        fresh: dict[str, Any] = {}
        before = position
        # A token limited by labels may be shown few of the rows: ask for more of them per
        # request (their records are read only as far as the page needs).
        ahead = 1 if token.every_label else LABEL_LIMITED_ROWS
        for round_ in range(LIST_ROUNDS):
            need = ask.limit - len(page)
            try:
                reply = await self._ask_pipeline(UNITS, ask.model_copy(update={
                    "before": (before, "") if before is not None else None, "min_as_of": before or 0,
                    "limit": need * ahead}))
            except Problem:
                if round_ == 0:
                    raise
                break  # what was found is good: the client goes on from here with the cursor
            fresh = {"as_of": reply.as_of, "stale": reply.stale}
            rows = reply.units
            done = 0
            while done < len(rows) and len(page) < ask.limit:
                batch = rows[done:done + ask.limit - len(page)]
                records = await asyncio.gather(*(self._record(row.cid) for row in batch))
                for row, unit in zip(batch, records, strict=True):
                    if unit is not None and token.may_see(unit.source, unit.labels):  # as created
                        page.append({"cid": unit.cid, "size": unit.size, "media_type": unit.media_type,
                                     "title": unit.title, "labels": row.labels, "source": unit.source,
                                     "created_at": unit.created_at.isoformat()})
                done += len(batch)
            if done < len(rows):
                return page, rows[done - 1].seq, fresh  # the page filled before the rows ran out
            if reply.resume is None:
                return page, None, fresh
            before = reply.resume
            if len(page) >= ask.limit:
                break
        assert before is not None  # set by every round that did not end the listing
        return page, before, fresh

    async def _record(self, cid: str) -> Unit | None:
        """A listed unit's record; None for one that has none (the index knows its text only)."""
        try:
            return await self.units.unit(cid)
        except (NotFound, InvalidInput, ValidationError):
            return None
        except (CimError, nats.errors.Error) as err:
            raise Problem(503, [("(server)", str(err) or type(err).__name__)], {"Retry-After": "5"}) from None

    async def _ask_pipeline(self, endpoint: Endpoint[R], request: Any) -> R:
        try:
            return await call(self.units.nc, endpoint, request, timeout=SEARCH_TIMEOUT)
        except InvalidInput as err:
            raise Problem(400, [(err.field or "(query)", err.rule or str(err))]) from None
        except AgentUnavailable as err:
            raise Problem(503, [("(server)", f"listing units needs a running pipeline agent: {err}")],
                          {"Retry-After": "5"}) from None
        except ProjectionUnavailable as err:  # behind the cursor (another agent is ahead), or being rebuilt
            raise Problem(503, [("(server)", str(err))], {"Retry-After": "1"}) from None
        except CimError as err:
            raise Problem(503, [("(server)", str(err))], {"Retry-After": "5"}) from None
        except nats.errors.Error as err:
            raise Problem(503, [("(server)", f"NATS is not reachable from the hub ({type(err).__name__}); "
                                             "retry, and check the hub's log")], {"Retry-After": "5"}) from None

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self.spec_yaml, content_type="application/yaml")

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.units.nc.is_connected
        # `agent` says which hub answered, when several share one address (http.reuse_port).
        return web.json_response({"nats": "connected" if ok else "disconnected", "agent": self.units.agent},
                                 status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        # In a thread: collectors that read the server wait for this event loop (cim.metrics.Sampled).
        # A thread of its own (see __init__): a flood of scrapes queues there, not in the default executor.
        body = await asyncio.get_running_loop().run_in_executor(self._metrics_thread, generate_latest, self.exported)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- listing ---------------------------------------------------------------------------

_LIST_PARAMS = ("label", "source", "cursor", "limit")
# Requests to the index for one page, at most, when the filters match few of the units the
# index walks (each request walks at most cim.pipeline.search.SCAN_ROWS rows).
LIST_ROUNDS = 5
# Rows asked of the index per unit still missing from the page, for a token limited by
# labels (the hub leaves out the rows it may not see).
LABEL_LIMITED_ROWS = 4


def _units_request(token: Token, query: MultiMapping[str]) -> tuple[UnitsRequest, str | None]:
    """GET /v1/units's query as the pipeline's UnitsRequest, kept to what the token may see,
    and the cursor as sent, or 400 naming each bad parameter."""
    errors = [(k, f"is not a listing parameter (use {', '.join(_LIST_PARAMS)})") for k in sorted(set(query) - set(_LIST_PARAMS))]
    errors += [(k, "give it once") for k in _LIST_PARAMS if k != "label" and len(query.getall(k, [])) > 1]
    labels = [x.strip() for v in query.getall("label", []) for x in v.split(",") if x.strip()]
    source = query.get("source", "")
    if not source and len(token.sources) == 1 and not token.every_source and "[" not in token.sources[0]:
        # Lets the index read a rare source from its own index; what the token sees is kept by within_sources.
        source = token.sources[0]
    limit = 50
    if "limit" in query:
        try:
            limit = int(query["limit"]) if len(query["limit"]) <= 4 else 0
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            errors.append(("limit", "must be a whole number from 1 to 100"))
    if errors:
        raise Problem(400, errors)
    try:
        # Sources only: the index holds a unit's labels now, and the token's labels are checked
        # against those it was created with, by the hub (HubApi._page).
        ask = UnitsRequest(labels=labels, source=source, limit=limit, within_sources=token.sources)
    except ValidationError as err:
        fields = field_errors(err, top="(query)")
        raise Problem(400, [(f.replace("labels", "label", 1), m) for f, m in fields]) from None
    return ask, query.get("cursor")


# --- search ----------------------------------------------------------------------------

# GET /v1/search's query parameters and the SearchRequest fields they fill.
_SEARCH_PARAMS = {"q": "query", "label": "labels", "type": "media_type", "source": "source", "since": "since",
                  "until": "until", "limit": "limit", "facets": "facets"}
_PARAM_OF = {field: param for param, field in _SEARCH_PARAMS.items()}
_FLAGS = {"true": True, "1": True, "false": False, "0": False}
# A search runs on an index the pipeline agent holds; longer than this is an agent in trouble.
SEARCH_TIMEOUT = 10.0


def _param(field: str) -> str:
    """A SearchRequest field path (`labels.3`) as the query parameter that set it (`label.3`)."""
    head, dot, rest = field.partition(".")
    return _PARAM_OF.get(head, head) + dot + rest


def _search_request(query: MultiMapping[str]) -> SearchRequest:
    """The pipeline's SearchRequest from the query string, or 400 naming each bad parameter."""
    errors = [(k, f"is not a search parameter (use {', '.join(_SEARCH_PARAMS)})") for k in sorted(set(query) - set(_SEARCH_PARAMS))]
    errors += [(k, "give it once") for k in _SEARCH_PARAMS if k != "label" and len(query.getall(k, [])) > 1]
    if "q" not in query:
        errors.append(("q", 'say what to look for: words, "a phrase", prefix*, OR, -excluded'))
    fields: dict[str, Any] = {}
    labels = [x.strip() for v in query.getall("label", []) for x in v.split(",") if x.strip()]
    if labels:
        fields["labels"] = labels
    # since/until are read as UTC instants by SearchRequest itself, as for every caller.
    for param in ("q", "type", "source", "since", "until"):
        if param in query:
            fields[_SEARCH_PARAMS[param]] = query[param]
    if "limit" in query:
        try:
            fields["limit"] = int(query["limit"])
        except ValueError:
            errors.append(("limit", "must be a whole number from 1 to 100"))
    if "facets" in query:
        flag = _FLAGS.get(query["facets"].lower())
        if flag is None:
            errors.append(("facets", "must be true or false"))
        fields["facets"] = flag
    if errors:
        raise Problem(400, errors)
    try:
        return SearchRequest(**fields)
    except ValidationError as err:
        raise Problem(400, [(_param(f), m) for f, m in field_errors(err, top="(query)")]) from None


def _source_reach(token: Token) -> str | None:
    """The one source pattern a restricted token's search is kept to (None: every source), or
    403 when the pipeline's filters cannot keep it to what the token may see.

    A token sees what it could have written: its sources and labels (cim.hub.tokens). The
    pipeline filters by ONE source glob, and by labels a unit HAS. So a token with one source
    pattern searches inside it; several patterns, a [...] class (fnmatch's [!x] is SQLite
    GLOB's [^x]) or any label limit (which needs "no label outside these") are refused with
    403 rather than answered with units the token may not see."""
    if not token.every_label:
        raise Problem(403, [("Authorization", f"token {token.name!r} is limited to labels {', '.join(token.labels)}, and "
                                              "search cannot leave out units with other labels; search with a token "
                                              'whose labels are ["*"]')])
    if token.every_source:
        return None
    if len(token.sources) != 1 or "[" in token.sources[0]:
        raise Problem(403, [("Authorization", f"token {token.name!r} is limited to sources {', '.join(token.sources)}, and "
                                              "search keeps to one source pattern without [...]; search with a token "
                                              "that has one such pattern")])
    return token.sources[0]


def _within(token: Token, pattern: str | None, query: SearchRequest) -> SearchRequest:
    """The search with its source filter inside the token's pattern, or 403 for a source
    the token may not see (or a glob that might reach past the pattern)."""
    if pattern is None or query.source == pattern:
        return query
    if not query.source:
        return SearchRequest(**{**query.model_dump(exclude_unset=True), "source": pattern})
    if not any(c in query.source for c in "*?[") and fnmatch.fnmatchcase(query.source, pattern):
        return query
    raise Problem(403, [("source", f"token {token.name!r} may search only sources matching {pattern}; "
                                   "give one of them exactly, or leave source out")])
