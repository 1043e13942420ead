"""The inbox folder against a planted symlink, a writer that pauses, and things that are not
files: nothing is written through a link, no half file becomes a unit, and nothing stays in
the inbox for ever without a reason."""

from __future__ import annotations

import asyncio
import os

import pytest

pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.hub_support import Hub
from support.waiting import async_wait_until


def _hub(nats_server, tmp_path, inbox, **settings) -> Hub:
    connectors = [{"plugin": "inbox", "name": "drop",
                   "settings": {"path": str(inbox), "interval": 0.2, "labels": ["dropped"], **settings}}]
    return Hub(nats_server.url, tmp_path, connectors=connectors, max_body_size=2000).start()


async def test_a_symlink_planted_in_failed_is_never_written_through(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    inbox, victim = tmp_path / "inbox", tmp_path / "victim.txt"
    (inbox / "failed").mkdir(parents=True)
    victim.write_text("must stay as it is\n")
    os.symlink(victim, inbox / "failed" / "big.bin.reason.txt")
    hub = _hub(nats_server, tmp_path, inbox)
    try:
        (inbox / "big.bin").write_bytes(b"x" * 5000)  # over the limit: refused with a reason
        await async_wait_until(lambda: not (inbox / "big.bin").exists(), 30, what="the refused file to leave the inbox")
        assert victim.read_text() == "must stay as it is\n"
        reasons = [p for p in (inbox / "failed").iterdir() if p.name.endswith(".reason.txt") and not p.is_symlink()]
        assert len(reasons) == 1 and "over the limit" in reasons[0].read_text()
    finally:
        hub.stop()


async def test_a_writer_that_pauses_never_gets_half_its_file_stored(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    hub = _hub(nats_server, tmp_path, inbox)  # the default settle (5 s) outlasts the pause
    try:
        with (inbox / "slow.txt").open("w") as f:
            f.write("first half, ")
            f.flush()
            await asyncio.sleep(1.0)  # the writer's pause (part of the scenario, not a wait for the hub)
            f.write("second half\n")
        await async_wait_until(lambda: (inbox / "done" / "slow.txt").exists(), 30, what="the file to be taken")
        units = [u async for u in UnitStore(nc).list(label="dropped")]
        assert [u.size for u in units] == [len("first half, second half\n")]
    finally:
        hub.stop()


async def test_links_folders_and_pipes_leave_the_inbox_with_a_reason(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "elsewhere.txt").write_text("not in the inbox\n")
    os.symlink(tmp_path / "elsewhere.txt", inbox / "link.txt")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "inside.txt").write_text("in a sub-folder\n")
    os.mkfifo(inbox / "pipe")
    hub = _hub(nats_server, tmp_path, inbox)
    try:
        await async_wait_until(lambda: {p.name for p in inbox.iterdir()} <= {"done", "failed"}, 30,
                               what="the inbox to be empty")
        failed = inbox / "failed"
        assert "symbolic link" in (failed / "link.txt.reason.txt").read_text()
        assert "a folder" in (failed / "sub.reason.txt").read_text()
        assert "not a regular file" in (failed / "pipe.reason.txt").read_text()
        assert (tmp_path / "elsewhere.txt").read_text() == "not in the inbox\n"
        assert [u async for u in UnitStore(nc).list(label="dropped")] == []
    finally:
        hub.stop()


async def test_a_file_whose_unit_was_expired_leaves_the_inbox_with_the_reason(nats_server, nc, tmp_path):
    """A unit a retention policy expired stays expired: a file with its bytes dropped again
    goes to failed/ saying so (it stayed in the inbox, refused again at every look)."""
    from cim.events import Event
    from cim.store.content import ContentStore
    from cim.tier.events import UnitExpired

    await provision(nc, ProvisionSpec())
    units = UnitStore(nc)
    cid = (await units.put_bytes(b"kept for 30 days\n")).unit.cid
    await units.events.append(Event.of(UnitExpired(policy="30-days", reason="older than 30 days"), cid, agent="cim-tier"))
    await ContentStore(nc).delete(cid)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    hub = _hub(nats_server, tmp_path, inbox, settle=0.2)
    try:
        (inbox / "again.txt").write_bytes(b"kept for 30 days\n")
        await async_wait_until(lambda: (inbox / "failed" / "again.txt.reason.txt").exists(), 30,
                               what="the file to leave the inbox with a reason")
        assert "expired by the retention policy '30-days'" in (inbox / "failed" / "again.txt.reason.txt").read_text()
    finally:
        hub.stop()
