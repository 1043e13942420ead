"""`cim up`: the newcomer's embedded leaf, driven as a newcomer would."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cim.embedded.procs import wait_until
from cim.ports import port_is_free
from support.upkit import Ports, Up


def agents(cli, u: Up) -> dict[str, int]:
    r = cli("--json", "status", server=u.url, env=u.env, check=False)
    if r.returncode != 0:
        return {}
    return {a["capability"]: a["pid"] for a in json.loads(r.stdout)["agents"]}


def test_up_serves_units_and_events_restarts_a_killed_agent_and_keeps_data(up, cli, tmp_path):
    u = up()
    assert u.url in u.output() and "store" in u.output()
    wait_until(lambda: "store" in agents(cli, u), 30, what="the store agent to answer cim status")
    first_pid = agents(cli, u)["store"]

    f = tmp_path / "note.txt"
    f.write_text("kept across restarts")
    c = cli("units", "put", f, server=u.url, env=u.env).stdout.split()[0]
    assert cli("units", "get", c, server=u.url, env=u.env).stdout == "kept across restarts"
    assert "unit.created" in cli("events", "tail", server=u.url, env=u.env).stdout

    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: agents(cli, u).get("store") not in (None, first_pid), 60,
               what="cim up to restart the killed store agent")
    assert "store agent exited" in u.output() and "restarted" in u.output()

    assert u.stop() == 0
    assert "stopped; data kept" in u.output()
    assert port_is_free(u.port), "nats-server outlived cim up"
    assert not _alive(first_pid)

    again = up(u.data_dir)
    assert cli("units", "get", c, server=again.url, env=again.env).stdout == "kept across restarts"


def test_up_refuses_a_taken_port_with_advice(up, tmp_path):
    first = up(tmp_path / "one")
    r = subprocess.run(
        [sys.executable, "-m", "cim", "up", "--data-dir", str(tmp_path / "two"), *_with_nats_port(first.port)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert f"port {first.port} is taken" in r.stderr and "--port" in r.stderr


def _with_nats_port(port: int) -> list[str]:
    ports = Ports()
    ports.nats = port
    return ports.args()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_newcomer_puts_a_folder_watches_the_pipeline_and_finds_it(up, cli, tmp_path):
    """Issue 4's flow in `cim up`, and the `pipeline` VM test's twin: put a folder of
    documents, see them flow through the default pipeline, find them with `cim search`."""
    u = up()
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "heron.md").write_text("# Herons\n\nThe grey heron stands still in shallow water, waiting for fish.")
    (docs / "sub" / "kestrel.html").write_text("<title>Kestrel</title><p>A kestrel hovers over the meadow.</p>")
    (docs / ".hidden").write_text("not a document")
    out = cli("units", "put", docs, server=u.url, env=u.env).stdout.splitlines()
    assert len(out) == 2 and all(line.startswith("bafkrei") for line in out)

    def found(*words: str) -> list:
        r = cli("--json", "search", *words, server=u.url, env=u.env, check=False)
        return json.loads(r.stdout)["hits"] if r.returncode == 0 else []

    # The two may be indexed in different batches: wait for each.
    assert len(wait_until(lambda: found("heron"), 60, what="cim search to find the heron")) == 1
    [hit] = wait_until(lambda: found("kestrel", "meadow"), 60, what="cim search to find the kestrel")
    tail = cli("events", "tail", server=u.url, env=u.env).stdout
    assert "unit.labeled" in tail and "steps.done default--" in tail
    assert hit["title"] == "Kestrel"
    # The labels classification added show on the unit, next to its own.
    shown = json.loads(cli("--json", "units", "show", hit["cid"], server=u.url, env=u.env).stdout)
    assert "document" in shown["labels"] and shown["unit"]["labels"] == []


def test_up_restarts_a_killed_nats_server_and_says_so(up, cli, tmp_path):
    u = up()
    wait_until(lambda: "store" in agents(cli, u), 30, what="the store agent to answer cim status")
    f = tmp_path / "before.txt"
    f.write_text("stored before the crash")
    before = cli("units", "put", f, server=u.url, env=u.env).stdout.split()[0]

    os.kill(_nats_pid(u.data_dir), signal.SIGKILL)
    wait_until(lambda: "nats-server restarted" in u.output(), 60, what="cim up to restart nats-server")
    assert "nats-server exited" in u.output()

    # The same address, the same data, and the agents back on it.
    assert cli("units", "get", before, server=u.url, env=u.env).stdout == "stored before the crash"
    g = tmp_path / "after.txt"
    g.write_text("stored after the restart")
    wait_until(lambda: cli("units", "put", g, server=u.url, env=u.env, check=False).returncode == 0, 60,
               what="a put to succeed after the restart")
    wait_until(lambda: "store" in agents(cli, u), 60, what="the store agent to answer again")


def _nats_pid(data_dir) -> int:
    """The pid of the nats-server `cim up` runs for `data_dir` (found by its config path)."""
    config = str(data_dir / "nats" / "nats.conf").encode()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"nats-server" in cmdline and config in cmdline:
            return int(proc.name)
    raise AssertionError(f"no nats-server runs with {config.decode()}")


async def test_up_is_secured_like_nixos(up, cli, tmp_path):
    """No credential, no way in; each agent has its own key with exactly its capability's
    permissions; the seeds are the user's alone; `cim` finds the admin key by itself."""
    import nats as nats_client

    from cim.identity import public_key_of
    from cim.permissions import nats_permissions

    u = up()
    wait_until(lambda: "store" in agents(cli, u), 30, what="the store agent to answer cim status")
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats_client.connect(u.url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)

    keys = u.data_dir / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in keys.iterdir()} >= {"admin.nk", "store.nk", "pipeline.nk", "tier.nk"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.iterdir())
    conf = json.loads((u.data_dir / "nats" / "nats.conf").read_text())
    users = conf["accounts"]["CIM"]["users"]
    assert not any(k.read_text().strip() in json.dumps(conf) for k in keys.iterdir()), "a seed in the server config"
    by_key = {usr["nkey"]: usr for usr in users}
    for seed in keys.iterdir():
        user = by_key[public_key_of(seed.read_bytes().strip())]
        if seed.stem == "admin":
            assert "permissions" not in user  # the operator: everything in the account
        else:
            assert user["permissions"] == nats_permissions(seed.stem), seed.stem

    # The CLI, told only where the data is, logs in with the admin key found there.
    assert cli("--json", "status", server=u.url, env={"CIM_DATA_DIR": str(u.data_dir)}).returncode == 0


def test_up_says_the_disk_is_full_and_recovers_once_space_is_back(up, cli, tmp_path, small_disk):
    """A full disk under the data: puts fail and the console says why; once space is freed
    nats-server is restarted and puts work again, with no restart of `cim up` by hand."""
    disk = small_disk(160)
    u = up(disk.path / "data")
    wait_until(lambda: "store" in agents(cli, u), 30, what="the store agent to answer cim status")
    disk.fill()
    note = tmp_path / "note.txt"
    note.write_text("stored once the disk has room again")
    assert cli("units", "put", note, server=u.url, env=u.env, check=False, timeout=60).returncode != 0
    wait_until(lambda: "the disk is full" in u.output(), 60, what="cim up to say the disk is full")

    disk.free_up()
    wait_until(lambda: "disk space is back" in u.output(), 60, what="cim up to see the space back")
    wait_until(lambda: cli("units", "put", note, server=u.url, env=u.env, check=False, timeout=60).returncode == 0,
               60, what="a put to work again")
    u.stop()


def test_the_embedded_archive_says_when_it_shares_the_datas_disk_and_can_move(tmp_path, monkeypatch):
    from cim.tier.config import Config, embedded_settings

    def note_of(settings, note) -> str:  # the summary line is written from the validated config
        return note(Config.model_validate({"nats": {"servers": ["nats://127.0.0.1:4222"]}, **settings}))

    monkeypatch.delenv("CIM_ARCHIVE_DIR", raising=False)
    settings, note = embedded_settings(tmp_path / "data")
    assert settings["tiers"][1]["url"] == f"file://{tmp_path / 'data' / 'tiers' / 'archive'}"
    line = note_of(settings, note)
    assert "the same disk as the data" in line and "--archive-dir" in line

    monkeypatch.setenv("CIM_ARCHIVE_DIR", str(tmp_path / "elsewhere"))
    settings, note = embedded_settings(tmp_path / "data")
    assert settings["tiers"][1]["url"] == f"file://{tmp_path / 'elsewhere'}"


def test_a_lost_admin_password_file_keeps_the_users_the_operator_added(tmp_path):
    """`cim up` makes admin's password once; with that file gone (deleted to reset it), it
    wrote the users file over, and every user the operator had added could no longer log in."""
    import stat

    from cim.ui.auth import hash_password
    from cim.ui.config import embedded_settings

    data = tmp_path / "data"
    embedded_settings(data)
    users, password_file = data / "ui" / "users", data / "ui" / "admin-password"
    alice = f"alice:{hash_password('her own passphrase')}"
    users.write_text(users.read_text() + alice + "\n")
    first = password_file.read_text()
    password_file.unlink()
    embedded_settings(data)
    lines = users.read_text().splitlines()
    assert alice in lines and sum(line.startswith("admin:") for line in lines) == 1, lines
    assert password_file.read_text() != first  # a new admin password, in a file only its owner reads
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600 and stat.S_IMODE(users.stat().st_mode) == 0o600
