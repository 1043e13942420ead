"""The S3 import connector against a real S3 server (weed mini): incremental, no duplicates."""

import pytest

pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.hub_support import Hub
from support.waiting import async_wait_until


async def test_a_periodic_import_takes_new_and_changed_objects_once_each(nats_server, nc, s3_server, tmp_path):
    await provision(nc, ProvisionSpec())
    s3 = s3_server.boto3_client()
    s3.create_bucket(Bucket="incoming")
    for i in range(3):
        s3.put_object(Bucket="incoming", Key=f"reports/r{i}.txt", Body=f"report {i}".encode())
    s3.put_object(Bucket="incoming", Key="elsewhere/skip.txt", Body=b"outside the prefix")
    (tmp_path / "ak").write_text(s3_server.access_key)
    (tmp_path / "sk").write_text(s3_server.secret_key)
    settings = {"bucket": "incoming", "prefix": "reports/", "endpoint_url": s3_server.endpoint_url, "interval": 0.3,
                "access_key_id_file": str(tmp_path / "ak"), "secret_access_key_file": str(tmp_path / "sk"), "labels": ["s3"]}
    hub = Hub(nats_server.url, tmp_path, connectors=[{"plugin": "s3-import", "name": "reports", "settings": settings}])
    units = UnitStore(nc)

    async def imported() -> list:
        return [u async for u in units.list(label="s3")]

    try:
        hub.start()
        await async_wait_until(lambda: _count(imported, 3), 60, what="three objects imported")
        s3.put_object(Bucket="incoming", Key="reports/r1.txt", Body=b"report 1, corrected")  # changed
        s3.put_object(Bucket="incoming", Key="reports/r3.txt", Body=b"report 3")  # new
        await async_wait_until(lambda: _count(imported, 5), 60, what="the changed and the new object")
        hub.stop()
        hub.start()  # its progress is in KV: a restart imports nothing again
        await async_wait_until(lambda: "new objects" in hub.log().rsplit("ready", 1)[-1], 30, what="a listing after the restart")
        found = await imported()
        assert len(found) == 5
        assert sorted(u.source for u in found) == sorted(
            ["s3://incoming/reports/r0.txt", "s3://incoming/reports/r1.txt", "s3://incoming/reports/r1.txt",
             "s3://incoming/reports/r2.txt", "s3://incoming/reports/r3.txt"])
    finally:
        hub.stop()


async def _count(fn, n: int) -> bool:
    return len(await fn()) >= n


def test_an_object_overwritten_after_it_was_listed_is_not_taken_as_the_listed_one(s3_server, tmp_path):
    """The import lists, then reads each object: one overwritten in between was read whole as
    its new version and recorded under the old ETag (or, read in parts, as a mix of both). It
    reads the object only as listed, and leaves a changed one to the next listing."""
    import logging

    from cim.hub.s3_import import S3Import, S3ImportSettings

    s3 = s3_server.boto3_client()
    s3.create_bucket(Bucket="racing")
    listed = s3.put_object(Bucket="racing", Key="report.txt", Body=b"as listed")["ETag"].strip('"')
    (tmp_path / "ak").write_text(s3_server.access_key)
    (tmp_path / "sk").write_text(s3_server.secret_key)
    settings = S3ImportSettings(bucket="racing", endpoint_url=s3_server.endpoint_url,
                                access_key_id_file=tmp_path / "ak", secret_access_key_file=tmp_path / "sk")
    connector = S3Import(settings, ctx=type("Ctx", (), {"name": "racing", "log": logging.getLogger("test")})())
    assert connector._download("report.txt", listed, tmp_path / "first")
    assert (tmp_path / "first").read_bytes() == b"as listed"
    s3.put_object(Bucket="racing", Key="report.txt", Body=b"overwritten meanwhile")
    assert not connector._download("report.txt", listed, tmp_path / "second")
    assert not (tmp_path / "second").exists()


async def test_an_object_whose_unit_was_expired_is_passed_over_and_the_next_ones_taken(nats_server, nc, s3_server,
                                                                                     tmp_path):
    """The bytes of a unit a retention policy expired are refused: the import records that and
    goes on (it stopped there, and every object listed after it was never imported)."""
    from cim.events import Event
    from cim.store.content import ContentStore
    from cim.tier.events import UnitExpired

    await provision(nc, ProvisionSpec())
    units = UnitStore(nc)
    cid = (await units.put_bytes(b"kept for 30 days")).unit.cid
    await units.events.append(Event.of(UnitExpired(policy="30-days", reason="older than 30 days"), cid, agent="cim-tier"))
    await ContentStore(nc).delete(cid)
    s3 = s3_server.boto3_client()
    s3.create_bucket(Bucket="expiring")
    s3.put_object(Bucket="expiring", Key="a-expired.txt", Body=b"kept for 30 days")  # listed first
    s3.put_object(Bucket="expiring", Key="b-fresh.txt", Body=b"a new report")
    (tmp_path / "ak").write_text(s3_server.access_key)
    (tmp_path / "sk").write_text(s3_server.secret_key)
    settings = {"bucket": "expiring", "endpoint_url": s3_server.endpoint_url, "interval": 0.3, "labels": ["s3"],
                "access_key_id_file": str(tmp_path / "ak"), "secret_access_key_file": str(tmp_path / "sk")}
    hub = Hub(nats_server.url, tmp_path, connectors=[{"plugin": "s3-import", "name": "exp", "settings": settings}])

    async def imported() -> list:
        return [u async for u in units.list(label="s3")]

    try:
        hub.start()
        await async_wait_until(lambda: _count(imported, 1), 60, what="the fresh object imported")
        assert [u.source for u in await imported()] == ["s3://expiring/b-fresh.txt"]
    finally:
        hub.stop()
