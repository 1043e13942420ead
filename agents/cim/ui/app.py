"""The dashboard's HTTP side: routes, the login gate, CSRF checks, pages and live events.

Pages are complete HTML without JavaScript; `static/app.js` only adds live updates
(Server-Sent Events) and in-place uploads on top. Templates autoescape everything, so a
unit titled `<script>` is shown as text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Awaitable
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from nats.aio.client import Client

from ..errors import CimError, InvalidInput, NotFound, ProjectionUnavailable
from ..names import CONTENT_BUCKET
from ..store import api as store_api
from ..store.content import ContentStore
from ..store.unit_fold import HOT, UnitFold
from ..store.unit_store import UnitStore
from ..tier.fetch import fetch
from . import data, plots
from .auth import Auth, Session
from .projections import Projection
from .search import listed, search

log = logging.getLogger("cim.ui")

PREVIEW_BYTES = 64 * 1024
INLINE_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}  # never SVG: it can carry script
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
PAGE_SIZES = (25, 50, 100)
T = TypeVar("T")
FIELDS_BUDGET = 64 * 1024  # a store put's title, labels and JSON around the file's base64
# An upload's form, as read: the fields kept (everything else is read and dropped), the parts
# a form may have (the dashboard's sends three), and how much of an oversize upload is read
# on (and dropped) so the browser, still sending, gets the answer; past that the connection
# is closed. The non-file parts together get FIELDS_BUDGET bytes.
FORM_FIELDS = ("title", "labels")
FORM_PARTS = 16
DRAIN_LIMIT = 64 * 1024 * 1024


def inline_capacity(max_payload: int) -> int:
    """The largest file one store put carries: the request is a single NATS message (at most
    the server's max_payload), the file in it base64 (4 bytes for 3) beside the other fields.
    With the default 1 MiB that is 720 KiB."""
    return (max_payload - FIELDS_BUDGET) * 3 // 4


class Dashboard:
    def __init__(self, nc: Client, auth: Auth, projection: Projection, *, agent: str, max_upload: int, stopping: asyncio.Event,
                 idle_timeout: float = 30.0):
        self.nc = nc
        self.auth = auth
        self.projection = projection
        self.units = UnitStore(nc, agent=agent, cold=fetch)
        self.content = ContentStore(nc)
        # Never more than a put can carry: past it the request would not leave (MaxPayloadError).
        self.max_upload = min(max_upload, inline_capacity(nc.max_payload))
        self.idle_timeout = idle_timeout  # seconds an upload may send nothing before it is cut off (408)
        self.stopping = stopping
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("cim.ui", "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        self.env.filters["bytes"] = plots.human_bytes
        self.env.tests["missing"] = lambda v: isinstance(v, data.Missing)  # `{% if x is missing %}`: a not-running panel
        self.env.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)

    # --- plumbing -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate, self._unavailable], client_max_size=self.max_upload + 64 * 1024)
        app.on_response_prepare.append(self._headers)
        r = app.router
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/", self.overview)
        r.add_get("/units", self.units_page)
        r.add_post("/units", self.upload)
        r.add_get("/units/{cid}", self.unit_page)
        r.add_get("/units/{cid}/content", self.download)
        r.add_get("/pipelines", self.pipelines_page)
        r.add_post("/dead-letters/{seq}/retry", self.retry)
        r.add_get("/events", self.events_page)
        r.add_get("/events/stream", self.stream)
        r.add_get("/healthz", self.healthz)
        r.add_static("/static", str(files("cim.ui").joinpath("static")))
        return app

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        # on_response_prepare: runs for streamed responses (downloads, live events) too,
        # before their headers go out, where a middleware would come too late.
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")

    @web.middleware
    async def _gate(self, request: web.Request, handler):
        """Everything but the login page, static files and health needs a session; every
        state change also needs our origin and the CSRF token."""
        if request.path in ("/login", "/healthz") or request.path.startswith("/static/"):
            if request.method == "POST" and not self.auth.same_origin(request):
                return self._refuse(request, "this request did not come from a page of this dashboard (Origin mismatch)")
            return await handler(request)
        session = self.auth.session(request)
        if session is None:
            if request.method == "GET" and "text/event-stream" not in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
            return web.json_response({"error": "log in first"}, status=401)
        request["session"] = session
        if request.method not in ("GET", "HEAD"):
            token = request.headers.get("X-CSRF-Token")
            if token is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                if request.content_type == "application/x-www-form-urlencoded":
                    posted = (await request.post()).get("csrf")
                    token = posted if isinstance(posted, str) else None
                else:
                    token = request.query.get("csrf")  # multipart: the form action carries it (see units.html)
            why = self.auth.check_csrf(request, session, token)
            if why:
                return self._refuse(request, why)
        return await handler(request)

    @web.middleware
    async def _unavailable(self, request: web.Request, handler):
        """The unit list being rebuilt is a page that says so (503), not a traceback."""
        try:
            return await handler(request)
        except ProjectionUnavailable as err:
            return self.render(request, "error.html", status=503, message=str(err))

    def _refuse(self, request: web.Request, why: str) -> web.Response:
        log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, why)
        if "application/json" in request.headers.get("Accept", ""):  # the page's script: its error shape
            return web.json_response({"error": why}, status=403)
        return web.Response(status=403, text=f"403 Forbidden: {why}\n", content_type="text/plain")

    def render(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        session: Session | None = request.get("session")
        html = self.env.get_template(template).render(
            user=session.user if session else None, csrf=self.auth.csrf_token(session) if session else "",
            path=request.path, flash=request.query.get("flash", ""), error=request.query.get("error", ""), **ctx,
        )
        return web.Response(text=html, content_type="text/html", status=status)

    # --- login ----------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        return self.render(request, "login.html", next=_safe_next(request.query.get("next")), failed=False,
                           proxy=bool(self.auth.trusted_header and not self.auth.password_file))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "/")))
        keys = (f"addr:{request.remote}", f"user:{user}")
        wait = self.auth.throttle.wait(*keys)
        if wait > 0:
            log.warning("login for %r from %s refused: too many failed logins", user, request.remote)
            return web.Response(
                status=429, headers={"Retry-After": str(int(wait) + 1)}, content_type="text/plain",
                text=f"429 Too many failed logins from this address or for this user; try again in {int(wait) + 1} seconds.\n",
            )
        if await asyncio.to_thread(self.auth.verify, user, password):
            response = web.HTTPSeeOther(target)
            self.auth.issue(response, user)
            log.info("login: %s from %s", user, request.remote)
            raise response
        self.auth.throttle.failed(*keys)
        log.warning("failed login for %r from %s", user, request.remote)
        return self.render(request, "login.html", status=401, next=target, failed=True, proxy=False)

    async def logout(self, request: web.Request) -> web.Response:
        # The cookie is revoked here, not only deleted in this browser: a copy of it is dead too.
        self.auth.revoke(request["session"])
        response = web.HTTPSeeOther("/login")
        response.del_cookie("cim_session", path="/")
        raise response

    # --- pages ----------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        agents, storage = await asyncio.gather(data.agents(self.nc), data.storage(self.nc))
        tiers = self.projection.tier_bytes()
        if not tiers and not isinstance(storage, data.Missing):
            content = next((b for b in storage["buckets"] if b["name"] == CONTENT_BUCKET), None)
            tiers = {"jetstream (CIM_CONTENT)": content["bytes"]} if content else {}
        return self.render(
            request, "overview.html", agents=agents, storage=storage,
            errors=list(self.projection.errors)[::-1][:20], rate_svg=plots.rate_chart(self.projection.rate()),
            tier_svg=plots.bar_chart(tiers or {}), units=self.projection.count(), caught_up=self.projection.caught_up.is_set(),
        )

    async def units_page(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "")[:200].strip()
        label = request.query.get("label", "")[:64]
        size = _int(request.query.get("size"), 50)
        size = size if size in PAGE_SIZES else 50
        common: dict[str, Any] = {"q": q, "label": label, "size": size, "labels": self.projection.labels(),
                                  "max_upload": self.max_upload, "too_large": too_large("{size}", self.max_upload),
                                  "caught_up": self.projection.caught_up.is_set(),
                                  "since": self.projection.position()}  # read with the rows: nothing awaited between
        if q:
            return await self._search_page(request, common)
        page = max(_int(request.query.get("page"), 1), 1)
        # The pager's links carry the sequence they continue from (keyset): a page far down is
        # as quick as the first. A page number alone (typed in) is counted down to.
        before, after = _cursor(request.query.get("before")), _cursor(request.query.get("after"))
        rows, total = self.projection.page(label=label, before=before, after=after, offset=(page - 1) * size, limit=size)
        pages = max((total + size - 1) // size, 1)

        def link(n: int, **cursor: int) -> str:
            return "/units?" + urlencode({k: v for k, v in (("label", label), ("size", size), ("page", n), *cursor.items()) if v})

        newer = (link(1) if page == 2 or not rows else link(page - 1, after=rows[0].seq)) if page > 1 else None
        older = link(page + 1, before=rows[-1].seq) if page < pages and rows else None
        return self.render(request, "units.html", rows=rows, hits=None, total=total, page=page, pages=pages,
                           prev_link=newer, next_link=older, live=page == 1 and not label, searched=None, **common)

    async def _search_page(self, request: web.Request, common: dict[str, Any]) -> web.Response:
        found = await search(self.nc, common["q"], common["label"], common["size"])
        if isinstance(found, data.Missing):
            return self.render(request, "units.html", rows=[], hits=None, total=0, page=1, pages=1, prev_link=None,
                               next_link=None, live=False, searched=found, **common)
        hits = listed(found.hits, self.projection.by_cids([h.cid for h in found.hits]))
        return self.render(request, "units.html", rows=[], hits=hits, total=len(hits), page=1, pages=1, prev_link=None,
                           next_link=None, live=False, searched=found, **common)

    async def unit_page(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        try:
            view = await self.units.show(cid)
        except InvalidInput as err:
            return self.render(request, "error.html", status=400, message=str(err))
        except NotFound as err:
            return self.render(request, "error.html", status=404, message=str(err))
        unit = view.unit
        created = next((e for e in view.events if e.type == "unit.created"), None)
        meta = dict(unit.metadata)
        provenance = {
            "agent": (created.agent if created else "") or "unknown",
            "agent_version": (created.agent_version if created else "") or "",
            "pipeline": meta.get("pipeline", ""), "step": meta.get("step", ""),
            "source": unit.source, "correlation": (created.correlation_id if created else "") or "",
        }
        tiers, tier_note = await self._tiers(unit.cid, view.events)
        preview_text = None
        textual = unit.media_type.startswith("text/") or unit.media_type in ("application/json", "application/xml")
        if textual and (not tiers or HOT in tiers):
            try:
                raw = await self._read(unit.cid, PREVIEW_BYTES + 1)
                preview_text = raw[:PREVIEW_BYTES].decode("utf-8", "replace") + ("\n…" if len(raw) > PREVIEW_BYTES else "")
            except CimError as err:
                tier_note = str(err)
        parents = [(p, await self._title(p)) for p in unit.parents]
        children = [(c, await self._title(c)) for c in view.children]
        return self.render(
            request, "unit.html", unit=unit, labels=view.labels, meta=meta, provenance=provenance, tiers=tiers, tier_note=tier_note,
            preview_text=preview_text, image=unit.media_type in INLINE_IMAGES, parents=parents, children=children,
            events=view.events, revision=view.revision,
        )

    async def _title(self, cid: str) -> str:
        """From the projection; from the unit itself when the projection has not seen it yet
        (a revision put a moment ago, whose parent's event is still on its way here)."""
        try:
            title = self.projection.title(cid)
        except ProjectionUnavailable:
            title = None  # being rebuilt: ask the store
        if title is not None:
            return title
        try:
            return (await self.units.unit(cid)).title
        except CimError:
            return ""

    async def _tiers(self, cid: str, events) -> tuple[list[str], str]:
        loc = UnitFold().apply_all(events).units.get(cid)
        if loc is not None and loc.tiers:
            return sorted(loc.tiers), ""
        if await self.content.locate(cid) is not None:
            return [HOT], ""
        return [], "the content is not in JetStream and no tier has recorded it"

    async def _read(self, cid: str, limit: int) -> bytes:
        out = bytearray()
        async for chunk in self.content.get(cid):
            out += chunk
            if len(out) > limit:
                break
        return bytes(out)

    async def download(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        try:
            unit = (await self.units.show(cid)).unit
        except (InvalidInput, NotFound) as err:
            raise web.HTTPNotFound(text=str(err)) from None
        inline = request.query.get("inline") == "1" and unit.media_type in INLINE_IMAGES
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", unit.title or cid)[:120] or cid
        response = web.StreamResponse(headers={
            "Content-Type": unit.media_type if inline else "application/octet-stream",
            "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename=\"{name}\"; "
                                   f"filename*=UTF-8''{quote(unit.title or cid)}",
            "Content-Length": str(unit.size), "Cache-Control": "private, max-age=31536000, immutable",
        })
        await response.prepare(request)
        try:
            async for chunk in self.content.get(cid):  # verified against the CID before the last chunk
                await response.write(chunk)
        except CimError as err:
            log.error("download of %s failed: %s", cid, err)
            raise  # the connection is cut short: the browser reports a failed download, never a bad file
        await response.write_eof()
        return response

    async def upload(self, request: web.Request) -> web.StreamResponse:
        wants_json = "application/json" in request.headers.get("Accept", "")
        form = _Form(self.idle_timeout)
        content: bytes | None = None
        filename, ctype = "", None
        try:
            reader = await request.multipart()
            while (part := await form.within(reader.next())) is not None:
                form.parts += 1
                if form.parts > FORM_PARTS:
                    raise _Refused(400, f"this form has more than {FORM_PARTS} parts; the upload form sends a file, "
                                        "a title and labels")
                if not isinstance(part, BodyPartReader):
                    raise _Refused(400, "a multipart inside the form is no form field; send a file, a title and labels")
                if part.name == "file":
                    filename, ctype = part.filename or "", part.headers.get("Content-Type")
                    content, size = await self._read_file(part, form)
                    if content is None:  # read to its end: the browser gets the answer
                        return self._upload_error(wants_json, too_large(size, self.max_upload), 413)
                else:
                    value = await form.field(part)
                    if part.name in FORM_FIELDS:  # anything else is read, counted and dropped
                        form.fields[part.name] = value.decode("utf-8", "replace")
        except _Refused as refused:
            if refused.linger:
                return self._upload_error(wants_json, refused.why, refused.status, close=True)
            return await self._cut_off(request, wants_json, refused.why, refused.status)
        except TimeoutError:
            return await self._cut_off(request, wants_json,
                                       f"nothing arrived for {self.idle_timeout:g} s; send the upload again", 408)
        except (HttpProcessingError, ValueError, AssertionError) as err:
            # aiohttp's parser refuses a malformed body with these: the client's fault
            return self._upload_error(wants_json, f"not a valid multipart/form-data upload: {str(err)[:200]}", 400,
                                      close=True)
        if not filename or content is None:
            return self._upload_error(wants_json, "choose a file to upload", 400)
        fields = form.fields
        labels = [x.strip() for x in fields.get("labels", "").split(",") if x.strip()]
        body = {"content_b64": base64.b64encode(content).decode(), "title": fields.get("title") or filename,
                "labels": labels, "source": f"ui:{request['session'].user}",
                "media_type": ctype if ctype and ctype != "application/octet-stream" else None}
        if len(json.dumps(body)) > self.nc.max_payload:  # ASCII-escaped: never shorter than what is sent
            return self._upload_error(wants_json, "the title and labels are too long to go with this file; shorten them", 413)
        answer = await data.ask(self.nc, store_api.PUT, body, timeout=30)
        if isinstance(answer, data.Missing):
            return self._upload_error(wants_json, answer.why, 400 if isinstance(answer.error, InvalidInput) else 503)
        cid = answer.unit.cid
        if wants_json:
            return web.json_response({"cid": cid, "created": answer.created}, status=201)
        raise web.HTTPSeeOther(f"/units/{cid}")

    async def _read_file(self, part: BodyPartReader, form: _Form) -> tuple[bytes | None, int]:
        """The file's bytes and size; None once it is over the limit. Past the limit it is
        read on and dropped, only counted: the answer can say how big the file is, and the
        browser, still sending, gets the answer rather than a connection cut mid-upload; but
        only up to DRAIN_LIMIT bytes of the whole upload, then it is refused unread. (Read in
        chunks: `part.read()` stops at aiohttp's client_max_size with a plain-text 413 that
        the page cannot show.)"""
        held, size = bytearray(), 0
        while chunk := await form.chunk(part):
            size += len(chunk)
            if size <= self.max_upload:
                held += chunk
            elif held:
                held = bytearray()  # over: keep nothing
            if form.read > DRAIN_LIMIT:
                raise _Refused(413, too_large(f"over {plots.human_bytes(DRAIN_LIMIT)}", self.max_upload), linger=False)
        return (bytes(held) if size <= self.max_upload else None), size

    def _upload_error(self, wants_json: bool, why: str, status: int, *, close: bool = False) -> web.Response:
        """The answer to an upload that is refused. With `close`, the rest of the body is not
        read: `Connection: close`, and aiohttp reads on (dropping it) for at most ten seconds
        so a client still sending gets the answer, then closes."""
        response = (web.json_response({"error": why}, status=status) if wants_json
                    else web.HTTPSeeOther("/units?" + urlencode({"error": why})))
        if close:
            response.force_close()
        if isinstance(response, web.HTTPException):
            raise response
        return response

    async def _cut_off(self, request: web.Request, wants_json: bool, why: str, status: int) -> web.StreamResponse:
        """The answer to an upload that will not be read on (it stalled, or it sent
        DRAIN_LIMIT bytes already), with `Connection: close`, and the connection closed once
        it is out, without the ten seconds of reading on that `close` above allows."""
        if wants_json:
            response = web.json_response({"error": why}, status=status)
        else:  # the page without JavaScript: back to the form, which shows why
            response = web.Response(status=303, headers={"Location": "/units?" + urlencode({"error": why})})
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()  # the transport sends what it holds, then closes
        return response

    async def pipelines_page(self, request: web.Request) -> web.Response:
        pipelines, letters = await asyncio.gather(data.pipelines(self.nc), data.dead_letters(self.nc))
        return self.render(request, "pipelines.html", pipelines=pipelines, letters=letters)

    async def retry(self, request: web.Request) -> web.Response:
        seq = _int(request.match_info["seq"], 0)
        ok, message = await data.retry(self.nc, seq)
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"ok": ok, "message": message}, status=200 if ok else 409)
        raise web.HTTPSeeOther("/pipelines?" + urlencode({"flash" if ok else "error": message}))

    async def events_page(self, request: web.Request) -> web.Response:
        return self.render(request, "events.html", recent=list(self.projection.recent)[::-1], since=self.projection.noted,
                           rate_svg=plots.rate_chart(self.projection.rate()))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every new event as JSON; a comment every 15 s keeps proxies from timing out.

        A page opens this after it has loaded, so it says where it was rendered (`?since=SEQ`),
        and a browser reconnecting says the last event it got (`Last-Event-ID`, from the `id:`
        lines): the kept events after that come first, then the live ones. A malformed
        position is refused (400): the page always sends a number, so it is a hand-made or
        tampered request, and silently streaming from now on would hide that."""
        since = _since(request)
        # Listening starts, then the kept events are read, with nothing awaited between: an
        # event is in one or the other, never both (the projection keeps and queues an event
        # in one step). So the queue needs no filter by sequence, which would drop the events
        # of a stream made anew (`cim restore`): their sequences start again at 1.
        queue = self.projection.listen()
        backlog = self.projection.after(since) if since is not None else []
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            for item in backlog:
                await response.write(_sse(item))
            while not self.stopping.is_set():
                try:
                    item = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(_sse(item))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.projection.unlisten(queue)
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            units: int | None = self.projection.count()
            fresh = self.projection.freshness()
        except ProjectionUnavailable:  # being rebuilt: health says so (stale), it does not fail
            units, fresh = None, {"as_of": 0, "stale": True, "replayed": self.projection.follower.replayed}
        return web.json_response({"nats": self.nc.is_connected, "caught_up": self.projection.caught_up.is_set(),
                                  "units": units, **fresh}, status=200 if self.nc.is_connected else 503)


class _Refused(Exception):
    def __init__(self, status: int, why: str, *, linger: bool = True):
        super().__init__(why)
        self.status = status
        self.why = why
        self.linger = linger  # the client may still be sending: let it, briefly, so it gets the answer


class _Form:
    """What one upload has sent so far: its parts and bytes, and the fields kept. Every read
    waits at most `idle_timeout` seconds (TimeoutError past it): a client that stops sending
    must not hold a connection and what it sent."""

    def __init__(self, idle_timeout: float):
        self.idle_timeout = idle_timeout
        self.fields: dict[str, str] = {}
        self.parts = 0
        self.read = 0  # bytes of the parts' bodies read, kept or not
        self.field_bytes = 0

    async def within(self, step: Awaitable[T]) -> T:
        return await asyncio.wait_for(step, self.idle_timeout)

    async def chunk(self, part: BodyPartReader) -> bytes:
        chunk = await self.within(part.read_chunk())
        self.read += len(chunk)
        return chunk

    async def field(self, part: BodyPartReader) -> bytes:
        """A form field's value (any field: an unknown one is read to its end as well, and
        counts), with every field together held to FIELDS_BUDGET bytes (413 past it)."""
        value = bytearray()
        while chunk := await self.chunk(part):
            self.field_bytes += len(chunk)
            if self.field_bytes > FIELDS_BUDGET:
                raise _Refused(413, "a form field is too long; shorten the title or the labels")
            value += chunk
        # Raw, not part.decode(): browsers send form fields plain (RFC 7578), and a
        # compressed field would grow past the budget only once decoded.
        return bytes(value)


def too_large(size: int | str, limit: int) -> str:
    """What an upload over the limit is told, in one place: the page's script fills in
    `{size}` (see units.html) to say it before sending anything."""
    said = size if isinstance(size, str) else plots.human_bytes(size)
    if said == plots.human_bytes(limit):
        said = "just over " + said  # 720.3 KiB shows as 720 KiB: never "720 KiB, up to 720 KiB"
    return (f"this file is {said}; the dashboard accepts up to {plots.human_bytes(limit)}; "
            "use `cim units put FILE` or the hub's API (POST /v1/units) for larger files")


def _sse(item: dict[str, Any]) -> bytes:
    return f"id: {item['seq']}\nevent: cim\ndata: {json.dumps(item)}\n\n".encode()


def _since(request: web.Request) -> int | None:
    """Where a browser's live events resume: after the last event it got (`Last-Event-ID`,
    which it sends when it reconnects) or after the page's position (`since`); None: from
    now on. Anything but a sequence number is a 400 that says so."""
    given = request.headers.get("Last-Event-ID") or request.query.get("since")
    if given is None:
        return None
    if not re.fullmatch(r"[0-9]{1,19}", given) or int(given) >= 2**63:
        raise web.HTTPBadRequest(content_type="application/json", text=json.dumps({"error": (
            "the live events resume after an event's sequence number (`since` or Last-Event-ID, a whole number "
            "from 0, as the page sets it); reload the page to follow them again")}))
    return int(given)


def _cursor(v: str | None) -> int | None:
    """A pager cursor (an event sequence); anything SQLite's 64-bit integers cannot hold, or
    that is not a positive number, is no cursor at all."""
    n = _int(v, 0)
    return n if 0 < n < 2**63 else None


def _int(v: str | None, default: int) -> int:
    try:
        return int(v) if v is not None else default
    except ValueError:
        return default


def _safe_next(target: str | None) -> str:
    """Only a local path: `next=https://evil.example` must not turn the login into a redirector.
    Browsers drop tabs and newlines from a URL, so `/\t/evil.example` would become
    `//evil.example`: any control character or space refuses the target too."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target)
    ):
        return "/"
    return target


