"""Uploads from the dashboard's Units page past its limit, and refusals the page did not
expect: each is a sentence on the page, never a JavaScript parse error. Debian's chromium,
driven by Playwright, against real agents."""

import asyncio
import json
import os

import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")
playwright_api = pytest.importorskip("playwright.async_api", reason="browser tests need playwright (pip install playwright)")

from cim.cid import compute  # noqa: E402
from support.ui_support import CHROMIUM, CHROMIUM_ARGS, Stack, log_in  # noqa: E402

if not os.path.exists(CHROMIUM):
    pytest.skip("browser tests need Debian's chromium (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.nats
# What one store put carries under nats-server's default max_payload (1 MiB): the file goes
# base64 (4 bytes for 3) in a JSON request, beside its title and labels.
LIMIT = 720 * 1024
TOO_LARGE = ("this file is 1.2 MiB; the dashboard accepts up to 720 KiB; "
             "use `cim units put FILE` or the hub's API (POST /v1/units) for larger files")


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    await asyncio.to_thread(s.start)
    try:
        yield s
    finally:
        await asyncio.to_thread(s.stop)


@pytest.fixture
async def browser():
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def new_page(browser, **options):
    context = await browser.new_context(viewport={"width": 1200, "height": 900}, **options)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    return page


async def choose(page, path) -> None:
    await page.get_by_text("Upload a file").click()
    await page.get_by_label("File").set_input_files(str(path))


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(os.urandom(1_258_291))  # 1.2 MiB
    return path


async def test_an_upload_over_the_limit_says_the_limit_and_what_to_use_instead(stack, browser, big_file):
    page = await new_page(browser)
    await log_in(page, stack)
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await choose(page, big_file)
    await page.get_by_role("button", name="Upload").click()
    status = page.locator(".upload-status")
    await playwright_api.expect(status).to_have_text("Not stored: " + TOO_LARGE)
    assert "SyntaxError" not in await page.content()
    assert posts == []  # said before sending 1.2 MiB that would be refused


async def test_the_server_answers_an_oversize_upload_with_a_json_413_that_says_why(stack, browser, big_file, tmp_path):
    # What the page's script would get, had it sent the file (an older page, another client).
    page = await new_page(browser)
    await log_in(page, stack)
    post = """async (size) => {
      const form = new FormData();
      form.append("file", new Blob([new Uint8Array(size)]), "scan.pdf");
      const r = await fetch("/units", {method: "POST", body: form, headers: {
        "Accept": "application/json", "X-CSRF-Token": document.getElementById("main").dataset.csrf}});
      return {status: r.status, type: r.headers.get("Content-Type"), body: await r.text()};
    }"""
    answer = await page.evaluate(post, 1_258_291)
    assert answer["status"] == 413, answer
    assert answer["type"].startswith("application/json"), answer
    assert json.loads(answer["body"]) == {"error": TOO_LARGE}
    answer = await page.evaluate(post, LIMIT + 1)
    assert answer["status"] == 413, answer
    assert json.loads(answer["body"])["error"].startswith("this file is just over 720 KiB; the dashboard accepts up to 720 KiB;")

    # A title longer than any form needs: refused in the same shape.
    answer = await page.evaluate("""async () => {
      const form = new FormData();
      form.append("file", new Blob(["small"]), "small.txt");
      form.append("title", "t".repeat(1024 * 1024));
      const r = await fetch("/units", {method: "POST", body: form, headers: {
        "Accept": "application/json", "X-CSRF-Token": document.getElementById("main").dataset.csrf}});
      return {status: r.status, body: await r.text()};
    }""")
    assert answer["status"] == 413, answer
    assert json.loads(answer["body"]) == {"error": "a form field is too long; shorten the title or the labels"}

    # A body that is no form at all is the client's fault, said as such (not a 500).
    answer = await page.evaluate("""async () => {
      const r = await fetch("/units", {method: "POST", body: "just text", headers: {"Content-Type": "text/plain",
        "Accept": "application/json", "X-CSRF-Token": document.getElementById("main").dataset.csrf}});
      return {status: r.status, body: await r.text()};
    }""")
    assert answer["status"] == 400, answer
    assert json.loads(answer["body"])["error"].startswith("not a valid multipart/form-data upload"), answer

    # Without JavaScript the form posts itself: the page it lands on says the same.
    plain = await new_page(browser, java_script_enabled=False)
    await log_in(plain, stack)
    await choose(plain, big_file)
    await plain.get_by_role("button", name="Upload").click()
    await playwright_api.expect(plain.get_by_role("alert")).to_have_text(TOO_LARGE)

    # A file of exactly the limit is stored whole (read in chunks, none lost at the edge).
    edge = tmp_path / "edge.bin"
    edge.write_bytes(os.urandom(LIMIT))
    await page.goto(stack.ui_url + "/units")
    await choose(page, edge)
    await page.get_by_role("button", name="Upload").click()
    await playwright_api.expect(page.locator(".upload-status")).to_have_text("Stored " + compute(edge.read_bytes()))


async def test_a_refusal_is_shown_as_a_sentence_whatever_its_form(stack, browser, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello\n")
    page = await new_page(browser)
    await log_in(page, stack)
    status = page.locator(".upload-status")

    # A stale page: the operator logged out and in again in another tab, so this page's CSRF
    # token belongs to a session that is gone. The upload is refused (and nothing stored).
    other = await page.context.new_page()
    await other.goto(stack.ui_url + "/units")
    await other.get_by_role("button", name="Log out").click()
    await other.wait_for_url(stack.ui_url + "/login")
    await log_in(other, stack)
    await choose(page, note)
    await page.get_by_role("button", name="Upload").click()
    await playwright_api.expect(status).to_have_text(
        "Not stored: the form's CSRF token is missing or stale; reload the page and try again")
    await other.goto(stack.ui_url + "/units")
    await playwright_api.expect(other.locator("#count")).to_contain_text("0 units")

    # A reverse proxy in front of the dashboard answers with its own HTML or plain text.
    await page.reload()
    answers = iter([(413, "text/html", "<html><head><title>413 Request Entity Too Large</title></head><body>"
                                       "<center><h1>413 Request Entity Too Large</h1></center><hr><center>nginx</center>"
                                       "</body></html>"),
                    (502, "text/plain", "upstream went away")])

    async def proxy(route):
        code, ctype, body = next(answers)
        await route.fulfill(status=code, content_type=ctype, body=body)

    await page.route("**/units", lambda route: proxy(route) if route.request.method == "POST" else route.continue_())
    await choose(page, note)
    await page.get_by_role("button", name="Upload").click()
    await playwright_api.expect(status).to_have_text("Not stored: the server answered 413 Request Entity Too Large nginx")
    await page.get_by_role("button", name="Upload").click()
    await playwright_api.expect(status).to_have_text("Not stored: the server answered 502 Bad Gateway: upstream went away")
    assert "SyntaxError" not in await page.content()
