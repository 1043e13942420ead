"""`cim up` with the hub and the dashboard: the addresses it prints work as printed."""

import json
import re
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")

from cim.embedded.procs import wait_until  # noqa: E402

from test_up import up  # noqa: E402,F401 - the fixture


def test_up_prints_the_ui_and_hub_addresses_and_both_work(up, cli, tmp_path):  # noqa: F811
    u = up()
    out = u.output()
    ui = re.search(r"UI (http://127\.0\.0\.1:\d+) \(user admin, password (\S+),", out)
    hub = re.search(r"hub (http://127\.0\.0\.1:\d+)/v1/units \(token (\S+),", out)
    assert ui and hub, out
    ui_url, password = ui.groups()
    hub_url, token = hub.groups()
    assert cli("ui", "open", "--print", "--data-dir", u.data_dir).stdout.strip() == ui_url + "/"

    def answers(url):
        try:
            return urllib.request.urlopen(url, timeout=1).status == 200
        except OSError:
            return False

    wait_until(lambda: answers(hub_url + "/healthz") and answers(ui_url + "/healthz"), 60, what="hub and UI to answer")
    req = urllib.request.Request(hub_url + "/v1/units?title=from-curl", data=b"via the hub", method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201
        cid = json.load(r)["cid"]

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    form = urllib.parse.urlencode({"user": "admin", "password": password, "next": f"/units/{cid}"}).encode()
    login = urllib.request.Request(ui_url + "/login", data=form, headers={"Origin": ui_url})
    with opener.open(login, timeout=10) as r:
        page = r.read().decode()
    assert "from-curl" in page and cid in page

    inbox = u.data_dir / "inbox"
    (inbox / "dropped.txt").write_text("dropped in the inbox")
    wait_until(lambda: (inbox / "done" / "dropped.txt").exists(), 30, what="the inbox to take the file")
    assert "dropped.txt" in cli("units", "ls", server=u.url, env=u.env).stdout
