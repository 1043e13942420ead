"""Projections kept on disk (issue 16): a restart resumes from the checkpoint, and a
checkpoint that does not describe the stream, or a damaged file, is rebuilt by replay, never
served. Real nats-server, real pipeline agent processes, real SQLite files."""

from __future__ import annotations

import asyncio
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


async def test_a_hostile_index_record_is_skipped_and_the_projection_goes_on(env, agent_process):
    from cim.events import Event, EventStore
    from cim.pipeline.events import StepRecord, StepsDone

    nc, config = env
    await agent_process("pipeline", config).ready(nc)
    (first,) = await put_texts(nc, ["alpha"])
    await settled(nc, 1)
    for i, odd in enumerate(([1, 2], {"a": 1}, 7, True, "not-a-cid")):
        record = StepsDone(pipeline="odd", cid=first, trigger_seq=1, steps=[StepRecord(
            step="index", plugin="index", plugin_version="1", output={"text_cid": odd, "title": "odd"})])
        await EventStore(nc).append(Event.of(record, f"odd--{i}", id=f"odd-{i}"))
    await put_texts(nc, ["omega"])
    r = await settled(nc, 2)  # the unit after the odd records is indexed: the projection did not stall
    assert not r.stale
    assert [h.title for h in (await call(nc, api.SEARCH, api.SearchRequest(query="omega"))).hits] == ["omega.txt"]


async def test_a_stream_recreated_while_the_agent_runs_is_noticed_without_a_restart(env, agent_process):
    nc, config = env
    agent = await agent_process("pipeline", config).ready(nc)
    await put_texts(nc, ["apple", "pear", "quince"])
    await settled(nc, 3)
    await nc.jetstream().delete_stream("CIM_EVENTS")
    await provision(nc, ProvisionSpec())
    await put_texts(nc, ["plum"])

    async def rebuilt():
        r = await call(nc, api.INDEX, api.Empty())
        return not r.stale and r.units == 1 and r.documents == 1 and r
    await async_wait_until(rebuilt, 60, what="the running agent to rebuild from the new stream")
    assert (await call(nc, api.SEARCH, api.SearchRequest(query="apple"))).hits == []
    assert (await call(nc, api.SEARCH, api.SearchRequest(query="plum"))).hits[0].title == "plum.txt"
    assert "was recreated while the agent ran" in agent.log()


async def test_a_text_that_cannot_be_read_now_is_read_again_not_skipped(env, agent_process):
    """Content unreachable for a while (its bucket gone, a leader election) stops the index at
    that record, says it is stale, and indexes the text once it can be read."""
    from cim.store.content import ContentStore

    nc, config = env
    await agent_process("pipeline", config).ready(nc)
    await put_texts(nc, ["before"])
    await settled(nc, 1)
    await nc.jetstream().delete_stream("OBJ_CIM_CONTENT")  # every text is unreachable now
    await provision(nc, ProvisionSpec())  # the bucket again, empty: the unit's bytes and text are gone
    units = UnitStore(nc)
    body = b"a note about zanzibar and other things"
    cid = (await units.put_bytes(body, media_type="text/plain", title="zanzibar.txt")).unit.cid
    await async_wait_until(lambda: _indexed(nc, "zanzibar"), 60, what="the new unit indexed")
    assert cid
    assert await ContentStore(nc).read(cid) == body


async def _indexed(nc, word):
    r = await call(nc, api.SEARCH, api.SearchRequest(query=word))
    return not r.stale and r.hits and r.hits[0].snippet != ""


async def test_a_full_disk_stops_the_projection_without_throwing_it_away(env, agent_process, tmp_path):
    """The agent's files may not grow past a limit (RLIMIT_FSIZE: writes fail with EFBIG, as on
    a full disk); the projection says it is stale, keeps its rows, and resumes once there is room."""
    import resource
    import sys

    from support.agentkit import AgentProcess

    nc, config = env
    agent = AgentProcess("pipeline", config, tmp_path)  # started here, with the limit
    limit = 3 * 1024 * 1024

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    import subprocess
    log = agent.log_path.open("ab")
    agent.proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "pipeline", "--config",
                                   str(agent.config_path)], stdout=log, stderr=subprocess.STDOUT, env=agent.env,
                                  preexec_fn=limited)
    log.close()
    try:
        await _full_disk(nc, agent, tmp_path)
    finally:
        agent.stop()


async def _full_disk(nc, agent, tmp_path) -> None:
    import resource

    await agent.ready(nc)
    await put_texts(nc, ["first"])
    await settled(nc, 1)
    db = tmp_path / "state" / "pipeline.sqlite"
    units = UnitStore(nc)
    big = "lorem ipsum dolor sit amet " * 2000  # ~54 KB of text each
    for start in range(0, 80, 20):
        await asyncio.gather(*(units.put_bytes(f"{i} {big}".encode(), media_type="text/plain", title=f"big{i}")
                               for i in range(start, start + 20)))
    await async_wait_until(lambda: "cannot write it" in agent.log(), 120, what="the projection to report the full disk")
    r = await call(nc, api.SEARCH, api.SearchRequest(query="first"))
    assert r.stale and r.hits and r.hits[0].title == "first.txt"  # the good rows stay, marked stale
    assert db.exists() and not (tmp_path / "state" / "pipeline.sqlite.bad").exists()
    resource.prlimit(agent.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    await settled(nc, 81)


async def test_a_state_directory_that_cannot_be_written_is_a_clear_error(env, agent_process, tmp_path):
    _, config = env
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    agent = agent_process("pipeline", dict(config, state_dir=str(blocker / "state")))
    await async_wait_until(lambda: agent.proc.poll() is not None, 30, what="the agent to refuse to start")
    assert agent.proc.returncode != 0
    assert "cannot keep the projection in" in agent.log() and "Traceback" not in agent.log()


async def test_cim_search_never_prints_a_units_escape_sequences(env, agent_process, cli):
    nc, config = env
    await agent_process("pipeline", config).ready(nc)
    hostile = "a kestrel note \x1b]52;c;ZXZpbA==\x07 and \x9b31m red \x1b[2J cleared"
    await UnitStore(nc).put_bytes(hostile.encode(), media_type="text/plain", title="kestrel \x1b]0;pwned\x07")
    await settled(nc, 1)
    out = cli("search", "kestrel").stdout
    assert "kestrel" in out and not any(c in out for c in "\x1b\x07\x9b"), repr(out)


async def test_a_clean_stop_lets_the_next_start_skip_the_full_check_and_a_crash_does_not(env, agent_process):
    nc, config = env
    agent = await agent_process("pipeline", config).ready(nc)
    await put_texts(nc, ["one"])
    await settled(nc, 1)
    agent.stop()
    agent = await agent_process("pipeline", config).ready(nc)
    await settled(nc, 1)
    assert "closed cleanly at its last stop; resuming without a full check" in agent.log()
    agent.kill()  # SIGKILL: no stamp
    agent = await agent_process("pipeline", config).ready(nc)
    await settled(nc, 1)
    assert "not closed cleanly at its last stop; checked in" in agent.log()


async def test_a_failed_write_resumes_even_when_a_cancellation_is_swallowed(env, tmp_path, monkeypatch):
    """After a write fails (a full disk), the feed's helpers are cancelled and awaited. Python
    3.11's wait_for, under every nats-py request, swallows a cancellation that races with its
    answer; the stream watcher is then still running, and a plain `await` of it hung the
    projection for good (CI: applied to #161, then nothing for two minutes). Here the race
    is made certain: the watcher's first request swallows the cancellation it gets."""
    import sqlite3

    from cim import projection_db
    from cim.events import EventStore
    from cim.projection_db import Follower, ProjectionDb
    from cim.tasks import cancel_and_wait

    nc, _ = env
    await put_texts(nc, ["one", "two"])
    swallowed = asyncio.Event()

    async def stream_created_swallowing_once(self):
        if not swallowed.is_set():
            try:
                await asyncio.Event().wait()  # blocks until cancelled
            except asyncio.CancelledError:
                swallowed.set()  # what 3.11's wait_for does when the answer came at the same moment
        return self._created

    monkeypatch.setattr(projection_db, "WATCH_SECONDS", 0)  # the watcher is always in its request
    monkeypatch.setattr(Follower, "_stream_created", stream_created_swallowing_once)
    writes = []

    def prepare(batch):
        def write(conn):
            writes.append(len(batch))
            if len(writes) == 1:
                raise sqlite3.OperationalError("disk I/O error")  # the first write finds the disk full
        return write

    db = ProjectionDb(tmp_path / "p", "t", schema="", version=1)
    db.open()
    follower = Follower(EventStore(nc), db, ["cim.evt.unit.*.created"], prepare)
    task = asyncio.create_task(follower.run())
    try:
        await async_wait_until(lambda: len(writes) >= 2 and follower.caught_up.is_set(), 30,
                               what="the projection to write again after the failed write")
        assert swallowed.is_set() and follower.as_of > 0
    finally:
        assert not await cancel_and_wait(task, timeout=20), "the projection did not stop when cancelled"
        db.close()
