"""GET /v1/units/{cid}/content and GET /v1/units on the hub (issue 17 item 7): a real hub
process, real NATS, a real pipeline agent for the listing, a real tier agent and S3 for a
unit in a colder tier. What a client checks: the bytes, the headers, the pages, and what a
token must not see."""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import sqlite3
from collections.abc import AsyncIterator

import nats
import pytest
from multidict import CIMultiDict

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

from cim import cid as cidlib  # noqa: E402
from cim.errors import Busy, ProjectionUnavailable  # noqa: E402
from cim.events import Event, EventStore  # noqa: E402
from cim.hub import unit_pages  # noqa: E402
from cim.hub.http_api import HubApi  # noqa: E402
from cim.hub.tokens import Token, Tokens  # noqa: E402
from cim.names import TIER_ACCESS_BUCKET  # noqa: E402
from cim.nats.rpc import call  # noqa: E402
from cim.pipeline import search  # noqa: E402
from cim.pipeline.api import UNITS, UnitsRequest  # noqa: E402
from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from cim.store.content import CHUNK_SIZE, ContentStore  # noqa: E402
from cim.store.unit_store import UnitStore  # noqa: E402
from cim.tier.events import UnitExpired, UnitLocated  # noqa: E402
from cim.tier.fetch import CHUNK as FETCH_CHUNK  # noqa: E402
from cim.tier.fetch import WINDOW as FETCH_WINDOW  # noqa: E402
from cim.tier.fetch import fetch  # noqa: E402
from support.hub_support import LIMITED, READ_ONLY, TEAM, TOKEN, WRITE_ONLY, Hub, write_tokens  # noqa: E402
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


async def started_hub(nats_server, tmp_path) -> AsyncIterator[Hub]:
    """The hub of one test, started once what it needs runs: stopped after the test, and its
    log must hold no traceback."""
    h = Hub(nats_server.url, tmp_path).start()
    try:
        yield h
    finally:
        h.stop()
    assert "Traceback" not in h.log()


@pytest.fixture
async def hub(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    async for h in started_hub(nats_server, tmp_path):
        yield h


@pytest.fixture
async def indexed_hub(nats_server, nc, tmp_path, agent_process):
    """A hub with a pipeline agent beside it, which answers the listing."""
    await provision(nc, ProvisionSpec())
    await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}, "state_dir": str(tmp_path / "state")}).ready(nc)
    async for h in started_hub(nats_server, tmp_path):
        yield h


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
        for unsatisfiable in (f"bytes={size}-", "bytes=-0", "bytes=99999999999999999999999-"):
            status, body, headers = await download(hub.url, unit, Range=unsatisfiable)
            assert status == 416, unsatisfiable
            assert headers["Content-Range"] == f"bytes */{size}"
            assert body.startswith(b'{"errors"')
    # Several ranges, another unit, an invalid range (the last byte before the first: RFC 9110
    # 14.1.1 makes it invalid, not unsatisfiable), or an If-Range that is not this unit: the
    # whole content, as RFC 9110 14.2 lets a server ignore what it does not take.
    for headers in ({"Range": "bytes=0-1,5-6"}, {"Range": "lines=1-2"}, {"Range": "bytes=9-3"},
                    {"Range": "bytes=0-1", "If-Range": '"other"'}):
        status, body, _ = await download(hub.url, cid, **headers)
        assert (status, body) == (200, data), headers
    status, body, _ = await download(hub.url, cid, Range="bytes=0-1", **{"If-Range": f'"{cid}"'})
    assert (status, body) == (206, data[:2])
    # The range unit is case-insensitive (RFC 9110 14.1).
    for unit_name in ("Bytes", "BYTES"):
        status, body, headers = await download(hub.url, cid, Range=f"{unit_name}=0-1")
        assert (status, body, headers["Content-Range"]) == (206, data[:2], f"bytes 0-1/{len(data)}"), unit_name
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
    # One cold read at a time (each holds one of the tier agent's fetch slots).
    hub = Hub(nats_server.url, tmp_path, max_cold_downloads=1, idle_timeout=2)
    try:
        store = UnitStore(nc, cold=fetch)
        data = os.urandom(BIG)
        cid = (await store.put_bytes(data, labels=["cold"])).unit.cid
        huge = (await store.put_bytes(os.urandom(16 * 1024 * 1024), labels=["cold"])).unit.cid
        other = (await store.put_bytes(b"another cold one", labels=["cold"])).unit.cid
        hot = (await store.put_bytes(b"a hot one")).unit.cid
        agent.start()
        await agent.ready(nc)
        cli("tier", "migrate")
        assert not await ContentStore(nc).has(cid)  # no hot copy left
        hub.start()
        status, body, _ = await download(hub.url, cid)
        assert status == 200 and body == data
        status, body, headers = await download(hub.url, cid, Range=f"bytes={BIG - 100}-")
        assert status == 206 and body == data[-100:] and headers["Content-Range"] == f"bytes {BIG - 100}-{BIG - 1}/{BIG}"

        # A client that reads nothing holds the one cold place: another cold read (a range
        # too: it reads the whole unit) is 503 with Retry-After, a hot one is served.
        stalled, head = stalled_download(hub.url, huge)
        assert head.startswith(b"HTTP/1.1 200")
        for ranged in ({}, {"Range": "bytes=-1"}):
            status, body, headers = await download(hub.url, other, **ranged)
            assert status == 503 and int(headers["Retry-After"]) > 0, ranged
            assert "max_cold_downloads" in json.loads(body)["errors"][0]["message"]
        assert (await download(hub.url, hot))[:2] == (200, b"a hot one")

        async def served() -> bool:
            return (await download(hub.url, other))[:2] == (200, b"another cold one")

        await async_wait_until(served, 60, what="the stalled cold download to be cut off")
        assert drained(stalled) < 16 * 1024 * 1024
    finally:
        hub.stop()
        agent.stop()


async def test_the_hub_lists_and_downloads_hot_and_cold_units_under_its_own_nats_user(secured_nats, s3_server, tmp_path,
                                                                                       agent_process, cli):
    """With the permissions capabilities.json gives each agent (as on NixOS and under `cim
    up`): the listing asks the pipeline agent, a cold read asks the tier agent and
    acknowledges its chunks, and nothing is a permissions violation. The tier agent has a name
    of the operator's: what finds it must not depend on its name."""
    server, seeds = secured_nats("hub", "pipeline", "tier")
    admin = await nats.connect(server.url, nkeys_seed=str(seeds["admin"]))
    tier = TierAgent(tmp_path, server.url, {
        "name": "archive-tier", "tiers": [s3_tier(s3_server, "warm", tmp_path)],
        "policies": [{"name": "cold", "to": "warm", "labels": ["cold"]}],
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
        async with aiohttp.ClientSession() as s, s.head(f"{hub.url}/v1/units/{cold}/content", headers=auth()) as r:
            assert r.status == 200  # HEAD finds the tier agent as GET does
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


# --- review fixes: what a token learns from the listing, downloads under load, HEAD --------

def stalled_download(url: str, cid: str, token: str = TOKEN) -> tuple[socket.socket, bytes]:
    """A GET of a unit's content by a client that reads the answer's head and then nothing
    (a small receive window, so the hub's writes soon wait for it)."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/units/{cid}/content HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1)  # byte by byte: nothing of the body is taken
        assert piece, head
        head += piece
    return sock, head


def drained(sock: socket.socket) -> int:
    """Read what is left until the hub ends the connection; the bytes read."""
    total = 0
    try:
        while piece := sock.recv(1 << 16):
            total += len(piece)
    except ConnectionResetError:  # cut off with bytes unsent: a reset
        pass
    finally:
        sock.close()
    return total


async def test_a_token_limited_by_labels_learns_no_hidden_unit_from_the_listing_or_its_cursors(indexed_hub, nc,
                                                                                              tmp_path):
    units = UnitStore(nc)
    theirs = (await units.put_bytes(b"a report it may read", source="reports", labels=["report"])).unit.cid
    # Newer than its unit, so a listing from the front meets them first.
    hidden = [(await units.put_bytes(f"secret {i}".encode(), source="reports", labels=["report", "secret"])).unit.cid
              for i in range(8)]
    await _all_listed(indexed_hub.url, 9)
    tokens = Tokens(tmp_path / "tokens.json")
    token = tokens.lookup(LIMITED)
    assert token is not None

    async def pages_of(params: list[tuple[str, str]]) -> list[str]:
        """Every page's text, following `next` to the end (it may come on an empty page: the
        hub leaves out, by their labels, rows the index gave it); no cursor names or carries
        a hidden unit, and each opens to a position only."""
        texts, cursor = [], None
        while True:
            async with aiohttp.ClientSession() as s, s.get(
                    f"{indexed_hub.url}/v1/units", params=params + ([("cursor", cursor)] if cursor else []),
                    headers=auth(LIMITED)) as r:
                assert r.status == 200
                texts.append(await r.text())
            cursor = json.loads(texts[-1])["next"]
            if cursor is None:
                return texts
            opened = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            assert not any(cid.encode() in opened or cid in cursor for cid in hidden)
            labels = sorted({value for key, value in params if key == "label"})
            position, _ = unit_pages.decode(tokens.cursor_key, unit_pages.binding(token.digest, labels, ""), cursor)
            assert isinstance(position, int)
            assert len(texts) < 50, "the cursor does not move on"

    # Asking for a label it may not see: nothing, page after page, and no hidden CID anywhere.
    texts = await pages_of([("label", "secret"), ("limit", "1")])
    assert all(json.loads(t)["units"] == [] for t in texts)
    assert not any(cid in t for t in texts for cid in hidden)

    # Page by page from the front: its one unit, and neither the pages nor the cursors name or
    # carry a hidden unit (a cursor is sealed: base64 of nothing readable).
    texts = await pages_of([("limit", "1")])
    assert [u["cid"] for t in texts for u in json.loads(t)["units"]] == [theirs]
    assert not any(cid in t for t in texts for cid in hidden)

    # A cursor it makes itself (the old shape: base64 of seq:cid) is refused, also one naming
    # a unit it may see.
    for cid in (theirs, hidden[0]):
        crafted = base64.urlsafe_b64encode(f"5:{cid}".encode()).decode()
        status, body = await listing(indexed_hub.url, [("cursor", crafted)], LIMITED)
        assert status == 400 and body["errors"][0]["field"] == "cursor", body
    # Another token's cursor, or this token's with other filters: 400, not a page.
    _, first = await listing(indexed_hub.url, [("limit", "1")], TOKEN)
    assert first["next"]
    status, body = await listing(indexed_hub.url, [("limit", "1"), ("cursor", first["next"])], LIMITED)
    assert status == 400 and body["errors"][0]["field"] == "cursor"
    status, body = await listing(indexed_hub.url, [("label", "report"), ("cursor", first["next"])], TOKEN)
    assert status == 400 and body["errors"][0]["field"] == "cursor"
    # The token it was given to goes on with it.
    status, body = await listing(indexed_hub.url, [("limit", "1"), ("cursor", first["next"])], TOKEN)
    assert status == 200 and body["units"][0]["cid"] == hidden[-2]


async def test_a_token_sees_its_units_by_the_labels_they_were_created_with_not_those_a_pipeline_adds(indexed_hub, nc):
    """A token sees what it could have written. The default pipeline's classify step labels a
    markdown upload `text` and `document`, which a token limited to `report` and `q*` could not
    set: the token still lists, shows and downloads its own upload, and finds it by the `label`
    filter (a filter reads the labels a unit has now). A unit created with a label outside its
    patterns stays hidden everywhere."""
    url = indexed_hub.url
    form = aiohttp.FormData()
    form.add_field("label", "report")
    form.add_field("source", "reports")
    form.add_field("file", b"# Q3\n\nthe numbers", filename="q3.md", content_type="text/markdown")
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/units", data=form, headers=auth(LIMITED)) as r:
        assert r.status == 201, await r.text()
        own = (await r.json())["cid"]
    hidden = (await UnitStore(nc).put_bytes(b"# secret\n", media_type="text/markdown", source="reports",
                                            labels=["report", "secret"])).unit.cid

    async def classified() -> bool:
        return await every_unit(url, [("label", "document")]) == [hidden, own]

    await async_wait_until(classified, 60, what="the pipeline to classify both units")

    status, body = await listing(url, [], LIMITED)
    assert status == 200 and [u["cid"] for u in body["units"]] == [own]
    assert body["units"][0]["labels"] == ["document", "report", "text"]  # its labels now, as they are
    assert await every_unit(url, [("label", "document")], LIMITED) == [own]
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/units/{own}", headers=auth(LIMITED)) as r:
        assert r.status == 200 and (await r.json())["unit"]["cid"] == own
    assert (await download(url, own, LIMITED))[:2] == (200, b"# Q3\n\nthe numbers")
    async with aiohttp.ClientSession() as s, s.head(f"{url}/v1/units/{own}/content", headers=auth(LIMITED)) as r:
        assert r.status == 200

    # Created with `secret`: hidden from it, in the listing, its metadata and its content alike.
    assert await every_unit(url, [("label", "secret")], LIMITED) == []
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/units/{hidden}", headers=auth(LIMITED)) as r:
        assert r.status == 404
    assert (await download(url, hidden, LIMITED))[0] == 404
    async with aiohttp.ClientSession() as s, s.head(f"{url}/v1/units/{hidden}/content", headers=auth(LIMITED)) as r:
        assert r.status == 404
    # A token that may see every label reads it.
    assert (await download(url, hidden))[:2] == (200, b"# secret\n")


async def test_a_cursor_from_one_hub_goes_on_at_another_that_reads_the_same_tokens_file(indexed_hub, nats_server, nc,
                                                                                        tmp_path):
    """Hubs behind one address share nothing in memory: the cursor's key comes from the
    tokens file they all read, so any of them continues a listing."""
    units = UnitStore(nc)
    put = [(await units.put_bytes(f"unit {i}".encode())).unit.cid for i in range(5)]
    await _all_listed(indexed_hub.url, 5)
    other = Hub(nats_server.url, tmp_path, name="cim-hub-2").start()
    try:
        status, body = await listing(indexed_hub.url, [("limit", "2")])
        assert status == 200
        rest = await every_unit(other.url, [("limit", "2")], cursor=body["next"])
        assert [u["cid"] for u in body["units"]] + rest == put[::-1]
    finally:
        other.stop()


async def test_a_cursor_whose_position_an_index_has_not_reached_is_answered_503_not_a_page_with_holes(
        indexed_hub, nc, tmp_path):
    """With several pipeline agents, one whose index has not reached the cursor's position
    would skip the units below it it has not seen yet: it refuses (503, retry), and the hub
    says so. One past the position answers, even if the index that made the cursor was
    further on (two agents under ingest are seldom at the same event)."""
    units = UnitStore(nc)
    older = (await units.put_bytes(b"the older unit")).unit.cid
    await units.put_bytes(b"the newer unit")
    await _all_listed(indexed_hub.url, 2)
    ahead = 10**12
    with pytest.raises(ProjectionUnavailable, match="try again"):
        await call(nc, UNITS, UnitsRequest(min_as_of=ahead))
    tokens = Tokens(tmp_path / "tokens.json")
    token = tokens.lookup(TOKEN)
    assert token is not None
    bound = unit_pages.binding(token.digest, [], "")
    _, first = await listing(indexed_hub.url, [("limit", "1")])
    position, as_of = unit_pages.decode(tokens.cursor_key, bound, first["next"])
    assert position <= as_of

    # As another hub makes it whose index was far further on: this index has reached the
    # position, so it answers the rest.
    cursor = unit_pages.encode(tokens.cursor_key, bound, position, ahead)
    status, body = await listing(indexed_hub.url, [("cursor", cursor)])
    assert status == 200 and [u["cid"] for u in body["units"]] == [older] and body["next"] is None
    # A position this index has not reached: 503 with Retry-After, not a page.
    cursor = unit_pages.encode(tokens.cursor_key, bound, 2**40, 1)
    async with aiohttp.ClientSession() as s, s.get(f"{indexed_hub.url}/v1/units", params=[("cursor", cursor)],
                                                    headers=auth()) as r:
        assert r.status == 503 and r.headers["Retry-After"]
        assert "try again" in (await r.json())["errors"][0]["message"]


async def test_a_listing_walks_a_bounded_window_per_request_and_is_complete_to_the_end(nats_server, nc, agent_process,
                                                                                      tmp_path):
    """A filter that matches nothing answers after a bounded walk with where to go on; followed
    to the end it is complete (a pipeline agent, asked as the hub asks it)."""
    await provision(nc, ProvisionSpec())
    await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}, "state_dir": str(tmp_path / "state")}).ready(nc)
    units = UnitStore(nc)
    n, scan = 3000, 500
    first = last = ""
    for start in range(0, n, 500):
        results = await units.put_small_many([(f"unit {i}".encode(), {"source": "edge" if i in (0, n - 1) else "bulk"})
                                              for i in range(start, start + 500)])
        cids = [r.unit.cid for r in results]  # type: ignore[union-attr]
        first, last = first or cids[0], cids[-1]

    async def indexed() -> bool:
        page = (await call(nc, UNITS, UnitsRequest(limit=1))).units
        return bool(page) and page[0].cid == last  # empty until the pipeline indexed one

    await async_wait_until(indexed, 60, what="the pipeline to index the units")

    async def follow(**ask) -> tuple[list[str], int]:
        found, before, requests = [], None, 0
        while True:
            reply = await call(nc, UNITS, UnitsRequest(scan=scan, before=before, **ask))
            requests += 1
            found += [u.cid for u in reply.units]
            if reply.resume is None:
                return found, requests
            assert reply.more
            before = (reply.resume, "")
            assert requests <= n // scan + 1, "the walk does not move on"

    # Nothing matches: each request walks at most `scan` rows, so it takes n / scan of them.
    found, requests = await follow(source="*zzz*")
    assert found == [] and n // scan <= requests <= n // scan + 1
    # What matches at both ends is found, newest first, across the windows.
    found, requests = await follow(source="edg*")
    assert found == [last, first] and requests > 1
    # Within a token's reach: the same bound, the same completeness.
    found, _ = await follow(within_sources=["edge"], limit=1)
    assert found == [last, first]


def test_a_tokens_reach_in_the_index_is_what_the_token_may_see():
    """The pipeline keeps a listing to a token's source patterns in SQL (GLOB, or fnmatch for a
    [...] class); it must agree with cim.hub.tokens, unit by unit. (Labels are the hub's to
    check: by those a unit was created with, which the index does not keep apart.)"""
    conn = sqlite3.connect(":memory:")
    conn.executescript(search.SCHEMA)
    sources = ["reports", "reports/q3", "team/a", "team/b", "x[y", "ab", "b", ""]
    label_sets = [[], ["report"], ["report", "q3"], ["secret"], ["qz", "report"], ["[", "a"], ["ab"]]
    for i, (source, labels) in enumerate(itertools.product(sources, label_sets)):
        search.add_unit(conn, cid=f"bafy{i:04d}", title="", media_type="", source=source,
                        created_at="2026-01-01T00:00:00", labels=labels, seq=i + 1)
    patterns = [["*"], ["reports", "reports/*"], ["team/[ab]"], ["[!t]*"], ["x[y"], ["?b", "b"], []]
    for srcs in patterns:
        token = Token(name="t", token="0123456789abcdef", sources=srcs, labels=["*"])
        listed, before = [], None
        while True:
            rows, resume = search.units(conn, reach=search.Reach(sources=srcs), before=before, limit=7, scan=9)
            listed += [(r.source, tuple(r.labels)) for r in rows]
            if resume is None:
                break
            before = (resume, "")
        expected = [(s, tuple(sorted(ls))) for s, ls in itertools.product(sources, label_sets) if token.may_see(s, ls)]
        assert sorted(listed) == sorted(expected), srcs


async def two_stalled_downloads(nc, hub: Hub) -> tuple[bytes, str, str, list[tuple[socket.socket, bytes]]]:
    """A big unit held by two downloads whose clients read nothing, and a small unit to try."""
    data = os.urandom(16 * 1024 * 1024)  # past what the kernel buffers for a client that reads nothing
    cid = (await UnitStore(nc).put_bytes(data)).unit.cid
    small = (await UnitStore(nc).put_bytes(b"small")).unit.cid
    stalled = [stalled_download(hub.url, cid) for _ in range(2)]
    assert all(head.startswith(b"HTTP/1.1 200") for _, head in stalled)
    return data, cid, small, stalled


async def test_downloads_past_max_downloads_get_503_and_a_client_that_reads_nothing_is_cut_off(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    hub = Hub(nats_server.url, tmp_path, max_downloads=2, idle_timeout=2).start()
    try:
        data, cid, small, stalled = await two_stalled_downloads(nc, hub)
        status, body, headers = await download(hub.url, small)
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert "max_downloads" in json.loads(body)["errors"][0]["message"]
        # A HEAD reads no bytes and takes no place.
        async with aiohttp.ClientSession() as s, s.head(f"{hub.url}/v1/units/{small}/content", headers=auth()) as r:
            assert r.status == 200

        # Past idle_timeout the stalled ones are cut off, short of their Content-Length, and
        # their places serve others.
        async def served() -> bool:
            status, body, _ = await download(hub.url, small)
            return status == 200 and body == b"small"

        await async_wait_until(served, 60, what="a stalled download to be cut off")
        # One place freed serves the small one; the other stalled download may be cut off a
        # moment later: read from neither until both are (a read would let it go on).
        await async_wait_until(lambda: hub.log().count("the client took nothing for 2 s") >= 2, 60,
                               what="both stalled downloads to be cut off")
        assert all(drained(sock) < len(data) for sock, _ in stalled)
        assert (await download(hub.url, cid))[:2] == (200, data)
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()


async def test_one_token_cannot_hold_every_download_place(nats_server, nc, tmp_path):
    """A token whose clients read nothing holds at most max_downloads_per_token places: its next
    download is refused, with a message that names the limit, while another token still reads."""
    await provision(nc, ProvisionSpec())
    hub = Hub(nats_server.url, tmp_path, max_downloads=4, max_downloads_per_token=2, idle_timeout=30).start()
    try:
        _, _, small, stalled = await two_stalled_downloads(nc, hub)
        status, body, headers = await download(hub.url, small)
        assert status == 503 and int(headers["Retry-After"]) > 0
        message = json.loads(body)["errors"][0]["message"]
        assert "token 'ci'" in message and "max_downloads_per_token" in message, message
        assert (await download(hub.url, small, READ_ONLY))[:2] == (200, b"small")  # another token is not locked out
        # Nor is another token that happens to share the name: places go by the secret.
        namesake = "namesake-token-0123456789abcdef"
        tokens = json.loads((tmp_path / "tokens.json").read_text())
        tokens["tokens"].append({"name": "ci", "token": namesake})
        (tmp_path / "tokens.json").write_text(json.dumps(tokens))
        assert (await download(hub.url, small, namesake))[:2] == (200, b"small")

        for sock, _ in stalled:  # the client gives up: its places are freed
            sock.close()

        async def served() -> bool:
            return (await download(hub.url, small))[:2] == (200, b"small")

        await async_wait_until(served, 60, what="the token's places to be freed once its clients went away")
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()


async def test_head_answers_what_get_would_without_reading_the_bytes(hub, nc):
    units = UnitStore(nc)
    events = EventStore(nc)

    async def head(cid: str) -> int:
        async with aiohttp.ClientSession() as s, s.head(f"{hub.url}/v1/units/{cid}/content", headers=auth()) as r:
            return r.status

    expired = (await units.put_bytes(b"kept 30 days")).unit.cid
    await events.append(Event.of(UnitExpired(policy="30-days", reason="older than 30 days"), expired, agent="cim-tier"))
    await ContentStore(nc).delete(expired)  # as the tier agent does after the event
    lost = (await units.put_bytes(b"its bytes are gone")).unit.cid
    await ContentStore(nc).delete(lost)
    cold = (await units.put_bytes(b"in a colder tier, and no tier agent runs")).unit.cid
    await events.append(Event.of(UnitLocated(tier="warm", url="s3://warm", size=40, verified_by="read-back",
                                             dropped=[]), cold, agent="cim-tier"))
    await ContentStore(nc).delete(cold)
    fine = (await units.put_bytes(b"all there")).unit.cid
    for cid, expected in ((expired, 410), (lost, 503), (cold, 503), (fine, 200),
                          (cidlib.compute(b"never stored"), 404)):
        status, _, _ = await download(hub.url, cid)
        assert status == expected, (cid, status)
        assert await head(cid) == expected, cid


# --- third review: a download's place on any error, the connectors' cold reads ---------

async def test_a_download_that_fails_unexpectedly_is_a_503_and_gives_its_place_back(nats_server, nc, tmp_path):
    """An error no rule expects while reading a unit (here a hostile `unit.created` whose
    `created_at`, a unix time, every reader validates but the fold of the unit's events trips
    on: the cold path folds them to find the bytes) is a 503 that says so, never a 500, and
    the download's place comes back: with one place, good downloads go on after it."""
    await provision(nc, ProvisionSpec())
    hub = Hub(nats_server.url, tmp_path, max_downloads=1).start()
    try:
        good = (await UnitStore(nc).put_bytes(b"a good one")).unit.cid
        data = b"bytes that were never stored in the hot tier"
        cid = cidlib.compute(data)
        record = {"cid": cid, "size": len(data), "created_at": 1_700_000_000, "source": "hostile"}
        await nc.jetstream().publish(f"cim.evt.unit.{cid}.created", json.dumps(record).encode())
        for _ in range(3):
            status, body, headers = await download(hub.url, cid)
            assert status == 503 and int(headers["Retry-After"]) > 0, (status, body)
            assert "could not be read (AttributeError)" in json.loads(body)["errors"][0]["message"]
            assert (await download(hub.url, good))[:2] == (200, b"a good one")
        # Its metadata and HEAD fold the same events: a 503 that says why too.
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{hub.url}/v1/units/{cid}", headers=auth()) as r:
                assert r.status == 503
            async with s.head(f"{hub.url}/v1/units/{cid}/content", headers=auth()) as r:
                assert r.status == 503
        assert f"unit {cid}: reading it failed unexpectedly: AttributeError" in hub.log()
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()


async def cold_unit(nc, data: bytes) -> tuple[UnitStore, str]:
    """A unit whose bytes are only in a colder tier, and a store whose cold reader streams
    them as the tier agent would."""
    await provision(nc, ProvisionSpec())

    async def colder_tier(_nc, where, timeout):
        yield data

    store = UnitStore(nc, cold=colder_tier)
    cid = (await store.put_bytes(data)).unit.cid
    await EventStore(nc).append(Event.of(UnitLocated(tier="warm", url="s3://warm", size=len(data),
                                                     verified_by="read-back", dropped=[]), cid, agent="cim-tier"))
    await ContentStore(nc).delete(cid)
    return store, cid


async def test_the_connectors_store_reads_cold_units_past_the_http_downloads_cold_limit(nats_server, nc, tmp_path):
    """The HTTP downloads' cold places are theirs alone: with every one taken, the store the
    hub's connectors share still reads a unit from a colder tier, and the HTTP downloads' view
    of it refuses with Busy (a CimError: a 503 to a client), never an HTTP answer object."""
    data = b"in a colder tier"
    store, cid = await cold_unit(nc, data)
    colder_tier = store.cold
    api = HubApi(store, Tokens(write_tokens(tmp_path / "tokens.json")), max_body_size=1024, max_cold_downloads=1)
    assert api.cold_downloads.take()  # the one cold place, held by a download
    with pytest.raises(Busy, match="max_cold_downloads"):
        await anext(aiter(api.units.get(cid)))
    assert [chunk async for chunk in store.get(cid)] == [data]
    assert store.cold is colder_tier
    api.cold_downloads.give_back()
    assert [chunk async for chunk in api.units.get(cid)] == [data]


async def test_one_token_cannot_hold_every_cold_read_place(nats_server, nc, tmp_path):
    """Cold places are counted per token too (max_cold_downloads_per_token): with its one
    taken, the token's next cold read is refused with Busy naming the limit, while another
    token's read goes on."""
    from cim.hub.http_api import DOWNLOADER

    data = b"in a colder tier, read by two tokens"
    store, cid = await cold_unit(nc, data)
    api = HubApi(store, Tokens(write_tokens(tmp_path / "tokens.json")), max_body_size=1024, max_cold_downloads=4,
                 max_cold_downloads_per_token=1)
    ci, reader = (api.tokens.lookup(t) for t in (TOKEN, READ_ONLY))
    assert ci is not None and reader is not None
    assert api.cold_downloads.take(ci.digest.hex())  # token ci's one cold place, held by a download of it
    DOWNLOADER.set(ci)  # as the content handler sets it for its request
    with pytest.raises(Busy, match="token 'ci' .*max_cold_downloads_per_token"):
        await anext(aiter(api.units.get(cid)))
    DOWNLOADER.set(reader)
    assert [chunk async for chunk in api.units.get(cid)] == [data]
    assert api.cold_downloads.taken == 1  # the reader's place was given back


async def test_posting_the_bytes_of_an_expired_unit_answers_410_saying_why(hub, nc):
    """Its history ends with its expiry: the bytes are not stored again, and the answer names
    the unit itself (it said 400 about a parent, which there was none)."""
    units = UnitStore(nc)
    expired = (await units.put_bytes(b"kept 30 days, then gone")).unit.cid
    await EventStore(nc).append(Event.of(UnitExpired(policy="30-days", reason="older than 30 days"), expired,
                                         agent="cim-tier"))
    await ContentStore(nc).delete(expired)
    async with aiohttp.ClientSession() as s, s.post(f"{hub.url}/v1/units", data=b"kept 30 days, then gone",
                                                    headers=auth()) as r:
        assert r.status == 410, await r.text()
        [error] = (await r.json())["errors"]
    assert error["field"] == "(body)" and "expired by the retention policy '30-days'" in error["message"]
