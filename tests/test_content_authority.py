"""A writer's credential (store, hub, pipeline) may add to the content bucket but never take
anything away, and nothing it adds can hide or destroy content stored by someone else
(issue 14, finding 3). Real secured nats-server, the agents' own permissions."""

from __future__ import annotations

import io
import json
import os

import nats
import pytest
from nats.js.errors import APIError

from cim import cid as cidlib
from cim.errors import UnitNotFound
from cim.permissions import inbox_prefix
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.content import ContentStore

SIZES = [100, 300_000, 4 * 1024 * 1024 + 1]  # one chunk, a direct get of several, streamed


@pytest.fixture
async def bucket(secured_nats):
    """(admin, store, tier) connections to a provisioned secured server."""
    server, seeds = secured_nats("store", "tier")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    await provision(admin, ProvisionSpec())
    store = await nats.connect(server.url, nkeys_seed=str(seeds["store"]), inbox_prefix=inbox_prefix("store"))
    tier = await nats.connect(server.url, nkeys_seed=str(seeds["tier"]), inbox_prefix=inbox_prefix("tier"))
    yield admin, store, tier
    for nc in (store, tier, admin):
        await nc.close()


def meta_subject(cid: str) -> str:
    import base64

    return f"$O.CIM_CONTENT.M.{base64.urlsafe_b64encode(cid.encode()).decode()}"


async def forge_entry(nc, cid: str, **fields) -> None:
    """What a compromised writer can publish: an index entry of its own making."""
    entry = {"name": cid, "bucket": "CIM_CONTENT", "nuid": "FORGED", "size": 4, "chunks": 1, "digest": "", **fields}
    await nc.jetstream().publish(meta_subject(cid), json.dumps(entry).encode())


async def read(nc, cid: str) -> bytes:
    return b"".join([chunk async for chunk in ContentStore(nc).get(cid)])


async def test_a_writer_cannot_purge_roll_up_or_delete_content(bucket):
    admin, store, _ = bucket
    data = b"kept whatever a writer does"
    cid = await ContentStore(store).put_bytes(data)
    js = store.jetstream()
    with pytest.raises(APIError, match="rollup not permitted"):
        await js.publish(meta_subject(cid), b'{"deleted": true}', headers={"Nats-Rollup": "sub"})
    with pytest.raises(Exception):  # no permission: the server never answers the request
        await js.purge_stream("OBJ_CIM_CONTENT", subject=meta_subject(cid))
    with pytest.raises(Exception):
        await js.delete_msg("OBJ_CIM_CONTENT", 1)
    assert await read(admin, cid) == data


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("forgery", ["deleted", "garbage chunks", "another object's chunks", "not json"])
async def test_an_entry_forged_after_the_put_does_not_hide_the_content(bucket, size, forgery):
    admin, store, _ = bucket
    data = os.urandom(size)
    cid = await ContentStore(store).put_bytes(data)
    other = await ContentStore(store).put_bytes(b"another object")
    if forgery == "deleted":
        await forge_entry(store, cid, deleted=True, nuid="")
    elif forgery == "garbage chunks":
        await store.jetstream().publish("$O.CIM_CONTENT.C.FORGED", b"evil", headers={"Cim-Cid": cid})
        await forge_entry(store, cid)
    elif forgery == "another object's chunks":
        await forge_entry(store, cid, nuid=(await ContentStore(admin).locate(other)).nuid, size=14)
    else:
        await store.jetstream().publish(meta_subject(cid), b"\xff not an entry")
    assert await read(admin, cid) == data
    assert await ContentStore(admin).has(cid)
    assert await read(admin, other) == b"another object"


@pytest.mark.parametrize("size", SIZES)
async def test_an_entry_forged_before_the_put_does_not_make_the_put_skip_its_upload(bucket, size):
    admin, store, _ = bucket
    data = os.urandom(size)
    cid = cidlib.compute(data)
    await store.jetstream().publish("$O.CIM_CONTENT.C.FORGED", b"evil", headers={"Cim-Cid": cid})
    await forge_entry(store, cid, size=size)
    assert not await ContentStore(admin).has(cid)
    assert await ContentStore(store).put_bytes(data) == cid
    assert await read(admin, cid) == data


async def test_the_tier_deleting_an_object_never_removes_chunks_another_entry_points_at(bucket):
    """A forged entry of A points at B's chunks: the tier agent deleting A (its expiry, say)
    removes A's entries and A's own chunks, and B is still whole."""
    admin, store, tier = bucket
    a = await ContentStore(store).put_bytes(b"object a")
    b = await ContentStore(store).put_bytes(b"object b")
    await forge_entry(store, a, nuid=(await ContentStore(admin).locate(b)).nuid, size=8)
    a_nuid = (await ContentStore(admin).entries(a))[-1].nuid
    await ContentStore(tier).delete(a)
    with pytest.raises(UnitNotFound):
        await read(admin, a)
    assert await read(admin, b) == b"object b"
    chunks = await admin.jetstream().stream_info("OBJ_CIM_CONTENT", subjects_filter=f"$O.CIM_CONTENT.C.{a_nuid}")
    assert not chunks.state.subjects  # A's own chunks are gone, not left behind


async def test_a_put_whose_bytes_change_leaves_no_index_entry(bucket):
    """Bytes that do not hash to the CID given are refused, and nothing points at them."""
    from cim.errors import CidMismatch

    admin, store, _ = bucket
    claimed = cidlib.compute(b"what was hashed")
    with pytest.raises(CidMismatch):
        await ContentStore(store).put_stream(claimed, io.BytesIO(b"what was sent instead"))
    assert await ContentStore(admin).entries(claimed) == []


async def test_an_entry_naming_a_wildcard_nuid_cannot_make_the_tier_purge_the_bucket(bucket):
    """`nuid: ">"` would make the chunk subject `$O.CIM_CONTENT.C.>`: every object's chunks.
    Such an entry is not an entry; the tier's delete of the object removes only its own."""
    admin, store, tier = bucket
    oldest = await ContentStore(store).put_bytes(b"the oldest object, the next the tier moves")
    others = [await ContentStore(store).put_bytes(f"object {i}".encode()) for i in range(5)]
    for nuid in (">", "*", "", "x.y", "A" * 21 + ">"):
        await forge_entry(store, oldest, nuid=nuid)
    await ContentStore(tier).delete(oldest)
    for i, cid in enumerate(others):
        assert await read(admin, cid) == f"object {i}".encode()


@pytest.mark.parametrize("size", SIZES)
async def test_a_chunk_appended_to_an_objects_chunk_subject_does_not_shadow_it(bucket, size):
    admin, store, _ = bucket
    data = os.urandom(size)
    cid = await ContentStore(store).put_bytes(data)
    nuid = (await ContentStore(admin).locate(cid)).nuid
    await store.jetstream().publish(f"$O.CIM_CONTENT.C.{nuid}", b"evil", headers={"Cim-Cid": cid})
    assert await read(admin, cid) == data
    assert await ContentStore(admin).has(cid)


@pytest.mark.parametrize("entry", [b"[]", b"null", b"5", b'"x"', b'{"nuid": 7}', b'{"nuid": "AAAAAAAAAAAAAAAAAAAAAA", "size": "big"}'])
async def test_an_entry_that_is_json_but_not_an_entry_is_skipped(bucket, entry):
    admin, store, _ = bucket
    data = os.urandom(300_000)
    cid = await ContentStore(store).put_bytes(data)
    await store.jetstream().publish(meta_subject(cid), entry)
    assert await read(admin, cid) == data


async def test_many_entries_forged_before_the_put_do_not_hide_it(bucket):
    admin, store, _ = bucket
    data = os.urandom(1000)
    cid = cidlib.compute(data)
    for _ in range(300):  # more than one batch of entries
        await forge_entry(store, cid, nuid="B" * 22)
    assert await ContentStore(store).put_bytes(data) == cid
    await forge_entry(store, cid, nuid="C" * 22)
    assert await read(admin, cid) == data and await ContentStore(admin).has(cid)


async def test_the_hub_may_put_content_that_is_already_stored(secured_nats):
    """A put of stored content checks the bytes there (a direct get), which the hub's
    credential must allow."""
    server, seeds = secured_nats("hub")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    hub = await nats.connect(server.url, nkeys_seed=str(seeds["hub"]), inbox_prefix=inbox_prefix("hub"))
    try:
        await provision(admin, ProvisionSpec())
        for size in (100, 300_000):
            data = os.urandom(size)
            store = ContentStore(hub, timeout=2)
            assert await store.put_stream(cidlib.compute(data), io.BytesIO(data))
            assert not await store.put_stream(cidlib.compute(data), io.BytesIO(data))  # already there
    finally:
        await hub.close()
        await admin.close()
