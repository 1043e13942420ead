"""`cim nats disk-watch`, what NixOS runs beside nats.service: a real nats-server on a real
filesystem filled to the last byte. The watch reads the server's log as journalctl would
print it and, once space is back, runs the restart command (systemctl's part, played here
by the test restarting the same server)."""

from __future__ import annotations

import subprocess
import sys

import nats

from cim.embedded.nats_server import NatsServer
from cim.embedded.procs import wait_until


def test_the_watch_says_the_disk_filled_and_restarts_nats_once_space_is_back(tmp_path, small_disk):
    small = small_disk(96)
    disk = small.path
    server = NatsServer(store_dir=disk / "nats", config_path=tmp_path / "nats.conf")
    restarted = tmp_path / "restart-requested"
    watch = None
    try:
        server.start()
        watch = subprocess.Popen(
            [sys.executable, "-m", "cim", "nats", "disk-watch", "--store-dir", str(disk), "--interval", "0.2",
             "--free-mib", "32", "--log-command", f"tail -F -n 0 {server.log_path}",
             "--restart-command", f"touch {restarted}"],
            stderr=subprocess.PIPE, text=True,
        )
        said: list[str] = []

        def output() -> str:
            return "".join(said)

        import threading

        threading.Thread(target=lambda: said.extend(iter(watch.stderr.readline, "")), daemon=True).start()
        wait_until(lambda: "watching" in output(), 20, what="the watch to start")

        small.fill()

        async def put() -> bool:
            nc = await nats.connect(server.url)
            try:
                js = nc.jetstream()
                await js.add_stream(name="FILL", subjects=["fill.>"])
                await js.publish("fill.x", b"x" * 65536, timeout=5)
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        import asyncio

        wait_until(lambda: not asyncio.run(put()) and "the disk is full" in output(), 60,
                   what="a put to fail and the watch to say the disk is full")
        assert not restarted.exists()  # no restart while the disk is still full

        small.free_up()
        wait_until(restarted.exists, 60, what="the watch to ask for a restart once space is back")
        # It says so once the restart command has returned: a moment after the file appears.
        wait_until(lambda: "nats-server restarted" in output(), 30, what="the watch to say it restarted nats-server")
        assert "disk space is back" in output()
        server.restart()
        wait_until(lambda: asyncio.run(put()), 60, what="a put to work again after the restart")
    finally:
        if watch is not None:
            watch.terminate()
            watch.wait(10)
        server.stop()


def test_lines_the_old_server_logged_before_a_restart_do_not_restart_it_again(tmp_path):
    """The journal delivers what the old nats-server wrote just before the restart after it:
    that is not a new full disk, and no second restart follows (the watch's own logic, fed
    the lines the journal would, on a real directory with room)."""
    from cim.disk_full import DiskWatch

    watch = DiskWatch(tmp_path, free_to_resume=1)
    restarts: list[int] = []
    full = b"[ERR] JetStream failed to store a msg on stream 'CIM_EVENTS': write: no space left on device\n"
    assert "the disk is full" in watch.check(full, lambda: restarts.append(1))[0]
    assert "nats-server restarted" in watch.check(full, lambda: restarts.append(1))[0]
    assert watch.check(full, lambda: restarts.append(1)) == []  # the old process's last words
    assert watch.check(b"", lambda: restarts.append(1)) == []
    assert restarts == [1]
    assert "the disk is full" in watch.check(full, lambda: restarts.append(1))[0]  # a new failure counts again
