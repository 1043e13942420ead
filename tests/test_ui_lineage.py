"""The unit page's lineage names a parent the dashboard's projection has not seen yet (a
revision put a moment ago): the title comes from the unit itself, on a real NATS server."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiohttp", reason="the dashboard needs aiohttp")

from cim.events import EventStore
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from cim.ui.app import Dashboard
from cim.ui.auth import Auth
from cim.ui.projections import Projection


async def test_a_parent_the_projection_has_not_seen_still_shows_its_title(nc):
    await provision(nc, ProvisionSpec())
    units = UnitStore(nc)
    parent = (await units.put_bytes(b"v1", title="original")).unit.cid
    projection = Projection(EventStore(nc), None)
    projection.open()  # its (empty) rows, in memory; not following the stream: it has seen nothing
    auth = Auth(password_file=None, session_secret_file=None, trusted_header="X-User", trusted_proxies=["127.0.0.1"],
                secure_cookies=False)
    dashboard = Dashboard(nc, auth, projection, agent="cim-ui", max_upload=1024, stopping=asyncio.Event())
    assert await dashboard._title(parent) == "original"
    assert await dashboard._title("bafkreinotstoredanywhere") == ""
    projection.close()
