"""The pipeline engine against a real nats-server and real agent processes."""

from __future__ import annotations

import asyncio
import json

import pytest

from cim.nats.rpc import call
from cim.pipeline.dlq import list_letters
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from support.pipeline_support import count, events_on, install_plugins, tiny_pdf
from support.waiting import async_wait_until


@pytest.fixture
async def env(nc, nats_server):
    await provision(nc, ProvisionSpec())
    return nc, {"servers": [nats_server.url]}


def pipeline(name, *steps, **extra):
    return {"name": name, "steps": [s if isinstance(s, dict) else {"name": s, "plugin": s} for s in steps], **extra}


async def test_1000_units_through_three_steps_survive_two_sigkills_with_no_effect_applied_twice(env, agent_process):
    nc, servers = env
    units = UnitStore(nc)
    for start in range(0, 1000, 100):
        await asyncio.gather(*(units.put_bytes(f"unit number {i}: some text about item {i}".encode(),
                                               media_type="text/plain", title=f"u{i}.txt")
                               for i in range(start, start + 100)))
    config = {"nats": servers, "pipelines": [pipeline("three", "classify", "extract", "index", ack_wait=3, concurrency=32)]}
    agent = await agent_process("pipeline", config).ready(nc)
    for threshold in (200, 600):
        await async_wait_until(lambda t=threshold: _at_least(nc, t), 120, what=f"{threshold} units done")
        agent.kill()
        agent = await agent_process("pipeline", config).ready(nc)
    await async_wait_until(lambda: _at_least(nc, 1000), 180, what="all 1000 units done")
    info = await nc.jetstream().consumer_info("CIM_EVENTS", "pipeline-three")

    async def drained():
        i = await nc.jetstream().consumer_info("CIM_EVENTS", "pipeline-three")
        return i.num_pending == 0 and i.num_ack_pending == 0

    await async_wait_until(drained, 60, what="the consumer to drain")
    done = await events_on(nc, "cim.evt.steps.*.done")
    assert len(done) == 1000 and len({e.data["cid"] for e in done}) == 1000, "a unit was recorded twice"
    assert all([s["step"] for s in e.data["steps"]] == ["classify", "extract", "index"] for e in done)
    labeled = await events_on(nc, "cim.evt.unit.*.labeled")
    assert len(labeled) == 1000 and len({e.aggregate_id for e in labeled}) == 1000, "an effect was applied twice"
    assert info is not None


async def _at_least(nc, n: int) -> bool:
    return await count(nc, "cim.evt.steps.*.done") >= n


async def test_a_poison_unit_goes_to_the_dead_letters_and_is_retried_once_fixed(env, agent_process, cli, tmp_path):
    nc, servers = env
    path = install_plugins(tmp_path / "site", "cim-example-plugin", "cim-broken-plugin")
    guarded = pipeline("guarded", {"name": "guard", "plugin": "guard", "settings": {"reject": "POISON"}}, "classify",
                       max_attempts=3, backoff=[0.1])
    agent = await agent_process("pipeline", {"nats": servers, "pipelines": [guarded]}, env={"PYTHONPATH": path}).ready(nc)
    units = UnitStore(nc)
    good = (await units.put_bytes(b"perfectly fine", media_type="text/plain")).unit.cid
    bad = (await units.put_bytes(b"this is POISON", media_type="text/plain")).unit.cid

    async def one_letter():
        return await count(nc, "cim.dlq.>", stream="CIM_DLQ") == 1

    await async_wait_until(one_letter, 60, what="the poison unit to be dead-lettered")
    letters = json.loads(cli("--json", "dlq", "ls").stdout)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["pipeline"] == "guarded" and letter["attempts"] == 3 and "matches 'POISON'" in letter["reason"]
    shown = json.loads(cli("--json", "dlq", "show", str(letter["seq"])).stdout)
    assert shown["headers"]["ce-type"] == "dev.cim.unit.created" and shown["headers"]["ce-subject"] == bad  # as on the wire
    assert await count(nc, f"cim.evt.steps.guarded--{good}.done") == 1
    # The third-party plugin ran; the broken one was reported and skipped.
    status = await call(nc, "cim.pipeline.status")
    assert status["plugins"]["guard"] == "1.2.0" and "broken on purpose" in status["broken_plugins"]["broken"]

    # Fix the cause: the same pipeline without the rejection, applied at run time.
    fixed = dict(guarded, steps=[{"name": "guard", "plugin": "guard", "settings": {}}, {"name": "classify", "plugin": "classify"}])
    spec = tmp_path / "fixed.json"
    spec.write_text(json.dumps(fixed))
    cli("pipelines", "apply", spec)

    def retried() -> bool:
        return cli("dlq", "retry", str(letter["seq"]), check=False).returncode == 0

    from cim.embedded.procs import wait_until

    await asyncio.to_thread(wait_until, retried, 30, 0.5, "the retry to succeed once the fix is loaded")
    assert cli("dlq", "ls").stdout.strip() == "no dead letters"
    assert await count(nc, f"cim.evt.steps.guarded--{bad}.done") == 1
    assert await count(nc, "cim.evt.dlq.*.retried") == 1
    assert agent.proc.poll() is None


async def test_a_step_emitting_a_bad_event_fails_only_its_own_unit_in_a_batch(env, agent_process, tmp_path):
    nc, servers = env
    path = install_plugins(tmp_path / "site", "cim-example-plugin")
    guarded = pipeline("checked", {"name": "guard", "plugin": "guard", "settings": {"malformed": "MALFORMED"}},
                       max_attempts=2, backoff=[0.1], concurrency=64)
    units = UnitStore(nc)
    # Put first, then start the agent: the units arrive together, in one fetched batch.
    good = [(await units.put_bytes(f"good unit {i}".encode(), media_type="text/plain")).unit.cid for i in range(30)]
    bad = (await units.put_bytes(b"a MALFORMED unit", media_type="text/plain")).unit.cid
    await agent_process("pipeline", {"nats": servers, "pipelines": [guarded]}, env={"PYTHONPATH": path}).ready(nc)

    async def settled() -> bool:
        return (await count(nc, "cim.evt.steps.*.done") == len(good)
                and await count(nc, "cim.dlq.>", stream="CIM_DLQ") == 1)

    await async_wait_until(settled, 60, what="the good units recorded and the bad one dead-lettered")
    for cid in good:
        assert await count(nc, f"cim.evt.steps.checked--{cid}.done") == 1
        assert await count(nc, f"cim.evt.unit.{cid}.labeled") == 1
    assert await count(nc, f"cim.evt.steps.checked--{bad}.done") == 0
    assert await count(nc, f"cim.evt.unit.{bad}.labeled") == 0  # nothing of it stored half-way
    (letter,) = await list_letters(nc, "checked")
    assert letter.headers["ce-subject"] == bad and "labels" in letter.reason, letter.reason


async def test_search_finds_extracted_text_and_a_rebuilt_index_equals_the_live_one(env, agent_process, cli, tmp_path):
    nc, servers = env
    config = {"nats": servers, "state_dir": str(tmp_path / "state-a")}  # the default pipeline
    agent = await agent_process("pipeline", config).ready(nc)
    units = UnitStore(nc)
    docs = {
        "solar.md": b"# Solar power\n\nSolar panels convert sunlight into electricity.",
        "wind.html": b"<html><head><title>Wind</title></head><body><p>Turbines turn wind into electricity.</p>"
                     b"<script>ignored()</script></body></html>",
        "tides.pdf": tiny_pdf("Tidal energy comes from the moon and the oceans"),
        "notes.txt": b"Groceries: apples, bread, cheese.",
    }
    media = {"md": "text/markdown", "html": "text/html", "pdf": "application/pdf", "txt": "text/plain"}
    cids = {}
    for name, data in docs.items():
        cids[name] = (await units.put_bytes(data, title=name, media_type=media[name.rsplit(".", 1)[1]])).unit.cid

    async def indexed(n=len(docs)):
        return (await call(nc, "cim.pipeline.index"))["documents"] == n

    await async_wait_until(indexed, 60, what="every document indexed")
    hits = json.loads(cli("--json", "search", "electricity").stdout)["hits"]
    assert {h["cid"] for h in hits} == {cids["solar.md"], cids["wind.html"]}
    assert json.loads(cli("--json", "search", "moon").stdout)["hits"][0]["cid"] == cids["tides.pdf"]
    assert json.loads(cli("--json", "search", "ignored").stdout)["hits"] == []  # script text is not content
    assert [h["cid"] for h in json.loads(cli("--json", "search", "turbine").stdout)["hits"]] == [cids["wind.html"]]
    assert json.loads(cli("--json", "search", "electricity", "--type", "text/markdown").stdout)["hits"][0]["cid"] \
        == cids["solar.md"]
    live = await call(nc, "cim.pipeline.index")
    answers = {q: json.loads(cli("--json", "search", q).stdout)["hits"] for q in ("electricity", "moon", '"solar panels"')}

    agent.stop()
    await agent_process("pipeline", dict(config, state_dir=str(tmp_path / "state-b"))).ready(nc)  # nothing kept

    async def rebuilt():
        r = await call(nc, "cim.pipeline.index")
        return not r["stale"] and r["as_of"] == live["as_of"] and r

    r = await async_wait_until(rebuilt, 60, what="the new agent to replay the index")
    assert r["digest"] == live["digest"] and r["replayed"] > 0
    assert {q: json.loads(cli("--json", "search", q).stdout)["hits"] for q in answers} == answers


async def test_context_scopes_a_pipeline_and_step_settings_change_without_a_restart(env, agent_process, cli, tmp_path):
    nc, servers = env
    scoped = pipeline("scoped", {"name": "label", "plugin": "classify",
                                 "settings": {"rules": [{"label": "alpha", "content": "alpha"}]}},
                      context={"labels": ["project-x"]})
    agent = await agent_process("pipeline", {"nats": servers, "pipelines": [scoped]}).ready(nc)
    units = UnitStore(nc)
    inside = (await units.put_bytes(b"alpha one", labels=["project-x"])).unit.cid
    outside = (await units.put_bytes(b"alpha two")).unit.cid

    async def labeled(cid, label):
        return any(label in e.data["labels"] for e in await events_on(nc, f"cim.evt.unit.{cid}.labeled"))

    await async_wait_until(lambda: labeled(inside, "alpha"), 30, what="the unit in context to be labeled")

    async def skipped():
        return (await call(nc, "cim.pipeline.status"))["pipelines"]["scoped"]["skipped"] >= 1

    await async_wait_until(skipped, 30, what="the unit out of context to be passed over")
    assert await count(nc, f"cim.evt.steps.scoped--{outside}.done") == 0

    changed = dict(scoped, steps=[{"name": "label", "plugin": "classify",
                                   "settings": {"rules": [{"label": "beta", "content": "alpha"}]}}])
    spec = tmp_path / "scoped.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(changed))
    cli("pipelines", "apply", spec)

    async def later_unit_gets_beta():
        cid = (await units.put_bytes(f"alpha again {asyncio.get_running_loop().time()}".encode(), labels=["project-x"])).unit.cid
        await async_wait_until(lambda: _processed(nc, "scoped", cid), 30, what="the new unit processed")
        return await labeled(cid, "beta")

    await async_wait_until(later_unit_gets_beta, 30, what="the new setting to apply")
    assert agent.proc.poll() is None  # same process: no restart needed


async def _processed(nc, pipeline_name, cid) -> bool:
    return await count(nc, f"cim.evt.steps.{pipeline_name}--{cid}.done") > 0


async def test_relations_references_derived_from_and_same_source(env, agent_process, cli):
    nc, servers = env
    await agent_process("pipeline", {"nats": servers}).ready(nc)
    units = UnitStore(nc)
    a = (await units.put_bytes(b"The original report.", media_type="text/plain", source="crm", title="a")).unit.cid
    b = (await units.put_bytes(f"This memo cites {a} twice: {a}.".encode(), media_type="text/plain", title="b")).unit.cid
    c = (await units.revise(a, b"The original report, corrected.", title="c")).unit.cid
    d = (await units.put_bytes(b"Another record.", media_type="text/plain", source="crm", title="d")).unit.cid
    await async_wait_until(lambda: _processed(nc, "default", b), 60, what="b processed")
    await async_wait_until(lambda: _related_count(nc, a, 3), 60, what="a's relations")
    rel = json.loads(cli("--json", "units", "related", a).stdout)["related"]
    assert {(r["type"], r["direction"], r["cid"]) for r in rel} == {
        ("references", "in", b), ("derived-from", "in", c),
        # the revision keeps its parent's source, so it shares it too
        ("same-source", "both", c), ("same-source", "both", d)}


async def _related_count(nc, cid, n) -> bool:
    return len((await call(nc, "cim.pipeline.related", {"cid": cid}))["related"]) >= n


def test_bad_pipeline_files_name_the_field(cli, tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"name": "Bad Name", "steps": [{"name": "x", "plugin": "classify"}], "colour": 1}))
    r = cli("pipelines", "apply", spec, check=False)
    assert r.returncode == 1
    assert "  name: String should match" in r.stderr and "  colour: Extra inputs" in r.stderr
    spec.write_text(json.dumps({"name": "dup", "steps": [{"name": "x", "plugin": "classify"}, {"name": "x", "plugin": "extract"}]}))
    r = cli("pipelines", "apply", spec, check=False)
    assert r.returncode == 1 and "step names must be unique: x" in r.stderr


async def test_a_pipeline_with_an_unknown_plugin_is_reported_not_run(env, agent_process, cli):
    nc, servers = env
    await agent_process("pipeline", {"nats": servers, "pipelines": [pipeline("oops", {"name": "s", "plugin": "nope"})]}).ready(nc)

    async def reported():
        return "oops" in (await call(nc, "cim.pipeline.status"))["pipelines"]

    await async_wait_until(reported, 20, what="the pipeline's error to be reported")
    row = json.loads(cli("--json", "pipelines", "ls").stdout)[0]
    assert row["state"] == "error" and "no step plugin named 'nope'" in row["last_error"]


async def test_pause_holds_units_in_the_consumer_and_resume_processes_them(env, agent_process, cli):
    nc, servers = env
    # A short ack_wait: a unit handed to the last fetch before the pause is redelivered soon.
    await agent_process("pipeline", {"nats": servers, "pipelines": [pipeline("p", "classify", ack_wait=2)]}).ready(nc)
    units = UnitStore(nc)
    first = (await units.put_bytes(b"before the pause", media_type="text/plain")).unit.cid
    await async_wait_until(lambda: _processed(nc, "p", first), 30, what="the first unit processed")

    cli("pipelines", "pause", "p")

    async def state_is(state):
        return (await call(nc, "cim.pipeline.status"))["pipelines"].get("p", {}).get("state") == state

    await async_wait_until(lambda: state_is("paused"), 30, what="the agent to pause the pipeline")
    held = (await units.put_bytes(b"during the pause", media_type="text/plain")).unit.cid

    async def waiting_in_consumer():
        info = await nc.jetstream().consumer_info("CIM_EVENTS", "pipeline-p")
        return info.num_pending + info.num_ack_pending == 1

    await async_wait_until(waiting_in_consumer, 10, what="the unit to wait in the consumer")
    assert await count(nc, f"cim.evt.steps.p--{held}.done") == 0
    assert "paused" in cli("pipelines", "ls").stdout

    cli("pipelines", "resume", "p")
    await async_wait_until(lambda: _processed(nc, "p", held), 30, what="the held unit processed after resume")


async def test_a_pipeline_needing_a_capability_nobody_provides_says_so_and_runs_once_it_is_met(env, agent_process, cli, tmp_path):
    nc, servers = env
    needy = pipeline("needy", "classify", requires=["search>=2"])
    await agent_process("pipeline", {"nats": servers, "pipelines": [needy]}).ready(nc)

    async def state():
        return (await call(nc, "cim.pipeline.status"))["pipelines"].get("needy", {})

    async def refused():  # with the agent's own offer, once its first heartbeat is in the registry
        error = (await state()).get("last_error") or ""
        return "nothing provides search >= 2" in error and "available: search 1.0.0 from cim-pipeline" in error

    await async_wait_until(refused, 30, what="the unmet requirement to be reported, naming what is available")
    spec = tmp_path / "needy.json"
    spec.write_text(json.dumps(dict(needy, requires=["search>=1", "store"])))
    cli("pipelines", "apply", spec)
    # `store` is met by a store agent only once one runs.
    await async_wait_until(lambda: _error_has(nc, "nothing provides store"), 30, what="store reported missing")
    await agent_process("store", {"nats": servers}).ready(nc)

    async def running():
        return (await state()).get("state") == "running"

    await async_wait_until(running, 30, what="the pipeline to run once its providers are up")


async def _error_has(nc, text) -> bool:
    return text in ((await call(nc, "cim.pipeline.status"))["pipelines"].get("needy", {}).get("last_error") or "")


async def test_a_pause_and_an_apply_at_once_both_hold(env, nats_server):
    """`cim pipelines pause` and `cim pipelines apply` each read the record and write it back:
    racing, one wrote over the other (a pipeline said paused ran on, or a new definition was
    reverted). Each now writes the revision it read, and the later one decides again."""
    import nats

    from cim.pipeline import definitions
    from cim.pipeline.model import PipelineDef

    nc, _ = env
    other = await nats.connect(nats_server.url)  # two operators, two connections
    try:
        for i in range(20):
            name = f"race-{i}"
            await definitions.put(nc, PipelineDef.model_validate(pipeline(name, "classify")))
            newer = PipelineDef.model_validate(pipeline(name, "classify", "extract"))
            await asyncio.gather(definitions.set_paused(other, name, True), definitions.put(nc, newer))
            record = await definitions.get(nc, name)
            assert record.paused and record.definition == newer, (i, record)
    finally:
        await other.close()


async def test_a_pipeline_triggered_by_labels_runs_once_per_unit_however_often_it_is_labeled(env, agent_process):
    """A trigger other than `unit.created` comes again for a unit already run. On a first
    delivery the engine did not look the unit up: the steps ran again, and once the server's
    duplicate window had passed their effects were stored a second time."""
    from cim.events import Event, EventStore
    from cim.store.events import UnitLabeled

    nc, servers = env
    js = nc.jetstream()
    config = (await js.stream_info("CIM_EVENTS")).config
    config.duplicate_window = 0.5  # what minutes between two labels do, in half a second
    await js.update_stream(config)
    events = EventStore(nc)
    cid = (await UnitStore(nc).put_bytes(b"an invoice from the plumber", media_type="text/plain")).unit.cid
    await agent_process("pipeline", {"nats": servers, "pipelines": [
        pipeline("on-label", "classify", trigger=["cim.evt.unit.*.labeled"])]}).ready(nc)

    async def settled() -> bool:
        info = await js.consumer_info("CIM_EVENTS", "pipeline-on-label")
        return info.num_pending == 0 and info.num_ack_pending == 0

    async def window_passed(probe: Event) -> bool:  # the server has forgotten ids this old
        return not (await events.append(probe)).duplicate

    for round_ in range(2):
        await events.append(Event.of(UnitLabeled(labels=[f"by-hand-{round_}"], by="test"), cid, agent="test"))
        await async_wait_until(lambda: count(nc, f"cim.evt.steps.on-label--{cid}.done"), 30, what="the unit run")
        await async_wait_until(settled, 30, what="every label delivered")
        probe = Event(type="hub.redelivered", aggregate_id="rx", id=f"probe-{round_}",  # no trigger of the pipeline
                      data={"event_id": "probe", "dlq_seq": round_})
        await events.append(probe)
        await async_wait_until(lambda p=probe: window_passed(p), 30, interval=0.1, what="the duplicate window to pass")
    assert await count(nc, f"cim.evt.steps.on-label--{cid}.done") == 1
    by_pipeline = [e for e in await events.aggregate("unit", cid) if e.agent == "cim-pipeline"]
    assert len(by_pipeline) == 1, [(e.type, e.id) for e in by_pipeline]


async def test_an_unreadable_pipeline_record_is_repaired_by_apply_not_a_traceback(env):
    """A record that is not one (written by hand, or by another version) made apply, pause and
    an agent's start fail with a traceback; apply now writes over it, and pause says no such
    pipeline."""
    from cim.errors import NotFound
    from cim.pipeline import definitions
    from cim.pipeline.model import PipelineDef

    nc, _ = env
    kv = await nc.jetstream().key_value("CIM_PIPELINES")
    await kv.put("mangled", b"{not json")
    with pytest.raises(NotFound, match="no pipeline named 'mangled'"):
        await definitions.set_paused(nc, "mangled", True)
    repaired = PipelineDef.model_validate(pipeline("mangled", "classify"))
    await definitions.put(nc, repaired)
    assert (await definitions.get(nc, "mangled")).definition == repaired
