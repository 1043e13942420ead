"""Uploads from the dashboard's Units page past its limit, and refusals the page did not
expect: each is a sentence on the page, never a JavaScript parse error. Debian's chromium,
driven by Playwright, against real agents."""

import asyncio
import json
import os
import re
import socket

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")
playwright_api = pytest.importorskip("playwright.async_api", reason="browser tests need playwright (pip install playwright)")

from cim.cid import compute  # noqa: E402
from support.ui_support import CHROMIUM, PASSWORD, Stack, log_in, running  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

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
    async with running(Stack(tmp_path)) as s:
        yield s


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


# --- what an upload may make the dashboard hold, and for how long (issue 17 review, L4) -------

IDLE = 1.0  # the test dashboard's idle_timeout: an upload that sends nothing this long is cut off


@pytest.fixture
async def strict(stack, tmp_path):
    """A second dashboard on the stack, with a short idle_timeout."""
    from cim.ports import free_port
    from support.ui_support import Agent, http_ok

    port = free_port()
    agent = Agent("ui", {"name": "cim-ui-strict", "nats": {"servers": [stack.server.url]}, "http": {"port": port},
                         "password_file": str(stack.tmp / "users"), "idle_timeout": IDLE}, tmp_path)
    stack.agents.append(agent)
    url = f"http://127.0.0.1:{port}"
    await async_wait_until(lambda: asyncio.to_thread(http_ok, url + "/healthz"), 30, what="the strict dashboard")
    return url


async def logged_in(url: str):
    """An HTTP client logged in to the dashboard at `url`, and its CSRF token."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # unsafe: cookies from an IP address
    async with session.post(url + "/login", data={"user": "admin", "password": PASSWORD, "next": "/units"},
                            headers={"Origin": url}) as r:
        assert r.status == 200 and str(r.url).endswith("/units"), await r.text()
        csrf = re.search(r'data-csrf="([^"]+)"', await r.text()).group(1)
    return session, csrf


async def post_form(session, url: str, csrf: str, form) -> tuple[int, dict]:
    async with session.post(url + "/units", data=form, headers={
            "Origin": url, "X-CSRF-Token": csrf, "Accept": "application/json"}) as r:
        return r.status, await r.json(content_type=None)


def note_form(text: bytes = b"a small note"):
    form = aiohttp.FormData()
    form.add_field("file", text, filename="note.txt", content_type="text/plain")
    return form


async def test_an_upload_with_many_junk_fields_is_refused_and_the_next_one_is_stored(strict):
    session, csrf = await logged_in(strict)
    try:
        # Thousands of distinct names: once kept whole, each up to the request's size limit.
        form = note_form()
        for i in range(2000):
            form.add_field(f"junk-{i}", "x" * 1024)
        status, answer = await post_form(session, strict, csrf, form)
        assert status == 400, answer
        assert answer["error"].startswith("this form has more than 16 parts"), answer

        # Few of them, but long: every field counts toward one small budget.
        form = note_form()
        for i in range(8):
            form.add_field(f"junk-{i}", "x" * 16 * 1024)
        status, answer = await post_form(session, strict, csrf, form)
        assert (status, answer) == (413, {"error": "a form field is too long; shorten the title or the labels"})

        # A field the form does not have is read and dropped; the upload itself is stored.
        form = note_form(b"stored after the junk")
        form.add_field("title", "after the junk")
        form.add_field("colour", "blue")
        status, answer = await post_form(session, strict, csrf, form)
        assert status == 201 and answer["cid"] == compute(b"stored after the junk"), answer
    finally:
        await session.close()


async def test_an_upload_that_stalls_is_answered_408_and_cut_off(strict):
    session, csrf = await logged_in(strict)
    cookie = "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)
    await session.close()
    port = int(strict.rsplit(":", 1)[1])
    head = (f"POST /units HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {strict}\r\nX-CSRF-Token: {csrf}\r\n"
            f"Cookie: {cookie}\r\nAccept: application/json\r\nContent-Length: 100000\r\n"
            "Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n").encode()
    first = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="slow.txt"\r\n'
             b"Content-Type: text/plain\r\n\r\nthe first bytes of a file that never comes whole")

    def stalled() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head + first)  # and then nothing more
            answer = b""
            while chunk := sock.recv(65536):  # until the dashboard closes the connection
                answer += chunk
            return answer

    answer = await asyncio.to_thread(stalled)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    assert json.loads(body) == {"error": f"nothing arrived for {IDLE:g} s; send the upload again"}
