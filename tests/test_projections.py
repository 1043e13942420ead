"""Projections kept on disk (issue 16): a restart resumes from the checkpoint, and a
checkpoint that does not describe the stream, or a damaged file, is rebuilt by replay, never
served. Real nats-server, real pipeline agent processes, real SQLite files."""

from __future__ import annotations

import json

import pytest

from cim.nats.rpc import call
from cim.pipeline import api
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.waiting import async_wait_until


@pytest.fixture
async def env(nc, nats_server, tmp_path):
    await provision(nc, ProvisionSpec())
    return nc, {"nats": {"servers": [nats_server.url]}, "state_dir": str(tmp_path / "state"),
                "pipelines": [{"name": "idx", "steps": [{"name": s, "plugin": s} for s in ("classify", "extract", "index")]}]}


async def put_texts(nc, words: list[str]) -> list[str]:
    units = UnitStore(nc)
    return [(await units.put_bytes(f"a note about {w} and other things".encode(), media_type="text/plain",
                                   title=f"{w}.txt")).unit.cid for w in words]


async def settled(nc, documents: int) -> api.IndexReply:
    async def done():
        r = await call(nc, api.INDEX, api.Empty())
        return not r.stale and r.documents == documents and r
    return await async_wait_until(done, 60, what=f"{documents} documents indexed and caught up")


async def test_a_restart_resumes_from_the_checkpoint_and_replays_only_what_is_new(env, agent_process):
    nc, config = env
    agent = await agent_process("pipeline", config).ready(nc)
    await put_texts(nc, [f"word{i}" for i in range(30)])
    first = await settled(nc, 30)
    assert first.replayed >= 90  # 30 units: created, labeled and steps.done each
    agent.stop()

    await put_texts(nc, ["zebra"])  # while the agent is down
    agent = await agent_process("pipeline", config).ready(nc)
    again = await settled(nc, 31)
    # Only the new unit's events: its created now, then its labeled and steps.done once processed.
    assert 1 <= again.replayed <= 3, again
    hits = (await call(nc, api.SEARCH, api.SearchRequest(query="zebra"))).hits
    assert [h.title for h in hits] == ["zebra.txt"]
    assert (await call(nc, api.SEARCH, api.SearchRequest(query="word7"))).hits[0].title == "word7.txt"


async def test_a_corrupt_projection_file_is_rebuilt_and_never_served(env, agent_process, tmp_path):
    nc, config = env
    agent = await agent_process("pipeline", config).ready(nc)
    await put_texts(nc, [f"item{i}" for i in range(40)])
    live = await settled(nc, 40)
    agent.stop()
    db = tmp_path / "state" / "pipeline.sqlite"
    assert db.stat().st_size > 8192
    with db.open("r+b") as f:  # scribble over pages after the header: SQLite's own check finds it
        f.seek(4096)
        f.write(b"\xff" * 8192)

    agent = await agent_process("pipeline", config).ready(nc)
    rebuilt = await settled(nc, 40)
    assert rebuilt.digest == live.digest and rebuilt.replayed >= 120
    assert "is corrupt" in agent.log() and "rebuilding it by replaying the event stream" in agent.log()


async def test_a_recreated_stream_invalidates_the_checkpoint(env, agent_process, nats_server):
    """`cim restore` builds a new CIM_EVENTS; an old checkpoint must not be resumed from."""
    nc, config = env
    agent = await agent_process("pipeline", config).ready(nc)
    await put_texts(nc, ["apple", "pear"])
    await settled(nc, 2)
    agent.stop()
    js = nc.jetstream()
    await js.delete_stream("CIM_EVENTS")
    await provision(nc, ProvisionSpec())
    await put_texts(nc, ["plum"])  # the new stream's history: one unit, at sequence 1..

    agent = await agent_process("pipeline", config).ready(nc)
    r = await settled(nc, 1)
    assert r.units == 1
    assert (await call(nc, api.SEARCH, api.SearchRequest(query="apple"))).hits == []
    assert "was recreated since the checkpoint" in agent.log()


async def test_two_agents_cannot_share_one_state_directory(env, agent_process):
    nc, config = env
    await agent_process("pipeline", config).ready(nc)
    second = agent_process("pipeline", dict(config, name="cim-pipeline-2"))
    await async_wait_until(lambda: second.proc.poll() is not None, 30, what="the second agent to refuse to start")
    assert second.proc.returncode != 0
    assert "is in use by another agent; give each instance its own state_dir" in second.log()


async def test_search_reports_how_far_it_has_caught_up(env, agent_process, cli):
    nc, config = env
    await agent_process("pipeline", config).ready(nc)
    await put_texts(nc, ["kiwi"])
    r = await settled(nc, 1)
    out = json.loads(cli("--json", "search", "kiwi").stdout)
    assert out["as_of"] >= r.as_of and out["stale"] is False and out["hits"][0]["title"] == "kiwi.txt"
