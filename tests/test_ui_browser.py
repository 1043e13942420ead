"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against real
agents: what a newcomer does after `cim up`. Screenshots land in tests/artifacts/."""

import asyncio
import os
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")
playwright_api = pytest.importorskip("playwright.async_api", reason="browser tests need playwright (pip install playwright)")
CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("browser tests need Debian's chromium (apt-get install chromium)", allow_module_level=True)

from aiohttp import web  # noqa: E402

from cim.hub.webhooks import verify  # noqa: E402
from cim.ports import free_port  # noqa: E402
from support.hub_support import TOKEN  # noqa: E402
from support.ui_support import CHROMIUM_ARGS, PASSWORD, Stack, running  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"
pytestmark = pytest.mark.nats


@pytest.fixture
async def stack(tmp_path):
    receiver_port = free_port()  # nothing listens yet: the first deliveries fail
    async with running(Stack(tmp_path, webhook_url=f"http://127.0.0.1:{receiver_port}/hook")) as s:
        s.receiver_port = receiver_port
        yield s


@pytest.fixture
async def page(stack):
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1200, "height": 900})
        pg = await context.new_page()
        pg.set_default_timeout(20_000)
        try:
            yield pg
        finally:
            await context.close()
            await browser.close()


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def login(page, stack) -> None:
    await page.goto(stack.ui_url + "/units")
    assert page.url.startswith(stack.ui_url + "/login")  # the gate sent us to log in
    await shot(page, "login")
    await page.get_by_label("User").fill("admin")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(stack.ui_url + "/units")


async def test_log_in_upload_a_file_watch_it_appear_live_and_open_its_page(page, stack, tmp_path):
    await page.goto(stack.ui_url + "/login")
    await page.get_by_label("User").fill("admin")
    await page.get_by_label("Password").fill("wrong password")
    await page.get_by_role("button", name="Log in").click()
    await playwright_api.expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    await login(page, stack)

    note = tmp_path / "meeting-notes.txt"
    note.write_text("Decisions of the week: ship the hub.\n")
    await page.get_by_text("Upload a file").click()
    await page.get_by_label("File").set_input_files(str(note))
    await page.get_by_label("Labels, comma-separated").fill("demo, notes")
    url_before = page.url
    await page.get_by_role("button", name="Upload").click()
    row = page.locator("#units tbody tr", has_text="meeting-notes.txt")
    await playwright_api.expect(row).to_be_visible()  # pushed over SSE: no reload
    assert page.url == url_before
    await playwright_api.expect(page.locator(".upload-status")).to_contain_text("Stored bafk")
    await shot(page, "units")

    await row.get_by_role("link", name="meeting-notes.txt").click()
    await playwright_api.expect(page.get_by_role("heading", level=1)).to_have_text("meeting-notes.txt")
    await playwright_api.expect(page.locator(".preview")).to_contain_text("ship the hub")
    await playwright_api.expect(page.locator("#tiers")).to_contain_text("hot")
    await playwright_api.expect(page.locator("#provenance")).to_contain_text("cim-store")
    await playwright_api.expect(page.locator("#lineage")).to_contain_text("this is an original")
    await shot(page, "unit")
    async with page.expect_download() as dl:
        await page.get_by_role("link", name="Download").click()
    path = await (await dl.value).path()
    assert Path(path).read_text() == "Decisions of the week: ship the hub.\n"

    await page.goto(stack.ui_url + "/")
    await playwright_api.expect(page.get_by_role("heading", name="Agents")).to_be_visible()
    for capability in ("store", "hub", "ui"):
        await playwright_api.expect(page.locator("section", has_text="Agents").locator("td", has_text=capability).first).to_be_visible()
    await playwright_api.expect(page.locator("svg[aria-label^='Events per minute']")).to_be_visible()
    await shot(page, "overview")
    await page.goto(stack.ui_url + "/events")
    await shot(page, "events")


async def test_a_revision_shows_its_lineage_and_a_script_title_renders_as_text(page, stack):
    import aiohttp

    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(stack.hub.url + "/v1/units?title=original", data=b"v1", headers=auth) as r:
            parent = (await r.json())["cid"]
        async with http.post(f"{stack.hub.url}/v1/units?parent={parent}", params={"title": "<script>alert(1)</script>"},
                             data=b"v2", headers=auth) as r:
            child = (await r.json())["cid"]
    dialogs = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await login(page, stack)
    await page.goto(f"{stack.ui_url}/units/{child}")
    await playwright_api.expect(page.get_by_role("heading", level=1)).to_have_text("<script>alert(1)</script>")
    await playwright_api.expect(page.locator("#lineage")).to_contain_text("original")
    # The search is the pipeline agent's (its index has every unit's title): its snippet is
    # marked up by the dashboard, escaped all the same.
    await asyncio.to_thread(stack.start_pipeline)

    async def found():
        await page.goto(stack.ui_url + "/units?q=script")
        return await page.locator("#units tbody tr", has_text="<script>alert(1)</script>").count() == 1

    await async_wait_until(found, 60, what="the pipeline agent's search to find the script title")
    assert dialogs == []  # nothing ran
    await page.goto(f"{stack.ui_url}/units/{parent}")
    await playwright_api.expect(page.locator("#lineage")).to_contain_text("<script>alert(1)</script>")


async def test_a_dead_letter_is_retried_from_the_pipelines_page(page, stack):
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(stack.hub.url + "/v1/units?title=to-deliver", data=b"deliver me",
                         headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 201
    await login(page, stack)

    async def dead_lettered():
        await page.goto(stack.ui_url + "/pipelines")
        return await page.locator("#dead-letters tbody tr").count() > 0

    await async_wait_until(dead_lettered, 30, what="the webhook's dead letter to show")
    await playwright_api.expect(page.locator("section", has_text="Pipelines").first).to_contain_text("not running")
    await shot(page, "pipelines")

    received = []

    async def hook(request):
        body = await request.read()
        received.append((request.headers["X-CIM-Event-Type"], verify(b"webhook-secret", body, request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", stack.receiver_port).start()
    try:
        await page.get_by_role("button", name="Retry").first.click()
        await playwright_api.expect(page.get_by_role("status")).to_contain_text("processed again")
        assert received == [("unit.created", True)]
    finally:
        await runner.cleanup()


async def test_a_pipeline_dead_letter_is_retried_from_the_pipelines_page_once_the_cause_is_fixed(page, stack, tmp_path):
    import json
    import subprocess
    import sys
    import urllib.request

    from support.agentkit import AgentProcess
    from support.pipeline_support import install_plugins

    # A pipeline agent with a third-party step that refuses "POISON".
    site = install_plugins(tmp_path / "site", "cim-example-plugin")
    guarded = {"name": "guarded", "max_attempts": 2, "backoff": [0.1],
               "steps": [{"name": "guard", "plugin": "guard", "settings": {"reject": "POISON"}},
                         {"name": "classify", "plugin": "classify"}]}
    stack.agents.append(AgentProcess("pipeline", {"nats": {"servers": [stack.server.url]}, "pipelines": [guarded]},
                                     tmp_path, {"PYTHONPATH": site}).start())
    await login(page, stack)

    async def running():
        await page.goto(stack.ui_url + "/pipelines")
        return await page.locator("section", has_text="Pipelines").first.locator("tr", has_text="guarded").filter(
            has_text="running").count() == 1

    await async_wait_until(running, 30, what="the guarded pipeline to run")

    request = urllib.request.Request(stack.hub.url + "/v1/units?title=poisoned.txt", data=b"this is POISON",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as r:
        cid = json.loads(r.read())["cid"]
    letter = page.locator("#dead-letters tbody tr", has_text="guarded")

    async def dead_lettered():
        await page.goto(stack.ui_url + "/pipelines")
        return await letter.count() == 1

    await async_wait_until(dead_lettered, 60, what="the poison unit's dead letter to show")
    await playwright_api.expect(letter).to_contain_text("matches 'POISON'")
    await shot(page, "pipelines-dead-letter")

    # The operator fixes the cause: the same pipeline without the rejection.
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(dict(guarded, steps=[{"name": "guard", "plugin": "guard", "settings": {}},
                                                     {"name": "classify", "plugin": "classify"}])))
    applied = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "cim", "--server", stack.server.url,
                                                       "pipelines", "apply", str(fixed)], capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr

    alerts = []

    async def retried():
        # The agent loads the new definition within its polling interval; until then the
        # retry fails (the unit is still refused, or the pipeline is reloading), the page
        # says why and the letter stays, so the operator clicks again. Each step counts an
        # element before using it: a page in between is "not yet", not a 20 s wait that fails.
        await page.goto(stack.ui_url + "/pipelines")
        retry = letter.get_by_role("button", name="Retry")
        if not await retry.count():
            alerts.append("(no dead letter with a Retry button on the page)")
            return False
        await retry.first.click()
        await page.wait_for_load_state()
        if await page.get_by_role("status").count():
            return True
        alert = page.get_by_role("alert")
        alerts.append(await alert.first.inner_text() if await alert.count() else "(no message)")
        return False

    try:
        await async_wait_until(retried, 30, what="the retry to succeed once the fix is loaded")
    except Exception as err:
        raise AssertionError(f"{err}; the page said: {alerts[-3:]}") from None
    await playwright_api.expect(page.get_by_role("status")).to_contain_text("processed again")
    await playwright_api.expect(letter).to_have_count(0)
    await shot(page, "pipelines-retried")

    await page.goto(f"{stack.ui_url}/units/{cid}")
    await playwright_api.expect(page.get_by_role("heading", level=1)).to_have_text("poisoned.txt")
    # Processed: the guard passed it and classify ran, each recording its labels on the unit.
    labeled = page.get_by_role("region", name="Events").get_by_role("listitem").filter(has_text="unit.labeled")
    await playwright_api.expect(labeled).to_have_count(2)
    await playwright_api.expect(labeled.first).to_contain_text("by cim-pipeline")


async def test_a_cross_site_post_is_refused_even_with_the_session_cookie(page, stack):
    await login(page, stack)
    evil_port = free_port()
    evil = web.Application()

    async def form(request):
        return web.Response(content_type="text/html", text=(
            f'<form id="f" method="post" action="{stack.ui_url}/dead-letters/1/retry">'
            '<input name="csrf" value="guessed"></form><script>document.getElementById("f").submit()</script>'))

    evil.router.add_get("/", form)
    runner = web.AppRunner(evil)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", evil_port).start()
    try:
        async with page.expect_response(lambda r: "/dead-letters/" in r.url) as resp:
            await page.goto(f"http://127.0.0.1:{evil_port}/")
        response = await resp.value
        assert response.status == 403
        assert "did not come from a page of this dashboard" in await response.text()
    finally:
        await runner.cleanup()
