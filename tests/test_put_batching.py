"""Coalesced puts (issue 16 item 5): concurrent small puts go out together, and every
guarantee of a single put holds per request. Real nats-server, real hub process."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from cim.cid import compute
from cim.errors import InvalidInput, UnitTooLarge
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.content import ContentStore
from cim.store.unit_store import PutResult, UnitStore
from support.hub_support import TOKEN, Hub
from support.pipeline_support import count
from support.waiting import async_wait_until


@pytest.fixture
async def provisioned(nc):
    await provision(nc, ProvisionSpec())
    return nc


async def test_one_bad_item_fails_alone_and_a_retry_of_the_batch_stores_nothing_twice(provisioned):
    nc = provisioned
    store = UnitStore(nc, max_unit_size=1000)
    items = [(f"good {i}".encode(), {"title": f"g{i}"}) for i in range(20)]
    items.insert(5, (b"bad label", {"labels": ["Not A Label"]}))
    items.insert(9, (b"x" * 1001, {"title": "too big"}))
    items.append((b"good 3", {"title": "the same bytes again"}))
    out = await store.put_small_many(items)

    assert isinstance(out[5], InvalidInput) and "labels" in str(out[5])
    assert isinstance(out[9], UnitTooLarge)
    good = [r for r in out if isinstance(r, PutResult)]
    assert len(good) == 21 and sum(r.created for r in good) == 20  # the repeat answers created=False
    content = ContentStore(nc)
    for r in good:
        assert await content.read(r.unit.cid) == next(d for d, _ in items if compute(d) == r.unit.cid)
    # Nothing of the refused ones was stored half-way.
    assert not await content.has(compute(b"x" * 1001)) and not await content.has(compute(b"bad label"))
    assert await count(nc, "cim.evt.unit.*.created") == 20

    again = await store.put_small_many(items)  # a retry: idempotent
    assert [isinstance(r, PutResult) and not r.created for r in again].count(True) == 21
    assert await count(nc, "cim.evt.unit.*.created") == 20


async def test_concurrent_http_puts_each_get_their_own_answer(provisioned, nats_server, tmp_path):
    nc = provisioned
    hub = Hub(nats_server.url, tmp_path, max_body_size=1 << 20).start()
    try:
        bodies = [f"payload {i}".encode() for i in range(60)]
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}

        async def put(session, i, body):
            query = "?label=Bad!" if i == 17 else f"?title=t{i}"
            async with session.post(f"{hub.url}/v1/units{query}", data=body, headers=headers) as r:
                return r.status, json.loads(await r.text())

        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(*(put(session, i, b) for i, b in enumerate(bodies)))
            assert answers[17][0] == 400 and "label" in json.dumps(answers[17][1])
            assert all(status == 201 and body["cid"] == compute(bodies[i])
                       for i, (status, body) in enumerate(answers) if i != 17), answers
            again = await asyncio.gather(*(put(session, i, b) for i, b in enumerate(bodies) if i != 17))
            assert all(status == 200 and body["created"] is False for status, body in again)
        assert await count(nc, "cim.evt.unit.*.created") == 59
    finally:
        hub.stop()


def test_cim_units_put_of_a_folder_stores_every_file_once_in_batches(provisioned, cli, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(300):
        (folder / f"note-{i:03}.txt").write_text(f"note number {i}")
    (folder / "zz-big.bin").write_bytes(b"\x01" * 200_000)  # over one chunk: stored on its own
    rows = json.loads(cli("--json", "units", "put", str(folder), "--label", "batch").stdout)
    assert len(rows) == 301 and all(r["created"] for r in rows)
    by_file = {r["file"].rsplit("/", 1)[1]: r for r in rows}
    assert by_file["note-042.txt"]["cid"] == compute(b"note number 42")
    shown = json.loads(cli("--json", "units", "show", by_file["note-042.txt"]["cid"]).stdout)
    assert shown["unit"]["title"] == "note-042.txt" and shown["unit"]["media_type"] == "text/plain"
    assert shown["labels"] == ["batch"]


def test_a_file_refused_in_a_batch_is_named_and_the_files_before_it_are_printed(provisioned, cli, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(5):
        (folder / f"a{i}.txt").write_text(f"small {i}")
    (folder / "b-large.txt").write_text("x" * 500)
    r = cli("units", "put", str(folder), "--max-size", "100", check=False)
    assert r.returncode != 0
    assert "b-large.txt" in r.stderr and "over the limit of 100 bytes" in r.stderr
    assert r.stdout.count("a") >= 5 and all(f"a{i}.txt" in r.stdout for i in range(5))


async def test_empty_content_put_again_in_batches_adds_no_index_entry(provisioned):
    nc = provisioned
    store = UnitStore(nc)
    for _ in range(5):
        (r,) = await store.put_small_many([(b"", {"title": "empty"})])
        assert isinstance(r, PutResult)
    assert len(await ContentStore(nc).entries(compute(b""))) == 1


async def test_a_put_arriving_as_the_last_batches_finish_is_not_stranded(provisioned):
    """Both batches are answered in one turn of the loop (their acks came in one socket read)
    and a put arrives in that same turn: it must start a drain of its own, although the two
    that just finished are still registered (a task's done-callback runs a turn later)."""
    from cim.store.put_batcher import PutBatcher

    nc = provisioned
    gates: list[asyncio.Future] = []

    class Gated(UnitStore):  # the real store, each batch held at the door until released
        async def put_small_many(self, items):
            stored = await super().put_small_many(items)
            if len(gates) < 2:  # the two early batches wait to be answered; a later one does not
                gate = asyncio.get_running_loop().create_future()
                gates.append(gate)
                await gate
            return stored

    batcher = PutBatcher(Gated(nc), in_flight=2)
    a = asyncio.create_task(batcher.put(b"early a"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first drain takes [a]
    b = asyncio.create_task(batcher.put(b"early b"))
    await async_wait_until(lambda: len(gates) == 2, 10, what="both batches stored and held at their gates")
    for gate in gates:  # both released in one turn, and a third put created in it
        gate.set_result(None)
    late = asyncio.create_task(batcher.put(b"late"))
    assert (await a).created and (await b).created
    result = await asyncio.wait_for(late, 10)
    assert result.created and result.unit.cid == compute(b"late")


async def test_the_bytes_of_an_expired_unit_put_again_are_refused_not_called_already_stored(provisioned):
    """A unit expired by a retention policy stays expired: putting its bytes again said
    "already stored" (created=False), a read then answered "expired", and the tier's sweep
    deleted the bytes just put. The put says so instead, on both put paths."""
    from cim.errors import UnitExpiredError
    from cim.events import Event
    from cim.tier.events import UnitExpired

    nc = provisioned
    units = UnitStore(nc)
    small, big = b"kept for 30 days", bytes(range(256)) * 2048  # one batched, one streamed (over a chunk)
    for data in (small, big):
        cid = (await units.put_bytes(data)).unit.cid
        await units.events.append(Event.of(UnitExpired(policy="30-days", reason="older than 30 days"), cid,
                                           agent="cim-tier"))
        await ContentStore(nc).delete(cid)  # as the tier agent does after the event
    with pytest.raises(UnitExpiredError, match="putting the same bytes again does not bring it back"):
        await units.put_bytes(big)
    [refused] = await units.put_small_many([(small, {})])
    assert isinstance(refused, UnitExpiredError) and "30-days" in str(refused), refused
    # A unit put again that is not expired is still "already stored".
    kept = (await units.put_bytes(b"still here")).unit.cid
    [again] = await units.put_small_many([(b"still here", {})])
    assert isinstance(again, PutResult) and again.unit.cid == kept and again.created is False


async def test_a_revision_put_again_after_its_parent_was_not_told_tells_it(provisioned):
    """A revision whose parent's `unit.revised` failed is put again by the user (the put
    failed); the child is stored already, and the parent learns of it now, once."""
    from cim.events import Event
    from cim.store.events import UnitCreated
    from cim.store.units import Unit

    nc = provisioned
    units = UnitStore(nc)
    parent = (await units.put_bytes(b"first draft")).unit.cid
    # What the failed put left: the child's content and `unit.created`, no `unit.revised`.
    child_data = b"second draft"
    child = Unit.create(cid=compute(child_data), size=len(child_data), parents=[parent])
    await ContentStore(nc).put_bytes(child_data)
    await units.events.append(Event.of(UnitCreated.model_validate(child.model_dump()), child.cid,
                                       id=f"unit-created-{child.cid}"), expected_revision=0)
    assert (await units.show(parent)).children == []
    for _ in range(2):
        result = await units.revise(parent, child_data)
        assert result.created is False and result.unit.cid == child.cid
    assert (await units.show(parent)).children == [child.cid]
    assert await count(nc, f"cim.evt.unit.{parent}.revised") == 1
    # Bytes stored before as a unit of their own are not made a revision by a later put.
    alone = (await units.put_bytes(b"a unit of its own")).unit.cid
    assert (await units.revise(parent, b"a unit of its own")).created is False
    assert alone not in (await units.show(parent)).children
