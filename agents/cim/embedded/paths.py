"""Where `cim up` keeps its data, and the admin key in it: a leaf module, so the `cim`
command can find the key without importing the embedded leaf."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cim"


def admin_key(data_dir: Path) -> Path:
    """The operator's seed file of a `cim up` leaf; the `cim` command finds it by default."""
    return Path(data_dir) / "keys" / "admin.nk"
