"""Dashboard sessions as an attacker would probe them, over real HTTP against a real stack:
guessing is throttled, a logout or a removed user ends the session for every copy of the
cookie, `next` cannot leave the site, and downloads carry the security headers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from yarl import URL

aiohttp = pytest.importorskip("aiohttp", reason="the UI needs aiohttp")

from cim.ui.auth import hash_password  # noqa: E402
from support.ui_support import PASSWORD, Stack  # noqa: E402


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path).start()
    try:
        yield s
    finally:
        s.stop()


def _client() -> aiohttp.ClientSession:
    # unsafe: keep cookies for an IP address host (127.0.0.1), as a browser does.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(client, url, password=PASSWORD, user="admin", next_="/units"):
    return await client.post(url + "/login", data={"user": user, "password": password, "next": next_},
                             headers={"Origin": url}, allow_redirects=False)


async def test_failed_logins_are_throttled_and_say_when_to_try_again(stack):
    async with _client() as c:
        for _ in range(5):
            r = await _login(c, stack.ui_url, password="wrong")
            assert r.status == 401
        r = await _login(c, stack.ui_url)  # even the right password now waits
        assert r.status == 429
        assert int(r.headers["Retry-After"]) > 0 and "Too many failed logins" in await r.text()


async def test_logout_ends_the_session_for_every_copy_of_the_cookie(stack):
    async with _client() as c:
        assert (await _login(c, stack.ui_url)).status == 303
        cookie = {k: m.value for k, m in c.cookie_jar.filter_cookies(URL(stack.ui_url)).items()}
        assert (await c.get(stack.ui_url + "/units", allow_redirects=False)).status == 200
        page = await (await c.get(stack.ui_url + "/units")).text()
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        r = await c.post(stack.ui_url + "/logout", data={"csrf": csrf}, headers={"Origin": stack.ui_url}, allow_redirects=False)
        assert r.status == 303
    async with aiohttp.ClientSession(cookies=cookie, cookie_jar=aiohttp.CookieJar(unsafe=True)) as stolen:
        r = await stolen.get(stack.ui_url + "/units", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/login")


async def test_a_user_removed_from_the_password_file_loses_their_sessions(stack):
    async with _client() as c:
        assert (await _login(c, stack.ui_url)).status == 303
        assert (await c.get(stack.ui_url + "/units", allow_redirects=False)).status == 200
        (stack.tmp / "users").write_text(f"someone-else:{hash_password('x' * 12)}\n")
        r = await c.get(stack.ui_url + "/units", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/login")


@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "//evil.example", "/\\evil.example",
                                    "https://evil.example"])
async def test_next_never_leads_off_the_site(stack, target):
    async with _client() as c:
        r = await _login(c, stack.ui_url, next_=target)
        assert r.status == 303 and r.headers["Location"] == "/"


async def test_a_download_carries_the_content_security_policy_and_nosniff(stack, tmp_path):
    f = tmp_path / "page.html"
    f.write_text("<script>alert(1)</script>")
    put = subprocess.run([sys.executable, "-m", "cim", "--server", stack.server.url, "units", "put", str(f)],
                         capture_output=True, text=True, check=True)
    cid = put.stdout.split()[0]
    async with _client() as c:
        assert (await _login(c, stack.ui_url)).status == 303
        r = await c.get(stack.ui_url + f"/units/{cid}/content")
        assert r.status == 200 and await r.read() == f.read_bytes()
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src" in r.headers["Content-Security-Policy"]
