"""`cim up` with the hub and the dashboard: the addresses it prints work as printed."""

import json
import re
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")

from cim.embedded.procs import wait_until


def test_up_prints_the_ui_and_hub_addresses_and_both_work(up, cli, tmp_path):
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


def test_a_label_the_pipeline_added_finds_the_unit_in_the_cli_and_the_dashboard(up, cli, tmp_path):
    """One fold of a unit's events: the `text` label that the default pipeline's classify
    step adds (`unit.labeled`) is found by `cim units ls --label` and the dashboard's label
    filter, as `cim units show` lists it."""
    u = up()
    ui_url, password = re.search(r"UI (http://127\.0\.0\.1:\d+) \(user admin, password (\S+),", u.output()).groups()
    note = tmp_path / "labelled-later.txt"
    note.write_text("classified by the pipeline, not by whoever put it")
    cid = json.loads(cli("--json", "units", "put", note, server=u.url, env=u.env).stdout)[0]["cid"]

    def shown_labels():
        return json.loads(cli("--json", "units", "show", cid, server=u.url, env=u.env).stdout)["labels"]

    wait_until(lambda: "text" in shown_labels(), 60, what="the pipeline to label the unit")
    listed = json.loads(cli("--json", "units", "ls", "--label", "text", server=u.url, env=u.env).stdout)
    assert [x["cid"] for x in listed] == [cid] and "text" in listed[0]["labels"]
    assert cid in cli("units", "ls", server=u.url, env=u.env).stdout

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    form = urllib.parse.urlencode({"user": "admin", "password": password, "next": "/units?label=text"}).encode()

    def dashboard_lists_it():
        with opener.open(urllib.request.Request(ui_url + "/units?label=text"), timeout=10) as r:
            return cid in r.read().decode()

    wait_until(lambda: answers_login(opener, ui_url, form), 60, what="the dashboard to let the admin in")
    wait_until(dashboard_lists_it, 30, what="the dashboard's label filter to list the unit")


def answers_login(opener, ui_url: str, form: bytes) -> bool:
    try:
        with opener.open(urllib.request.Request(ui_url + "/login", data=form, headers={"Origin": ui_url}), timeout=10) as r:
            return r.status == 200
    except OSError:
        return False
