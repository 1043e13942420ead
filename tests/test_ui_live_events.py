"""The dashboard's live events reach a page from the moment it was rendered: an event that
lands before the page's EventSource connects is sent to it, once; a reconnecting browser
resumes after the last event it got; a position that is no sequence number is refused.
Debian's chromium, driven by Playwright, against real agents."""

import asyncio
import json
import os
from collections.abc import Callable

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")
playwright_api = pytest.importorskip("playwright.async_api", reason="browser tests need playwright (pip install playwright)")

from support.ui_support import CHROMIUM, PASSWORD, Stack, hub_put, log_in, ui_health  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

if not os.path.exists(CHROMIUM):
    pytest.skip("browser tests need Debian's chromium (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.nats
STREAM = "/events/stream"


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    await asyncio.to_thread(s.start)
    try:
        yield s
    finally:
        await asyncio.to_thread(s.stop)


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
