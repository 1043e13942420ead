"""Connectors are plugins: a third party's connector package, pip-installed apart from CIM,
brings units in through a real hub agent; a connector package that fails to import is
reported and skipped while the hub keeps working."""

import json
import urllib.request

import pytest

pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

from cim.embedded.procs import wait_until
from cim.nats.rpc import call
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.content import ContentStore
from cim.store.unit_store import UnitStore
from support.agentkit import AgentProcess
from support.hub_support import TOKEN, Hub, write_tokens
from support.pipeline_support import count, events_on, install_plugins
from support.waiting import async_wait_until


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """The two connector packages pip-installed into a folder of their own, as a user installs theirs."""
    return install_plugins(tmp_path_factory.mktemp("site"), "cim-example-connector", "cim-broken-connector")


def note(folder, name: str, title: str, text: str, labels=()) -> None:
    tmp = folder / f".{name}.tmp"  # written aside, then renamed in: never read half-written
    tmp.write_text(json.dumps({"title": title, "text": text, "labels": list(labels)}))
    tmp.rename(folder / name)


async def imported(nc) -> dict[str, object]:
    """Units the json-folder connector made, by title."""
    return {u.title: u async for u in UnitStore(nc).list() if u.source.startswith("json-folder:notes/")}


async def test_a_third_party_connector_installed_with_pip_turns_json_files_into_units(nats_server, nc, tmp_path, site):
    await provision(nc, ProvisionSpec())
    folder = tmp_path / "notes"
    folder.mkdir()
    note(folder, "a.json", "Kickoff", "We start on Monday.", ["meeting"])
    note(folder, "b.json", "Budget", "The budget is approved.")
    (folder / "bad.json").write_text("{not json")
    connectors = [{"plugin": "json-folder", "name": "notes",
                   "settings": {"path": str(folder), "labels": ["imported"], "interval": 0.2}}]
    hub = Hub(nats_server.url, tmp_path, env={"PYTHONPATH": site}, connectors=connectors).start()
    try:
        await async_wait_until(lambda: _has(nc, 2), 30, what="the connector to import two notes")
        units = await imported(nc)
        assert set(units) == {"Kickoff", "Budget"}
        assert units["Kickoff"].labels == ("imported", "meeting") and units["Budget"].labels == ("imported",)
        assert units["Kickoff"].media_type == "text/plain" and units["Kickoff"].source == "json-folder:notes/a.json"
        assert await ContentStore(nc).read(units["Budget"].cid) == b"The budget is approved."

        failures = await events_on(nc, "cim.evt.hub.*.import_failed")
        assert len(failures) == 1 and failures[0].data["item"].endswith("bad.json")
        assert "not a note" in failures[0].data["reason"]

        # A note added later arrives too; the notes scanned again meanwhile made no second unit.
        note(folder, "c.json", "Retro", "What went well.")
        await async_wait_until(lambda: _has(nc, 3), 30, what="the third note")
        assert await count(nc, "cim.evt.unit.*.created") == 3
        info = await call(nc, "cim.hub.info")
        assert info["connectors"] == ["notes (json-folder)"]
        assert hub.proc.poll() is None
    finally:
        hub.stop()


async def _has(nc, n: int) -> bool:
    return len(await imported(nc)) >= n


async def test_a_connector_plugin_that_fails_to_import_is_reported_and_skipped(nats_server, nc, tmp_path, site):
    await provision(nc, ProvisionSpec())
    # Naming the broken plugin in the hub's connectors: the hub refuses to start and says why.
    wrong = [{"plugin": "broken-feed", "name": "feed", "settings": {}}]
    refused = AgentProcess("hub", {"name": "cim-hub-refused", "nats": {"servers": [nats_server.url]},
                                   "tokens_file": str(write_tokens(tmp_path / "tokens.json")), "connectors": wrong},
                           tmp_path, {"PYTHONPATH": site}).start()
    try:
        wait_until(lambda: refused.proc.poll() is not None, 30, what="the misconfigured hub to exit")
        assert refused.proc.returncode != 0
        assert "broken-feed" in refused.log() and "broken on purpose" in refused.log()
    finally:
        refused.stop()

    # Installed beside a working connector: reported, skipped, and the hub works on.
    folder = tmp_path / "notes"
    folder.mkdir()
    note(folder, "a.json", "Kickoff", "We start on Monday.")
    connectors = [{"plugin": "json-folder", "name": "notes", "settings": {"path": str(folder), "interval": 0.2}}]
    hub = Hub(nats_server.url, tmp_path, env={"PYTHONPATH": site}, connectors=connectors).start()
    try:
        info = await call(nc, "cim.hub.info")
        assert "broken on purpose" in info["broken_plugins"]["broken-feed"]
        assert info["connectors"] == ["notes (json-folder)"]
        assert "broken-feed" in hub.log() and "broken on purpose" in hub.log()
        await async_wait_until(lambda: _has(nc, 1), 30, what="the working connector to import its note")
        request = urllib.request.Request(hub.url + "/v1/units?title=still-works", data=b"the API still works",
                                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 201
        assert hub.proc.poll() is None
    finally:
        hub.stop()
