"""`cim up` keeps its addresses (issue 17): fixed ports from its options, checked the way the
servers bind (a port left closing is free, a listening one is an error naming it), the
Prometheus targets it writes, and a summary printed only once everything answers."""

import errno
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request

import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")

from prometheus_client.parser import text_string_to_metric_families

from cim.capabilities import NAMES
from cim.ports import port_is_free
from support.upkit import Ports


def _keep_alive(port: int, path: str) -> socket.socket:
    """A real HTTP/1.1 client connection that got its answer and stays open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode())
    assert sock.recv(65536).startswith(b"HTTP/1."), f"no answer on port {port}"
    return sock


def _plain_bind_fails(port: int) -> bool:
    """Whether a bind without SO_REUSEADDR fails: what the free check of old did."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            assert err.errno == errno.EADDRINUSE
            return True
    return False


def _summary_ports(out: str) -> dict[str, int]:
    ports = {"ui": int(re.search(r"UI http://127\.0\.0\.1:(\d+) ", out).group(1)),
             "hub": int(re.search(r"hub http://127\.0\.0\.1:(\d+)/v1/units", out).group(1))}
    for cap, port in re.findall(r"^  (\w+) +pid \d+, metrics http://127\.0\.0\.1:(\d+)/metrics", out, re.M):
        ports[f"metrics {cap}"] = int(port)
    return ports


def test_a_port_left_closing_is_free_and_a_listening_one_is_not():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    assert not port_is_free(port), "a listening socket holds it"
    server.close()
    accepted.close()  # the server's side closes first, so its end of the connection lingers
    client.close()
    assert _plain_bind_fails(port), "the connection should linger in TIME_WAIT"
    assert port_is_free(port)


def test_a_restart_keeps_every_port_though_the_last_run_left_connections_closing(up):
    ports = Ports()
    first = up(ports=ports)
    before = _summary_ports(first.output())
    expected = {"ui": ports.ui, "hub": ports.hub} | {f"metrics {c}": ports.metrics_base + i for i, c in enumerate(NAMES)}
    assert before == expected, first.output()

    # Real connections to every HTTP server, open while `cim up` stops: the servers close
    # them first, so their ports are left with connections closing (TIME_WAIT).
    held = [_keep_alive(ports.ui, "/healthz"), _keep_alive(ports.hub, "/healthz")]
    held += [_keep_alive(port, "/metrics") for name, port in before.items() if name.startswith("metrics")]
    assert first.stop() == 0
    for sock in held:
        sock.close()
    assert _plain_bind_fails(ports.ui) and _plain_bind_fails(ports.hub), "the test should leave the ports closing"

    again = up(first.data_dir, ports)
    assert _summary_ports(again.output()) == expected, again.output()
    assert "is taken" not in again.output()


def test_the_summary_comes_once_everything_answers_and_the_targets_list_every_agent(up, cli):
    u = up()  # returns as soon as the summary is printed
    # Connected at once, with no retry: the summary promises they listen.
    for port in (u.ports.ui, u.ports.hub):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    answering = json.loads(cli("--json", "status", server=u.url, env=u.env).stdout)["agents"]
    assert sorted(a["capability"] for a in answering) == sorted(NAMES)

    targets_file = u.data_dir / "prometheus-targets.json"
    assert str(targets_file) in u.output()
    targets = json.loads(targets_file.read_text())
    assert [t["labels"] for t in targets] == [{"job": "cim", "capability": c, "agent": f"cim-{c}"} for c in NAMES]
    for i, t in enumerate(targets):
        assert t["targets"] == [f"127.0.0.1:{u.ports.metrics_base + i}"]
        with urllib.request.urlopen(f"http://{t['targets'][0]}/metrics", timeout=10) as r:
            families = list(text_string_to_metric_families(r.read().decode()))
        assert families, t
    assert not list(u.data_dir.glob(".*.tmp")), "the targets file is written through a temporary one"


@pytest.mark.parametrize("which,option", [("ui", "--ui-port"), ("hub", "--hub-port"), ("metrics", "--metrics-port-base")])
def test_a_port_someone_listens_on_stops_cim_up_before_anything_starts(tmp_path, which, option):
    ports = Ports()
    taken = {"ui": ports.ui, "hub": ports.hub, "metrics": ports.metrics_base + NAMES.index("pipeline")}[which]
    data = tmp_path / "data"
    with socket.create_server(("127.0.0.1", taken)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
        r = subprocess.run([sys.executable, "-m", "cim", "up", "--data-dir", str(data), *ports.args()],
                           capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"port {taken} is taken" in r.stderr and option in r.stderr, r.stderr
    assert f"by pid {os.getpid()} " in r.stderr, "it says who holds the port"
    assert "CIM is up" not in r.stdout
    assert port_is_free(ports.nats) and not (data / "nats").exists() and not (data / "logs").exists(), "something started"
