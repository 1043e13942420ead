"""Units and their content against a real nats-server: round trip, CID checks, limits."""

import os

import nats
import pytest
from multiformats import CID, multihash

from cim.embedded.nats_server import NatsServer
from cim.errors import CidMismatch, InvalidCid, InvalidInput, JetStreamUnavailable, UnitNotFound, UnitTooLarge
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.content import ContentStore
from cim.store.unit_store import UnitStore


@pytest.fixture
async def units(nc):
    await provision(nc, ProvisionSpec())
    return UnitStore(nc, max_unit_size=5 * 1024 * 1024)


async def read_all(units, c):
    return b"".join([chunk async for chunk in units.get(c)])


async def stored_events(nc) -> int:
    info = await nc.jetstream().stream_info("CIM_EVENTS")
    return info.state.messages


# One chunk, two, 25 and 32 (one batched direct get), 33 (a consumer).
@pytest.mark.parametrize("size", [0, 1, 128 * 1024, 128 * 1024 + 1, 3 * 1024 * 1024 + 17, 4 * 1024 * 1024,
                                  4 * 1024 * 1024 + 1])
async def test_put_and_get_round_trip_with_an_independent_cid(units, tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    result = await units.put_file(path, labels=["demo"])
    expected = str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))
    assert result.unit.cid == expected and result.created
    assert await read_all(units, expected) == data
    view = await units.show(expected)
    assert (view.unit.title, view.unit.size, view.unit.labels) == ("f.bin", size, ("demo",))


async def test_putting_the_same_content_twice_stores_one_unit(units, nc):
    first = await units.put_bytes(b"same", title="one")
    second = await units.put_bytes(b"same", title="two")
    assert first.created and not second.created
    assert second.unit.title == "one"
    assert [u.cid async for u in units.list()] == [first.unit.cid]
    assert await stored_events(nc) == 1


@pytest.mark.parametrize("size", [1000, 300_000])  # one chunk (a one-request read) and three
async def test_tampered_content_fails_the_read_with_a_cid_mismatch(units, nc, size):
    data = os.urandom(size)
    c = (await units.put_bytes(data)).unit.cid
    loc = await ContentStore(nc).locate(c)
    js = nc.jetstream()
    # Replace the object's chunks with other bytes of the same size, as a disk fault or an
    # attacker with bucket access would, leaving the metadata as it was.
    chunk_subject = f"$O.CIM_CONTENT.C.{loc.nuid}"
    await js.purge_stream("OBJ_CIM_CONTENT", subject=chunk_subject)
    forged = bytearray(data)
    forged[len(forged) // 2] ^= 0xFF
    for i in range(0, len(forged), 128 * 1024):
        await js.publish(chunk_subject, bytes(forged[i:i + 128 * 1024]))
    received = []
    with pytest.raises(CidMismatch) as err:
        async for chunk in units.get(c):
            received.append(chunk)
    assert c in str(err.value)
    assert sum(map(len, received)) < len(data)  # the wrong content never arrives complete


@pytest.mark.parametrize("size", [300_000, 4 * 1024 * 1024, 4 * 1024 * 1024 + 1, 5 * 1024 * 1024])
async def test_objects_of_any_size_are_read_without_a_consumer(units, nc, size):
    data = os.urandom(size)
    c = (await units.put_bytes(data)).unit.cid
    # The connection sees its own API requests; the flush after the read means every one
    # it sent has come back to this subscription by then.
    creates = await nc.subscribe("$JS.API.CONSUMER.CREATE.>")
    await nc.flush()
    assert await read_all(units, c) == data
    await nc.flush()
    assert creates.delivered == 0
    await creates.unsubscribe()


@pytest.mark.parametrize("size", [300_000, 4 * 1024 * 1024 + 1])  # read by a direct get, by a consumer
async def test_a_missing_chunk_fails_the_read_with_a_cid_mismatch(units, nc, size):
    data = os.urandom(size)
    c = (await units.put_bytes(data)).unit.cid
    loc = await ContentStore(nc).locate(c)
    chunk_subject = f"$O.CIM_CONTENT.C.{loc.nuid}"
    first = await nc.jetstream().get_msg("OBJ_CIM_CONTENT", seq=1, next=True, subject=chunk_subject)
    # Lost on disk, as it were (the bucket denies message deletes; an admin may purge).
    await nc.jetstream().purge_stream("OBJ_CIM_CONTENT", subject=chunk_subject, seq=first.seq + 1)
    received = []
    with pytest.raises(CidMismatch) as err:
        async for chunk in units.get(c):
            received.append(chunk)
    assert c in str(err.value)
    assert sum(map(len, received)) < len(data) - 128 * 1024  # the chunk is gone, the last one held back


@pytest.mark.parametrize("deny", [["$JS.API.DIRECT.GET.OBJ_CIM_CONTENT"],
                                  ["$JS.API.DIRECT.GET.OBJ_CIM_CONTENT", "$JS.API.DIRECT.GET.OBJ_CIM_CONTENT.>"]],
                         ids=["batched-refused", "all-direct-refused"])
async def test_a_user_refused_direct_gets_is_told_which_permission_reads_need(tmp_path, caplog, deny):
    """Reads are direct gets (no consumer); a user without that right gets an error that
    names it, after one refused request and a bounded wait, not a hang."""
    refused = {"publish": {"allow": [">"], "deny": deny}}
    server = NatsServer(store_dir=tmp_path / "nats", extra_config={"accounts": {"CIM": {"jetstream": "enabled", "users": [
        {"user": "reader", "password": "r", "permissions": refused}, {"user": "admin", "password": "a"}]}}})
    server.start()
    admin = await nats.connect(server.url, user="admin", password="a")
    async def on_error(err):  # the refusal is reported here, not to the request
        pass

    reader = await nats.connect(server.url, user="reader", password="r", error_cb=on_error)
    try:
        await provision(admin, ProvisionSpec())
        data = os.urandom(300_000)
        c = (await UnitStore(admin).put_bytes(data)).unit.cid
        with pytest.raises(JetStreamUnavailable) as err:
            await ContentStore(reader, timeout=0.5).read(c)
        assert "$JS.API.DIRECT.GET.OBJ_CIM_CONTENT" in str(err.value)
        small = (await UnitStore(admin).put_bytes(b"one chunk")).unit.cid
        assert await ContentStore(reader, timeout=0.5).read(small) == b"one chunk"  # through the leader
    finally:
        await reader.close()
        await admin.close()
        server.stop()


async def api_requests(nc, pattern: str, action) -> int:
    """How many JetStream API requests matching `pattern` this connection sent during `action`."""
    seen = await nc.subscribe(pattern)
    await nc.flush()
    await action()
    await nc.flush()
    await seen.unsubscribe()
    return seen.delivered


async def chunks_left(nc, nuid: str) -> int:
    info = await nc.jetstream().stream_info("OBJ_CIM_CONTENT", subjects_filter=f"$O.CIM_CONTENT.C.{nuid}")
    return sum((info.state.subjects or {}).values())


@pytest.mark.parametrize("size", [100, 300_000, 4 * 1024 * 1024 + 1])
async def test_reads_ask_nothing_of_the_leaders_message_api_and_a_delete_after_a_read_looks_nothing_up(units, nc, size):
    data = os.urandom(size)
    c = (await units.put_bytes(data)).unit.cid
    content = ContentStore(nc)
    loc = await content.locate(c)

    async def read_then_delete():
        assert b"".join([chunk async for chunk in content.get(c, keep_location=True)]) == data
        await content.delete(c)

    assert await api_requests(nc, "$JS.API.STREAM.MSG.GET.>", read_then_delete) == 0
    assert await content.locate(c) is None and await chunks_left(nc, loc.nuid) == 0
    with pytest.raises(UnitNotFound):
        await content.read(c)


async def test_a_delete_after_a_read_never_trusts_a_location_that_changed_meanwhile(units, nc):
    """Stored again after the read (a new chunk id), the object is deleted by what is there
    now: no chunks of either copy remain behind a deleted entry."""
    data = os.urandom(300_000)
    c = (await units.put_bytes(data)).unit.cid
    content, other = ContentStore(nc), ContentStore(nc)
    first = await content.locate(c)
    assert b"".join([chunk async for chunk in content.get(c, keep_location=True)]) == data
    await other.delete(c)
    await other.put_bytes(data)
    second = await other.locate(c)
    assert second.nuid != first.nuid
    await content.delete(c)  # remembers the first location: the server refuses to act on it
    assert await content.locate(c) is None
    assert await chunks_left(nc, first.nuid) == 0 and await chunks_left(nc, second.nuid) == 0


@pytest.mark.parametrize("size", [100, 300_000, 4 * 1024 * 1024 + 1])  # one chunk, a direct get, a consumer
async def test_a_read_given_a_stale_index_entry_by_a_replica_asks_the_leader(units, nc, size):
    """A replica that lags answers a direct get with the entry from before the object was
    deleted and stored again: its chunks are gone, so the read asks the leader instead."""
    data = os.urandom(size)
    c = (await units.put_bytes(data)).unit.cid
    stale = await ContentStore(nc).locate(c)
    await units.content.delete(c)
    await units.content.put_bytes(data)

    class LaggingReplica(ContentStore):
        async def _locate_direct(self, cid):
            return stale

    assert b"".join([chunk async for chunk in LaggingReplica(nc).get(c)]) == data


async def test_a_unit_over_the_size_limit_is_refused_and_nothing_is_stored(units, nc, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024 + 1))
    with pytest.raises(UnitTooLarge) as err:
        await units.put_file(big)
    assert "max_unit_size" in str(err.value) and err.value.field == "size"
    info = await nc.jetstream().stream_info("OBJ_CIM_CONTENT")
    assert info.state.messages == 0
    assert await stored_events(nc) == 0


async def test_a_piped_unit_over_the_limit_is_refused_and_nothing_is_stored(units, nc, tmp_path):
    import io

    with pytest.raises(UnitTooLarge):
        await units.put_stream(io.BytesIO(os.urandom(6 * 1024 * 1024)))
    assert (await nc.jetstream().stream_info("OBJ_CIM_CONTENT")).state.messages == 0


async def test_bad_metadata_is_refused_before_anything_is_stored(units, nc):
    from cim.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        await units.put_bytes(b"x", media_type="not a type")
    assert err.value.field == "media_type"
    assert (await nc.jetstream().stream_info("OBJ_CIM_CONTENT")).state.messages == 0


async def test_wrong_and_unknown_cids(units):
    with pytest.raises(InvalidCid):
        await units.show("bafy-not-a-cid")
    with pytest.raises(InvalidCid):
        await read_all(units, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")
    missing = str(CID("base32", 1, "raw", multihash.digest(b"never stored", "sha2-256")))
    with pytest.raises(UnitNotFound, match="cim units ls"):
        await units.show(missing)
    with pytest.raises(UnitNotFound):
        await read_all(units, missing)


async def test_a_revision_names_its_parent_and_the_parent_lists_it(units):
    parent = (await units.put_bytes(b"v1", title="doc")).unit
    child = (await units.revise(parent.cid, b"v2", title="doc, revised")).unit
    assert child.parents == (parent.cid,)
    assert (await units.show(parent.cid)).children == [child.cid]
    assert (await units.show(parent.cid)).unit.title == "doc"  # the parent is untouched


async def test_a_revision_from_a_file_streams_it_and_refuses_a_missing_one(units, tmp_path):
    parent = (await units.put_bytes(b"v1", title="doc")).unit
    data = os.urandom(300_000)  # three chunks
    path = tmp_path / "v2.bin"
    path.write_bytes(data)
    child = (await units.revise(parent.cid, path)).unit
    assert child.cid == str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))
    assert child.parents == (parent.cid,) and await read_all(units, child.cid) == data
    with pytest.raises(InvalidInput, match="does not exist"):
        await units.revise(parent.cid, tmp_path / "nope.bin")


async def test_a_revision_of_an_unknown_unit_is_refused(units):
    ghost = str(CID("base32", 1, "raw", multihash.digest(b"ghost", "sha2-256")))
    with pytest.raises(UnitNotFound):
        await units.put_bytes(b"child", parents=[ghost])


async def test_list_filters_by_label(units):
    a = (await units.put_bytes(b"a", labels=["red"])).unit.cid
    await units.put_bytes(b"b", labels=["blue"])
    assert [u.cid async for u in units.list(label="red")] == [a]




async def test_a_batched_read_returns_verified_small_contents_and_leaves_out_the_rest(units, nc):
    """`read_small` (the pipeline's batched reads) answers for hot one-chunk contents only,
    and never with bytes that do not match their CID; the rest is for the single read."""
    small = [os.urandom(100 + i) for i in range(40)]
    cids = [(await units.put_bytes(d)).unit.cid for d in small]
    big = (await units.put_bytes(os.urandom(300_000))).unit.cid  # three chunks
    tampered_data = os.urandom(500)
    tampered = (await units.put_bytes(tampered_data)).unit.cid
    loc = await ContentStore(nc).locate(tampered)
    js = nc.jetstream()
    await js.purge_stream("OBJ_CIM_CONTENT", subject=f"$O.CIM_CONTENT.C.{loc.nuid}")
    await js.publish(f"$O.CIM_CONTENT.C.{loc.nuid}", tampered_data[::-1])
    absent = str(CID("base32", 1, "raw", multihash.digest(b"never stored", "sha2-256")))

    found = await ContentStore(nc).read_small([*cids, big, tampered, absent])

    assert found == dict(zip(cids, small, strict=True))
    with pytest.raises(CidMismatch):
        await read_all(units, tampered)  # the single read says what is wrong
