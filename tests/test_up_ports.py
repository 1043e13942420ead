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


# --- what a failed bind means (issue 17 review, D5) and IPv6 addresses (D6) ------------------

# Run with every capability dropped (as root, CAP_NET_BIND_SERVICE would let it bind port 80):
# what a bind below 1024 says to an ordinary user.
_UNPRIVILEGED = """
import ctypes, os
if os.geteuid() == 0:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    assert ctypes.CDLL(None, use_errno=True).capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) == 0
from cim.embedded.addresses import Listener, check_free
check_free([Listener("the dashboard", "127.0.0.1", 80, "--ui-port (CIM_UI_PORT)", "http.host in ui.json")])
"""


def _refusal(listener) -> str:
    from cim.embedded.addresses import check_free
    from cim.errors import EmbeddedError

    with pytest.raises(EmbeddedError) as raised:
        check_free([listener])
    return str(raised.value)


def test_only_a_port_someone_listens_on_is_called_taken_and_other_failures_say_what_is_wrong():
    from cim.embedded.addresses import Listener

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        said = _refusal(Listener("the dashboard", "127.0.0.1", port, "--ui-port (CIM_UI_PORT)"))
    assert f"port {port} is taken (the dashboard, on 127.0.0.1) by pid {os.getpid()} " in said

    # An address this machine does not have (TEST-NET-1, never assigned): not a taken port.
    port = Ports().ui
    said = _refusal(Listener("the dashboard", "192.0.2.1", port, "--ui-port (CIM_UI_PORT)", "http.host in ui.json"))
    assert "is taken" not in said, said
    assert f"the dashboard cannot listen on 192.0.2.1:{port}: 192.0.2.1 is not an address of this machine" in said
    assert "http.host in ui.json" in said and "127.0.0.1" in said

    # A name that does not resolve.
    said = _refusal(Listener("the hub's HTTP API", "no-such-host.invalid", port, "--hub-port (CIM_HUB_PORT)"))
    assert "is taken" not in said and "'no-such-host.invalid' is not an address this machine can listen on" in said

    # A port below 1024, as an ordinary user.
    r = subprocess.run([sys.executable, "-c", _UNPRIVILEGED], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is taken" not in r.stderr
    assert "no permission to listen on port 80 (ports below 1024 need root); pick a port from 1024 up" in r.stderr


def test_ipv6_addresses_are_bracketed_wherever_a_host_and_port_are_written(tmp_path):
    from cim.embedded.addresses import target
    from cim.embedded.leaf import Leaf
    from cim.embedded.nats_server import NatsServer
    from cim.ports import authority, dial_host

    assert dial_host("::") == "::1" and dial_host("0.0.0.0") == "127.0.0.1" and dial_host("::1") == "::1"
    assert authority("::1", 9470) == "[::1]:9470" and authority("127.0.0.1", 9470) == "127.0.0.1:9470"
    assert target("::", 9470, "store", "cim-store")["targets"] == ["[::1]:9470"]
    assert Leaf(tmp_path, host="::").url == "nats://[::1]:4222"
    assert Leaf(tmp_path, host="::1", port=4333).url == "nats://[::1]:4333"
    assert NatsServer(tmp_path / "nats", port=4444, http_port=8444, host="::").url == "nats://[::1]:4444"

    # And what a client does with them: an IPv6 listener reached through the bracketed form.
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server:
        port = server.getsockname()[1]
        assert not port_is_free(port, "::1")
        host, _, reached = authority(dial_host("::"), port).rpartition(":")
        socket.create_connection((host.strip("[]"), int(reached)), timeout=5).close()


def test_a_killed_cim_up_leaves_its_data_dir_locked_while_what_it_started_still_runs(up, tmp_path):
    """SIGKILL ends `cim up` without a word to its children: nats-server and the agents run on
    over the data directory. A second `cim up` there (on other ports) must not start a second
    nats-server over the same JetStream files: it names what still runs, and how to stop it."""
    import signal

    from cim.embedded.leaf import LOCK_FILE
    from cim.embedded.procs import wait_until
    from cim.ports import pid_alive, processes_holding_file

    first = up()
    first.proc.kill()
    first.proc.wait()
    lock = first.data_dir / LOCK_FILE
    left = processes_holding_file(lock)
    try:
        assert any("nats-server" in command for _, command in left), left
        ports = Ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
        r = subprocess.run([sys.executable, "-m", "cim", "up", "--data-dir", str(first.data_dir), *ports.args()],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"earlier `cim up` (pid {first.proc.pid}, no longer running" in r.stderr, r.stderr
        assert "nats-server" in r.stderr and f"kill {' '.join(str(pid) for pid, _ in left)}" in r.stderr, r.stderr
        assert all(port_is_free(p) for p in (ports.nats, ports.http, ports.ui, ports.hub)), "it started something"
    finally:
        for pid, _ in left:  # what the killed one left behind: this test's to stop
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(pid) for pid, _ in left), 30, what="the leftovers to end")
    # With them gone, the data directory is free again.
    again = up(first.data_dir, Ports())
    assert "CIM is up" in again.output()


def test_a_closed_terminal_stops_cim_up_in_order_and_frees_its_data_dir(up):
    """SIGHUP (a closed terminal, a dropped SSH session) stops `cim up` as Ctrl-C does: before,
    it ended at once and left nats-server and the agents running over the data."""
    import signal

    from cim.embedded.leaf import LOCK_FILE
    from cim.ports import processes_holding_file

    first = up()
    lock = first.data_dir / LOCK_FILE
    assert any("nats-server" in command for _, command in processes_holding_file(lock))
    first.proc.send_signal(signal.SIGHUP)
    assert first.proc.wait(timeout=60) == 0
    assert processes_holding_file(lock) == [], "cim up left processes running over its data"


def test_nohup_cim_up_outlives_its_terminal(up):
    """Started with SIGHUP ignored (`nohup cim up &`), a hangup changes nothing: it goes on,
    and stops, saying so, when asked."""
    import signal

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does; the child inherits it
    try:
        first = up()
    finally:
        signal.signal(signal.SIGHUP, previous)
    first.proc.send_signal(signal.SIGHUP)
    assert first.stop() == 0
    assert "stopped; data kept in" in first.output(), first.output()


def test_a_reused_pid_in_the_lock_file_is_not_named_as_the_cim_up_that_holds_it(tmp_path):
    """After a kill -9 the pid in the lock file may be any process's by now; the message names
    what really holds the lock."""
    from cim.embedded.leaf import LOCK_FILE, Leaf
    from cim.errors import EmbeddedError

    data = tmp_path / "data"
    data.mkdir()
    lock = data / LOCK_FILE
    lock.write_text(f"{os.getpid()}\n")  # alive, but not holding it: a reused pid
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, signal, sys\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "signal.pause()\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(EmbeddedError) as refused:
            Leaf(data).lock()
        message = str(refused.value)
        assert f"pid {holder.pid} (" in message and f"kill {holder.pid}" in message, message
        assert f"another `cim up` (pid {os.getpid()}" not in message, message
    finally:
        holder.kill()
        holder.wait()


def test_deleting_the_lock_file_by_hand_does_not_let_a_second_cim_up_in(tmp_path):
    """The data directory itself is locked too: a lock file removed by hand (or by a cleanup
    script) while a leaf runs would otherwise let a second nats-server over the same files."""
    from cim.embedded.leaf import LOCK_FILE, Leaf
    from cim.errors import EmbeddedError

    data = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys\n"
        "from pathlib import Path\n"
        "from cim.embedded.leaf import Leaf\n"
        f"Leaf(Path({str(data)!r})).lock()\n"
        "print('held', flush=True)\n"
        "signal.pause()\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (data / LOCK_FILE).unlink()
        with pytest.raises(EmbeddedError) as refused:
            Leaf(data).lock()
        message = str(refused.value)
        assert f"{data} is still in use" in message and f"kill {holder.pid}" in message, message
        assert "lock file .cim-up.lock was removed" in message, message
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone the directory is free again, with a lock file of its own.
    leaf = Leaf(data)
    leaf.lock()
    assert (data / LOCK_FILE).read_text().strip() == str(os.getpid())
    leaf.unlock()


def test_a_filesystem_that_cannot_lock_a_directory_or_at_all_gets_a_clear_answer(tmp_path, monkeypatch, caplog):
    """NFS locks only files open for writing, so a directory's lock fails there with EBADF, not
    "held by another": the lock file alone guards the data, and the log says so. A filesystem
    that locks nothing stops `cim up` with what to do, and leaves no descriptor open."""
    import errno
    import fcntl
    import stat

    from cim.embedded.leaf import Leaf
    from cim.errors import EmbeddedError

    real = fcntl.flock
    data = tmp_path / "data"

    def no_directory_locks(fd, operation):  # what an NFS mount answers for a directory
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_directory_locks)
    leaf = Leaf(data)
    leaf.lock()
    try:
        assert "alone guards the data" in caplog.text
        with pytest.raises(EmbeddedError, match="is in use by another `cim up`"):
            Leaf(data).lock()  # the lock file still keeps a second one out
    finally:
        leaf.unlock()

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(EmbeddedError) as refused:
        Leaf(data).lock()
    assert "does not support locks" in str(refused.value) and "--data-dir" in str(refused.value)
    assert len(os.listdir("/proc/self/fd")) == open_before, "a descriptor was left open"


def test_a_second_cim_up_on_the_same_data_dir_stops_before_anything_starts_naming_the_first(up, cli):
    first = up()
    ports = Ports()  # other ports: only the data directory is shared
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
    r = subprocess.run([sys.executable, "-m", "cim", "up", "--data-dir", str(first.data_dir), *ports.args()],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{first.data_dir} is in use by another `cim up` (pid {first.proc.pid}" in r.stderr, r.stderr
    assert "--data-dir" in r.stderr and "nothing was started" in r.stderr
    assert "CIM is up" not in r.stdout
    assert all(port_is_free(p) for p in (ports.nats, ports.http, ports.ui, ports.hub)), "the second one started something"
    # The first one is untouched and still answers.
    assert first.proc.poll() is None
    answering = json.loads(cli("--json", "status", server=first.url, env=first.env).stdout)["agents"]
    assert sorted(a["capability"] for a in answering) == sorted(NAMES)

    # Once it stops, the data directory is free again.
    assert first.stop() == 0
    again = up(first.data_dir, ports)
    assert "CIM is up" in again.output()
