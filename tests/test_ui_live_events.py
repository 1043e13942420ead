"""The dashboard's live events reach a page from the moment it was rendered: an event that
lands before the page's EventSource connects is sent to it, once; a reconnecting browser
resumes after the last event it got; a position that is no sequence number is refused; a
connected browser gets what landed while the dashboard's feed was cut off, and the events of
a stream made anew, not the old ones. Debian's chromium, driven by Playwright (or a plain
HTTP client), against real agents."""

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable

import nats
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")
playwright_api = pytest.importorskip("playwright.async_api", reason="browser tests need playwright (pip install playwright)")

from cim.names import EVENTS_STREAM  # noqa: E402
from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from support.ui_support import CHROMIUM, PASSWORD, Stack, hub_put, log_in, running, ui_health  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

if not os.path.exists(CHROMIUM):
    pytest.skip("browser tests need Debian's chromium (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.nats
STREAM = "/events/stream"


@pytest.fixture
async def stack(tmp_path):
    async with running(Stack(tmp_path)) as s:
        yield s


async def put_and_wait(stack: Stack, title: str) -> str:
    """A unit put through the hub, once the dashboard's projection holds it; its CID."""
    before = (await asyncio.to_thread(ui_health, stack))["units"]
    cid = await asyncio.to_thread(hub_put, stack, title.encode(), title=title)

    async def held() -> bool:
        return (await asyncio.to_thread(ui_health, stack))["units"] == before + 1

    await async_wait_until(held, 60, what=f"the dashboard to hold {title}")
    return cid


async def test_an_event_that_lands_before_the_page_listens_is_shown(stack, browser):
    page = await (await browser.new_context(viewport={"width": 1200, "height": 900})).new_page()
    page.set_default_timeout(20_000)
    await log_in(page, stack, then="/events")
    # The page's live events connect only after it has loaded: that moment is held open
    # here until a unit has been put and the dashboard has it, as a slow browser would.
    asked: list[str] = []
    release = asyncio.Event()

    async def hold(route) -> None:
        asked.append(route.request.url)
        await release.wait()
        await route.continue_()

    await page.route("**" + STREAM + "*", hold)
    await page.goto(stack.ui_url + "/events")
    await async_wait_until(lambda: asked, 20, what="the Events page to open its live events")
    cid = await put_and_wait(stack, "landed-before-the-page-listened.txt")
    release.set()

    drawn = page.locator("#live-events li", has_text=cid).filter(has_text="unit.created")
    await playwright_api.expect(drawn).to_have_count(1)  # shown, and once
    assert "?since=" in asked[0], asked


async def read_events(http, url: str, until: Callable[[list[dict]], bool], **headers: str) -> list[dict]:
    """The events a live-events connection sends, until `until` holds for them."""
    got: list[dict] = []
    async with asyncio.timeout(30), http.get(url, headers={"Accept": "text/event-stream", **headers}) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: "):
                got.append(json.loads(line[len(b"data: "):]))
                if until(got):
                    return got
    raise AssertionError(f"the live events ended after {got}")


async def test_live_events_resume_after_the_position_given_and_refuse_one_that_is_no_number(stack):
    first = await put_and_wait(stack, "first.txt")
    second = await put_and_wait(stack, "second.txt")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: cookies for 127.0.0.1
        async with http.post(stack.ui_url + "/login", data={"user": "admin", "password": PASSWORD, "next": "/events"},
                             headers={"Origin": stack.ui_url}) as r:
            assert r.status == 200, await r.text()

        def has(cid: str) -> Callable[[list[dict]], bool]:
            return lambda got: any(e["id"] == cid and e["type"] == "unit.created" for e in got)

        everything = await read_events(http, stack.ui_url + STREAM + "?since=0", has(second))
        seqs = [e["seq"] for e in everything]
        assert seqs == sorted(set(seqs)), seqs  # in order, none twice
        at_first = next(e["seq"] for e in everything if e["id"] == first and e["type"] == "unit.created")

        # A browser that reconnects says what it got last: it wins over the page's position.
        resumed = await read_events(http, f"{stack.ui_url}{STREAM}?since=0", has(second), **{"Last-Event-ID": str(at_first)})
        assert resumed == [e for e in everything if e["seq"] > at_first]

        for query, headers in (("?since=abc", {}), ("?since=-1", {}), ("?since=" + "9" * 20, {}), ("?since=", {}),
                               ("", {"Last-Event-ID": "1; DROP TABLE"})):
            async with http.get(stack.ui_url + STREAM + query, headers={"Accept": "text/event-stream", **headers}) as r:
                assert r.status == 400, (query, headers, r.status)
                assert "reload the page" in (await r.json())["error"]


async def logged_in(stack: Stack):
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # unsafe: cookies for 127.0.0.1
    async with http.post(stack.ui_url + "/login", data={"user": "admin", "password": PASSWORD, "next": "/events"},
                         headers={"Origin": stack.ui_url}) as r:
        assert r.status == 200, await r.text()
    return http


async def collect(response, got: list[dict]) -> None:
    """Every event an open live-events connection sends, appended to `got` as it comes."""
    async for line in response.content:
        if line.startswith(b"data: "):
            got.append(json.loads(line[len(b"data: "):]))


def created(got: list[dict]) -> set[str]:
    return {e["id"] for e in got if e["type"] == "unit.created"}


@pytest.fixture
async def stack_on_disk(tmp_path):
    """A stack whose dashboard keeps its unit list in a state directory (`ui_state`)."""
    async with running(Stack(tmp_path, ui_state=tmp_path / "ui-state")) as s:
        yield s


async def test_events_that_land_while_the_feed_is_cut_off_reach_an_open_live_stream(stack_on_disk):
    """The dashboard's feed stops for a while (here its state file stays locked, as by a
    busy or failing disk; a server restart does not stop it, the read rides that out) while
    a browser stays connected: once the feed is back, the browser gets every event it
    missed, with no reload."""
    stack = stack_on_disk
    http = await logged_in(stack)
    try:
        await put_and_wait(stack, "before.txt")
        async with http.get(stack.ui_url + STREAM, headers={"Accept": "text/event-stream"}) as r:
            assert r.status == 200, await r.text()
            got: list[dict] = []
            reader = asyncio.create_task(collect(r, got))
            try:
                locked = sqlite3.connect(stack.ui_state / "ui.sqlite", isolation_level=None)
                locked.execute("BEGIN IMMEDIATE")  # the dashboard's next write finds the file busy and fails
                try:
                    cids = [await asyncio.to_thread(hub_put, stack, t.encode(), title=t)
                            for t in ("cut-off-1.txt", "cut-off-2.txt", "cut-off-3.txt")]
                    await async_wait_until(lambda: stale(http, stack), 60, what="the dashboard to say it is behind")
                finally:
                    locked.execute("ROLLBACK")
                    locked.close()
                await async_wait_until(lambda: created(got) >= set(cids), 60,
                                       what="the open live stream to get every unit put while the feed was cut off")
            finally:
                reader.cancel()
    finally:
        await http.close()


async def stale(http, stack: Stack) -> bool:
    try:
        async with http.get(stack.ui_url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return bool((await r.json())["stale"])
    except TimeoutError:  # the dashboard waits on the locked file a moment, answering nothing
        return False


async def test_a_stream_made_anew_while_the_dashboard_runs_shows_its_events_not_the_old_ones(stack):
    """CIM_EVENTS deleted and made again (as `cim restore` on a wiped leaf does): the
    dashboard's Events page and live events show the new stream's events from its first,
    none of the old history, also to a browser that stayed connected."""
    old = [await put_and_wait(stack, f"old-{i}.txt") for i in range(3)]
    http = await logged_in(stack)
    nc = await nats.connect(stack.server.url)
    try:
        async with http.get(stack.ui_url + STREAM + "?since=0", headers={"Accept": "text/event-stream"}) as r:
            assert r.status == 200, await r.text()
            got: list[dict] = []
            reader = asyncio.create_task(collect(r, got))
            try:
                await async_wait_until(lambda: created(got) >= set(old), 30, what="the old events sent")
                await nc.jetstream().delete_stream(EVENTS_STREAM)
                await provision(nc, ProvisionSpec())
                new = await asyncio.to_thread(hub_put, stack, b"new", title="new.txt")
                await async_wait_until(lambda: new in created(got), 60, what="the open live stream to get the new unit")
            finally:
                reader.cancel()
        assert (await asyncio.to_thread(ui_health, stack))["units"] == 1
        async with http.get(stack.ui_url + "/events") as r:
            html = await r.text()
        assert new in html and not any(cid in html for cid in old)
        everything = await read_events(http, stack.ui_url + STREAM + "?since=0", lambda got: new in created(got))
        assert not created(everything) & set(old), everything
    finally:
        await nc.close()
        await http.close()
