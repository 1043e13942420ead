"""What an operator sees in a real terminal (issue 17 item 8): `cim units put` prints each CID
on a line of its own, above the progress bar, never glued to it. Run in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec


async def test_cids_are_printed_above_the_progress_bar_in_a_terminal(nc, nats_server, tmp_path):
    await provision(nc, ProvisionSpec())
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):  # more than 20 files: the bar is drawn
        (folder / f"note-{i:02}.txt").write_text(f"note {i} " * 50)
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")} | {"COLUMNS": "200", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "cim", "--server", nats_server.url, "units", "put", str(folder)],
                            stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None and not select.select([leader], [], [], 0)[0]:
            break  # ended, and nothing it wrote is left unread
    os.close(leader)
    assert proc.wait(30) == 0, out.decode(errors="replace")
    # What the terminal shows: each carriage return starts the line again, "\x1b[K" clears it.
    screen = []
    for raw in out.decode(errors="replace").replace("\r\n", "\n").split("\n"):
        line = raw.split("\r")[-1].replace("\x1b[K", "")
        screen.append(line)
    cid_lines = [line for line in screen if "bafkrei" in line]
    assert len(cid_lines) == 40, screen
    assert all(re.match(r"^bafkrei[a-z2-7]+  \S+note-\d\d\.txt$", line) for line in cid_lines), cid_lines
    assert any("storing" in raw for raw in out.decode(errors="replace").split("\n")), "the bar was drawn"
