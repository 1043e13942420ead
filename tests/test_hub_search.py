"""GET /v1/search on the hub (issue 16 item 2): a real hub process asks a real pipeline agent
over NATS, and a token reads only what its scopes, sources and labels allow."""

from __future__ import annotations

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from support.hub_support import LIMITED, TEAM, TOKEN, WRITE_ONLY, Hub  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}

DOCS = {  # title: (text, labels, source)
    "solar.txt": ("Solar panels convert sunlight into electricity.", ["energy"], ""),
    "wind.txt": ("Wind turbines make electricity; the solar farm next door keeps its control panels indoors.",
                 ["energy", "wind"], ""),
    "bills.txt": ("The electricity bill arrived with the groceries.", ["home"], ""),
    "tides.txt": ("Tidal electricity comes from the moon.", [], "team/alpha"),
    "rivers.txt": ("River electricity comes from dams.", [], "elsewhere"),
}


async def get(url: str, path: str, params: list[tuple[str, str]] | None = None, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url + path, params=params or [], headers=headers) as r:
        return r.status, await r.json(), r.headers


async def hits(url: str, q: str, *extra: tuple[str, str], token: str = TOKEN) -> dict[str, dict]:
    """title: hit, for a search that must answer 200."""
    status, body, _ = await get(url, "/v1/search", [("q", q), *extra], token)
    assert status == 200, body
    return {h["title"]: h for h in body["hits"]}


async def test_search_over_http_finds_words_phrases_and_labels_from_a_real_pipeline_agent(
        nats_server, nc, agent_process, tmp_path):
    await provision(nc, ProvisionSpec())
    await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}, "state_dir": str(tmp_path / "state")}).ready(nc)
    hub = Hub(nats_server.url, tmp_path).start()
    try:
        async with aiohttp.ClientSession() as s:
            for title, (text, labels, source) in DOCS.items():
                params = [("title", title), *(("label", x) for x in labels), *([("source", source)] if source else [])]
                async with s.post(hub.url + "/v1/units", params=params, data=text.encode(),
                                  headers={**AUTH, "Content-Type": "text/plain"}) as r:
                    assert r.status == 201, await r.text()

        async def all_indexed():  # by their text, not only their titles
            return set(await hits(hub.url, "electricity")) == set(DOCS)

        await async_wait_until(all_indexed, 60, what="the pipeline to index every unit's text")

        # Words: all must match, anywhere in the text.
        assert set(await hits(hub.url, "solar panels")) == {"solar.txt", "wind.txt"}
        # A phrase: the words next to each other, highlighted as one in the snippet.
        phrase = await hits(hub.url, '"solar panels"')
        assert set(phrase) == {"solar.txt"}
        snippet, spans = phrase["solar.txt"]["snippet"], phrase["solar.txt"]["highlights"]
        assert [snippet[a:b].lower() for a, b in spans] == ["solar panels"]
        # Labels: every one given.
        assert set(await hits(hub.url, "electricity", ("label", "energy"))) == {"solar.txt", "wind.txt"}
        assert set(await hits(hub.url, "electricity", ("label", "energy"), ("label", "wind"))) == {"wind.txt"}
        # Source, date and facets.
        assert set(await hits(hub.url, "electricity", ("source", "team/*"))) == {"tides.txt"}
        assert await hits(hub.url, "electricity", ("since", "2999-01-01")) == {}
        assert await hits(hub.url, "electricity", ("until", "2000-01-01T00:00:00+02:00")) == {}
        status, body, _ = await get(hub.url, "/v1/search", [("q", "electricity"), ("facets", "true"), ("limit", "2")])
        assert status == 200 and len(body["hits"]) == 2 and not body["stale"] and body["indexed"] == len(DOCS)
        assert ["energy", 2] in body["facets"]["labels"] and ["text/plain", len(DOCS)] in body["facets"]["media_types"]

        # A token limited to team/* finds only its sources' units, whatever it asks for.
        assert set(await hits(hub.url, "electricity", token=TEAM)) == {"tides.txt"}
        assert set(await hits(hub.url, "electricity", ("source", "team/alpha"), token=TEAM)) == {"tides.txt"}
        for outside in ("elsewhere", "*", "team/[a-z]*"):
            status, body, _ = await get(hub.url, "/v1/search", [("q", "electricity"), ("source", outside)], TEAM)
            assert status == 403 and body["errors"][0]["field"] == "source", (outside, body)

        # The pipeline's own refusal is a 400 that names the parameter and keeps its reason.
        status, body, _ = await get(hub.url, "/v1/search", [("q", "-solar")])
        assert status == 400 and body["errors"][0]["field"] == "q", body
        assert "nothing to look for" in body["errors"][0]["message"]
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()


async def test_search_refuses_what_a_token_may_not_do_and_names_each_bad_parameter(nats_server, nc, tmp_path):
    """No pipeline agent runs here: everything the hub refuses, it refuses without one."""
    await provision(nc, ProvisionSpec())
    hub = Hub(nats_server.url, tmp_path).start()
    try:
        status, body, headers = await get(hub.url, "/v1/search", [("q", "x")], token=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        status, body, _ = await get(hub.url, "/v1/search", [("q", "x")], token="not-a-token-we-know-of")
        assert status == 401
        status, body, _ = await get(hub.url, "/v1/search", [("q", "x")], token=WRITE_ONLY)
        assert status == 403 and "may not read units" in body["errors"][0]["message"], body
        # Limited to labels: search cannot leave out the units with others, so it refuses.
        status, body, _ = await get(hub.url, "/v1/search", [("q", "x")], token=LIMITED)
        assert status == 403 and "labels" in body["errors"][0]["message"], body

        for params, field in (
            ([], "q"), ([("q", "")], "q"), ([("q", "x"), ("limit", "lots")], "limit"), ([("q", "x"), ("limit", "0")], "limit"),
            ([("q", "x"), ("limit", "101")], "limit"), ([("q", "x"), ("since", "yesterday")], "since"),
            ([("q", "x"), ("until", "2024-13-01")], "until"), ([("q", "x"), ("facets", "maybe")], "facets"),
            ([("q", "x"), ("query", "x")], "query"), ([("q", "x"), ("q", "y")], "q"),
            ([("q", "x"), *[("label", f"l{i}") for i in range(17)]], "label"),
        ):
            status, body, _ = await get(hub.url, "/v1/search", params)
            assert status == 400 and body["errors"][0]["field"] == field, (params, body)

        status, body, headers = await get(hub.url, "/v1/search", [("q", "x")])
        assert status == 503 and "search needs a running pipeline agent" in body["errors"][0]["message"], body
        assert headers["Retry-After"] == "5"
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()
