"""Settings under `cim up` (issue 17): `<data-dir>/settings/<capability>.json` merged into the
config `cim up` generates, checked as `cim config check` checks a file. The README's three
examples (a tier policy, a webhook, an inbox) take effect on a running `cim up`; a bad file
stops it before anything starts, naming the file and the field."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nats
import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")

from cim.capabilities import NAMES
from cim.embedded.paths import admin_key
from cim.embedded.procs import wait_until
from cim.embedded.settings import merge
from cim.ports import port_is_free
from cim.ui.auth import hash_password
from support.upkit import Ports, Up
from support.waiting import async_wait_until


class Receiver:
    """A webhook receiver on loopback that keeps every POST body."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/cim"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_tier_policy_a_webhook_and_an_inbox_from_settings_files_take_effect(up, cli, tmp_path, receiver):
    data, scans = tmp_path / "data", tmp_path / "scans"
    secret = tmp_path / "webhook-secret"
    secret.write_text("a secret shared with the receiver\n")
    settings = data / "settings"
    settings.mkdir(parents=True)
    # The README's examples, with no waiting: settle and min_age 0, a policy run every second.
    (settings / "tier.json").write_text(json.dumps({
        "policies": [{"name": "scans-to-warm", "from": "hot", "to": "warm", "labels": ["scan"], "min_age": "0s"}],
        "migrate_interval": 1,
    }))
    (settings / "hub.json").write_text(json.dumps({
        "webhooks": [{"name": "notify", "url": receiver.url, "secret_file": str(secret),
                      "subjects": ["cim.evt.unit.*.created"]}],
        "connectors": [{"plugin": "inbox", "name": "scans",
                        "settings": {"path": str(scans), "labels": ["scan"], "settle": 0}}],
    }))
    u = up(data)

    def tier_status():
        return json.loads(cli("--json", "tier", "status", server=u.url, env=u.env).stdout)

    status = tier_status()
    assert [p["name"] for p in status["policies"]] == ["scans-to-warm"], "the file's list replaces the default policies"
    assert [t["name"] for t in status["tiers"]][-2:] == ["warm", "archive"], "what the file does not name stays"

    scans.mkdir(exist_ok=True)
    (scans / "scan-001.txt").write_text("a scanned letter")
    wait_until(lambda: (scans / "done" / "scan-001.txt").exists(), 60, what="the inbox from settings to take the file")
    listed = json.loads(cli("--json", "units", "ls", "--label", "scan", server=u.url, env=u.env).stdout)
    assert len(listed) == 1
    cid = listed[0]["cid"]

    wait_until(lambda: any(cid.encode() in b for b in receiver.bodies), 60, what="the webhook from settings to deliver")

    def warm_units():
        return next(t["units"] for t in tier_status()["tiers"] if t["name"] == "warm")

    wait_until(lambda: warm_units() == 1, 60, what="the policy from settings to move the scan to warm")
    assert cli("units", "get", cid, server=u.url, env=u.env).stdout == "a scanned letter"


@pytest.mark.parametrize("name,text,expected", [
    ("tier.json", '{"policies": [{"name": "old", "to": "warm", "min_age": "soon"}]}', ": policies.0.min_age: "),
    ("hub.json", '{"webhooks": [{"name": "x", "url": "http://127.0.0.1:9/", "secret_file": "/s", "retries": 3}]}',
     ": webhooks.0.retries: "),
    ("hub.json", '{"connectors": [{"plugin": "inbox", "name": "scans", "settings": {"pth": "/srv/scans"}}]}',
     ": connectors.0.settings.path: "),
    ("pipeline.json", '{"log_level": 5}', ": log_level: "),
    ("ui.json", '{"http": {"host": "127.0.0.1",', ": line 1 column "),
    ("ui.json", '{"http": {"port": 8000}}', ": http.port: set by `cim up`: set --ui-port"),
    ("store.json", '["not", "an", "object"]', ": (top level): expected a JSON object"),
    # Two agents of one name would be one micro service: `cim up` could wait for the wrong one.
    ("store.json", '{"name": "cim-hub"}', ": name: set by `cim up`: `cim up` names each agent cim-<capability>"),
    # A file `cim up` would never read is a setting that silently never takes effect.
    ("dashboard.json", '{"http": {"host": "0.0.0.0"}}', ": (file name): not a settings file `cim up` reads; "
                                                         "the names are store.json, tier.json, "),
    ("Hub.json", '{"connectors": []}', ": (file name): not a settings file `cim up` reads"),
])
def test_a_bad_settings_file_stops_cim_up_naming_the_file_and_the_field(tmp_path, name, text, expected):
    data = tmp_path / "data"
    (data / "settings").mkdir(parents=True)
    (data / "settings" / name).write_text(text)
    ports = Ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
    r = subprocess.run([sys.executable, "-m", "cim", "up", "--data-dir", str(data), *ports.args()],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{data / 'settings' / name}{expected}" in r.stderr, r.stderr
    assert "nothing was started" in r.stderr and "move it away" in r.stderr
    assert port_is_free(ports.nats) and not (data / "nats").exists() and not (data / "logs").exists()


def test_settings_merge_objects_key_by_key_and_replace_lists_and_values():
    generated = {"http": {"host": "127.0.0.1", "port": 8471}, "connectors": [{"name": "inbox"}], "log_level": "info"}
    merged = merge(generated, {"http": {"host": "0.0.0.0"}, "connectors": [], "log_level": "debug"})
    assert merged == {"http": {"host": "0.0.0.0", "port": 8471}, "connectors": [], "log_level": "debug"}
    assert generated["http"]["host"] == "127.0.0.1", "the generated config is not changed"


def _get(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_summary_shows_what_the_settings_files_made_of_each_agent(up, tmp_path):
    """Written from the merged config: the host the hub and the dashboard listen on, the
    operator's own tokens and users (whose secrets are not echoed), no inbox once the
    connectors are replaced."""
    data = tmp_path / "data"
    (data / "settings").mkdir(parents=True)
    token = "an-operators-own-token-0123456789"
    tokens = tmp_path / "my-tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "ops", "token": token}]}))
    users = tmp_path / "my-users"
    users.write_text(f"ops:{hash_password('a password of the operator')}\n")
    # Another loopback address: what is printed must be where it listens, not 127.0.0.1.
    (data / "settings" / "hub.json").write_text(json.dumps(
        {"http": {"host": "127.0.0.2"}, "connectors": [], "tokens_file": str(tokens)}))
    (data / "settings" / "ui.json").write_text(json.dumps({"http": {"host": "127.0.0.2"}, "password_file": str(users)}))
    u = up(data)
    out = u.output()

    hub_line = next(line for line in out.splitlines() if " hub http://" in line)
    assert f"hub http://127.0.0.2:{u.ports.hub}/v1/units (tokens from {tokens})" in hub_line, out
    assert "inbox" not in hub_line, "no inbox runs: the settings replaced the connectors"
    generated = json.loads((data / "hub" / "tokens.json").read_text())["tokens"][0]["token"]
    assert generated not in out, "a token the hub does not accept is printed"
    assert token not in out, "the operator's own token is echoed"
    ui_line = next(line for line in out.splitlines() if " UI http://" in line)
    assert f"UI http://127.0.0.2:{u.ports.ui} (users and password hashes from {users})" in ui_line, out
    assert (data / "ui" / "admin-password").read_text().strip() not in out, "a password the dashboard refuses"

    # What the summary promises works as printed.
    assert _get(f"http://127.0.0.2:{u.ports.hub}/healthz") == 200
    assert _get(f"http://127.0.0.2:{u.ports.hub}/v1/units", {"Authorization": f"Bearer {token}"}) == 200
    assert _get(f"http://127.0.0.2:{u.ports.hub}/v1/units", {"Authorization": f"Bearer {generated}"}) == 401
    assert _get(f"http://127.0.0.2:{u.ports.ui}/healthz") == 200


class StalledS3:
    """An S3 endpoint that takes each request and answers nothing until `release()`, then
    403 (the keys refused): a tier whose start is slow, then fails."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.asked = threading.Event()
        self.released = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.settimeout(60)
            try:
                while b"\r\n\r\n" not in (head := conn.recv(65536)):
                    if not head:
                        return
                self.asked.set()
                self.released.wait(120)
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                return

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        self.server.close()


def test_an_agent_whose_start_fails_never_looks_ready_and_cim_up_fails(tmp_path):
    """The tier agent checks its tiers in its start: an S3 tier that, slowly, refuses the keys.
    While that start runs the agent must not answer `$SRV.PING` (`cim up` would print its
    summary and then lose the agent); once it fails, `cim up` fails and says why."""
    data, s3 = tmp_path / "data", StalledS3()
    try:
        keys = tmp_path / "s3.env"
        keys.write_text("AWS_ACCESS_KEY_ID=wrong\nAWS_SECRET_ACCESS_KEY=wrong\n")
        (data / "settings").mkdir(parents=True)
        (data / "settings" / "tier.json").write_text(json.dumps({"tiers": [
            {"name": "warm", "url": f"file://{tmp_path / 'warm'}"},
            {"name": "archive", "url": f"file://{tmp_path / 'archive'}"},
            {"name": "remote", "url": "s3://cim/units", "endpoint": s3.url, "credentials_file": str(keys), "timeout": 120},
        ]}))
        u = Up(data, tmp_path)
        try:
            wait_until(lambda: s3.asked.is_set() or u.proc.poll() is not None, 60, what="the tier agent to check its S3 tier")
            assert u.proc.poll() is None, u.output()

            async def pings() -> dict[str, bool]:
                nc = await nats.connect(u.url, nkeys_seed=str(admin_key(data)), connect_timeout=5)
                try:
                    async def answers(cap: str) -> bool:
                        try:
                            await nc.request(f"$SRV.PING.cim-{cap}", b"", timeout=0.5)
                        except (nats.errors.Error, TimeoutError):
                            return False
                        return True

                    async def all_others() -> bool:
                        return all([await answers(c) for c in NAMES if c != "tier"])

                    await async_wait_until(all_others, 60, what="the other agents to answer")
                    return {c: await answers(c) for c in NAMES}
                finally:
                    await nc.close()

            answering = asyncio.run(pings())
            assert not answering["tier"], "the tier agent answers $SRV.PING while its start is still running"
            assert "CIM is up" not in u.output()

            s3.release()  # the check fails now: the keys are refused
            wait_until(lambda: u.proc.poll() is not None, 60, what="cim up to give up")
            out = u.output()
            assert u.proc.returncode == 1, out
            assert "CIM is up" not in out
            assert "the tier agent exited (code 1) before it answered" in out, out
            assert "refused the keys" in out, "the agent's own words, from the end of its log"
        finally:
            u.stop()
    finally:
        s3.close()


def test_an_editors_leftovers_beside_the_settings_are_no_settings_and_stop_nothing(tmp_path):
    from cim.embedded.settings import check_names
    from cim.errors import ConfigError

    folder = tmp_path / "settings"
    folder.mkdir()
    for name in ("hub.json", "hub.json~", "#hub.json#", ".hub.json.swp", "hub.json.bak", "README"):
        (folder / name).write_text("{}")
    check_names(tmp_path)  # nothing raised: only .json names are judged
    (folder / "Hub.json").write_text("{}")
    with pytest.raises(ConfigError, match="Hub.json"):
        check_names(tmp_path)
