"""Settings under `cim up` (issue 17): `<data-dir>/settings/<capability>.json` merged into the
config `cim up` generates, checked as `cim config check` checks a file. The README's three
examples (a tier policy, a webhook, an inbox) take effect on a running `cim up`; a bad file
stops it before anything starts, naming the file and the field."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")

from cim.embedded.procs import wait_until
from cim.embedded.settings import merge
from cim.ports import port_is_free
from support.upkit import Ports


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
