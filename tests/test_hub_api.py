"""The hub's ingest API, spoken to over real HTTP, with a real hub process and NATS."""

import json

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp (pip install aiohttp)")
yaml = pytest.importorskip("yaml", reason="the OpenAPI checks need PyYAML")

from cim import cid as cidlib  # noqa: E402
from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from cim.store.unit_store import UnitStore  # noqa: E402
from support.hub_support import LIMITED, READ_ONLY, TEAM, TOKEN, WRITE_ONLY, Hub  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def hub(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    h = Hub(nats_server.url, tmp_path, max_body_size=10_000).start()
    try:
        yield h
    finally:
        h.stop()


async def post(url, query="", **kw):
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/units" + query, **kw) as r:
        return r.status, await r.json(), r.headers


async def test_a_multipart_upload_is_stored_and_answered_201_with_its_cid(hub, nc):
    form = aiohttp.FormData()
    form.add_field("label", "demo")
    form.add_field("file", b"hello hub", filename="hello.txt", content_type="text/plain")
    status, body, headers = await post(hub.url, data=form, headers=AUTH)
    assert status == 201, body
    assert body["cid"] == cidlib.compute(b"hello hub")
    assert headers["Location"] == f"/v1/units/{body['cid']}"
    view = await UnitStore(nc).show(body["cid"])
    assert (view.unit.title, view.unit.media_type, view.unit.labels, view.unit.source) == ("hello.txt", "text/plain", ("demo",), "http:ci")
    assert view.events[0].agent == "cim-hub"  # provenance: the hub made it


async def test_a_raw_body_takes_its_metadata_from_the_query_and_the_same_bytes_again_answer_200(hub):
    q = "?title=notes&label=a&label=b&metadata=" + json.dumps({"k": 1})
    status, body, _ = await post(hub.url, q, data=b"raw bytes", headers={**AUTH, "Content-Type": "text/markdown"})
    assert status == 201, body
    assert body["unit"]["labels"] == ["a", "b"] and body["unit"]["media_type"] == "text/markdown"
    assert body["unit"]["metadata"] == {"k": 1}
    again, body2, _ = await post(hub.url, data=b"raw bytes", headers=AUTH)
    assert again == 200 and body2["cid"] == body["cid"] and body2["created"] is False


async def test_no_token_or_an_unknown_token_is_401_with_a_bearer_challenge(hub):
    status, body, headers = await post(hub.url, data=b"x")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert body["errors"][0]["field"] == "Authorization"
    status, _, _ = await post(hub.url, data=b"x", headers={"Authorization": "Bearer not-a-token-we-know-of"})
    assert status == 401


async def test_a_token_may_set_only_its_own_sources_and_labels_else_403(hub, nc):
    limited = {"Authorization": f"Bearer {LIMITED}"}
    status, body, _ = await post(hub.url, "?label=secret", data=b"x", headers=limited)
    assert status == 403 and "secret" in body["errors"][0]["message"]
    status, body, _ = await post(hub.url, "?source=elsewhere", data=b"x", headers=limited)
    assert status == 403 and body["errors"][0]["field"] == "source"
    status, body, _ = await post(hub.url, "?label=q3&label=report", data=b"quarterly", headers=limited)
    assert status == 201 and body["unit"]["source"] == "reports"
    assert not [u async for u in UnitStore(nc).list(label="secret")]


async def test_bad_fields_are_400_and_name_each_field(hub, nc):
    status, body, _ = await post(hub.url, "?label=Not%20A%20Label", data=b"x", headers=AUTH)
    assert status == 400 and body["errors"][0]["field"].startswith("labels")
    status, body, _ = await post(hub.url, "?metadata=%7Bnope", data=b"x", headers=AUTH)
    assert status == 400 and body["errors"][0]["field"] == "metadata"
    status, body, _ = await post(hub.url, "?colour=red", data=b"x", headers=AUTH)
    assert status == 400 and body["errors"][0]["field"] == "colour"
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("title", "no file here")
    status, body, _ = await post(hub.url, data=form, headers=AUTH)
    assert status == 400 and body["errors"][0]["field"] == "file"
    assert [u async for u in UnitStore(nc).list()] == []


async def test_a_body_over_the_limit_is_413_and_nothing_is_stored(hub, nc):
    status, body, _ = await post(hub.url, data=b"x" * 10_001, headers=AUTH)
    assert status == 413 and "10000" in body["errors"][0]["message"]
    form = aiohttp.FormData()
    form.add_field("file", b"y" * 20_000, filename="big.bin")
    status, _, _ = await post(hub.url, data=form, headers=AUTH)
    assert status == 413
    assert [u async for u in UnitStore(nc).list()] == []
    status, _, _ = await post(hub.url, data=b"x" * 10_000, headers=AUTH)
    assert status == 201


async def test_the_served_openapi_document_describes_every_answer_the_api_gives(hub):
    async with aiohttp.ClientSession() as s:
        async with s.get(hub.url + "/openapi.yaml") as r:
            spec = yaml.safe_load(await r.text())
        async with s.get(hub.url + "/metrics") as r:
            metrics = await r.text()
    documented = set(spec["paths"]["/v1/units"]["post"]["responses"])
    assert {"201", "200", "400", "401", "403", "413"} <= documented
    assert {"200", "400", "401", "403", "503"} <= set(spec["paths"]["/v1/search"]["get"]["responses"])
    assert 'cim_hub_ingest_total' in metrics


async def test_unit_metadata_is_readable_with_a_token_and_404_for_an_unknown_cid(hub):
    _, body, _ = await post(hub.url, data=b"show me", headers=AUTH)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{hub.url}/v1/units/{body['cid']}", headers=AUTH) as r:
            assert r.status == 200 and (await r.json())["unit"]["cid"] == body["cid"]
        async with s.get(f"{hub.url}/v1/units/{cidlib.compute(b'never stored')}", headers=AUTH) as r:
            assert r.status == 404
        async with s.get(f"{hub.url}/v1/units/{body['cid']}") as r:
            assert r.status == 401


async def test_a_token_does_only_what_its_scopes_allow(hub, nc):
    reader, writer = {"Authorization": f"Bearer {READ_ONLY}"}, {"Authorization": f"Bearer {WRITE_ONLY}"}
    status, body, _ = await post(hub.url, data=b"from a reader", headers=reader)
    assert status == 403 and "may not store units" in body["errors"][0]["message"], body
    form = aiohttp.FormData()
    form.add_field("file", b"from a reader, as a form", filename="r.txt")
    status, _, _ = await post(hub.url, data=form, headers=reader)
    assert status == 403
    assert [u async for u in UnitStore(nc).list()] == []
    status, body, _ = await post(hub.url, data=b"from a writer", headers=writer)
    assert status == 201
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{hub.url}/v1/units/{body['cid']}", headers=writer) as r:
            assert r.status == 403 and "may not read units" in (await r.json())["errors"][0]["message"]
        async with s.get(f"{hub.url}/v1/units/{body['cid']}", headers=reader) as r:
            assert r.status == 200


async def test_a_token_limited_to_some_sources_sees_only_their_units_and_others_as_unknown(hub):
    team = {"Authorization": f"Bearer {TEAM}"}
    _, theirs, _ = await post(hub.url, "?source=elsewhere", data=b"not the team's", headers=AUTH)
    _, ours, _ = await post(hub.url, "?source=team/alpha", data=b"the team's", headers=team)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{hub.url}/v1/units/{ours['cid']}", headers=team) as r:
            assert r.status == 200
        async with s.get(f"{hub.url}/v1/units/{theirs['cid']}", headers=team) as r:
            hidden = await r.json()
            assert r.status == 404
        async with s.get(f"{hub.url}/v1/units/{cidlib.compute(b'never stored')}", headers=team) as r:
            unknown = await r.json()
    # Told apart from an unknown CID by nothing but the CID itself.
    assert hidden["errors"][0]["message"].replace(theirs["cid"], "C") == unknown["errors"][0]["message"].replace(
        cidlib.compute(b"never stored"), "C")


async def test_metadata_nested_a_thousand_deep_is_400_not_500(hub, nc):
    deep = "[" * 1000 + "]" * 1000
    status, body, _ = await post(hub.url, "?metadata=" + json.dumps({"k": "x"})[:-1] + ',"d":' + deep + "}",
                                 data=b"deep metadata", headers=AUTH)
    assert status == 400, body
    assert body["errors"][0]["field"] == "metadata" and "deeper than 64 levels" in body["errors"][0]["message"]


async def test_a_token_file_that_turns_invalid_refuses_every_token_until_it_is_fixed(hub, tmp_path):
    """A broken rewrite must not keep the old tokens: one of them may be the revoked one."""
    status, _, _ = await post(hub.url, data=b"before", headers=AUTH)
    assert status == 201
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": [{"name": "ci"}]}')  # no token: invalid
    status, body, _ = await post(hub.url, data=b"while broken", headers=AUTH)
    assert status == 401, body
    from support.hub_support import write_tokens

    write_tokens(tokens)
    status, _, _ = await post(hub.url, data=b"after the fix", headers=AUTH)
    assert status == 201


def _send_without_reading(url: str, head: bytes, endless: bytes, upto: int) -> tuple[int, bytes]:
    """A hostile client: it sends `endless` over and over and never reads until the hub stops
    taking bytes (or `upto` is sent). Returns what it sent and what it could read then."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    sent = 0
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            while sent < upto:
                sock.sendall(endless)
                sent += len(endless)
        except OSError:
            pass  # the hub closed the connection: what counts is how much it took first
        answer = b""
        try:
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass  # reset: the answer may be lost, and a client that never reads has earned that
    return sent, answer


async def test_an_endless_form_field_is_refused_at_64_kib_without_reading_on(hub):
    """A non-file field is read only up to its bound, and after the 400 the hub reads on only
    within a small bound, even from a client that sends without ever reading the answer."""
    import asyncio as aio

    head = (f"POST /v1/units HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    field = b'--b\r\nContent-Disposition: form-data; name="title"\r\n\r\n'
    head += b"%x\r\n%s\r\n" % (len(field), field)
    endless = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    sent, answer = await aio.to_thread(_send_without_reading, hub.url, head, endless, 125 * 1024 * 1024)
    # What the socket buffers of both ends hold, plus the hub's bounded read after its answer.
    assert sent < 20 * 1024 * 1024, f"the hub read {sent} bytes of one form field"
    if answer:
        assert answer.startswith(b"HTTP/1.1 400") and b"over 64 KiB" in answer, answer[:300]


@pytest.mark.parametrize("route", ["POST /nowhere", "POST /healthz"])
async def test_an_endless_body_to_a_route_that_does_not_take_one_is_not_read_on(hub, route):
    """A 404 or a 405 needs no token: the body after it is not read on either."""
    import asyncio as aio

    method, path = route.split()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {1 << 40}\r\n\r\n".encode()
    sent, answer = await aio.to_thread(_send_without_reading, hub.url, head, b"x" * 65536, 125 * 1024 * 1024)
    assert sent < 20 * 1024 * 1024, f"the hub read {sent} bytes of a body to {route}"
    if answer:
        assert answer.split(b" ", 2)[1] in (b"404", b"405"), answer[:300]


async def test_a_client_that_reads_gets_the_400_for_an_endless_form_field(hub):
    """The bounded read after the answer is there so that a client that reads while it sends
    (curl, a browser) gets the 400, not a reset."""
    import asyncio as aio

    sent = 0

    async def endless_field():
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="title"\r\n\r\n'
        for _ in range(2000):
            sent += 65536
            yield b"x" * 65536
            # Not a wait: a turn of the event loop, so that aiohttp's client reads the answer while
            # it sends, as curl does. Without it, its writer never yields while the socket takes bytes.
            await aio.sleep(0)

    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    status, body, _ = await post(hub.url, data=endless_field(), headers=headers)
    assert status == 400 and "over 64 KiB" in body["errors"][0]["message"]
    assert sent < 20 * 1024 * 1024, f"the hub read {sent} bytes of one form field"


async def test_a_client_that_stalls_mid_upload_is_cut_off_with_408(nats_server, nc, tmp_path):
    """A slow client holds no connection for ever: after idle_timeout of silence the hub
    answers 408, closes, and stores nothing."""
    import asyncio as aio
    from urllib.parse import urlsplit

    await provision(nc, ProvisionSpec())
    h = Hub(nats_server.url, tmp_path, idle_timeout=1).start()
    try:
        url = urlsplit(h.url)
        reader, writer = await aio.open_connection(url.hostname, url.port)
        writer.write(b"POST /v1/units HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\nonly ten b")
        await writer.drain()
        answer = await aio.wait_for(reader.read(4096), 15)  # the writer stalls; the hub must not
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"nothing arrived for 1 s" in answer
        assert [u async for u in UnitStore(nc).list()] == []
    finally:
        h.stop()


async def closed_while_trickling(reader, writer, first: bytes = b"") -> bool:
    """Send `first`, then a header line every 0.3 s (30 s of them, never the blank line that
    ends a head): whether the server closes the connection within 15 s."""
    import asyncio as aio

    async def trickle() -> None:
        writer.write(first)
        for i in range(100):
            writer.write(f"X-Slow-{i}: y\r\n".encode())
            await writer.drain()
            await aio.sleep(0.3)  # the slow client's own pace

    trickling = aio.ensure_future(trickle())
    rest = aio.ensure_future(reader.read())  # b"" (or a reset) once the server closes it
    try:
        done, _ = await aio.wait({rest}, timeout=15)
        return bool(done)
    finally:
        trickling.cancel()
        rest.cancel()
        writer.close()


async def test_a_client_that_trickles_its_headers_is_closed_after_idle_timeout(nats_server, nc, tmp_path):
    """Slowloris: a header line every 0.3 s keeps aiohttp waiting for ever; the hub closes a
    connection whose request head is not complete within idle_timeout, while a client that
    sends whole requests keeps its connection across several of them."""
    import asyncio as aio
    from urllib.parse import urlsplit

    await provision(nc, ProvisionSpec())
    h = Hub(nats_server.url, tmp_path, idle_timeout=1).start()
    try:
        url = urlsplit(h.url)
        reader, writer = await aio.open_connection(url.hostname, url.port)
        assert await closed_while_trickling(reader, writer, b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n"), \
            "the hub kept a connection whose head never ended"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(3):  # one kept-alive connection, each head arriving at once
                async with session.get(f"{h.url}/openapi.yaml") as resp:
                    assert resp.status == 200
    finally:
        h.stop()


async def test_the_head_deadline_holds_after_a_refused_request_whose_body_looks_like_a_head_end(nats_server, nc, tmp_path):
    """A request answered 401 before its body came, then the body `\\r\\n\\r\\n` and trickled
    headers: the clock runs again from the answer, and bytes that merely look like the end of
    a head do not stop it."""
    import asyncio as aio
    from urllib.parse import urlsplit

    await provision(nc, ProvisionSpec())
    h = Hub(nats_server.url, tmp_path, idle_timeout=1).start()
    try:
        url = urlsplit(h.url)
        reader, writer = await aio.open_connection(url.hostname, url.port)
        writer.write(b"POST /v1/units HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 4\r\n\r\n")
        await writer.drain()
        head = await aio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # answered before the body came
        assert head.startswith(b"HTTP/1.1 401"), head
        first = b"\r\n\r\nGET /openapi.yaml HTTP/1.1\r\nHost: x\r\n"  # the late body, then a new head
        assert await closed_while_trickling(reader, writer, first), "the hub kept a connection whose second head never ended"
    finally:
        h.stop()
