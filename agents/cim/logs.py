"""Logging to stdout in a form journald understands.

Under systemd (JOURNAL_STREAM is set) each line starts with the sd-daemon priority prefix
`<N>` so `journalctl -p warning` filters properly, and carries no timestamp (journald adds
one). Elsewhere lines carry a timestamp for people reading `cim up` logs.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def setup(level: str = "info", name: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py logs reconnect chatter at INFO; our connection helper reports what matters.
    logging.getLogger("nats").setLevel(max(logging.WARNING, root.level))
