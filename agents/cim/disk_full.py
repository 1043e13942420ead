"""nats-server and a full disk.

Once a write failed for lack of space, nats-server keeps failing writes even after space is
freed, until it restarts (issue 14, finding 7). `DiskWatch` reads what nats-server logged,
says when the disk filled, and restarts it once enough space is free again. `cim up` feeds
it nats-server's log file and restarts its own child; on NixOS, `cim nats disk-watch` (the
`cim-nats-disk-watch` service) feeds it the journal of nats.service and restarts that unit.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

DISK_FULL = b"no space left on device"
FREE_TO_RESUME = 64 * 1024 * 1024  # restart nats-server once this much is free


class DiskWatch:
    def __init__(self, store_dir: Path, *, free_to_resume: int = FREE_TO_RESUME):
        self.store_dir = Path(store_dir)
        self.free_to_resume = free_to_resume
        self.full = False
        self.restarted = False  # the log of the next look may still be the old process's

    def free(self) -> int:
        return shutil.disk_usage(self.store_dir).free

    def check(self, new_log: bytes, restart: Callable[[], object]) -> list[str]:
        """Given what nats-server logged since the last call, what to tell the operator; calls
        `restart` (which raises on failure) when the disk had filled and space is back."""
        if self.restarted:
            # What arrives right after a restart can still be what the old process wrote
            # before it stopped: not a new full disk (nor a reason to restart again).
            self.restarted = False
            return []
        if not self.full:
            if DISK_FULL not in new_log:
                return []
            self.full = True
            return [
                f"nats-server cannot write to {self.store_dir}: the disk is full ({self.free() // 2**20} MiB free). "
                f"Puts fail until space is freed there; nats-server is restarted once "
                f"{self.free_to_resume // 2**20} MiB are free (after a failed write it keeps failing until it restarts)."
            ]
        free = self.free()
        if free < self.free_to_resume:
            return []
        self.full = False
        try:
            restart()
        except Exception as err:  # the caller's restart says what failed
            return [f"disk space is back ({free // 2**20} MiB free), but nats-server did not start again: {err}"]
        self.restarted = True
        return [f"disk space is back ({free // 2**20} MiB free): nats-server restarted; puts work again"]
