"""`cim provision`: one spec, applied idempotently, with drift reported."""

import json

import pytest

from cim.capabilities import core_spec


def write(tmp_path, spec) -> str:
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(spec))
    return str(p)


def test_provision_creates_then_is_harmless_to_repeat(cli, nats_server, tmp_path):
    spec = write(tmp_path, {"replicas": 1, "streams": [{"name": "EXTRA", "subjects": ["extra.>"], "max_age": 3600}],
                            "kv": [{"bucket": "SETTINGS", "history": 5}],
                            "consumers": [{"stream": "EXTRA", "name": "worker", "filter_subjects": ["extra.a.>"]}]})
    first = json.loads(cli("--json", "provision", "--spec", spec).stdout)
    assert {c["action"] for c in first} == {"created"}
    names = {(c["kind"], c["name"]) for c in first}
    assert {("stream", "CIM_EVENTS"), ("stream", "EXTRA"), ("kv", "SETTINGS"), ("consumer", "EXTRA/worker"),
            ("object", "CIM_CONTENT")} <= names
    again = json.loads(cli("--json", "provision", "--spec", spec).stdout)
    assert {c["action"] for c in again} == {"unchanged"}


def test_check_reports_drift_and_changes_nothing(cli, nats_server, tmp_path):
    cli("provision", "--spec", write(tmp_path, {"streams": [{"name": "EXTRA", "subjects": ["extra.>"]}]}))
    changed = write(tmp_path, {"streams": [{"name": "EXTRA", "subjects": ["extra.>"], "max_age": 60}]})
    r = cli("provision", "--spec", changed, "--check", check=False)
    assert r.returncode == 2
    assert "EXTRA" in r.stdout and "would-update" in r.stdout and "max_age: 0 -> 60000000000" in r.stdout
    # --check changed nothing: applying now updates it.
    applied = json.loads(cli("--json", "provision", "--spec", changed).stdout)
    assert [c["action"] for c in applied if c["name"] == "EXTRA"] == ["updated"]


def test_a_change_the_server_cannot_make_is_reported_as_drift(cli, nats_server, tmp_path):
    cli("provision", "--spec", write(tmp_path, {"streams": [{"name": "EXTRA", "subjects": ["extra.>"]}]}))
    memory = {"streams": [{"name": "EXTRA", "subjects": ["extra.>"], "storage": "memory"}]}
    r = cli("provision", "--spec", write(tmp_path, memory), check=False)
    assert r.returncode == 2 and "drift" in r.stdout and "recreate" in r.stderr


def test_a_bad_spec_names_the_field(cli, tmp_path):
    r = cli("provision", "--spec", write(tmp_path, {"streams": [{"name": "bad name", "subjects": []}]}), check=False)
    assert r.returncode == 1
    assert "streams.0.name" in r.stderr and "streams.0.subjects" in r.stderr


def test_print_shows_the_resolved_spec_with_the_core_resources(cli, tmp_path):
    printed = json.loads(cli("provision", "--print", "--replicas", "3").stdout)
    assert printed["replicas"] == 3
    assert [s["name"] for s in printed["streams"]] == [s.name for s in core_spec().streams]


async def _events_stream(nc) -> tuple[int, dict]:
    info = await nc.jetstream().stream_info("CIM_EVENTS")
    return info.state.messages, info.config.as_dict()


async def test_a_retention_limit_on_the_event_store_is_refused_and_no_event_is_lost(cli, nats_server, nc, tmp_path):
    cli("provision")
    for i in range(3):
        (tmp_path / f"u{i}.txt").write_text(f"unit {i}")
        cli("units", "put", str(tmp_path / f"u{i}.txt"))
    before, _ = await _events_stream(nc)
    assert before >= 3
    spec = write(tmp_path, {"streams": [{"name": "CIM_EVENTS", "subjects": ["cim.evt.>"], "max_msgs": 1}]})
    r = cli("provision", "--spec", spec, check=False)
    assert r.returncode == 1
    assert "refusing to provision stream CIM_EVENTS: max_msgs = 1 would let the server delete events" in r.stderr
    assert "Traceback" not in r.stderr
    after, config = await _events_stream(nc)
    assert after == before
    assert config.get("max_msgs") == -1


async def test_a_spec_that_sets_only_replicas_keeps_the_event_store_guards(cli, nats_server, nc, tmp_path):
    cli("provision", "--spec", write(tmp_path, {"streams": [{"name": "CIM_EVENTS", "subjects": ["cim.evt.>"], "replicas": 1}]}))
    _, config = await _events_stream(nc)
    assert (config.get("allow_atomic"), config.get("deny_delete"), config.get("deny_purge")) == (True, True, True)


def test_a_spec_that_takes_a_guard_away_is_refused(cli, nats_server, tmp_path):
    spec = write(tmp_path, {"streams": [{"name": "CIM_EVENTS", "subjects": ["cim.evt.>"], "deny_purge": False}]})
    r = cli("provision", "--spec", spec, check=False)
    assert r.returncode == 1 and "deny_purge = false would let events be deleted or purged" in r.stderr


async def test_the_event_store_cannot_be_purged_even_by_the_admin(cli, nats_server, nc, tmp_path):
    cli("provision")
    (tmp_path / "u.txt").write_text("kept")
    cli("units", "put", str(tmp_path / "u.txt"))
    before, _ = await _events_stream(nc)
    with pytest.raises(Exception, match="(?i)purge"):
        await nc.jetstream().purge_stream("CIM_EVENTS")
    after, _ = await _events_stream(nc)
    assert after == before
