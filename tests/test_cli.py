"""The `cim` command as a user runs it, against a real nats-server."""

import json
import os

import pytest
from multiformats import CID, multihash


@pytest.fixture
def provisioned(cli, nats_server):
    cli("provision")
    return nats_server


def independent_cid(data: bytes) -> str:
    return str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))


def test_put_get_show_ls_round_trip(cli, provisioned, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.bin"
    a.write_text("hello, cim\n")
    b.write_bytes(os.urandom(200_000))
    out = cli("units", "put", a, b, "--label", "demo").stdout.splitlines()
    cids = [line.split()[0] for line in out]
    assert cids == [independent_cid(a.read_bytes()), independent_cid(b.read_bytes())]

    got = tmp_path / "got.bin"
    cli("units", "get", cids[1], "-o", got)
    assert got.read_bytes() == b.read_bytes()
    assert cli("units", "get", cids[0]).stdout == "hello, cim\n"

    shown = json.loads(cli("--json", "units", "show", cids[0]).stdout)
    assert shown["unit"]["title"] == "a.txt" and shown["unit"]["media_type"] == "text/plain"
    assert shown["unit"]["labels"] == ["demo"]
    listed = cli("units", "ls", "--label", "demo").stdout
    assert cids[0] in listed and cids[1] in listed


def test_put_from_standard_input_and_again_reports_already_stored(cli, provisioned):
    first = cli("units", "put", "-", "--title", "piped", input="from a pipe").stdout
    again = cli("units", "put", "-", input="from a pipe").stdout
    assert first.split()[0] == again.split()[0] == independent_cid(b"from a pipe")
    assert "already stored" in again


def test_a_revision_shows_its_lineage(cli, provisioned, tmp_path):
    v1, v2 = tmp_path / "v1.md", tmp_path / "v2.md"
    v1.write_text("# one")
    v2.write_text("# two")
    parent = cli("units", "put", v1).stdout.split()[0]
    child = cli("units", "put", v2, "--parent", parent).stdout.split()[0]
    shown = cli("units", "show", parent).stdout
    assert f"children:   {child}" in shown
    assert f"parents:    {parent}" in cli("units", "show", child).stdout


def test_a_failed_get_leaves_no_output_file(cli, provisioned, tmp_path):
    missing = independent_cid(b"not stored")
    out = tmp_path / "out.bin"
    r = cli("units", "get", missing, "-o", out, check=False)
    assert r.returncode == 1 and "no unit" in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_events_tail_shows_unit_events_and_append_checks_revisions(cli, provisioned, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("x")
    c = cli("units", "put", f).stdout.split()[0]
    tail = cli("events", "tail").stdout
    assert "unit.created" in tail and c in tail

    child = independent_cid(b"child")
    data = json.dumps({"child": child})
    ok = cli("--json", "events", "append", "unit.revised", "agg1", "--data", data, "--expect", "0")
    seq = json.loads(ok.stdout)["seq"]
    stale = cli("events", "append", "unit.revised", "agg1", "--data", data, "--expect", "0", check=False)
    assert stale.returncode == 1 and "moved on" in stale.stderr
    cli("events", "append", "unit.revised", "agg1", "--data", data, "--expect", str(seq))
    lines = cli("events", "tail", "--subject", "cim.evt.unit.agg1.>").stdout.splitlines()
    assert len(lines) == 2


@pytest.mark.parametrize(
    "args, says",
    [
        (["events", "append", "unit.revised", "a", "--data", "{not json"], "not JSON"),
        (["events", "append", "unit.revised", "a", "--data", "[1]"], "JSON object"),
        (["events", "append", "unit.bogus", "a"], "unknown event type"),
        (["events", "append", "unit.revised", "a.b", "--data", "{}"], "aggregate_id"),
        (["events", "append", "unit.revised", "a", "--data", '{"child": "x"}'], "data.child"),
    ],
)
def test_bad_events_give_one_clear_line_and_store_nothing(cli, provisioned, args, says):
    r = cli(*args, check=False)
    assert r.returncode == 1
    assert says in r.stderr and "Traceback" not in r.stderr
    assert cli("events", "tail").stdout == ""


def test_an_oversize_unit_is_refused(cli, provisioned, tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * 2048)
    r = cli("units", "put", f, env={"CIM_MAX_UNIT_SIZE": "1024"}, check=False)
    assert r.returncode == 1 and "over the limit of 1024 bytes" in r.stderr
    assert cli("units", "ls").stdout.strip() == "no units"


def test_an_unreachable_server_is_one_line_and_exit_1(cli, tmp_path):
    r = cli("status", server="nats://127.0.0.1:9", check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot connect to NATS at nats://127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.stderr


def test_status_lists_server_streams_and_buckets(cli, provisioned):
    s = json.loads(cli("--json", "status").stdout)
    assert s["server"]["jetstream"] is True
    assert {x["name"] for x in s["streams"]} >= {"CIM_EVENTS", "CIM_DLQ"}
    assert {(b["kind"], b["name"]) for b in s["buckets"]} >= {("object", "CIM_CONTENT"), ("kv", "CIM_REGISTRY")}
    assert "CIM_EVENTS" in cli("status").stdout


def test_global_options_come_from_the_environment(cli, provisioned):
    r = cli("status", env={"CIM_JSON": "1"})
    assert json.loads(r.stdout)["server"]["url"] == provisioned.url


def test_errors_are_json_under_json_and_one_line_otherwise(cli, provisioned, tmp_path):
    missing = independent_cid(b"never stored here")
    plain = cli("units", "show", missing, check=False)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip() == f"error: no unit {missing} is stored here (check the CID, or list units with `cim units ls`)"
    scripted = cli("--json", "units", "show", missing, check=False)
    assert scripted.returncode == 1 and scripted.stdout == ""
    error = json.loads(scripted.stderr)["error"]
    assert error["codes"] == ["unit_not_found", "not_found", "error"] and error["fields"] == {"cid": missing}
    # A config that fails validation names every field, in JSON too.
    bad = tmp_path / "agent.json"
    bad.write_text(json.dumps({"capability": "hub", "http": {"port": 70000}}))
    checked = json.loads(cli("--json", "config", "check", bad, check=False).stderr)["error"]
    assert checked["codes"][0] == "invalid_config"
    assert {path for path, _ in checked["fields"]["errors"]} == {"http.port", "tokens_file"}


def test_the_version_and_a_unit_read_load_only_what_they_use():
    """Command groups load when run: `cim --version` loads no NATS client, and `cim units`
    none of the dashboard's templates (jinja2) or the S3 client (boto3). (aiohttp comes
    with nats-py itself, which imports it for its websocket transport.)"""
    import subprocess
    import sys

    probe = ("import runpy, sys; sys.argv = ['cim', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('cim', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('loaded:', *sorted(m for m in ('nats', 'aiohttp', 'jinja2', 'boto3', 'botocore') if m in sys.modules),"
             " file=sys.stderr)")

    def loaded(*args: str) -> set[str]:
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
        return set(done.stderr.strip().splitlines()[-1].split()[1:])

    assert loaded("--version") == set()
    assert loaded("units", "get", "--help") == {"nats", "aiohttp"}
