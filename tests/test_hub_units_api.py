"""GET /v1/units/{cid}/content and GET /v1/units on the hub (issue 17 item 7): a real hub
process, real NATS, a real pipeline agent for the listing, a real tier agent and S3 for a
unit in a colder tier. What a client checks: the bytes, the headers, the pages, and what a
token must not see."""

from __future__ import annotations

import base64
import json
import os

import nats
import pytest
from multidict import CIMultiDict

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

from cim import cid as cidlib  # noqa: E402
from cim.names import TIER_ACCESS_BUCKET  # noqa: E402
from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from cim.store.content import CHUNK_SIZE, ContentStore  # noqa: E402
from cim.store.unit_store import UnitStore  # noqa: E402
from cim.tier.fetch import CHUNK as FETCH_CHUNK  # noqa: E402
from cim.tier.fetch import WINDOW as FETCH_WINDOW  # noqa: E402
from cim.tier.fetch import fetch  # noqa: E402
from support.hub_support import LIMITED, READ_ONLY, TEAM, TOKEN, WRITE_ONLY, Hub  # noqa: E402
from support.tierkit import TierAgent, s3_tier  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

BIG = 5 * 1024 * 1024 + 12_345  # past 4 MiB: streamed chunk by chunk, not read whole first


def auth(token: str = TOKEN, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


async def download(url: str, cid: str, token: str = TOKEN, **headers: str) -> tuple[int, bytes, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/units/{cid}/content", headers=auth(token, **headers)) as r:
        return r.status, await r.read(), r.headers.copy()  # case-insensitive


async def listing(url: str, params: list[tuple[str, str]], token: str = TOKEN) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/units", params=params, headers=auth(token)) as r:
        return r.status, await r.json()


async def every_page(url: str, params: list[tuple[str, str]], token: str = TOKEN,
                     cursor: str | None = None) -> list[list[str]]:
    """The CIDs of each page, following `next` to the end."""
    pages: list[list[str]] = []
    while True:
        status, body = await listing(url, params + ([("cursor", cursor)] if cursor else []), token)
        assert status == 200, body
        pages.append([u["cid"] for u in body["units"]])
        cursor = body["next"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor does not move on"


async def every_unit(url: str, params: list[tuple[str, str]], token: str = TOKEN, cursor: str | None = None) -> list[str]:
    return [cid for page in await every_page(url, params, token, cursor) for cid in page]


@pytest.fixture
async def hub(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    h = Hub(nats_server.url, tmp_path).start()
    try:
        yield h
    finally:
        h.stop()
    assert "Traceback" not in h.log()


@pytest.fixture
async def indexed_hub(nats_server, nc, tmp_path, agent_process):
    """A hub with a pipeline agent beside it, which answers the listing."""
    await provision(nc, ProvisionSpec())
    await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}, "state_dir": str(tmp_path / "state")}).ready(nc)
    h = Hub(nats_server.url, tmp_path).start()
    try:
        yield h
    finally:
        h.stop()
    assert "Traceback" not in h.log()


async def corrupt(nc, cid: str, chunk: int) -> None:
    """Flip a byte of one stored chunk, as a disk fault or a writer with bucket access would."""
    loc = await ContentStore(nc).locate(cid)
    js = nc.jetstream()
    subject = f"$O.CIM_CONTENT.C.{loc.nuid}"
    chunks = []
    seq = 0
    for _ in range(loc.chunks):
        msg = await js.get_msg("OBJ_CIM_CONTENT", seq=seq + 1, subject=subject, next=True)
        chunks.append(bytearray(msg.data))
        seq = msg.seq
    chunks[chunk][len(chunks[chunk]) // 2] ^= 0xFF
    await js.purge_stream("OBJ_CIM_CONTENT", subject=subject)
    for data in chunks:
        await js.publish(subject, bytes(data))


# --- content ---------------------------------------------------------------------------

async def test_a_download_is_the_bytes_that_were_put_with_the_cid_as_etag(hub, nc):
    units = UnitStore(nc)
    text = (await units.put_bytes(b"hello, downloads", media_type="text/markdown", title="hi.md")).unit.cid
    empty = (await units.put_bytes(b"")).unit.cid
    big_data = os.urandom(BIG)
    big = (await units.put_bytes(big_data)).unit.cid

    status, body, headers = await download(hub.url, text)
    assert (status, body) == (200, b"hello, downloads")
    assert headers["Content-Type"] == "text/markdown" and headers["Content-Length"] == "16"
    assert headers["ETag"] == f'"{text}"' and headers["Accept-Ranges"] == "bytes"
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, body, headers = await download(hub.url, empty)
    assert (status, body, headers["Content-Length"]) == (200, b"", "0")
    status, body, headers = await download(hub.url, big)
    assert status == 200 and headers["Content-Length"] == str(BIG) and body == big_data
    assert cidlib.compute(body) == big

    async with aiohttp.ClientSession() as s, s.head(f"{hub.url}/v1/units/{big}/content", headers=auth()) as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(BIG) and await r.read() == b""


async def test_byte_ranges_answer_206_and_a_range_outside_answers_416(hub, nc):
    data = os.urandom(300_000)  # three chunks of 128 KiB
    cid = (await UnitStore(nc).put_bytes(data)).unit.cid
    big_data = os.urandom(BIG)
    big = (await UnitStore(nc).put_bytes(big_data)).unit.cid
    for unit, content in ((cid, data), (big, big_data)):
        size = len(content)
        for header, (start, end) in {
            "bytes=0-0": (0, 1),  # the first byte
            "bytes=-10": (size - 10, size),  # the last ten
            "bytes=1000-1999": (1000, 2000),  # the middle
            f"bytes={CHUNK_SIZE - 5}-{2 * CHUNK_SIZE + 5}": (CHUNK_SIZE - 5, 2 * CHUNK_SIZE + 6),  # across two chunk ends
            f"bytes={size - 7}-": (size - 7, size),  # from a position to the end
            f"bytes=10-{size + 1000}": (10, size),  # past the end: up to the end
            "bytes=-99999999999999999999999": (0, size),  # a suffix longer than the unit: all of it
        }.items():
            status, body, headers = await download(hub.url, unit, Range=header)
            assert status == 206, (header, status)
            assert body == content[start:end], header
            assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}", header
            assert headers["Content-Length"] == str(end - start)
        for unsatisfiable in (f"bytes={size}-", "bytes=-0", "bytes=9-3", "bytes=99999999999999999999999-"):
            status, body, headers = await download(hub.url, unit, Range=unsatisfiable)
            assert status == 416, unsatisfiable
            assert headers["Content-Range"] == f"bytes */{size}"
            assert body.startswith(b'{"errors"')
    # Several ranges, another unit, or an If-Range that is not this unit: the whole content.
    for headers in ({"Range": "bytes=0-1,5-6"}, {"Range": "lines=1-2"}, {"Range": "bytes=0-1", "If-Range": '"other"'}):
        status, body, _ = await download(hub.url, cid, **headers)
        assert (status, body) == (200, data), headers
    status, body, _ = await download(hub.url, cid, Range="bytes=0-1", **{"If-Range": f'"{cid}"'})
    assert (status, body) == (206, data[:2])
    # An empty unit has no byte to range over.
    empty = (await UnitStore(nc).put_bytes(b"")).unit.cid
    assert (await download(hub.url, empty, Range="bytes=0-"))[0] == 416


async def test_if_none_match_with_the_cid_answers_304_without_the_bytes(hub, nc):
    cid = (await UnitStore(nc).put_bytes(b"cached by the client")).unit.cid
    for tag in (f'"{cid}"', f'W/"{cid}"', f'"other", "{cid}"', "*"):
        status, body, headers = await download(hub.url, cid, **{"If-None-Match": tag})
        assert (status, body) == (304, b""), tag
        assert headers["ETag"] == f'"{cid}"'
    assert (await download(hub.url, cid, **{"If-None-Match": '"other"'}))[:2] == (200, b"cached by the client")


async def test_a_malformed_cid_is_400_and_an_unknown_one_404_in_the_api_error_shape(hub):
    status, body, _ = await download(hub.url, "not-a-cid")
    assert status == 400 and (json.loads(body))["errors"][0]["field"] == "cid"
    unknown = cidlib.compute(b"never stored")
    status, body, _ = await download(hub.url, unknown)
    assert status == 404 and unknown in (json.loads(body))["errors"][0]["message"]


@pytest.mark.parametrize("ranged", [False, True])
async def test_a_corrupted_chunk_cuts_the_download_off_before_it_is_complete(hub, nc, ranged):
    data = os.urandom(BIG)
    cid = (await UnitStore(nc).put_bytes(data)).unit.cid
    await corrupt(nc, cid, chunk=20)  # in the middle: the chunks before it have gone out
    # A range ending long before the bad chunk is not sent complete either: the CID covers all.
    headers = auth(Range="bytes=0-99") if ranged else auth()
    received = bytearray()
    async with aiohttp.ClientSession() as s, s.get(f"{hub.url}/v1/units/{cid}/content", headers=headers) as r:
        assert r.status == (206 if ranged else 200)
        expected = int(r.headers["Content-Length"])
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in r.content.iter_any():
                received += piece
    # Cut off short of what was announced (the bad chunk itself may have gone out: the CID
    # is known to fail only at the end), so no client takes it for the unit.
    assert len(received) < expected
    # The hub goes on serving.
    good = (await UnitStore(nc).put_bytes(b"still serving")).unit.cid
    assert (await download(hub.url, good))[:2] == (200, b"still serving")
    assert f"unit {cid}: download cut off" in hub.log()


async def test_a_corrupted_small_unit_is_refused_before_any_byte_is_sent(hub, nc):
    data = os.urandom(300_000)  # up to 4 MiB the store checks the bytes before giving one
    cid = (await UnitStore(nc).put_bytes(data)).unit.cid
    await corrupt(nc, cid, chunk=1)
    status, body, _ = await download(hub.url, cid)
    assert status == 503
    assert "does not match its CID" in (json.loads(body))["errors"][0]["message"]


async def test_a_unit_in_a_colder_tier_downloads_through_the_tier_agent(nats_server, nc, s3_server, tmp_path, cli):
    await provision(nc, ProvisionSpec())
    agent = TierAgent(tmp_path, nats_server.url, {
        "tiers": [s3_tier(s3_server, "warm", tmp_path)], "policies": [{"name": "cold", "to": "warm", "labels": ["cold"]}],
        "migrate_interval": 3600,
    })
    hub = Hub(nats_server.url, tmp_path)
    try:
        data = os.urandom(BIG)
        cid = (await UnitStore(nc, cold=fetch).put_bytes(data, labels=["cold"])).unit.cid
        agent.start()
        await agent.ready(nc)
        cli("tier", "migrate")
        assert not await ContentStore(nc).has(cid)  # no hot copy left
        hub.start()
        status, body, _ = await download(hub.url, cid)
        assert status == 200 and body == data
        status, body, headers = await download(hub.url, cid, Range=f"bytes={BIG - 100}-")
        assert status == 206 and body == data[-100:] and headers["Content-Range"] == f"bytes {BIG - 100}-{BIG - 1}/{BIG}"
    finally:
        hub.stop()
        agent.stop()


async def test_the_hub_lists_and_downloads_hot_and_cold_units_under_its_own_nats_user(secured_nats, s3_server, tmp_path,
                                                                                       agent_process, cli):
    """With the permissions capabilities.json gives each agent (as on NixOS and under `cim
    up`): the listing asks the pipeline agent, a cold read asks the tier agent and
    acknowledges its chunks, and nothing is a permissions violation."""
    server, seeds = secured_nats("hub", "pipeline", "tier")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    tier = TierAgent(tmp_path, server.url, {
        "tiers": [s3_tier(s3_server, "warm", tmp_path)], "policies": [{"name": "cold", "to": "warm", "labels": ["cold"]}],
        "migrate_interval": 3600,
    }, nkey=seeds["tier"])
    hub = Hub(server.url, tmp_path, nkey=seeds["hub"])
    try:
        await provision(admin, ProvisionSpec())
        store = UnitStore(admin, cold=fetch)
        hot_data = os.urandom(BIG)
        hot = (await store.put_bytes(hot_data)).unit.cid
        # Past what the tier agent sends before it waits for the reader's acknowledgement.
        cold_data = os.urandom(FETCH_WINDOW * FETCH_CHUNK + 3 * 1024 * 1024)
        cold = (await store.put_bytes(cold_data, labels=["cold"])).unit.cid
        tier.start()
        await tier.ready(admin)
        cli("tier", "migrate", env={"CIM_NKEY": str(seeds["admin"])}, server=server.url)
        assert not await ContentStore(admin).has(cold)
        pipeline = agent_process("pipeline", {"nats": {"servers": [server.url], "nkey_seed_file": str(seeds["pipeline"])},
                                              "state_dir": str(tmp_path / "state")})
        await pipeline.ready(admin)
        hub.start()
        await _all_listed(hub.url, 2)
        assert await every_unit(hub.url, [("limit", "1")]) == [cold, hot]
        assert (await download(hub.url, hot))[:2] == (200, hot_data)
        status, body, _ = await download(hub.url, cold)
        assert status == 200 and body == cold_data
        # A download is a read for the tier's `idle` policies: the tier agent records it.
        access = await admin.jetstream().key_value(TIER_ACCESS_BUCKET)

        async def recorded() -> bool:
            try:
                return bool(await access.get(hot))
            except nats.js.errors.KeyNotFoundError:
                return False

        await async_wait_until(recorded, 30, what="the tier agent to record the hub's download")
    finally:
        hub.stop()
        tier.stop()
        await admin.close()
    for name, text in (("hub", hub.log()), ("tier", tier.log.read_text()), ("pipeline", pipeline.log())):
        assert "permissions violation" not in text.lower(), f"{name}:\n{text[-3000:]}"


# --- scopes ----------------------------------------------------------------------------

async def test_a_token_downloads_and_lists_only_what_it_may_read(indexed_hub, nc):
    units = UnitStore(nc)
    theirs = (await units.put_bytes(b"a quarterly report", source="reports", labels=["report", "q3"])).unit.cid
    secret = (await units.put_bytes(b"a report with a secret label", source="reports", labels=["report", "secret"])).unit.cid
    elsewhere = (await units.put_bytes(b"from elsewhere", source="elsewhere", labels=["report"])).unit.cid
    team = (await units.put_bytes(b"the team's", source="team/alpha")).unit.cid
    await _all_listed(indexed_hub.url, 4)

    # Write-only: neither the bytes nor the list.
    status, body, _ = await download(indexed_hub.url, theirs, WRITE_ONLY)
    assert status == 403 and "read" in (json.loads(body))["errors"][0]["message"]
    assert (await listing(indexed_hub.url, [], WRITE_ONLY))[0] == 403
    # A read-only token reads.
    assert (await download(indexed_hub.url, theirs, READ_ONLY))[:2] == (200, b"a quarterly report")

    # A token limited to some sources and labels: a unit outside them is 404 exactly as an
    # unknown one is, so it cannot learn that the unit exists.
    assert (await download(indexed_hub.url, theirs, LIMITED))[:2] == (200, b"a quarterly report")
    unknown = cidlib.compute(b"never stored")
    _, unknown_body, _ = await download(indexed_hub.url, unknown, LIMITED)
    for outside in (secret, elsewhere):
        status, body, _ = await download(indexed_hub.url, outside, LIMITED)
        assert status == 404
        assert (json.loads(body)) == (json.loads(unknown_body.replace(unknown.encode(), outside.encode())))
        # Not even by a conditional request or a range.
        assert (await download(indexed_hub.url, outside, LIMITED, **{"If-None-Match": f'"{outside}"'}))[0] == 404
        assert (await download(indexed_hub.url, outside, LIMITED, Range="bytes=0-0"))[0] == 404
    # The list keeps to the same rule, page after page.
    assert await every_unit(indexed_hub.url, [("limit", "1")], LIMITED) == [theirs]
    assert await every_unit(indexed_hub.url, [], TEAM) == [team]
    assert await every_unit(indexed_hub.url, [("source", "elsewhere")], TEAM) == []


async def _all_listed(url: str, n: int) -> None:
    async def listed() -> bool:
        status, body = await listing(url, [("limit", "100")])
        return status == 200 and len(body["units"]) == n

    await async_wait_until(listed, 60, what=f"the pipeline to index {n} units")


# --- listing ---------------------------------------------------------------------------

async def test_pages_list_every_unit_once_newest_first_with_label_and_source_filters(indexed_hub, nc):
    units = UnitStore(nc)
    put = []
    for i in range(23):
        labels = ["even"] if i % 2 == 0 else ["odd"]
        if i % 3 == 0:
            labels.append("third")
        source = "team/a" if i < 10 else "team/b"
        put.append((await units.put_bytes(f"unit {i}".encode(), labels=labels, source=source, title=f"u{i}")).unit)
    await _all_listed(indexed_hub.url, 23)
    newest_first = [u.cid for u in reversed(put)]

    pages = await every_page(indexed_hub.url, [("limit", "5")])
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [cid for page in pages for cid in page] == newest_first  # each once, in order

    status, body = await listing(indexed_hub.url, [("limit", "1")])
    assert status == 200
    [first] = body["units"]
    assert first == {"cid": put[-1].cid, "size": put[-1].size, "media_type": "application/octet-stream", "title": "u22",
                     "labels": ["even"], "source": "team/b", "created_at": put[-1].created_at.isoformat()}
    assert body["stale"] is False and body["as_of"] > 0

    def where(pred) -> list[str]:
        return [u.cid for u in reversed(put) if pred(u)]

    assert await every_unit(indexed_hub.url, [("label", "even"), ("limit", "4")]) == where(lambda u: "even" in u.labels)
    assert await every_unit(indexed_hub.url, [("label", "even"), ("label", "third")]) == \
        where(lambda u: {"even", "third"} <= set(u.labels))
    assert await every_unit(indexed_hub.url, [("source", "team/a"), ("limit", "3")]) == \
        where(lambda u: u.source == "team/a")
    assert await every_unit(indexed_hub.url, [("source", "team/*"), ("limit", "50")]) == newest_first
    assert await every_unit(indexed_hub.url, [("label", "nowhere")]) == []

    # A unit stored while a client pages goes to the front: the pages after it neither
    # repeat a unit nor skip one.
    _, body = await listing(indexed_hub.url, [("limit", "10")])
    seen = [u["cid"] for u in body["units"]]
    newer = (await units.put_bytes(b"stored while paging")).unit.cid
    await _all_listed(indexed_hub.url, 24)
    seen += await every_unit(indexed_hub.url, [("limit", "10")], cursor=body["next"])
    assert seen == newest_first and newer not in seen


@pytest.mark.parametrize("cursor", [
    "garbage!", "x" * 300, "", base64.urlsafe_b64encode(b"12:not-a-cid").decode(),
    base64.urlsafe_b64encode(b"99999999999999999999:" + cidlib.compute(b"x").encode()).decode(),
    base64.urlsafe_b64encode(b"-1:" + cidlib.compute(b"x").encode()).decode(), "AAAA", "\u00e9t\u00e9",
])
async def test_a_cursor_the_api_did_not_give_out_is_400_naming_it(hub, cursor):
    # No pipeline agent runs: a bad cursor is refused before one is asked.
    status, body = await listing(hub.url, [("cursor", cursor)])
    assert status == 400, body
    assert body["errors"][0]["field"] == "cursor" and "without cursor" in body["errors"][0]["message"]


async def test_listing_parameters_are_checked_and_named(hub):
    for params, field in (([("limit", "0")], "limit"), ([("limit", "101")], "limit"), ([("limit", "ten")], "limit"),
                          ([("limit", "9" * 5000)], "limit"), ([("sort", "size")], "sort"),
                          ([("source", "a"), ("source", "b")], "source"), ([("label", "x" * 201)], "label.0")):
        status, body = await listing(hub.url, params)
        assert status == 400 and body["errors"][0]["field"] == field, (params, body)
    # Valid, but nothing answers the listing here: 503 that says what is missing.
    status, body = await listing(hub.url, [])
    assert status == 503 and "pipeline agent" in body["errors"][0]["message"]
