"""The dashboard's unit list kept on disk (issue 16 item 3), against a real nats-server and
real agent processes: a restart resumes from the checkpoint and replays only what is new, a
fresh state directory rebuilds the same pages, and the Units page searches through the
pipeline agent (words of a unit's extracted text, not only its title)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import nats
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the UI needs aiohttp")

from cim.events import Event, EventStore  # noqa: E402
from cim.names import EVENTS_STREAM  # noqa: E402
from cim.nats.read import last_seq  # noqa: E402
from cim.ports import free_port  # noqa: E402
from cim.store.events import UnitLabeled  # noqa: E402
from cim.store.unit_store import UnitStore  # noqa: E402
from support.ui_support import PASSWORD, Stack, running  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

pytestmark = pytest.mark.nats


@pytest.fixture
async def stack(tmp_path):
    async with running(Stack(tmp_path, ui_state=tmp_path / "ui-state")) as s:
        s.nc = await nats.connect(s.server.url)
        try:
            yield s
        finally:
            await s.nc.close()


async def logged_in(url: str) -> aiohttp.ClientSession:
    # unsafe: keep cookies for an IP address host (127.0.0.1), as a browser does.
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post(url + "/login", data={"user": "admin", "password": PASSWORD, "next": "/units"},
                         headers={"Origin": url}) as r:
        assert r.status == 200, await r.text()
    return http


async def page(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        assert r.status == 200, (url, await r.text())
        return await r.text()


def listed(html: str) -> list[str]:
    """The CIDs the units table lists, in order."""
    return re.findall(r'<tr><td><a href="/units/([^"]+)">', html.split('<table id="units"')[1].split("</table>")[0])


def tbody(html: str) -> str:
    return html.split("<tbody>")[1].split("</tbody>")[0]


async def settled(url: str, end: int) -> dict:
    """The dashboard's freshness once its unit list covers the stream up to `end`."""
    async def covered():
        try:
            async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
                health = await r.json()
        except aiohttp.ClientConnectionError:  # not listening yet
            return False
        return health["as_of"] == end and not health["stale"] and health
    return await async_wait_until(covered, 60, what=f"the dashboard at {url} to cover event #{end}")


async def put(nc, names: list[str], labels: list[str]) -> list[str]:
    units = UnitStore(nc)
    return [(await units.put_bytes(f"the note called {n}".encode(), title=f"{n}.txt", labels=labels,
                                   media_type="text/plain")).unit.cid for n in names]


async def test_a_restarted_dashboard_resumes_from_its_checkpoint_and_lists_the_same_units(stack):
    evens = await put(stack.nc, [f"even{i}" for i in range(0, 30, 2)], ["even"])
    odds = await put(stack.nc, [f"odd{i}" for i in range(1, 30, 2)], ["odd"])
    end = await last_seq(stack.nc, EVENTS_STREAM, None)
    first = await settled(stack.ui_url, end)
    assert first["replayed"] == end  # a new file: the whole stream
    http = await logged_in(stack.ui_url)
    try:
        before = {path: listed(await page(http, stack.ui_url + path)) for path in ("/units?size=100", "/units?label=even")}
    finally:
        await http.close()
    assert before["/units?size=100"] == (evens + odds)[::-1] and before["/units?label=even"] == evens[::-1]

    await asyncio.to_thread(stack.ui.stop)
    later = await put(stack.nc, ["late1", "late2", "late3"], ["late"])  # while it is down
    end2 = await last_seq(stack.nc, EVENTS_STREAM, None)
    stack.ui = stack.start_ui(port=stack.ui_port, state_dir=stack.ui_state)
    again = await settled(stack.ui_url, end2)
    assert again["replayed"] == end2 - end, again  # only the events after its checkpoint
    assert again["units"] == 33
    http = await logged_in(stack.ui_url)
    try:
        everything = await page(http, stack.ui_url + "/units?size=100")
        assert listed(everything) == later[::-1] + before["/units?size=100"]
        assert "33 units." in everything
        assert listed(await page(http, stack.ui_url + "/units?label=even")) == before["/units?label=even"]
        events = await page(http, stack.ui_url + "/events")
        assert events.count("<li><time>") >= 33  # read back from the stream's end, not empty after a restart
    finally:
        await http.close()


async def test_a_fresh_state_directory_rebuilds_the_same_pages(stack, tmp_path: Path):
    cids = await put(stack.nc, [f"unit{i}" for i in range(60)], ["bulk"])
    await put(stack.nc, ["special"], ["bulk", "special"])
    # A label added later, as a pipeline step records it: in the label filter of both.
    await EventStore(stack.nc).append(Event.of(UnitLabeled(labels=["reviewed"], by="test"), cids[7], agent="test"))
    end = await last_seq(stack.nc, EVENTS_STREAM, None)
    await settled(stack.ui_url, end)

    port = free_port()
    other = f"http://127.0.0.1:{port}"
    stack.start_ui(port=port, state_dir=tmp_path / "fresh-state", name="cim-ui-2")
    rebuilt = await settled(other, end)
    assert rebuilt["replayed"] == end and rebuilt["units"] == 61

    one, two = await logged_in(stack.ui_url), await logged_in(other)
    try:
        for path in ("/units?size=25", "/units?label=bulk", "/units?label=reviewed", "/units?size=25&page=3"):
            a, b = await page(one, stack.ui_url + path), await page(two, other + path)
            assert tbody(a) == tbody(b) and listed(a), path
            assert a.split('<select id="label"')[1].split("</select>")[0] == b.split('<select id="label"')[1].split("</select>")[0]
        assert listed(await page(one, stack.ui_url + "/units?label=reviewed")) == [cids[7]]
        # The pager's "Older" link (a keyset link) leads to the same page as the page number.
        first = await page(two, other + "/units?size=25")
        older = re.search(r'<a href="([^"]+)" rel="next">', first).group(1).replace("&amp;", "&")
        assert "before=" in older
        assert listed(await page(two, other + older)) == listed(await page(one, stack.ui_url + "/units?size=25&page=2"))
    finally:
        await one.close()
        await two.close()


async def test_the_units_page_finds_a_unit_by_a_word_of_its_text_through_the_pipeline_agent(stack):
    units = UnitStore(stack.nc)
    cid = (await units.put_bytes(b"The zanzibar accord was signed at dawn.", title="quarterly-report.txt",
                                 labels=["reports"], media_type="text/plain")).unit.cid
    http = await logged_in(stack.ui_url)
    try:
        alone = await page(http, stack.ui_url + "/units?q=zanzibar")  # no pipeline agent yet: a sentence, no 500
        assert "Search needs the pipeline agent, and none answered" in alone and listed(alone) == []

        await asyncio.to_thread(stack.start_pipeline)

        async def found():
            html = await page(http, stack.ui_url + "/units?q=zanzibar")
            return cid in listed(html) and html
        html = await async_wait_until(found, 90, what="the pipeline agent to index the unit's text")
        assert "quarterly-report.txt" in html and "<mark>zanzibar</mark>" in html
        assert listed(await page(http, stack.ui_url + "/units?q=zanzibar&label=reports")) == [cid]
        assert "0 best matches" in await page(http, stack.ui_url + "/units?q=zanzibar&label=elsewhere")
    finally:
        await http.close()


async def test_hostile_cursors_and_sizes_never_break_the_unit_list(stack):
    from cim.cid import compute
    from cim.events import Event, EventStore
    from cim.store.events import UnitCreated

    cids = await put(stack.nc, ["plain"], ["x"])
    # Two units whose sizes would sum past a 64-bit integer: hostile, but valid events.
    for i in range(2):
        cid = compute(f"huge {i}".encode())
        created = UnitCreated(cid=cid, size=2**62, media_type="text/plain", title=f"huge {i}")
        await EventStore(stack.nc).append(Event.of(created, cid, id=f"unit-created-{cid}", agent="test"))
    await put(stack.nc, ["after"], ["x"])
    end = await last_seq(stack.nc, EVENTS_STREAM, None)
    health = await settled(stack.ui_url, end)  # the feed went past them: not stuck on a batch
    assert health["units"] == 4
    http = await logged_in(stack.ui_url)
    try:
        # A cursor no 64-bit integer holds, or not positive, is no cursor: the first page (200).
        for query in ("before=99999999999999999999", "after=-99999999999999999999", "before=-1",
                      "label=x&before=10000000000000000000"):
            assert cids[0] in await page(http, f"{stack.ui_url}/units?{query}"), query
        await page(http, f"{stack.ui_url}/units?after=0&page=2")  # past the end: an empty page, still 200
    finally:
        await http.close()
