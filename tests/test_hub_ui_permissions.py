"""The hub and the dashboard do all their work under their own restricted NATS users,
with exactly the permissions capabilities.json declares (as modules/nats.nix renders
them): any subject they touch beyond those shows as a permissions violation. The hub asks
the pipeline agent for searches (GET /v1/search) and pages of units (GET /v1/units), and
may ask it for nothing else."""

import asyncio
import subprocess
import sys

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")

from cim.hub.webhooks import subject_matches  # noqa: E402
from cim.permissions import permissions  # noqa: E402
from cim.ports import free_port  # noqa: E402
from cim.ui.auth import hash_password  # noqa: E402
from support.hub_support import TOKEN, Hub  # noqa: E402
from support.ui_support import PASSWORD, Agent, http_ok  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402


@pytest.fixture
def secured(secured_nats):
    return secured_nats("store", "hub", "ui")


def test_the_hub_may_ask_the_pipeline_for_searches_and_unit_listings_and_nothing_else():
    publish = permissions("hub")["publish"]
    assert "cim.pipeline.search" in publish and "cim.pipeline.units" in publish
    for other in ("cim.pipeline.index", "cim.pipeline.retry", "cim.pipeline.check", "cim.pipeline.search.x",
                  "cim.pipeline.units.x"):
        assert not any(subject_matches(p, other) for p in publish), other


async def test_hub_and_ui_work_within_their_own_permissions(secured, tmp_path):
    server, seeds = secured
    subprocess.run([sys.executable, "-m", "cim", "--server", server.url, "--nkey", str(seeds["admin"]), "provision"],
                   check=True, capture_output=True)
    def nats(name):
        return {"servers": [server.url], "nkey_seed_file": str(seeds[name])}

    agents = [Agent("store", {"nats": nats("store")}, tmp_path)]
    (tmp_path / "users").write_text(f"admin:{hash_password(PASSWORD)}\n")
    ui_port = free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    agents.append(Agent("ui", {"nats": nats("ui"), "http": {"port": ui_port}, "password_file": str(tmp_path / "users")}, tmp_path))
    (tmp_path / "secret").write_text("s3cret\n")
    inbox = tmp_path / "inbox"
    hub = Hub(server.url, tmp_path, nkey=seeds["hub"],
              webhooks=[{"name": "down", "url": f"http://127.0.0.1:{free_port()}/", "secret_file": str(tmp_path / "secret"),
                         "max_attempts": 1}],
              connectors=[{"plugin": "inbox", "name": "drop", "settings": {"path": str(inbox), "interval": 0.2}}])
    try:
        hub.start()
        await async_wait_until(lambda: http_ok(ui + "/healthz"), 30, what="the dashboard")
        # unsafe=True: keep cookies from an IP-address host (127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(hub.url + "/v1/units?title=secured", data=b"under a restricted user",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}) as r:
                assert r.status == 201, await r.text()
                cid = (await r.json())["cid"]
            inbox.mkdir(exist_ok=True)
            (inbox / "dropped.txt").write_text("through the inbox")
            await async_wait_until(lambda: (inbox / "done" / "dropped.txt").exists(), 30, what="the inbox")
            async with http.post(ui + "/login", data={"user": "admin", "password": PASSWORD, "next": "/"},
                                 headers={"Origin": ui}) as r:
                assert r.status == 200 and "Agents" in await r.text()

            async def dead_letter_listed():
                async with http.get(ui + "/pipelines") as r:
                    return "Retry #" in await r.text()

            await async_wait_until(dead_letter_listed, 30, what="the webhook dead letter on the pipelines page")
            for path in ("/", "/units", f"/units/{cid}", "/events", "/pipelines"):
                async with http.get(ui + path) as r:
                    assert r.status == 200, (path, await r.text())
            # Search is asked of the pipeline agent (cim.pipeline.search): none runs here, so the
            # page says so; a request the ui user may not make would be a permissions violation.
            async with http.get(ui + "/units?q=restricted") as r:
                assert r.status == 200 and "Search needs the pipeline agent" in await r.text()
            async with http.get(f"{ui}/units/{cid}/content") as r:
                assert await r.read() == b"under a restricted user"
            async with http.get(f"{ui}/units/{cid}") as r:
                page = await r.text()
                assert "under a restricted user" in page and "cim-hub" in page
            csrf = page.split('data-csrf="')[1].split('"')[0]
            form = aiohttp.FormData()
            form.add_field("file", b"uploaded through the ui", filename="up.txt", content_type="text/plain")
            async with http.post(ui + "/units", data=form, headers={"Origin": ui, "X-CSRF-Token": csrf, "Accept": "application/json"}) as r:
                assert r.status == 201, await r.text()
        await asyncio.sleep(0)  # let log lines flush
    finally:
        hub.stop()
        for a in agents:
            a.stop()
    for log in (hub.log_path, *(a.log_path for a in agents)):
        text = log.read_text().lower()
        assert "permissions violation" not in text, f"{log.name}:\n{text[-3000:]}"
        assert "traceback" not in text, f"{log.name}:\n{text[-3000:]}"


async def test_the_hub_searches_through_the_pipeline_agent_under_its_own_user(secured_nats, tmp_path):
    server, seeds = secured_nats("pipeline", "hub")
    subprocess.run([sys.executable, "-m", "cim", "--server", server.url, "--nkey", str(seeds["admin"]), "provision"],
                   check=True, capture_output=True)
    pipeline = Agent("pipeline", {"nats": {"servers": [server.url], "nkey_seed_file": str(seeds["pipeline"])},
                                  "state_dir": str(tmp_path / "state")}, tmp_path)
    hub = Hub(server.url, tmp_path, nkey=seeds["hub"])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        hub.start()
        async with aiohttp.ClientSession() as http:
            async with http.post(hub.url + "/v1/units", data=b"kingfishers dive under a restricted user",
                                 headers={**auth, "Content-Type": "text/plain"}) as r:
                assert r.status == 201, await r.text()
                cid = (await r.json())["cid"]

            async def found():
                async with http.get(hub.url + "/v1/search", params={"q": "kingfishers"}, headers=auth) as r:
                    assert r.status in (200, 503), await r.text()  # 503: the pipeline agent is still starting
                    return r.status == 200 and [h["cid"] for h in (await r.json())["hits"]] == [cid]

            await async_wait_until(found, 60, what="the hub to find the unit through the pipeline agent")
    finally:
        hub.stop()
        pipeline.stop()
    for log in (hub.log_path, pipeline.log_path):
        text = log.read_text().lower()
        assert "permissions violation" not in text and "traceback" not in text, f"{log.name}:\n{text[-3000:]}"
